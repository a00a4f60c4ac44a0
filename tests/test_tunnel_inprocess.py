"""The tunnel's asyncio layers in one event loop: relay, agent and client proxy over real wss.

A hub runs in its thread (real HTTPS); the relay, the connect agent and the client
proxy run here, each on real sockets with TLS on the relay hops, in front of a
TCP echo server standing in for the apiserver's port (the apiserver stand-in
and real kubectl are exercised by the end-to-end tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from foundation import pki, tokens
from proxy.agent import ConnectAgent
from proxy.client import ClientProxy, Credential
from proxy.protocol.session import Settings
from proxy.relay import Relay
from proxy.relay_auth import HubAuth
from proxy.relay_server import RelayServer
from tests.clusters import ConnectedCluster, connected
from tests.conftest import RunningHub
from tests.test_tunnel_safety import exchange

pytestmark = pytest.mark.sqlite_only


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


@dataclass
class Stack:
    hub: RunningHub
    cluster: ConnectedCluster
    relay: Relay
    agent: ConnectAgent
    proxy: ClientProxy
    port: int


def relay_tls(directory: Path) -> tuple[ssl.SSLContext, str]:
    ca, cert, key = pki.ensure_serving_pair(directory, ["localhost", "127.0.0.1"], "relay test CA")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx, str(ca)


@pytest.fixture
async def stack(start_hub: object, tmp_path: Path) -> AsyncIterator[Stack]:
    server_ctx, relay_ca = relay_tls(tmp_path / "relay-tls")
    relay = Relay(Settings(initial_window=256 * 1024, connection_window=1024 * 1024))
    echo = await echo_server()
    relay_port_sock = __import__("socket").socket()
    relay_port_sock.bind(("127.0.0.1", 0))
    relay_port = relay_port_sock.getsockname()[1]
    relay_port_sock.close()
    hub: RunningHub = start_hub(relay_url=f"wss://localhost:{relay_port}")  # type: ignore[operator]
    cluster = connected(hub, f"tun-{uuid.uuid4().hex[:6]}")
    apiserver_ca = pki.create_ca("apiserver")
    with cluster.agent_client() as c:
        c.put(
            "/agent/v1/metadata",
            json={
                "clusterCertificateAuthority": apiserver_ca.cert_pem.decode(),
                "apiserverServerName": "kubernetes.default.svc",
            },
        )
    user = str(uuid.uuid4())
    hub.assign(user, "Azure Arc Enabled Kubernetes Cluster User Role", cluster.resource_id)
    user_token = hub.token(user)

    async def credential() -> Credential:
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=hub.ca)) as c:
            r = await c.post(
                f"{hub.url}{cluster.resource_id}/listClusterUserCredential",
                headers={"Authorization": f"Bearer {user_token}"},
            )
        r.raise_for_status()
        return Credential.from_arm(r.json())

    assert cluster.identity is not None
    identity = cluster.identity

    async def agent_token() -> str:
        return tokens.make_agent_token(identity, hub.url)

    server = RelayServer(relay, HubAuth(hub.url, hub.ca), "127.0.0.1", relay_port, server_ctx)
    agent = ConnectAgent(
        f"wss://localhost:{relay_port}/relay/v1/agent",
        agent_token,
        ("127.0.0.1", echo.sockets[0].getsockname()[1]),
        relay_ca,
        Settings(initial_window=256 * 1024, connection_window=1024 * 1024),
    )
    proxy = ClientProxy(credential, port=0, relay_ca_file=relay_ca)
    stop = asyncio.Event()
    ready = asyncio.Event()
    ports: list[int] = []
    relay_ready = asyncio.Event()
    # Owned by this fixture: cancelled and awaited at teardown.
    tasks = [asyncio.create_task(server.serve_forever(relay_ready))]
    await relay_ready.wait()
    tasks.append(asyncio.create_task(agent.run(stop)))

    def listening(port: int) -> None:
        ports.append(port)
        ready.set()

    tasks.append(asyncio.create_task(proxy.run(listening, stop)))
    await ready.wait()
    deadline = time.monotonic() + 10
    while not relay.connected_clusters() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls the relay
        await asyncio.sleep(0.05)
    try:
        yield Stack(hub, cluster, relay, agent, proxy, ports[0])
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        echo.close()


async def test_bytes_round_trip_with_half_close(stack: Stack) -> None:
    assert stack.relay.connected_clusters() == [stack.cluster.resource_id.lower()]
    payload = os.urandom(8 * 1024 * 1024)
    echoed = await asyncio.wait_for(exchange(stack.port, b"", payload), 60)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


async def test_many_parallel_streams(stack: Stack) -> None:
    payloads = [os.urandom(100_000 + i) for i in range(16)]
    results = await asyncio.wait_for(asyncio.gather(*(exchange(stack.port, b"", p) for p in payloads)), 60)
    assert results == payloads
