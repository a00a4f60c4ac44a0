"""The relay: a frame switch between client sessions and agent sessions.

It never parses HTTP. A client stream is matched with a fresh stream on one of
the requested cluster's agent sessions and the two are joined (`StreamPipe`):
each hop has its own credit window, so the relay holds at most one window of
data per direction per stream, however fast either end is.

Who may do what was decided before a session reaches this module (see
`relay_auth`): an agent session carries its cluster's id, a client session the
cluster its credential names, and they only ever meet on that cluster.

Replicas: a relay may be one of several (`proxy/registry.py` keeps it in the hub's
registry). Every session learns the live replica set in its HELLO and again (a
REPLICAS frame) whenever it changes, so agents hold a session to each replica and
a client finds its cluster on whichever replica it lands. A replica without a
session to the cluster refuses its streams with NO_ROUTE: another replica may
have one, and the client proxy tries it.

Shutting down is a drain (`drain`): every session is told GOAWAY, so agents and
client proxies dial a new session for new streams at once, while the streams
already open run to their end, up to a grace period; then the sessions close.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from foundation.wire import RelayReplica
from proxy.errors import HubUnavailable, RenewalRefused, StreamError
from proxy.mux import Mux, Transport
from proxy.pipe import StreamPipe
from proxy.protocol import events as ev
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Role, Session, Settings
from proxy.stream import Stream

log = logging.getLogger("kubearc.relay")

# Checks a renewal document; returns the new expiry (epoch seconds), or raises RenewalRefused
# (the credential is refused) or HubUnavailable (it cannot be checked now: the agent renews again
# later, and the session keeps its current credential until that expires).
Renewer = Callable[[dict[str, Any]], Awaitable[float]]


@dataclass
class RelayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.sessions = Gauge("kubearc_relay_sessions", "Open sessions.", ["side"], registry=r)
        self.streams = Gauge("kubearc_relay_streams", "Relayed streams open.", registry=r)
        self.opened = Counter("kubearc_relay_streams_opened", "Streams relayed.", registry=r)
        self.refused = Counter("kubearc_relay_streams_refused", "Streams refused.", ["reason"], registry=r)
        self.renewals = Counter(
            "kubearc_relay_renewals", "Credential renewals.", ["side", "result"], registry=r
        )
        self.replicas = Gauge("kubearc_relay_replicas", "Relay replicas in the live set.", registry=r)
        self.clusters = Gauge(
            "kubearc_relay_clusters", "Clusters with at least one agent session here.", registry=r
        )
        self.session_failures = Counter(
            "kubearc_relay_session_failures",
            "Sessions ended by a protocol error.",
            ["side", "code"],
            registry=r,
        )


class _TrafficCollector(Collector):
    """Bytes and credit stalls, read from the sessions' own counters at scrape time.

    The data path only adds to plain integers on each mux; a session that ends hands its
    totals to `retired`, so the counters never go backwards.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        bytes_ = CounterMetricFamily(
            "kubearc_relay_bytes", "DATA payload bytes by side and direction.", labels=["side", "direction"]
        )
        stalls = CounterMetricFamily(
            "kubearc_relay_window_stalls", "Times a stream waited for credit.", labels=["side"]
        )
        grown = CounterMetricFamily(
            "kubearc_relay_windows_grown",
            "Times the relay doubled a stream's receive window (window tuning on long paths).",
            labels=["side"],
        )
        rtts = HistogramMetricFamily(
            "kubearc_relay_session_round_trip_seconds",
            "Live sessions by measured round trip (lowest recent PING): how far away the peers are.",
            labels=["side"],
        )
        for side in ("agent", "client"):
            received, sent, blocked, doubled = self.relay.retired[side]
            counts, total = [0] * len(RTT_BUCKETS), 0.0
            for mux in self.relay.muxes(side):
                received += mux.bytes_received
                sent += mux.bytes_sent
                blocked += mux.blocked
                doubled += mux.windows_grown
                if (rtt := mux.rtt) > 0:
                    total += rtt
                    counts = [n + (rtt <= bound) for n, bound in zip(counts, RTT_BUCKETS, strict=True)]
            bytes_.add_metric([side, "received"], received)
            bytes_.add_metric([side, "sent"], sent)
            stalls.add_metric([side], blocked)
            grown.add_metric([side], doubled)
            rtts.add_metric([side], [(_bound(b), n) for b, n in zip(RTT_BUCKETS, counts, strict=True)], total)
        yield bytes_
        yield stalls
        yield grown
        yield rtts


RTT_BUCKETS = (0.0005, 0.002, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, float("inf"))


def _bound(bucket: float) -> str:
    return "+Inf" if bucket == float("inf") else repr(bucket)


@dataclass
class _AgentSession:
    cluster: str
    mux: Mux


class Relay:
    def __init__(self, settings: Settings | None = None, replica_id: str = "relay-0") -> None:
        self.settings = settings or Settings()
        self.replica_id = replica_id
        self.metrics = RelayMetrics()
        self._agents: dict[str, list[_AgentSession]] = {}
        self.client_muxes: set[Mux] = set()  # live client sessions (introspection, leak checks)
        self._client_cluster: dict[Mux, str] = {}  # the cluster each client session reaches
        self._rr = itertools.count()
        # (bytes received, bytes sent, credit stalls, windows grown) of sessions that ended, by side
        self.retired: dict[str, list[int]] = {"agent": [0, 0, 0, 0], "client": [0, 0, 0, 0]}
        self.metrics.registry.register(_TrafficCollector(self))
        self.metrics.clusters.set_function(lambda: len(self._agents))
        self.metrics.replicas.set_function(lambda: len(self.replicas))
        self.replicas: tuple[RelayReplica, ...] = ()  # the live set, this replica included
        self.draining = False
        self._pipes = 0  # relayed streams open
        self._no_pipes = asyncio.Event()
        self._no_pipes.set()

    def muxes(self, side: str) -> list[Mux]:
        return self.agent_muxes() if side == "agent" else list(self.client_muxes)

    def _retire(self, side: str, mux: Mux) -> None:
        totals = self.retired[side]
        totals[0] += mux.bytes_received
        totals[1] += mux.bytes_sent
        totals[2] += mux.blocked
        totals[3] += mux.windows_grown
        failed = mux.failure
        if failed is not None:
            self.metrics.session_failures.labels(side, failed.code.name).inc()

    async def drain(self, grace: float) -> None:
        """GOAWAY to every session; let open streams finish for up to `grace` seconds; close all.

        Agents and client proxies answer GOAWAY by dialling a new session (to this relay's
        successor) for new streams, so only streams that outlive the grace period are cut.
        """
        self.draining = True
        sessions = [*self.agent_muxes(), *self.client_muxes]
        for mux in sessions:
            mux.goaway(ErrorCode.NO_ERROR, "relay shutting down")
        log.info("relay draining", extra={"sessions": len(sessions), "streams": self._pipes, "grace": grace})
        try:
            await asyncio.wait_for(self._no_pipes.wait(), grace)
        except TimeoutError:
            log.warning("drain period over; cutting the streams left", extra={"streams": self._pipes})
        async with asyncio.TaskGroup() as closing:
            for mux in [*self.agent_muxes(), *self.client_muxes]:
                closing.create_task(mux.close())

    def _hello(self) -> dict[str, Any]:
        return {"replicaId": self.replica_id, **self._replica_doc()}

    def _replica_doc(self) -> dict[str, Any]:
        return {"replicas": [r.to_json() for r in self.replicas]}

    def set_replicas(self, replicas: tuple[RelayReplica, ...]) -> None:
        """The live set changed (or not): every session hears of a change at once."""
        if replicas == self.replicas:
            return
        self.replicas = replicas
        doc = self._replica_doc()
        sessions = [*self.agent_muxes(), *self.client_muxes]
        for mux in sessions:
            if mux.hello.done() and mux.failure is None:
                mux.replicas(doc)
        log.info(
            "relay replica set changed", extra={"replicas": [r.id for r in replicas], "told": len(sessions)}
        )

    def _pipe_opened(self) -> None:
        self._pipes += 1
        self._no_pipes.clear()
        self.metrics.opened.inc()
        self.metrics.streams.inc()

    def _pipe_closed(self) -> None:
        self._pipes -= 1
        self.metrics.streams.dec()
        if not self._pipes:
            self._no_pipes.set()

    def drop_cluster(self, cluster: str, reason: str = "the cluster was deleted") -> int:
        """End every session of `cluster`, agents' and clients', at once; how many ended."""
        wanted = cluster.lower()
        muxes = [s.mux for key, entries in self._agents.items() if key.lower() == wanted for s in entries]
        muxes += [m for m, c in self._client_cluster.items() if c.lower() == wanted]
        for mux in muxes:
            mux.goaway(ErrorCode.UNAUTHORIZED, reason)
            mux.spawn(mux.close())
        if muxes:
            log.info("cluster's sessions dropped", extra={"cluster": cluster, "sessions": len(muxes)})
        return len(muxes)

    def connected_clusters(self) -> list[str]:
        return sorted(k for k, v in self._agents.items() if v)

    def agent_muxes(self, cluster: str | None = None) -> list[Mux]:
        """Live agent sessions (of one cluster, or all)."""
        keys = [cluster] if cluster is not None else list(self._agents)
        return [s.mux for k in keys for s in self._agents.get(k, [])]

    # ---- agents -------------------------------------------------------------------------

    async def serve_agent(
        self, transport: Transport, cluster: str, expires_at: float, renew: Renewer
    ) -> None:
        """Hold one agent session for `cluster` until it closes."""
        session = Session(Role.LISTENER, self.settings, self._hello())
        mux = Mux(session, transport, handler=None)
        entry = _AgentSession(cluster, mux)
        state = {"expires_at": expires_at}
        mux.on_event = self._renewals(mux, renew, state, "agent")
        if self.draining:
            mux.goaway(ErrorCode.NO_ERROR, "relay shutting down")
        self._agents.setdefault(cluster, []).append(entry)
        self.metrics.sessions.labels("agent").inc()
        log.info("agent session up", extra={"cluster": cluster})
        try:
            await mux.run(self._expire_agent(mux, state))
        finally:
            self._retire("agent", mux)
            self._agents[cluster].remove(entry)
            if not self._agents[cluster]:
                del self._agents[cluster]
            self.metrics.sessions.labels("agent").dec()
            log.info("agent session down", extra={"cluster": cluster})

    async def _expire_agent(self, mux: Mux, state: dict[str, float]) -> None:
        """An agent that stops renewing its credential loses its session."""
        while True:
            delay = state["expires_at"] - time.time()
            if delay <= 0:
                mux.goaway(ErrorCode.UNAUTHORIZED, "agent credential expired")
                await asyncio.sleep(0.2)
                await mux.close()
                return
            await asyncio.sleep(min(delay, 30))

    # ---- clients ------------------------------------------------------------------------

    async def serve_client(
        self, transport: Transport, cluster: str, user: str, expires_at: float, renew: Renewer
    ) -> None:
        """Hold one client session; each stream it opens is joined to the cluster's agent."""
        session = Session(Role.LISTENER, self.settings, self._hello())
        state = {"expires_at": expires_at}

        def refuse(stream: Stream, metric: str, code: ErrorCode, reason: str) -> None:
            self.metrics.refused.labels(metric).inc()
            stream.refuse(code, reason)

        async def handle(stream: Stream) -> None:
            if time.time() >= state["expires_at"]:
                return refuse(stream, "expired", ErrorCode.UNAUTHORIZED, "relay credential expired; renew it")
            agent = self._pick(cluster)
            if agent is None:
                return refuse(
                    stream,
                    "no_agent",
                    ErrorCode.NO_ROUTE,
                    f"cluster {cluster} has no agent session on relay replica {self.replica_id}",
                )
            try:
                upstream = await agent.mux.open(stream.target)
            except StreamError as exc:
                if agent.mux.closed:  # the agent session ended while the OPEN was on its way
                    return refuse(
                        stream, "agent_gone", ErrorCode.NO_ROUTE, f"agent unavailable: {exc.reason}"
                    )
                return refuse(stream, "agent_refused", ErrorCode.CONNECT_FAILED, exc.reason)
            except ValueError as exc:  # a target too large to pass on in one control frame
                return refuse(stream, "bad_target", ErrorCode.CONNECT_FAILED, str(exc))
            except Exception as exc:  # the agent session went away meanwhile
                return refuse(stream, "agent_gone", ErrorCode.NO_ROUTE, f"agent unavailable: {exc}")
            stream.accept()
            self._pipe_opened()
            StreamPipe(stream, upstream, on_done=self._pipe_closed).start()

        mux = Mux(session, transport, handler=handle)
        mux.on_event = self._renewals(mux, renew, state, "client")
        if self.draining:
            mux.goaway(ErrorCode.NO_ERROR, "relay shutting down")
        self.metrics.sessions.labels("client").inc()
        self.client_muxes.add(mux)
        self._client_cluster[mux] = cluster
        log.info("client session up", extra={"cluster": cluster, "user": user})
        try:
            await mux.run()
        finally:
            self._retire("client", mux)
            self.client_muxes.discard(mux)
            self._client_cluster.pop(mux, None)
            self.metrics.sessions.labels("client").dec()
            log.info("client session down", extra={"cluster": cluster, "user": user})

    def _pick(self, cluster: str) -> _AgentSession | None:
        # A session this relay sent GOAWAY to (draining) still takes streams it opens; one whose
        # agent said GOAWAY does not.
        sessions = [
            s for s in self._agents.get(cluster, []) if not s.mux.peer_going_away and s.mux.failure is None
        ]
        if not sessions:
            return None
        return sessions[next(self._rr) % len(sessions)]

    def _renewals(
        self, mux: Mux, renew: Renewer, state: dict[str, float], side: str
    ) -> Callable[[ev.Event], None]:

        async def check(doc: dict[str, Any]) -> None:
            try:
                state["expires_at"] = await renew(doc)
            except RenewalRefused as exc:
                self.metrics.renewals.labels(side, "rejected").inc()
                mux.renew_err(ErrorCode.UNAUTHORIZED, str(exc))
            except HubUnavailable as exc:  # not refused: asked to renew again later
                self.metrics.renewals.labels(side, "deferred").inc()
                mux.renew_err(ErrorCode.TIMEOUT, f"cannot verify now ({exc}); renew again later")
            else:
                self.metrics.renewals.labels(side, "accepted").inc()
                mux.renew_ok({"expiresAt": state["expires_at"]})

        def on_event(event: ev.Event) -> None:
            if isinstance(event, ev.RenewRequested):
                mux.spawn(check(event.doc))

        return on_event
