"""Finding the cluster among relay replicas: clients move on from a replica without it, agents dial every one.

Real `Relay`s on real wss sockets behind a real HAProxy (TCP mode, round robin), as
a deployment runs them; the replica set is handed to each relay as its registration
would (`Relay.set_replicas`). Every replica here names the one load-balanced URL,
so an agent's dial may reach a replica it already has: the agent must keep
dialling until it holds one session to each, and no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from foundation.retry import RetryPolicy
from foundation.wire import RelayReplica
from proxy.dialler import Dialler, RelayCredential, replica_of
from proxy.errors import StreamError
from proxy.protocol.frames import ErrorCode
from proxy.relay import Relay
from proxy.replicas import ReplicaDiallers
from tests.load_balancer import load_balancer
from tests.test_tunnel_recovery import echo, read_all, relay_endpoint, running
from tests.test_tunnel_safety import until

pytestmark = pytest.mark.sqlite_only

FAST = RetryPolicy(base=0.02, cap=0.2, deadline=None)


@contextlib.asynccontextmanager
async def fleet(
    tmp_path: Path, context: ssl.SSLContext, ids: list[str]
) -> AsyncIterator[tuple[dict[str, Relay], str]]:
    """Relays `ids` behind one HAProxy; yields them and the shared wss URL (every replica's URL)."""
    relays = {rid: Relay(replica_id=rid) for rid in ids}
    endpoints = {rid: relay_endpoint(relay, context) for rid, relay in relays.items()}
    for endpoint in endpoints.values():
        await endpoint.start()
    try:
        with load_balancer(tmp_path / "lb", [e.port for e in endpoints.values()], healthz=False) as port:
            yield relays, f"wss://127.0.0.1:{port}"
    finally:
        for endpoint in endpoints.values():
            await endpoint.close()


def announce(relays: dict[str, Relay], ids: list[str], url: str) -> None:
    """What each replica's registration does when the hub answers the live set `ids`."""
    replicas = tuple(RelayReplica(rid, url) for rid in ids)
    for relay in relays.values():
        relay.set_replicas(replicas)


def dialler(url: str, ca: Path, **options: Any) -> Dialler:
    async def credentials() -> RelayCredential:
        return RelayCredential(url, "a-relay-credential", time.time() + 3600)

    return Dialler(credentials, ca_file=str(ca), backoff=FAST, settle=0.0, **options)


def refusals(relay: Relay) -> float:
    value = relay.metrics.registry.get_sample_value(
        "kubearc_relay_streams_refused_total", {"reason": "no_agent"}
    )
    return value or 0.0


async def client_on(
    replica: str, url: str, ca: Path, stop: asyncio.Event
) -> tuple[Dialler, asyncio.Task[None]]:
    """A client dialler whose first session went to `replica` (round robin: a few tries at most)."""
    for _ in range(6):
        client = dialler(url, ca)
        task = asyncio.create_task(client.run(stop))
        await until(lambda: client.current is not None, "the client's session")  # noqa: B023
        if replica_of(client.current) == replica:
            return client, task
        client.retire()
        await asyncio.wait_for(task, 10)
    raise AssertionError(f"the load balancer never sent a client to {replica}")


async def test_a_client_refused_by_a_replica_without_the_agent_moves_to_one_that_has_it(
    tmp_path: Path, tls: tuple[Path, ssl.SSLContext]
) -> None:
    ca, context = tls
    async with fleet(tmp_path, context, ["a", "b"]) as (relays, url):
        announce(relays, ["a", "b"], url)
        # The agent holds a session to replica a only (as right after b restarted).
        agent = dialler(
            f"{url}/relay/v1/agent", ca, handler=echo, landed=lambda _d, reached, _s: reached == "a"
        )
        async with running(agent):
            await until(lambda: bool(relays["a"].agent_muxes("c1")), "the agent on replica a")
            assert not relays["b"].agent_muxes("c1")
            stop = asyncio.Event()
            client, task = await client_on("b", f"{url}/relay/v1/client", ca, stop)
            try:
                stream = await asyncio.wait_for(client.open({"kind": "apiserver"}, wait=10), 10)
                await stream.write(b"found it")
                await stream.write_eof()
                assert await asyncio.wait_for(read_all(stream), 10) == b"found it"
                assert refusals(relays["b"]) == 1
                assert replica_of(client.current) == "a"
                # The session on b carried no stream: it is closed, not left open beside the new one.
                await until(lambda: not relays["b"].client_muxes, "the client's session on b to close")
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)


async def test_a_cluster_no_replica_reaches_fails_after_each_replica_refused_it(
    tmp_path: Path, tls: tuple[Path, ssl.SSLContext]
) -> None:
    ca, context = tls
    async with fleet(tmp_path, context, ["a", "b", "c"]) as (relays, url):
        announce(relays, ["a", "b", "c"], url)
        client = dialler(f"{url}/relay/v1/client", ca)
        async with running(client):
            await until(lambda: client.current is not None, "the client's session")
            started = time.monotonic()
            with pytest.raises(StreamError) as refused:
                await asyncio.wait_for(client.open({"kind": "apiserver"}, wait=30), 20)
            assert refused.value.code == ErrorCode.NO_ROUTE
            assert time.monotonic() - started < 10  # tried each replica, did not wait out the 30 s
            assert all(refusals(relay) >= 1 for relay in relays.values())
            assert sum(refusals(relay) for relay in relays.values()) <= 6  # at most twice the set


async def test_an_agent_keeps_one_session_per_replica_as_replicas_join_and_leave(
    tmp_path: Path, tls: tuple[Path, ssl.SSLContext]
) -> None:
    ca, context = tls
    async with fleet(tmp_path, context, ["a", "b", "c"]) as (relays, url):
        announce(relays, ["a", "b"], url)

        async def credentials() -> RelayCredential:
            return RelayCredential(f"{url}/relay/v1/agent", "an-agent-token", time.time() + 3600)

        def make(source: Any) -> Dialler:
            return Dialler(source, ca_file=str(ca), handler=echo, backoff=FAST)

        agent = ReplicaDiallers(credentials, make)

        def sessions() -> dict[str, int]:
            return {rid: len(relay.agent_muxes("c1")) for rid, relay in relays.items()}

        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(agent.run(stop))
            try:
                await until(lambda: sessions() == {"a": 1, "b": 1, "c": 0}, "a session on a and on b")

                announce(relays, ["a", "b", "c"], url)  # c joins
                await until(lambda: sessions() == {"a": 1, "b": 1, "c": 1}, "the agent on c too")

                announce(relays, ["b", "c"], url)  # a leaves (it drains)
                await until(lambda: sessions() == {"a": 0, "b": 1, "c": 1}, "the agent off a")
                assert agent.reached() == {"b", "c"}
                await asyncio.sleep(0.5)  # nothing dials a again, and no replica gets a second session
                assert sessions() == {"a": 0, "b": 1, "c": 1}

                announce(relays, [], url)  # an empty set is never acted on
                await asyncio.sleep(0.3)
                assert sessions() == {"a": 0, "b": 1, "c": 1}
            finally:
                stop.set()
