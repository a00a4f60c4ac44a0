"""After a relay restart the dialler is back at once; a failing relay is still backed off from.

Real wss servers on loopback (websockets, TLS) that the tests stop and start again on
the same port: the relay stand-in of `test_tunnel_dialler.py` for the dialler's pauses,
and the real `Relay` switching an agent's and a client's sessions for the first stream
after a restart. Every dialler draws its jitter from a seeded `random.Random`, so the
pauses it chose are compared with the exact sequence its rules give, not with a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from foundation.retry import RetryPolicy
from foundation.transports import reset_transport
from proxy.dialler import Dialler, RelayCredential
from proxy.errors import HubUnavailable, StreamError
from proxy.mux import Mux
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Role, Session
from proxy.relay import Relay
from proxy.stream import Stream
from proxy.wsconn import DirectServerConnection
from tests.test_tunnel_dialler import RelayStandIn
from tests.test_tunnel_safety import until
from tests.tunnel_stack import free_port

pytestmark = pytest.mark.sqlite_only

SEED = 20261127
# Steps that grow fast, so a test sees the exponential within a second: 10, 20, 40, 80 ms ...
POLICY = RetryPolicy(base=0.01, cap=30.0, deadline=None)
PAUSE = 0.02  # the recovery pause of these tests: far below POLICY's 8th step (1.28 s)
JITTER = 0.01


@dataclass
class Endpoint:
    """A wss listener on a fixed loopback port that can stop listening and listen again."""

    handler: Callable[[ServerConnection], Awaitable[None]]
    context: ssl.SSLContext
    port: int
    server: Server | None = None

    async def start(self) -> None:
        self.server = await serve(
            self.handler,
            "127.0.0.1",
            self.port,
            ssl=self.context,
            compression=None,
            ping_interval=None,
            create_connection=DirectServerConnection,
        )

    def stop_listening(self) -> None:
        """Refuse new connections at once; the sessions already up are left to the test."""
        assert self.server is not None
        self.server.close(close_connections=False)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), 10)


def dialler_to(url: str, ca: Path, **options: Any) -> Dialler:
    async def credentials() -> RelayCredential:
        return RelayCredential(url, "a-relay-credential", time.time() + 3600)

    return Dialler(credentials, ca_file=str(ca), backoff=POLICY, rng=random.Random(SEED), **options)


@contextlib.asynccontextmanager
async def running(*diallers: Dialler) -> AsyncIterator[None]:
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        for dialler in diallers:
            tasks.create_task(dialler.run(stop))
        try:
            yield
        finally:
            stop.set()


def exponential(failures: int) -> list[float]:
    """The pauses `POLICY` gives failures 1..n, drawn from a fresh rng with the diallers' seed."""
    rng = random.Random(SEED)
    return [POLICY.pause(n, rng) for n in range(1, failures + 1)]


async def end_session(stand_in: RelayStandIn, how: str) -> None:
    mux = stand_in.sessions[0]
    if how == "goaway":  # a draining relay: GOAWAY, the session itself stays until its streams end
        mux.goaway(ErrorCode.NO_ERROR, "relay shutting down")
    elif how == "close":  # the relay closes the websocket cleanly
        await mux.close()
    else:  # killed: the connection just breaks
        transport = stand_in.connections[0].transport
        assert transport is not None
        transport.abort()


@pytest.mark.parametrize("how", ["goaway", "close", "lost"])
async def test_a_dialler_whose_relay_restarted_redials_without_growing_backoff(
    tls: tuple[Path, ssl.SSLContext], how: str
) -> None:
    ca, context = tls
    stand_in = RelayStandIn()
    relay = Endpoint(stand_in.handle, context, free_port())
    await relay.start()
    dialler = dialler_to(
        f"wss://127.0.0.1:{relay.port}/relay/v1/agent",
        ca,
        stable_after=0.0,  # the first session counts as having worked however briefly it was up
        redial_jitter=JITTER,
        recovery_window=60.0,
        recovery_pause=PAUSE,
    )
    try:
        async with running(dialler):
            await until(lambda: dialler.current is not None, "the first session")
            relay.stop_listening()  # the relay is going down ...
            await end_session(stand_in, how)
            # ... and stays down while the dialler fails eight redials (POLICY would be at 1.28 s).
            await until(lambda: dialler.failed_attempts >= 8, "eight failed redials")
            await relay.start()  # back on the same port
            await until(
                lambda: dialler.sessions_started == 2 and dialler.current is not None,
                "a session to the restarted relay, in use",
            )
            failed = dialler.failed_attempts
            pauses = list(dialler.pauses)
    finally:
        await relay.close()
    rng = random.Random(SEED)
    redial = rng.uniform(0, JITTER)
    assert pauses == [redial, *(rng.uniform(0, PAUSE) for _ in range(failed))]
    assert max(pauses) <= PAUSE < max(exponential(failed))  # short pauses where backoff would grow
    assert len(stand_in.sessions) == 2  # the failed redials never reached a relay


async def test_a_restarted_relay_that_resets_dials_is_backed_off_from_within_the_recovery_window(
    tls: tuple[Path, ssl.SSLContext],
) -> None:
    """Listening but resetting (a relay at its pending cap in a reconnect storm) is overload, not
    absence: the redials thin out exponentially instead of coming back every `recovery_pause`."""
    ca, context = tls
    stand_in = RelayStandIn()
    relay = Endpoint(stand_in.handle, context, free_port())
    await relay.start()
    resets = 0

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal resets
        resets += 1
        reset_transport(writer.transport)

    dialler = dialler_to(
        f"wss://127.0.0.1:{relay.port}/relay/v1/agent",
        ca,
        stable_after=0.0,
        redial_jitter=JITTER,
        recovery_window=60.0,
        recovery_pause=PAUSE,
    )
    overloaded = None
    try:
        async with running(dialler):
            await until(lambda: dialler.current is not None, "the first session")
            relay.stop_listening()
            overloaded = await asyncio.start_server(reset, "127.0.0.1", relay.port)  # listening, resetting
            await end_session(stand_in, "lost")
            await until(lambda: dialler.failed_attempts >= 7, "seven redials reset")
            pauses = list(dialler.pauses)
    finally:
        if overloaded is not None:
            overloaded.close()
        await relay.close()
    rng = random.Random(SEED)
    redial = rng.uniform(0, JITTER)
    assert pauses == [redial, *(POLICY.pause(n, rng) for n in range(1, len(pauses)))]
    assert resets >= 7  # each failure reached the listener and was reset there


async def test_a_dialler_that_never_had_a_session_backs_off_exponentially(
    tls: tuple[Path, ssl.SSLContext],
) -> None:
    ca, _ = tls
    dialler = dialler_to(f"wss://127.0.0.1:{free_port()}/relay/v1/agent", ca, recovery_pause=PAUSE)
    async with running(dialler):  # nothing listens there
        await until(lambda: dialler.failed_attempts >= 7, "seven failed dials")
        pauses = list(dialler.pauses)
    assert pauses == exponential(len(pauses))
    assert dialler.sessions_started == 0


async def test_after_the_recovery_window_failed_redials_back_off_exponentially_again(
    tls: tuple[Path, ssl.SSLContext],
) -> None:
    ca, context = tls
    stand_in = RelayStandIn()
    relay = Endpoint(stand_in.handle, context, free_port())
    await relay.start()
    dialler = dialler_to(
        f"wss://127.0.0.1:{relay.port}/relay/v1/agent",
        ca,
        stable_after=0.0,
        redial_jitter=JITTER,
        recovery_window=0.0,  # the window is over as soon as it began
        recovery_pause=PAUSE,
    )
    try:
        async with running(dialler):
            await until(lambda: dialler.current is not None, "the first session")
            relay.stop_listening()
            await end_session(stand_in, "lost")
            await until(lambda: dialler.failed_attempts >= 7, "seven failed redials")
            pauses = list(dialler.pauses)
    finally:
        await relay.close()
    rng = random.Random(SEED)
    redial = rng.uniform(0, JITTER)  # at once after the session, then the backoff from its start
    assert pauses == [redial, *(POLICY.pause(n, rng) for n in range(1, len(pauses)))]


async def test_a_relay_that_drops_every_session_at_once_is_backed_off_from(
    tls: tuple[Path, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    ca, context = tls
    caplog.set_level(logging.INFO, "kubearc.tunnel")

    async def drop(ws: ServerConnection) -> None:
        """Say HELLO, then close the websocket: a relay that fails right after the handshake."""
        assert isinstance(ws, DirectServerConnection)
        mux = Mux(Session(Role.LISTENER), ws)

        async def hang_up() -> None:
            await asyncio.sleep(0.02)
            await mux.close()

        await mux.run(hang_up())

    relay = Endpoint(drop, context, free_port())
    await relay.start()
    dialler = dialler_to(f"wss://127.0.0.1:{relay.port}/relay/v1/agent", ca, stable_after=5.0)
    try:
        async with running(dialler):
            await until(lambda: dialler.failed_attempts >= 6, "six sessions dropped")
            pauses = list(dialler.pauses)
    finally:
        await relay.close()
    came_up = [r for r in caplog.records if r.getMessage() == "connected to the relay"]
    assert len(came_up) >= 6  # each failure was a session that came up (HELLO) and was dropped
    assert pauses == exponential(len(pauses))  # not a redial at once each time


# ---- the first stream after a restart: the client may be back before the agent ---------------


async def echo(stream: Stream) -> None:
    stream.accept()
    while chunk := await stream.read():
        await stream.write(chunk)
        stream.consumed(len(chunk))
    await stream.write_eof()


async def renew(_doc: dict[str, Any]) -> float:
    return time.time() + 3600


def relay_endpoint(relay: Relay, context: ssl.SSLContext) -> Endpoint:
    """`relay` on a free port: /agent sessions serve cluster c1, the others are c1's clients."""

    async def handle(ws: ServerConnection) -> None:
        assert isinstance(ws, DirectServerConnection)
        expires = time.time() + 3600
        if ws.request is not None and ws.request.path.endswith("/agent"):
            await relay.serve_agent(ws, "c1", expires, renew)
        else:
            await relay.serve_client(ws, "c1", "someone", expires, renew)

    return Endpoint(handle, context, free_port())


@pytest.fixture
async def real_relay(tls: tuple[Path, ssl.SSLContext]) -> AsyncIterator[tuple[Relay, str]]:
    """The real `Relay` behind a wss listener (`relay_endpoint`)."""
    _, context = tls
    relay = Relay()
    endpoint = relay_endpoint(relay, context)
    await endpoint.start()
    try:
        yield relay, f"wss://127.0.0.1:{endpoint.port}/relay/v1"
    finally:
        await endpoint.close()


def refused_for_no_agent(relay: Relay) -> float:
    value = relay.metrics.registry.get_sample_value(
        "kubearc_relay_streams_refused_total", {"reason": "no_agent"}
    )
    return value or 0.0


async def test_a_stream_opened_before_the_clusters_agent_is_back_waits_for_it(
    tls: tuple[Path, ssl.SSLContext], real_relay: tuple[Relay, str]
) -> None:
    ca, _ = tls
    relay, url = real_relay
    client = dialler_to(f"{url}/client", ca, settle=30.0, settle_retry=0.02)
    agent = dialler_to(f"{url}/agent", ca, handler=echo)
    async with running(client):
        await until(lambda: client.current is not None, "the client's session")
        async with asyncio.TaskGroup() as tasks:
            opening = tasks.create_task(client.open({"kind": "apiserver"}, wait=30))
            await until(lambda: refused_for_no_agent(relay) >= 2, "the relay to refuse for want of an agent")
            assert not opening.done()  # still trying, not failed
            async with running(agent):
                stream = await asyncio.wait_for(opening, 10)
                await stream.write(b"first kubectl")
                await stream.write_eof()
                assert await asyncio.wait_for(read_all(stream), 10) == b"first kubectl"


async def test_once_a_session_has_settled_a_cluster_without_agent_fails_at_once(
    tls: tuple[Path, ssl.SSLContext], real_relay: tuple[Relay, str]
) -> None:
    ca, _ = tls
    relay, url = real_relay
    client = dialler_to(f"{url}/client", ca, settle=0.0)
    async with running(client):
        await until(lambda: client.current is not None, "the client's session")
        with pytest.raises(StreamError) as refused:
            await asyncio.wait_for(client.open({"kind": "apiserver"}, wait=30), 5)
    assert refused.value.code == ErrorCode.NO_ROUTE and "has no agent session" in refused.value.reason
    assert refused_for_no_agent(relay) == 1


async def read_all(stream: Stream) -> bytes:
    data = bytearray()
    while chunk := await stream.read():
        data += chunk
        stream.consumed(len(chunk))
    return bytes(data)


async def test_a_renewal_the_relay_cannot_check_yet_keeps_the_session_and_is_sent_again(
    tls: tuple[Path, ssl.SSLContext],
) -> None:
    ca, context = tls
    relay = Relay()
    checks: list[str] = []

    async def flaky(doc: dict[str, Any]) -> float:  # the hub is busy for the first renewal only
        checks.append(str(doc.get("token")))
        if len(checks) == 1:
            raise HubUnavailable("hub answered 503 verifying the agent")
        return time.time() + 3600

    async def handle(ws: ServerConnection) -> None:
        assert isinstance(ws, DirectServerConnection)
        await relay.serve_agent(ws, "c1", time.time() + 3600, flaky)

    endpoint = Endpoint(handle, context, free_port())
    await endpoint.start()
    agent = dialler_to(f"wss://127.0.0.1:{endpoint.port}/relay/v1/agent", ca, handler=echo)
    agent.renew_interval, agent.renew_retry = 1.0, (0.05, 0.1)
    try:
        async with running(agent):
            await until(lambda: len(checks) >= 2, "the renewal to be sent again", within=20)

            def renewals(result: str) -> float:
                value = relay.metrics.registry.get_sample_value(
                    "kubearc_relay_renewals_total", {"side": "agent", "result": result}
                )
                return value or 0.0

            await until(lambda: renewals("accepted") >= 1, "the second renewal accepted")
            assert renewals("deferred") == 1 and renewals("rejected") == 0
            assert agent.sessions_started == 1 and agent.live == 1  # the session went on throughout
    finally:
        await endpoint.close()
