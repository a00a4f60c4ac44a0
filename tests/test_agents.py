"""The identity and metadata agents against a real hub (SQLite and PostgreSQL) and the apiserver stand-in.

The agents run as real subprocesses (`python -m kubearc.cli agent ...`) over real
HTTPS, storing the identity in a Secret of the stand-in or in a directory.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from agents.errors import HubRefused
from agents.hubclient import HubClient
from agents.metadata import UsageSampler, total_cores
from foundation import __version__, pki
from foundation.identitystore import FileStore, StoredIdentity, StoreError
from foundation.retry import RetriesExhausted, RetryPolicy
from tests.apiserver import ApiServer, NodeSpec
from tests.apiserver.resources import NAMESPACES, SECRETS
from tests.conftest import FakeClock, RunningHub

pytestmark = pytest.mark.sqlite_only

ROOT = Path(__file__).resolve().parent.parent
SUB, RG = "00000000-0000-0000-0000-0000000a9e17", "rg1"
IDENTITY_SECRET = "secret:azure-arc/azure-identity-certificate"
FAST_RETRY = ["--retry-max-delay", "0.5", "--retry-deadline", "60"]
DAY = 86400


@pytest.fixture
def standin() -> Iterator[ApiServer]:
    nodes = [NodeSpec("node-1", cpu="4"), NodeSpec("node-2", cpu="3500m"), NodeSpec("node-3", cpu="8")]
    with ApiServer(nodes=nodes, version="v1.35.2") as api:
        api.store.create(NAMESPACES, None, {"metadata": {"name": "azure-arc"}})
        yield api


@dataclass
class Cluster:
    hub: RunningHub
    resource_id: str
    key_file: Path
    user_token: str

    @property
    def path(self) -> str:
        return f"{self.resource_id}?api-version=2024-01-01"

    def get(self) -> dict[str, Any]:
        with self.hub.client(self.user_token) as c:
            resp = c.get(self.path)
        assert resp.status_code == 200, resp.text
        return resp.json()


def connect_cluster(hub: RunningHub, tmp_path: Path, name: str = "cluster-1") -> Cluster:
    """What `kubearc connect` does at the hub: create the resource with the onboarding public key."""
    oid = str(uuid.uuid4())
    hub.assign(oid, "Kubernetes Cluster - Azure Arc Onboarding", f"/subscriptions/{SUB}")
    token = hub.token(oid)
    key = pki.new_key()
    key_file = tmp_path / f"{name}-onboarding.pem"
    pki.write_private(key_file, pki.key_to_pem(key))
    rid = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Kubernetes/connectedClusters/{name}"
    body = {
        "location": "local",
        "properties": {
            "agentPublicKeyCertificate": pki.public_key_der_b64(key.public_key()),
            "distribution": "generic",
            "infrastructure": "generic",
        },
    }
    with hub.client(token) as c:
        resp = c.put(f"{rid}?api-version=2024-01-01", json=body)
    assert resp.status_code in (200, 201), resp.text
    return Cluster(hub, resp.json()["id"], key_file, token)


def agent_cmd(name: str, hub: RunningHub, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kubearc.cli",
        "agent",
        name,
        "--hub",
        hub.url,
        "--hub-ca",
        hub.ca,
        "--log-format",
        "text",
        *args,
    ]


def run_agent(
    name: str, hub: RunningHub, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_cmd(name, hub, *args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=_env(),
    )


def _env() -> dict[str, str]:
    """The agents' environment: none of the caller's kubearc, Kubernetes or proxy settings."""
    skip = ("KUBEARC_", "KUBERNETES_", "KUBECONFIG", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    return {k: v for k, v in os.environ.items() if not k.upper().startswith(skip)}


def identity_args(cluster: Cluster, *extra: str) -> list[str]:
    return [
        "--resource-id",
        cluster.resource_id,
        "--onboarding-key",
        str(cluster.key_file),
        "--once",
        *FAST_RETRY,
        *extra,
    ]


def secret_identity(api: ApiServer) -> StoredIdentity:
    secret = api.store.get(SECRETS, "azure-arc", "azure-identity-certificate")
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    key = pki.load_private_key(data["tls.key"])
    cert, ca = pki.load_cert(data["tls.crt"]), pki.load_cert(data["ca.crt"])
    return StoredIdentity(pki.KeyPair(key, cert), ca, dt.datetime.now(dt.UTC))


def hub_cluster_ca(hub: RunningHub) -> x509.Certificate:
    return hub.hub.cluster_ca.cert


# -- end to end: identity then metadata ------------------------------------------------------------------


def test_identity_then_metadata_with_secret_store(
    hub: RunningHub, standin: ApiServer, tmp_path: Path
) -> None:
    cluster = connect_cluster(hub, tmp_path)
    assert cluster.get()["properties"]["connectivityStatus"] == "Connecting"
    kubeconfig = standin.kubeconfig(tmp_path / "kubeconfig", tls_server_name=True)

    ident = run_agent("identity", hub, *identity_args(cluster, "--kubeconfig", str(kubeconfig)))
    assert ident.returncode == 0, ident.stderr
    stored = secret_identity(standin)
    assert pki.is_issued_by(stored.pair.cert, stored.ca)
    assert stored.ca == hub_cluster_ca(hub)
    assert stored.pair.key.public_key() == stored.pair.cert.public_key()
    secret = standin.store.get(SECRETS, "azure-arc", "azure-identity-certificate")
    assert secret["metadata"]["annotations"]["kubearc.io/resource-id"] == cluster.resource_id

    meta = run_agent(
        "metadata", hub, "--identity", IDENTITY_SECRET, "--kubeconfig", str(kubeconfig), "--once", *FAST_RETRY
    )
    assert meta.returncode == 0, meta.stderr
    props = cluster.get()["properties"]
    assert props["connectivityStatus"] == "Connected"
    assert props["lastConnectivityTime"]
    assert props["kubernetesVersion"] == "v1.35.2"
    assert props["totalNodeCount"] == 3
    assert props["totalCoreCount"] == 16  # 4 + 3.5 + 8, rounded up
    assert props["agentVersion"] == __version__
    assert props["managedIdentityCertificateExpirationTime"]

    async def recorded() -> tuple[str | None, str | None]:
        from sqlalchemy import select

        from hub.store.models import Cluster as Row

        async with hub.hub.sessions() as session:
            row = (await session.execute(select(Row).where(Row.name == "cluster-1"))).scalar_one()
            return row.cluster_ca, row.apiserver_server_name

    ca_pem, server_name = hub.run(recorded())
    assert ca_pem is not None and pki.load_cert(ca_pem.encode()) == standin.ca.cert
    assert server_name == "kubernetes.default.svc"
    for line in (ident.stderr + meta.stderr).splitlines():  # no key material or tokens in the logs
        assert "PRIVATE KEY" not in line and "eyJ" not in line

    # Both agents shipped their own log lines to the hub (the identity agent's once it had one).
    async def shipped() -> list[tuple[str, str, str]]:
        from sqlalchemy import select

        from hub.store.models import AgentLog

        async with hub.hub.sessions() as session:
            rows = (await session.execute(select(AgentLog).order_by(AgentLog.id))).scalars().all()
            return [(r.agent, r.level, r.message) for r in rows]

    lines = hub.run(shipped())
    assert ("cluster-metadata-operator", "info", "pushed cluster metadata") in lines
    assert any(agent == "clusteridentityoperator" for agent, _, _ in lines), lines
    assert all("PRIVATE KEY" not in m and "eyJ" not in m for _, _, m in lines)


def test_onboarding_key_from_a_secret(hub: RunningHub, standin: ApiServer, tmp_path: Path) -> None:
    cluster = connect_cluster(hub, tmp_path)
    pem = cluster.key_file.read_bytes()
    standin.store.create(
        SECRETS,
        "azure-arc",
        {"metadata": {"name": "onboarding"}, "data": {"privateKey": base64.b64encode(pem).decode()}},
    )
    kubeconfig = standin.kubeconfig(tmp_path / "kubeconfig")
    args = identity_args(cluster, "--kubeconfig", str(kubeconfig))
    args[args.index(str(cluster.key_file))] = "secret:azure-arc/onboarding"
    result = run_agent("identity", hub, *args)
    assert result.returncode == 0, result.stderr
    assert pki.is_issued_by(secret_identity(standin).pair.cert, hub_cluster_ca(hub))


# -- renewal -------------------------------------------------------------------------------------------


def test_renewal_in_the_window(hub: RunningHub, standin: ApiServer, tmp_path: Path, clock: FakeClock) -> None:
    cluster = connect_cluster(hub, tmp_path)
    kubeconfig = str(standin.kubeconfig(tmp_path / "kubeconfig"))
    assert run_agent("identity", hub, *identity_args(cluster, "--kubeconfig", kubeconfig)).returncode == 0
    first = secret_identity(standin).pair.cert

    # The agent thinks renewal is due but the hub's clock says it is not: 409, keep the certificate.
    early = run_agent(
        "identity",
        hub,
        *identity_args(cluster, "--kubeconfig", kubeconfig, "--now-offset-seconds", str(50 * DAY)),
    )
    assert early.returncode == 0, early.stderr
    assert "renewal" in early.stderr
    assert secret_identity(standin).pair.cert == first

    clock.advance(days=50)
    # The agent's own clock says not yet due: nothing changes.
    quiet = run_agent("identity", hub, *identity_args(cluster, "--kubeconfig", kubeconfig))
    assert quiet.returncode == 0, quiet.stderr
    assert secret_identity(standin).pair.cert == first

    renewed = run_agent(
        "identity",
        hub,
        *identity_args(cluster, "--kubeconfig", kubeconfig, "--now-offset-seconds", str(50 * DAY)),
    )
    assert renewed.returncode == 0, renewed.stderr
    second = secret_identity(standin)
    assert second.pair.cert.serial_number != first.serial_number
    assert second.pair.cert.not_valid_after_utc > first.not_valid_after_utc
    assert pki.is_issued_by(second.pair.cert, hub_cluster_ca(hub))

    meta = run_agent(
        "metadata", hub, "--identity", IDENTITY_SECRET, "--kubeconfig", kubeconfig, "--once", *FAST_RETRY
    )
    assert meta.returncode == 0, meta.stderr
    props = cluster.get()["properties"]
    assert props["connectivityStatus"] == "Connected"
    expires = dt.datetime.fromisoformat(
        props["managedIdentityCertificateExpirationTime"].replace("Z", "+00:00")
    )
    assert expires == second.pair.cert.not_valid_after_utc


def test_a_reconnected_cluster_gets_a_new_identity(
    hub: RunningHub, standin: ApiServer, tmp_path: Path
) -> None:
    """Deleting the resource revokes the certificate; after `connect` again the agent onboards anew."""
    cluster = connect_cluster(hub, tmp_path)
    kubeconfig = str(standin.kubeconfig(tmp_path / "kubeconfig"))
    assert run_agent("identity", hub, *identity_args(cluster, "--kubeconfig", kubeconfig)).returncode == 0
    first = secret_identity(standin).pair.cert

    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", f"/subscriptions/{SUB}")
    with hub.client(hub.token(owner)) as c:
        assert c.delete(cluster.path).status_code in (200, 202, 204)
    revoked = run_agent(
        "metadata", hub, "--identity", IDENTITY_SECRET, "--kubeconfig", kubeconfig, "--once", *FAST_RETRY
    )
    assert revoked.returncode == 1 and "revoked" in revoked.stderr

    body = {
        "location": "local",
        "properties": {
            "agentPublicKeyCertificate": pki.public_key_der_b64(
                pki.load_private_key(cluster.key_file.read_bytes()).public_key()
            )
        },
    }
    with hub.client(cluster.user_token) as c:
        assert c.put(cluster.path, json=body).status_code in (200, 201)
    again = run_agent("identity", hub, *identity_args(cluster, "--kubeconfig", kubeconfig))
    assert again.returncode == 0, again.stderr
    assert "no longer accepts" in again.stderr
    assert secret_identity(standin).pair.cert.serial_number != first.serial_number
    meta = run_agent(
        "metadata", hub, "--identity", IDENTITY_SECRET, "--kubeconfig", kubeconfig, "--once", *FAST_RETRY
    )
    assert meta.returncode == 0, meta.stderr
    assert cluster.get()["properties"]["connectivityStatus"] == "Connected"


# -- resilience and failures -----------------------------------------------------------------------------


def _start_while_hub_is_down(hub: RunningHub, cmd: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    """Start the agent with the hub stopped, bring the hub back once the agent is retrying, await exit."""
    hub.stop()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, text=True, env=_env())
        try:
            deadline = time.monotonic() + 60
            while "retrying" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the agent never retried"
                time.sleep(0.1)
            hub.restart()
            proc.wait(timeout=90)
        finally:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, "", log.read_text())


def test_agents_retry_until_the_hub_is_back(hub: RunningHub, standin: ApiServer, tmp_path: Path) -> None:
    cluster = connect_cluster(hub, tmp_path)
    kubeconfig = str(standin.kubeconfig(tmp_path / "kubeconfig"))
    cmd = agent_cmd("identity", hub, *identity_args(cluster, "--kubeconfig", kubeconfig))
    ident = _start_while_hub_is_down(hub, cmd, tmp_path / "identity.log")
    assert ident.returncode == 0, ident.stderr
    assert pki.is_issued_by(secret_identity(standin).pair.cert, hub_cluster_ca(hub))

    cmd = agent_cmd(
        "metadata", hub, "--identity", IDENTITY_SECRET, "--kubeconfig", kubeconfig, "--once", *FAST_RETRY
    )
    meta = _start_while_hub_is_down(hub, cmd, tmp_path / "metadata.log")
    assert meta.returncode == 0, meta.stderr
    assert cluster.get()["properties"]["connectivityStatus"] == "Connected"


def test_gives_up_after_the_retry_deadline(hub: RunningHub, tmp_path: Path) -> None:
    cluster = connect_cluster(hub, tmp_path)
    hub.stop()
    args = [
        "--resource-id",
        cluster.resource_id,
        "--onboarding-key",
        str(cluster.key_file),
        "--once",
        "--store",
        f"file:{tmp_path / 'id'}",
        "--retry-max-delay",
        "0.2",
        "--retry-deadline",
        "2",
    ]
    result = run_agent("identity", hub, *args)
    assert result.returncode == 3
    assert "gave up" in result.stderr


def test_a_wrong_onboarding_key_is_a_clear_permanent_error(hub: RunningHub, tmp_path: Path) -> None:
    cluster = connect_cluster(hub, tmp_path)
    store = ["--store", f"file:{tmp_path / 'id'}"]

    wrong = tmp_path / "wrong.pem"
    pki.write_private(wrong, pki.key_to_pem(pki.new_key()))
    started = time.monotonic()
    result = run_agent(
        "identity",
        hub,
        "--resource-id",
        cluster.resource_id,
        "--onboarding-key",
        str(wrong),
        "--once",
        *store,
    )
    assert result.returncode == 1
    assert "onboarding assertion rejected" in result.stderr
    assert time.monotonic() - started < 30  # refused at once, not retried

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    result = run_agent(
        "identity",
        hub,
        "--resource-id",
        cluster.resource_id,
        "--onboarding-key",
        str(garbage),
        "--once",
        *store,
    )
    assert result.returncode == 1 and "is not a PEM private key" in result.stderr

    result = run_agent(
        "identity",
        hub,
        "--resource-id",
        cluster.resource_id,
        "--onboarding-key",
        str(tmp_path / "missing.pem"),
        "--once",
        *store,
    )
    assert result.returncode == 1 and "cannot read onboarding key" in result.stderr
    assert not (tmp_path / "id" / "tls.crt").exists()


def test_an_untrusted_hub_certificate_is_not_retried(
    hub: RunningHub, standin: ApiServer, tmp_path: Path
) -> None:
    cluster = connect_cluster(hub, tmp_path)
    cmd = agent_cmd("identity", hub, *identity_args(cluster, "--store", f"file:{tmp_path / 'id'}"))
    cmd[cmd.index("--hub-ca") + 1] = str(standin.ca_file)
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=_env(), check=False
    )
    assert result.returncode == 1
    assert "check --hub-ca" in result.stderr


class ConnectProxy:
    """A minimal HTTP CONNECT egress proxy (what a datacenter's forward proxy does for HTTPS)."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        while (await reader.readline()).strip():
            pass
        method, target, _ = request.decode().split(" ", 2)
        if method != "CONNECT":
            writer.close()
            return
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(pipe(reader, up_writer))
            tg.create_task(pipe(up_reader, writer))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def test_identity_goes_through_the_egress_proxy(hub: RunningHub, tmp_path: Path) -> None:
    cluster = connect_cluster(hub, tmp_path)
    proxy = ConnectProxy()
    try:
        cmd = agent_cmd("identity", hub, *identity_args(cluster, "--store", f"file:{tmp_path / 'id'}"))
        env = {**_env(), "HTTPS_PROXY": proxy.url}
        result = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False
        )
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.targets and all(t == hub.url.removeprefix("https://") for t in proxy.targets)


# -- file store ------------------------------------------------------------------------------------------


def test_file_store(hub: RunningHub, standin: ApiServer, tmp_path: Path, clock: FakeClock) -> None:
    cluster = connect_cluster(hub, tmp_path)
    directory = tmp_path / "identity"
    ident = run_agent("identity", hub, *identity_args(cluster, "--store", f"file:{directory}"))
    assert ident.returncode == 0, ident.stderr
    assert stat.S_IMODE((directory / "tls.key").stat().st_mode) == 0o600
    first = asyncio.run(FileStore(directory).load())
    assert first is not None and first.ca == hub_cluster_ca(hub)
    assert pki.is_issued_by(first.pair.cert, first.ca)
    assert first.resource_id == cluster.resource_id

    kubeconfig = str(standin.kubeconfig(tmp_path / "kubeconfig"))
    meta = run_agent(
        "metadata", hub, "--identity", f"file:{directory}", "--kubeconfig", kubeconfig, "--once", *FAST_RETRY
    )
    assert meta.returncode == 0, meta.stderr
    assert cluster.get()["properties"]["connectivityStatus"] == "Connected"

    clock.advance(days=46)
    renewed = run_agent(
        "identity",
        hub,
        *identity_args(cluster, "--store", f"file:{directory}", "--now-offset-seconds", str(46 * DAY)),
    )
    assert renewed.returncode == 0, renewed.stderr
    second = asyncio.run(FileStore(directory).load())
    assert second is not None and second.not_after > first.not_after
    snapshots = [p.name for p in directory.iterdir() if p.name.startswith("..") and p.name != "..data"]
    assert len(snapshots) == 1  # the old snapshot is gone, the links point at the new one
    assert os.readlink(directory / "tls.crt") == "..data/tls.crt"


# -- units: retries, the hub client, vCPU sums, usage ------------------------------------------------------


def test_total_cores_sums_millicores() -> None:
    assert total_cores(["4", "3500m", "8"]) == 16
    assert total_cores(["500m", "500m"]) == 1
    assert total_cores([]) == 0
    with pytest.raises(ValueError):
        total_cores(["lots"])


def test_usage_sampler_reports_this_process() -> None:
    sampler = UsageSampler()
    sum(i * i for i in range(200_000))
    report = sampler.sample()
    assert report["name"] == "cluster-metadata-operator"
    assert report["cpuMillicores"] >= 0 and report["memoryBytes"] > 10 * 1024 * 1024


def test_backoff_is_full_jitter_with_a_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0)
    for failures, bound in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (30, 4.0)):
        pauses = [policy.pause(failures) for _ in range(200)]
        assert all(0 <= p <= bound for p in pauses)
        assert max(pauses) > bound / 2  # spread over the whole range, not a fixed step


async def test_client_retries_5xx_and_429_but_not_other_4xx() -> None:
    answers = [
        httpx.Response(503, json={"error": {"code": "Unavailable", "message": "busy"}}),
        httpx.Response(
            429, headers={"Retry-After": "0"}, json={"error": {"code": "TooMany", "message": "slow"}}
        ),
        httpx.Response(200, json={"connectivityStatus": "Connected"}),
        httpx.Response(400, json={"error": {"code": "InvalidRequestContent", "message": "field x is wrong"}}),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    ca = pki.create_ca("test")
    pair = pki.issue_keypair(ca, "c1", client=True)
    policy = RetryPolicy(base=0.01, cap=0.05, attempts=5)
    async with HubClient(
        "https://hub.test/", identity=pair, retry=policy, transport=httpx.MockTransport(handler)
    ) as client:
        assert (await client.heartbeat())["connectivityStatus"] == "Connected"
        assert len(seen) == 3
        tokens = {r.headers["authorization"] for r in seen}
        assert len(tokens) == 1  # one cached agent token across the attempts
        with pytest.raises(HubRefused) as exc:
            await client.put_metadata({"kubernetesVersion": "x"})
        assert len(seen) == 4  # not retried
        assert exc.value.status == 400 and "field x is wrong" in str(exc.value)


async def test_client_gives_up_after_its_attempts() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    policy = RetryPolicy(base=0.01, cap=0.02, attempts=3, deadline=None)
    async with HubClient("https://hub.test", retry=policy, transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(RetriesExhausted) as exc:
            await client.onboard(
                "/subscriptions/s/resourceGroups/r/providers/x/y/c", pki.new_key(), pki.new_key()
            )
    assert "failed 3 times" in str(exc.value)


async def test_each_onboarding_attempt_sends_a_fresh_assertion() -> None:
    bodies: list[bytes] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(502, text="bad gateway")

    policy = RetryPolicy(base=0.01, cap=0.02, attempts=2, deadline=None)
    async with HubClient("https://hub.test", retry=policy, transport=httpx.MockTransport(flaky)) as client:
        with pytest.raises(RetriesExhausted):
            await client.onboard("/subscriptions/s/x/c", pki.new_key(), pki.new_key())
    assert len(bodies) == 2 and bodies[0] != bodies[1]  # the hub refuses a replayed assertion


async def test_real_hub_refusals_name_the_problem(hub: RunningHub) -> None:
    async with HubClient(hub.url, Path(hub.ca), retry=RetryPolicy(attempts=2)) as client:
        with pytest.raises(HubRefused) as exc:
            await client.onboard(
                f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Kubernetes/connectedClusters/none",
                pki.new_key(),
                pki.new_key(),
            )
    assert exc.value.status == 404 and "none" in exc.value.message


def test_file_store_rejects_a_mismatched_pair(tmp_path: Path) -> None:
    ca = pki.create_ca("ca")
    pair = pki.issue_keypair(ca, "c1", client=True)
    FileStore(tmp_path)._write(StoredIdentity(pair, ca.cert, dt.datetime.now(dt.UTC)))
    (tmp_path / "..data" / "tls.key").write_bytes(pki.key_to_pem(pki.new_key()))
    with pytest.raises(StoreError, match="does not match"):
        asyncio.run(FileStore(tmp_path).load())


def test_agents_loop_until_sigterm(hub: RunningHub, standin: ApiServer, tmp_path: Path) -> None:
    cluster = connect_cluster(hub, tmp_path)
    kubeconfig = str(standin.kubeconfig(tmp_path / "kubeconfig"))
    ident_args = identity_args(cluster, "--kubeconfig", kubeconfig, "--interval", "1")
    ident_args.remove("--once")
    commands = {
        "identity": agent_cmd("identity", hub, *ident_args),
        "metadata": agent_cmd(
            "metadata",
            hub,
            "--identity",
            IDENTITY_SECRET,
            "--kubeconfig",
            kubeconfig,
            "--interval",
            "1",
            *FAST_RETRY,
        ),
    }
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    procs = {}
    try:
        for name, cmd in commands.items():
            with logs[name].open("w") as err:
                procs[name] = subprocess.Popen(
                    cmd, cwd=ROOT, stderr=err, stdout=subprocess.DEVNULL, env=_env()
                )
        deadline = time.monotonic() + 60
        while "hub reports" not in logs["metadata"].read_text():
            assert time.monotonic() < deadline, logs["metadata"].read_text()
            time.sleep(0.2)
        time.sleep(3)  # a few more passes of both loops
        for name, proc in procs.items():
            assert proc.poll() is None, logs[name].read_text()
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            assert proc.wait(timeout=30) == 0, logs[name].read_text()
    finally:
        for proc in procs.values():
            proc.kill()
    assert "agent stopped" in logs["identity"].read_text()
    # Neither agent repeats work every pass: one certificate, one metadata push, then heartbeats.
    assert logs["identity"].read_text().count("stored the identity certificate") == 1
    assert cluster.get()["properties"]["connectivityStatus"] == "Connected"
    assert (
        logs["metadata"].read_text().count("pushed cluster metadata") == 1
    )  # unchanged facts: heartbeats only


def test_an_agent_answers_its_probes_while_it_runs_and_not_after(hub: RunningHub, tmp_path: Path) -> None:
    """The chart's liveness and readiness probes (`--probes-listen`) reach the agent's own process."""
    cluster = connect_cluster(hub, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = agent_cmd(
        "identity",
        hub,
        "--resource-id",
        cluster.resource_id,
        "--onboarding-key",
        str(cluster.key_file),
        "--store",
        f"file:{tmp_path / 'identity'}",
        "--probes-listen",
        f"127.0.0.1:{port}",
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    proc.stderr.read() if proc.stderr else ""
                )
                time.sleep(0.1)
        assert (health.status_code, ready.status_code) == (200, 200)
        assert "python_info" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
