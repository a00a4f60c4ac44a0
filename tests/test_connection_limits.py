"""What an unauthenticated peer can hold on our TLS ports (foundation.gate), against the real servers.

One address opens far more idle TLS connections than the port lets it keep: the
rest are refused at once, a user and an agent from another address are served
meanwhile, and the connections that were kept are closed by the first-request
timeout. The same holds on the hub's API port, the relay's and guard's.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from foundation import tokens
from foundation.gate import Limits
from foundation.wire import RELAY_AGENT_PATH
from guard.app import GuardState
from guard.authn.chain import AuthnChain
from guard.authn.static import StaticTokens
from guard.config import GuardConfig
from guard.server import GuardThread
from proxy.relay import Relay
from proxy.relay_auth import HubAuth
from proxy.relay_server import RelayServer
from tests.clusters import SUB, connected
from tests.conftest import RunningHub
from tests.floods import client_context, flood, open_by_peer, wait_closed_by_peer
from tests.guard_doubles import PlainAuthorizer
from tests.test_guard_server import NoOpinion, write_tls
from tests.test_tunnel_inprocess import relay_tls
from tests.test_tunnel_safety import until

pytestmark = pytest.mark.sqlite_only

FLOOD = 1500
PENDING = 60
TIGHT = Limits(max_connections=1000, max_pending_per_address=PENDING, handshake_timeout=3, header_timeout=3)


def from_other_address(hub: RunningHub, token: str) -> httpx.Client:
    transport = httpx.HTTPTransport(
        local_address="127.0.0.2", verify=ssl.create_default_context(cafile=hub.ca)
    )
    return httpx.Client(
        base_url=hub.url, transport=transport, headers={"Authorization": f"Bearer {token}"}, timeout=15
    )


def test_idle_tls_connections_from_one_address_neither_starve_others_nor_stay(
    start_hub: Callable[..., RunningHub],
) -> None:
    hub = start_hub(limits=TIGHT)
    cluster = connected(hub, f"idle-{uuid.uuid4().hex[:6]}")
    reader = str(uuid.uuid4())
    hub.assign(reader, "Reader", f"/subscriptions/{SUB}")
    gate = hub.thread.gate
    assert gate is not None

    idle = flood(hub.config.port, FLOOD, client_context(hub.ca))
    try:
        assert len(idle.held) == PENDING  # one address keeps no more than its pending cap
        assert idle.refused == FLOOD - PENDING
        assert gate.refused["max_pending_per_address"] == FLOOD - PENDING

        # Meanwhile a user and an agent on another address are served.
        with from_other_address(hub, hub.token(reader)) as user:
            listed = user.get(f"/subscriptions/{SUB}/providers/Microsoft.Kubernetes/connectedClusters")
            assert listed.status_code == 200, listed.text
        assert cluster.identity is not None
        with from_other_address(hub, tokens.make_agent_token(cluster.identity, hub.url)) as agent:
            assert agent.post("/agent/v1/heartbeat", json={}).status_code == 200
        assert open_by_peer(idle.held) == PENDING  # still held: the first-request timeout is 3 s
        with from_other_address(hub, hub.token(reader)) as scraper:
            metrics = scraper.get("/metrics").text
        refused = 'kubearc_hub_connections_refused_total{reason="max_pending_per_address"}'
        assert f"{refused} {FLOOD - PENDING}.0" in metrics

        # Then the first-request timeout closes every one of them.
        assert wait_closed_by_peer(idle.held, within=15) == 0
        assert gate.refused["header_timeout"] == PENDING
        assert not gate.pending  # nothing left counted against the address
    finally:
        idle.close()


def test_a_full_port_refuses_new_connections_and_keeps_serving_the_established_ones(
    start_hub: Callable[..., RunningHub],
) -> None:
    hub = start_hub(limits=Limits(max_connections=40, max_pending_per_address=1000, header_timeout=30))
    token = hub.token(str(uuid.uuid4()))
    with from_other_address(hub, token) as user:
        assert user.get("/healthz").status_code == 200  # a kept-alive connection, past its first request
        idle = flood(hub.config.port, 100, client_context(hub.ca))
        try:
            assert len(idle.held) == 39 and idle.refused == 61
            assert user.get("/healthz").status_code == 200  # the established connection still works
            with pytest.raises(httpx.ConnectError), from_other_address(hub, token) as newcomer:
                newcomer.get("/healthz")
        finally:
            idle.close()
        deadline = time.monotonic() + 10
        while hub.thread.gate and hub.thread.gate.open > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with from_other_address(hub, token) as newcomer:  # the idle ones gone, there is room again
            assert newcomer.get("/healthz").status_code == 200


async def test_the_relay_port_bounds_idle_connections_and_still_takes_agents(
    start_hub: Callable[..., RunningHub], tmp_path: Path
) -> None:
    hub = start_hub()
    cluster = connected(hub, f"relay-{uuid.uuid4().hex[:6]}")
    assert cluster.identity is not None
    server_ctx, relay_ca = relay_tls(tmp_path / "relay-tls")
    server = RelayServer(Relay(), HubAuth(hub.url, hub.ca), "127.0.0.1", 0, server_ctx, limits=TIGHT)
    listening = await server.start()
    port = listening.sockets[0].getsockname()[1]
    try:
        idle = await asyncio.to_thread(flood, port, FLOOD, client_context(relay_ca))
        try:
            assert len(idle.held) == PENDING and idle.refused == FLOOD - PENDING
            # An agent from another address opens its session meanwhile.
            token = tokens.make_agent_token(cluster.identity, hub.url)
            async with connect(
                f"wss://localhost:{port}{RELAY_AGENT_PATH}",
                ssl=ssl.create_default_context(cafile=relay_ca),
                additional_headers={"Authorization": f"Bearer {token}"},
                local_addr=("127.0.0.2", 0),
            ) as ws:
                assert ws.response is not None and ws.response.status_code == 101
            assert await asyncio.to_thread(wait_closed_by_peer, idle.held, 15) == 0
            assert server.gate.refused["header_timeout"] == PENDING
            async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=relay_ca)) as scraper:
                metrics = (await scraper.get(f"https://localhost:{port}/metrics")).text
            timed_out = 'kubearc_relay_connections_refused_total{reason="header_timeout"}'
            assert f"{timed_out} {PENDING}.0" in metrics
            assert "kubearc_relay_connections_pending 0.0" in metrics
        finally:
            idle.close()
    finally:
        listening.close()
        await listening.wait_closed()


def test_guards_mtls_port_bounds_idle_connections_and_still_answers_the_apiserver(tmp_path: Path) -> None:
    write_tls(tmp_path)
    static = uuid.uuid4().hex
    (tmp_path / "tokens.csv").write_text(f"{static},deployer,1001,ops\n")

    async def make() -> tuple[GuardState, object]:
        chain = AuthnChain([], StaticTokens.load(tmp_path / "tokens.csv"))
        config = GuardConfig(
            tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "client-ca.crt", port=0, health_port=0
        )
        config.limits = TIGHT
        return GuardState(config, chain, PlainAuthorizer(NoOpinion().authorize)), chain.ready

    thread = GuardThread(make).start()
    try:
        assert thread.server is not None
        port = thread.server.port
        apiserver = (str(tmp_path / "c.crt"), str(tmp_path / "c.key"))
        # Idle connections that completed mutual TLS (the worst case: a stolen client certificate).
        idle = flood(port, FLOOD, client_context(str(tmp_path / "ca.crt"), apiserver))
        try:
            assert len(idle.held) == PENDING and idle.refused == FLOOD - PENDING
            ctx = client_context(str(tmp_path / "ca.crt"), apiserver)
            transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=ctx)
            review = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": static},
            }
            with httpx.Client(transport=transport, timeout=15) as apiserver_client:
                r = apiserver_client.post(f"https://127.0.0.1:{port}/tokenreviews", json=review)
            assert r.status_code == 200 and r.json()["status"]["authenticated"] is True
            assert wait_closed_by_peer(idle.held, within=15) == 0
        finally:
            idle.close()
        # The port has let go of the idle ones (else a stranger could meet the per-address cap instead).
        deadline = time.monotonic() + 15
        while thread.server.gate.pending["127.0.0.1"] and time.monotonic() < deadline:
            time.sleep(0.05)
        # Without a client certificate of the apiserver's CA no connection is kept at all.
        stranger = (str(tmp_path / "o.crt"), str(tmp_path / "o.key"))
        strangers = flood(port, 20, client_context(str(tmp_path / "ca.crt"), stranger), settle=0.5)
        # TLS 1.3 tells a refused client after its side of the handshake: a slow refusal may come late.
        assert wait_closed_by_peer(strangers.held, within=15) == 0
        strangers.close()
        assert thread.server.gate.refused["handshake"] >= 20
    finally:
        thread.stop()


async def test_a_relay_at_its_pending_cap_resets_newcomers_from_every_address_until_room_is_made(
    start_hub: Callable[..., RunningHub], tmp_path: Path
) -> None:
    """`max_pending` bounds a storm over all addresses; the sessions already up are not touched."""
    hub = start_hub()
    cluster = connected(hub, f"storm-{uuid.uuid4().hex[:6]}")
    assert cluster.identity is not None
    server_ctx, relay_ca = relay_tls(tmp_path / "relay-tls")
    limits = Limits(max_pending=PENDING, max_pending_per_address=1000, handshake_timeout=3, header_timeout=3)
    server = RelayServer(Relay(), HubAuth(hub.url, hub.ca), "127.0.0.1", 0, server_ctx, limits=limits)
    listening = await server.start()
    port = listening.sockets[0].getsockname()[1]
    url = f"wss://localhost:{port}{RELAY_AGENT_PATH}"
    ctx = ssl.create_default_context(cafile=relay_ca)
    header = {"Authorization": f"Bearer {tokens.make_agent_token(cluster.identity, hub.url)}"}
    try:
        async with connect(url, ssl=ctx, additional_headers=header, local_addr=("127.0.0.3", 0)) as early:
            idle = await asyncio.to_thread(flood, port, 200, client_context(relay_ca))
            try:
                assert len(idle.held) == PENDING and idle.refused == 200 - PENDING
                assert server.gate.refused["max_pending"] == 200 - PENDING
                with pytest.raises(OSError):  # another address is reset too: the cap is the port's
                    async with connect(url, ssl=ctx, additional_headers=header, local_addr=("127.0.0.2", 0)):
                        pass
                await early.ping()  # the session that was up before the storm still answers
                assert await asyncio.to_thread(wait_closed_by_peer, idle.held, 15) == 0
                async with connect(
                    url, ssl=ctx, additional_headers=header, local_addr=("127.0.0.2", 0)
                ) as ws:
                    assert ws.response is not None and ws.response.status_code == 101
                assert server.gate.pending_total == 0
            finally:
                idle.close()
    finally:
        listening.close()
        await listening.wait_closed()


async def test_an_agent_counts_as_pending_at_the_relay_until_the_hub_has_answered_for_it(
    tmp_path: Path,
) -> None:
    """A storm is bounded all the way to the hub: a session waiting for its check holds a place."""
    answered = asyncio.Event()

    async def stalled_hub(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answered.wait()  # never answers: the relay's check times out
        writer.close()

    hub = await asyncio.start_server(stalled_hub, "127.0.0.1", 0)
    hub_url = f"http://127.0.0.1:{hub.sockets[0].getsockname()[1]}"
    server_ctx, relay_ca = relay_tls(tmp_path / "relay-tls")
    server = RelayServer(Relay(), HubAuth(hub_url, timeout=1.5), "127.0.0.1", 0, server_ctx)
    listening = await server.start()
    port = listening.sockets[0].getsockname()[1]
    url = f"wss://localhost:{port}{RELAY_AGENT_PATH}"
    ctx = ssl.create_default_context(cafile=relay_ca)

    async def dial() -> int:
        try:
            async with connect(url, ssl=ctx, additional_headers={"Authorization": "Bearer x.y.z"}):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    try:
        async with asyncio.TaskGroup() as tasks:
            answer = tasks.create_task(dial())
            await until(lambda: server.gate.pending_total == 1, "the dial admitted")
            await asyncio.sleep(0.3)  # the upgrade's head is long parsed: the hub is being asked
            assert server.gate.pending_total == 1 and not answer.done()
        assert answer.result() == 503  # the hub did not answer in time: come back later
        assert server.gate.pending_total == 0
    finally:
        answered.set()
        listening.close()
        await listening.wait_closed()
        hub.close()
