"""Keeping tunnel sessions to the relay up: the one dialler of the connect agent and the client proxy.

Both ends behind a firewall or on a laptop dial out and must stay reachable, so
both need the same loop, and two copies of it drifted before. A `Dialler`:

- connects with websockets (TLS, `HTTPS_PROXY`/`NO_PROXY` from the environment,
  compression off, the tunnel's message path from `proxy/wsconn.py`);
- tells a relay that restarts from one that is failing. After a GOAWAY, or when a
  session that worked (stayed up `stable_after` seconds) ends by a clean close or a
  lost connection, it redials at once, after a jitter of up to `redial_jitter`; for
  `recovery_window` seconds after that, redials that find nothing listening
  (connection refused: the relay is still restarting) pause up to `recovery_pause`
  (uniform: thousands of agents do not come back in lockstep) instead of a growing
  backoff, so a relay that is back is found within a fraction of a second. A relay
  that is listening but turns the dial away (a reset at its connection limit, a
  handshake that times out, a 503) is overloaded, not away: that failure, and every
  failure outside the window (sessions that end before `stable_after` too: a relay
  that drops every session at once is failing), backs off with full jitter and a cap
  (`foundation.retry.RetryPolicy`), so a reconnect storm thins out by itself instead
  of redialling thousands of times a second; only a session that worked resets the
  backoff;
- PINGs the relay and drops a session that stops answering: TCP may say a wedged
  connection is fine for many minutes;
- dials a new session as soon as the relay says GOAWAY (the redial above): new
  streams go there, streams already open finish on the old one;
- renews its credential in band before it expires, so open streams never notice;
  a renewal the relay refuses ends the session (the next one starts with a fresh
  credential); one the relay could not check yet (its hub busy: RENEW_ERR TIMEOUT)
  is sent again after a jittered pause, and the session goes on meanwhile.

`open` hands out streams on the newest usable session; `handler` serves the
streams the relay opens (the agent's apiserver connections). A relay replica with
no session to the cluster refuses with NO_ROUTE. When the replica set (HELLO)
names a replica this open has not tried, the session is retired (it closes once
its streams are done) and a new one is dialled through the same URL, which a load
balancer sends elsewhere, up to twice the set's size. A relay that has just taken
our session may not have the cluster's agent back yet (both redial at once, either
may win), so for `settle` seconds after a session comes up a refused open is also
tried again every `settle_retry` seconds, within the open's wait: the first kubectl
after a relay restart waits for the agent instead of failing. A refused open
carried no bytes, so trying it again is always safe.

Replicas: a dialler keeps one session to one relay replica. `landed` (given by
`proxy/replicas.py`, which keeps one dialler per live replica) decides after each
HELLO whether the replica reached is wanted; one that is not is closed and dialled
again after a backoff step. `retire` stops the dialling while the sessions it has
finish (the replica left the set and drains them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect

from foundation.retry import RetryPolicy
from foundation.wire import RelayReplica, WireError, relay_replicas
from proxy.errors import SessionLost, StreamError
from proxy.mux import Mux, StreamHandler
from proxy.protocol import events as ev
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Role, Session, Settings
from proxy.stream import Stream
from proxy.wsconn import DirectClientConnection

log = logging.getLogger("kubearc.tunnel")

MAX_MESSAGE = 2 * 1024 * 1024  # above the largest DATA frame plus header
# A credential with less life left than this is fetched again before dialling.
FRESH_ENOUGH = 30.0


@dataclass(frozen=True)
class RelayCredential:
    """Where the relay is and what to show it."""

    relay_url: str  # wss://host:port/relay/v1/agent (or /client)
    token: str
    expires_at: float | None = None  # epoch seconds; None: unknown (renewed every renew_interval)


CredentialSource = Callable[[], Awaitable[RelayCredential]]
Replicas = tuple[RelayReplica, ...]
# After HELLO: (the dialler, the replica reached, the replica set HELLO named) -> keep the session?
Landed = Callable[["Dialler", str | None, Replicas], bool]


@dataclass
class _Attempt:
    """One dial and the session it made, as `Dialler.run` sees it."""

    retire: asyncio.Event = field(default_factory=asyncio.Event)  # set on GOAWAY: dial the next one now
    up_at: float | None = None  # monotonic time the relay's HELLO arrived; None: it never came up
    misrouted: bool = False  # it reached a replica `landed` did not want
    unreachable: bool = False  # the dial found nothing listening (connection refused)


@dataclass(eq=False)  # held in sets: identity, not value
class Dialler:
    credentials: CredentialSource
    ca_file: str | None = None  # trust for the relay's certificate (default: the system roots)
    settings: Settings = field(default_factory=Settings)
    handler: StreamHandler | None = None  # serves streams the relay opens; None: refuse them
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    renew_interval: float = float("inf")  # renew at least this often (seconds)
    # Renew when this fraction of the credential's life is left; None: every `renew_interval` only.
    renew_margin: float | None = 0.25
    # A renewal the relay could not check yet (RENEW_ERR TIMEOUT) is sent again after this (uniform).
    renew_retry: tuple[float, float] = (5.0, 20.0)
    connect_timeout: float = 10.0
    backoff: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=0.5, cap=30.0, deadline=None))
    # A session that stayed up this long (seconds) worked: when it ends, the relay is redialled
    # at once. One that ends sooner, without GOAWAY, counts as a failed attempt.
    stable_after: float = 1.0
    redial_jitter: float = 0.1  # the first redial after a session that worked waits up to this
    # For this long after a session that worked ended, redials refused (nothing listens) pause up
    # to `recovery_pause` (uniform) instead of `backoff`'s growing steps; `backoff` takes over for
    # any other failure and after the window, from its start.
    recovery_window: float = 15.0
    recovery_pause: float = 0.5
    # For this long after a session comes up, opens the relay refuses with CONNECT_FAILED (its
    # cluster's agent is not back yet) are tried again every `settle_retry` seconds.
    settle: float = 3.0
    settle_retry: float = 0.1
    name: str = "tunnel"  # in log lines: "connect agent", "client proxy"
    rng: random.Random = field(default_factory=random.Random, repr=False)  # the jitter (seeded in tests)
    landed: Landed | None = None  # None: every replica reached is wanted
    on_replicas: Callable[[Replicas], None] | None = None  # a session heard a new replica set
    replica: str | None = None  # the relay replica this dialler keeps a session to (None: any)

    def __post_init__(self) -> None:
        self.credential: RelayCredential | None = None
        self.muxes: set[Mux] = set()  # live sessions, retiring ones included
        self.current: Mux | None = None  # the session new streams go to
        self.current_since = 0.0  # monotonic time `current` came up
        self.sessions_started = 0
        self.renewals = 0
        self.failed_attempts = 0  # dials that failed, and sessions that ended before stable_after
        self.pauses: deque[float] = deque(maxlen=256)  # the latest pauses before a dial (introspection)
        self.misroutes = 0  # sessions closed because they reached an unwanted replica
        self.replica_set: Replicas = ()  # as the latest HELLO or REPLICAS named it
        self._usable = asyncio.Event()
        self._attempts: dict[Mux, _Attempt] = {}
        self._retiring = asyncio.Event()
        self._context: tuple[tuple[int, int] | None, ssl.SSLContext] | None = None

    @property
    def live(self) -> int:
        return len(self.muxes)

    async def credential_now(self) -> RelayCredential:
        """The credential to dial with: the current one while it has life left, else a fresh one."""
        cred = self.credential
        if cred is None or (cred.expires_at is not None and cred.expires_at - time.time() < FRESH_ENOUGH):
            cred = self.credential = await self.credentials()
        return cred

    # ---- streams ------------------------------------------------------------------------------

    async def open(self, target: dict[str, Any], wait: float = 15.0) -> Stream:
        """A stream on the newest usable session, waiting up to `wait` seconds for one."""
        deadline = time.monotonic() + wait
        tried: set[str | None] = set()  # replicas that refused this open with NO_ROUTE
        moves = 0
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._usable.wait()
            except TimeoutError:
                raise SessionLost(f"no relay session within {wait:.0f}s") from None
            mux = self.current
            if mux is None or not mux.usable:
                self._usable.clear()  # GOAWAY raced us: wait for the next session
                continue
            try:
                return await mux.open(target, max(0.1, deadline - time.monotonic()))
            except StreamError as exc:
                if exc.code == ErrorCode.REFUSED_STREAM and not mux.usable:
                    continue  # the relay said GOAWAY while our OPEN was on the way: the next session
                if exc.code == ErrorCode.NO_ROUTE:
                    tried.add(replica_of(mux))
                    untried = {r.id for r in self.replica_set} - tried
                    if untried and moves < 2 * len(self.replica_set) and mux is self.current:
                        moves += 1
                        log.info(
                            "relay replica cannot reach the cluster; trying another",
                            extra={"who": self.name, "replica": replica_of(mux)},
                        )
                        self._move_on(mux)
                        continue
                now = time.monotonic()
                settling = mux is self.current and now - self.current_since < self.settle
                retryable = exc.code in (ErrorCode.CONNECT_FAILED, ErrorCode.NO_ROUTE)
                if not retryable or not settling or now + self.settle_retry > deadline:
                    raise
                # A relay that just took our session may not have the cluster's agent back yet.
                log.info("relay has no agent for the stream yet; retrying", extra={"who": self.name})
                await asyncio.sleep(self.settle_retry)

    # ---- sessions -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Keep a session to the relay until `stop` is set (or forever)."""
        stop = stop or asyncio.Event()
        failures = 0  # counted by `backoff`: failed attempts since a session last worked
        recovering_until = float("-inf")  # end of the recovery window (monotonic)
        running: set[asyncio.Task[None]] = set()
        ending = (stop, self._retiring)
        async with asyncio.TaskGroup() as sessions:
            while not any(e.is_set() for e in ending):
                attempt = _Attempt()
                task = sessions.create_task(self._session(attempt))
                running.add(task)
                task.add_done_callback(running.discard)
                waits = [asyncio.ensure_future(e.wait()) for e in (attempt.retire, *ending)]
                try:
                    await asyncio.wait([task, *waits], return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when run() is cancelled: no orphaned waiters
                    for w in waits:
                        w.cancel()
                if any(e.is_set() for e in ending):
                    break
                now = time.monotonic()
                up_at = attempt.up_at
                if attempt.misrouted:
                    self.misroutes += 1
                    failures += 1
                    pause = self.backoff.pause(failures, self.rng)
                elif up_at is not None and (attempt.retire.is_set() or now - up_at >= self.stable_after):
                    # The relay moves us (GOAWAY) or a session that worked is over (a clean close,
                    # a lost connection): the relay is restarting, not failing.
                    failures = 0
                    recovering_until = now + self.recovery_window
                    pause = self.rng.uniform(0, self.redial_jitter)
                    log.info("relay session over; redialling", extra={"who": self.name})
                else:
                    self.failed_attempts += 1
                    if now < recovering_until and attempt.unreachable:
                        pause = self.rng.uniform(0, self.recovery_pause)
                    else:
                        failures += 1
                        pause = self.backoff.pause(failures, self.rng)
                    log.warning(
                        "relay session failed; retrying",
                        extra={"who": self.name, "in_seconds": round(pause, 2)},
                    )
                self.pauses.append(pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(*ending), pause)
            if self._retiring.is_set() and not stop.is_set():
                # Retired: the sessions left close once their streams are done (or the replica
                # closes them first, or PING liveness finds it gone); `stop` still cuts them.
                self._retire_all()
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    while running and not stop.is_set():
                        await asyncio.wait([*running, stopping], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
            for task in running:  # retired sessions too: nothing outlives `run`
                task.cancel()

    def retire(self) -> None:
        """Dial no more; `run` returns once the sessions it has are over (see the module docstring)."""
        self._retiring.set()

    def _retire_all(self) -> None:
        for mux in list(self.muxes):
            self._retire(mux)
            mux.spawn(self._close_when_idle(mux))

    def _move_on(self, mux: Mux) -> None:
        """New streams go to a new session (dialled at once); `mux` closes when its streams are done."""
        self._retire(mux)
        attempt = self._attempts.get(mux)
        if attempt is not None:
            attempt.retire.set()
        mux.spawn(self._close_when_idle(mux))

    async def _close_when_idle(self, mux: Mux, poll: float = 0.5) -> None:
        while mux.streams:  # noqa: ASYNC110 (streams end on many paths; none of them signals)
            await asyncio.sleep(poll)
        await mux.close()

    def _tls(self) -> ssl.SSLContext:
        """The client context, made once per CA file content: loading it cost each dial of a storm
        a millisecond (and it is read again when the file changes, as a rotated CA does)."""
        stamp = _stamp(self.ca_file)
        if self._context is None or self._context[0] != stamp:
            self._context = (stamp, ssl.create_default_context(cafile=self.ca_file or None))
        return self._context[1]

    async def _session(self, attempt: _Attempt) -> None:
        try:
            credential = await self.credential_now()
            async with connect(
                credential.relay_url,
                ssl=self._tls(),
                additional_headers={"Authorization": f"Bearer {credential.token}"},
                compression=None,
                max_size=MAX_MESSAGE,
                ping_interval=None,  # liveness is the tunnel's own PING
                open_timeout=self.connect_timeout,
                write_limit=256 * 1024,
                proxy=True,  # HTTPS_PROXY / NO_PROXY from the environment, as egress proxies need
                create_connection=DirectClientConnection,
            ) as ws:
                assert isinstance(ws, DirectClientConnection)
                await self._serve(ws, attempt)
        except Exception as exc:  # every failure ends in a backoff and a new attempt
            attempt.unreachable = isinstance(exc, ConnectionRefusedError) or isinstance(
                exc.__cause__, ConnectionRefusedError
            )
            log.warning("relay session ended: %s: %s", type(exc).__name__, exc, extra={"who": self.name})

    async def _serve(self, ws: DirectClientConnection, attempt: _Attempt) -> None:
        pongs: asyncio.Queue[bytes] = asyncio.Queue()
        mux = Mux(Session(Role.DIALLER, self.settings), ws, handler=self.handler)

        def on_event(event: ev.Event) -> None:
            if isinstance(event, ev.PongReceived):
                pongs.put_nowait(event.payload)
            elif isinstance(event, ev.ReplicasChanged):
                self._heard(mux, event.doc)
            elif isinstance(event, ev.GoAwayReceived):
                log.info("relay asked to go away", extra={"who": self.name, "reason": event.reason})
                self._retire(mux)
                attempt.retire.set()
            elif isinstance(event, ev.RenewRejected) and event.code == ErrorCode.TIMEOUT:
                # The relay could not check it now (its hub is busy or away): not refused. The
                # session keeps its current credential; renew again after a jittered pause.
                log.warning("relay could not check the renewal yet", extra={"who": self.name})
                mux.spawn(self._renew_again(mux))
            elif isinstance(event, ev.RenewRejected):
                log.error(
                    "relay refused the renewed credential", extra={"who": self.name, "reason": event.reason}
                )
                self.credential = None  # the next session starts with a fresh one
                mux.spawn(mux.close())

        mux.on_event = on_event
        self.sessions_started += 1
        self.muxes.add(mux)
        self._attempts[mux] = attempt
        try:
            await mux.run(self._up(mux, attempt), self._keepalive(mux, pongs), self._renew(mux))
        finally:
            self.muxes.discard(mux)
            self._attempts.pop(mux, None)
            self._retire(mux)

    def _heard(self, mux: Mux, doc: dict[str, Any], notify: bool = True) -> Replicas | None:
        """A replica set from HELLO or REPLICAS; None (and the session kept) when it is malformed.

        `on_replicas` hears it unless `notify` is False (after HELLO `landed` hears it first)."""
        try:
            replicas = relay_replicas(doc)
        except WireError as exc:
            log.warning("relay sent a bad replica set; ignored", extra={"who": self.name, "error": str(exc)})
            return None
        self.replica_set = replicas
        if notify and self.on_replicas is not None and mux.hello.done():
            self.on_replicas(replicas)
        return replicas

    def _retire(self, mux: Mux) -> None:
        if self.current is mux:
            self.current = None
            self._usable.clear()

    async def _up(self, mux: Mux, attempt: _Attempt) -> None:
        hello = await mux.hello
        replicas = self._heard(mux, hello.info, notify=self.landed is None)
        reached = replica_of(mux)
        if self.landed is not None and not self.landed(self, reached, replicas or ()):
            attempt.misrouted = True
            log.info(
                "reached a relay replica already served; dialling again",
                extra={"who": self.name, "replica": reached, "wanted": self.replica},
            )
            await mux.close()
            return
        attempt.up_at = time.monotonic()
        if mux.usable:
            self.current, self.current_since = mux, attempt.up_at
            self._usable.set()
        log.info("connected to the relay", extra={"who": self.name})

    async def _keepalive(self, mux: Mux, pongs: asyncio.Queue[bytes]) -> None:
        """A connection that stops answering PINGs is dead even if TCP says otherwise."""
        while True:
            await asyncio.sleep(self.ping_interval)
            nonce = time.monotonic_ns().to_bytes(8, "big")
            mux.ping(nonce)
            try:
                async with asyncio.timeout(self.ping_timeout):
                    while await pongs.get() != nonce:
                        pass
            except TimeoutError:
                log.warning("relay stopped answering PINGs; reconnecting", extra={"who": self.name})
                self._retire(mux)
                await mux.close()
                return

    async def _renew_again(self, mux: Mux) -> None:
        await asyncio.sleep(self.rng.uniform(*self.renew_retry))
        if self.credential is not None and not mux.closed:
            mux.renew({"token": self.credential.token})
            self.renewals += 1

    async def _renew(self, mux: Mux) -> None:
        """Fetch a new credential before the current one expires and hand it to the relay in band."""
        while True:
            cred, pause = self.credential, min(self.renew_interval, 3600.0)
            if self.renew_margin is not None and cred is not None and cred.expires_at is not None:
                pause = min(pause, (cred.expires_at - time.time()) * (1 - self.renew_margin))
            await asyncio.sleep(max(1.0, pause))
            try:
                self.credential = await self.credentials()
            except Exception as exc:  # a source we do not own (the hub, a file): keep the session
                log.warning(
                    "cannot refresh the relay credential", extra={"who": self.name, "error": str(exc)}
                )
                continue
            mux.renew({"token": self.credential.token})
            self.renewals += 1


def replica_of(mux: Mux | None) -> str | None:
    """The replica id the relay named in its HELLO (None before HELLO or from an older relay)."""
    if mux is None or not mux.hello.done() or mux.hello.exception() is not None:
        return None
    rid = mux.hello.result().info.get("replicaId")
    return rid if isinstance(rid, str) else None


def _stamp(path: str | None) -> tuple[int, int] | None:
    """What tells one version of a file from the next (mtime, size); None without a file."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


async def _first(*events: asyncio.Event) -> None:
    """Until any of `events` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
