"""Hub replicas on one PostgreSQL: one schema migration, one serving CA, one API behind a load balancer.

Each replica is a real `kubearc hub` process with its own state directory; what they share
is the database and the encryption key (`$KUBEARC_HUB_ENCRYPTION_KEY`), as in a deployment.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from foundation import pki
from hub.config import HubConfig
from hub.context import open_hub
from hub.secrets import ENV_KEY
from hub.server import TlsFiles, ensure_tls
from hub.store import db
from tests.clusters import connected
from tests.conftest import database
from tests.hub_processes import (
    External,
    eventually,
    free_port,
    heartbeating_agents,
    last_answers_are_stored,
    owner_token,
    start_hub,
    wait_ready,
)
from tests.load_balancer import load_balancer

pytestmark = pytest.mark.postgres


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    with database("postgres", tmp_path) as url:
        yield url


@pytest.fixture
def shared_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encryption key every replica is given (a Secret in the chart), not one replica's file."""
    monkeypatch.setenv(ENV_KEY, Fernet.generate_key().decode())


def test_replicas_starting_at_once_on_an_empty_database_migrate_it_once(postgres: str) -> None:
    async def start_together() -> list[str]:
        engines = [db.create_engine(postgres) for _ in range(4)]
        try:
            await asyncio.wait_for(asyncio.gather(*(db.migrate(engine) for engine in engines)), 60)
            async with engines[0].connect() as conn:
                rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
                return [row[0] for row in rows]
        finally:
            for engine in engines:
                await engine.dispose()

    versions = asyncio.run(start_together())
    assert len(versions) == 1, versions


def _replicas(tmp_path: Path, count: int) -> list[tuple[Path, int]]:
    """Each replica's state directory and API port."""
    return [(tmp_path / f"replica-{i}", free_port()) for i in range(count)]


def _leaf_key(state: Path) -> bytes:
    key = pki.load_private_key((state / "tls" / "tls.key").read_bytes())
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki)


def test_every_replica_serves_a_certificate_that_one_ca_file_verifies(
    tmp_path: Path, postgres: str, shared_key: None
) -> None:
    replicas = _replicas(tmp_path, 2)
    procs = [start_hub(state, port, postgres) for state, port in replicas]
    try:
        for (state, port), proc in zip(replicas, procs, strict=True):
            wait_ready(f"https://localhost:{port}", state / "tls" / "ca.crt", proc)
        first_ca = replicas[0][0] / "tls" / "ca.crt"
        trust = ssl.create_default_context(cafile=str(first_ca))
        for state, port in replicas:
            assert httpx.get(f"https://localhost:{port}/healthz", verify=trust).is_success
            assert (state / "tls" / "ca.crt").read_bytes() == first_ca.read_bytes()
            assert not (state / "tls" / "ca.key").exists(), "the CA key stays in the database"
        assert _leaf_key(replicas[0][0]) != _leaf_key(replicas[1][0]), "each replica has its own key"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def _serving_tls(state: Path, database_url: str) -> TlsFiles:
    """What a replica with state directory `state` serves with, as `kubearc hub` makes it on start."""

    async def run() -> TlsFiles:
        config = HubConfig(state_dir=state, port=free_port(), database_url=database_url)
        hub = await open_hub(config)
        try:
            return await ensure_tls(config, hub)
        finally:
            await hub.close()

    return asyncio.run(run())


def test_a_hub_that_made_its_ca_before_replicas_keeps_serving_under_it(tmp_path: Path, postgres: str) -> None:
    """Clients were given `<state-dir>/tls/ca.crt` by a hub from before replicas: it stays the CA."""
    state = tmp_path / "state"
    legacy_ca, _, _ = pki.ensure_serving_pair(state / "tls", ["localhost"])
    given = legacy_ca.read_bytes()
    tls = _serving_tls(state, postgres)
    assert tls.ca is not None and tls.ca.read_bytes() == given
    assert pki.is_issued_by(pki.load_cert(tls.cert.read_bytes()), pki.load_cert(given))
    # A second replica with an empty state directory (and the first one's encryption key, which
    # the first made in its state directory) gets the same CA from the database.
    other = tmp_path / "other"
    other.mkdir()
    (other / "encryption.key").write_bytes((state / "encryption.key").read_bytes())
    second = _serving_tls(other, postgres)
    assert second.ca is not None and second.ca.read_bytes() == given


def test_two_replicas_behind_a_load_balancer_serve_one_api_and_outlive_one_of_them(
    tmp_path: Path, postgres: str, shared_key: None
) -> None:
    replicas = _replicas(tmp_path, 2)
    with load_balancer(tmp_path / "lb", [port for _, port in replicas]) as lb_port:
        url = f"https://localhost:{lb_port}"
        token = owner_token(replicas[0][0], replicas[0][1], postgres, public_url=url)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            _start(replicas, postgres, url, procs)
            api = External(url, str(replicas[0][0] / "tls" / "ca.crt"))
            # Round robin: onboarding and heartbeats alternate between the replicas, so a cluster
            # made on one is found, authenticated and updated on the other.
            clusters = [connected(api, f"replicated-{i}", token) for i in range(4)]  # type: ignore[arg-type]
            acked: dict[str, str] = {}
            for _ in range(2):
                for cluster in clusters:
                    r = cluster.heartbeat()
                    assert r.status_code == 200, r.text
                    acked[cluster.resource_id] = r.json()["lastConnectivityTime"]

            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            for cluster in clusters:  # at once: the balancer sends a refused connection on
                r = cluster.heartbeat()
                assert r.status_code == 200, r.text
                acked[cluster.resource_id] = r.json()["lastConnectivityTime"]
            with api.client(token) as client:
                for cluster in clusters:
                    props = client.get(cluster.resource_id).json()["properties"]
                    assert props["connectivityStatus"] == "Connected"
                    assert props["lastConnectivityTime"].replace("Z", "+00:00") == acked[cluster.resource_id]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(10)


def test_a_replica_killed_under_heartbeat_load_loses_no_accepted_heartbeat(
    tmp_path: Path, postgres: str, shared_key: None
) -> None:
    replicas = _replicas(tmp_path, 2)
    with load_balancer(tmp_path / "lb", [port for _, port in replicas]) as lb_port:
        url = f"https://localhost:{lb_port}"
        ca = str(replicas[0][0] / "tls" / "ca.crt")
        token = owner_token(replicas[0][0], replicas[0][1], postgres, public_url=url)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            _start(replicas, postgres, url, procs)
            api = External(url, ca)
            clusters = [connected(api, f"loaded-{i}", token) for i in range(6)]  # type: ignore[arg-type]
            # One agent per cluster, each on its own kept-alive connection: round robin puts half
            # of them on the replica that is killed.
            with heartbeating_agents(clusters, ca) as beats:
                eventually(lambda: all(len(b.accepted) >= 5 for b in beats.values()), "heartbeats on both")

                assert heartbeat_batches(replicas[0][1], ca) > 0, "no agent was on the replica to be killed"
                procs[0].send_signal(signal.SIGKILL)
                procs[0].wait(10)
                before = {rid: len(b.accepted) for rid, b in beats.items()}
                eventually(
                    lambda: all(len(b.accepted) >= before[rid] + 5 for rid, b in beats.items()),
                    "every agent accepted again by the replica left",
                )
            for b in beats.values():  # a cut in-flight request is a transport error, retried; never a 5xx
                assert not [code for code in b.codes if isinstance(code, int) and code >= 500], b.codes
            with api.client(token) as client:
                last_answers_are_stored(client, clusters, beats)  # type: ignore[arg-type]
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(10)


def _start(
    replicas: list[tuple[Path, int]], postgres: str, url: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Start every replica behind `url` (each appended to `procs` at once, so it is always stopped)."""
    for state, port in replicas:
        procs.append(start_hub(state, port, postgres, public_url=url))
        wait_ready(f"https://localhost:{port}", state / "tls" / "ca.crt", procs[-1])


def heartbeat_batches(port: int, ca: str) -> float:
    """Heartbeat batches one replica wrote, from its own /metrics (not through the balancer)."""
    text = httpx.get(f"https://localhost:{port}/metrics", verify=ssl.create_default_context(cafile=ca)).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kubearc_hub_heartbeat_batch_size_count":
                return float(sample.value)
    return 0.0
