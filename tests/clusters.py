"""Test helpers: connect a cluster to a running hub the way `kubearc connect` and the agents do."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from typer.testing import CliRunner

from foundation import pki, tokens
from hub import directory
from hub.resources import cluster_id
from kubearc.cli import app
from tests.conftest import RunningHub

SUB = "00000000-0000-0000-0000-000000000001"


@dataclass
class ConnectedCluster:
    hub: RunningHub
    resource_id: str
    onboarding_key: pki.PrivateKey
    identity: pki.KeyPair | None = None

    def onboard(self) -> httpx.Response:
        """Prove the onboarding key and get an identity certificate."""
        key = pki.new_key()
        assertion = tokens.make_onboarding_assertion(self.onboarding_key, self.resource_id, self.hub.url)
        with self.hub.client() as c:
            r = c.post(
                "/agent/v1/identity/certificate",
                json={
                    "resourceId": self.resource_id,
                    "assertion": assertion,
                    "csr": pki.make_csr(key, "agent").decode(),
                },
            )
        if r.status_code == 200:
            self.identity = pki.KeyPair(key, pki.load_cert(r.json()["certificate"].encode()))
        return r

    def renew(self) -> httpx.Response:
        key = pki.new_key()
        with self.agent_client() as c:
            r = c.post("/agent/v1/identity/renew", json={"csr": pki.make_csr(key, "agent").decode()})
        if r.status_code == 200:
            self.identity = pki.KeyPair(key, pki.load_cert(r.json()["certificate"].encode()))
        return r

    def agent_client(self) -> httpx.Client:
        assert self.identity is not None, "onboard first"
        return self.hub.client(tokens.make_agent_token(self.identity, self.hub.url))

    def heartbeat(self) -> httpx.Response:
        with self.agent_client() as c:
            return c.post("/agent/v1/heartbeat", json={})


def create_cluster(
    hub: RunningHub, name: str, token: str, rg: str = "rg1", **properties: object
) -> tuple[ConnectedCluster, httpx.Response]:
    key = pki.new_key()
    rid = cluster_id(SUB, rg, name)
    body = {
        "location": "local",
        "properties": {
            "agentPublicKeyCertificate": pki.public_key_der_b64(key.public_key()),
            "distribution": "k3s",
            "infrastructure": "vsphere",
            **properties,
        },
    }
    with hub.client(token) as c:
        r = c.put(rid, params={"api-version": "2024-01-01"}, json=body)
    return ConnectedCluster(hub, rid, key), r


def onboarder(hub: RunningHub) -> str:
    """A user allowed to create clusters in the test subscription; returns its token."""
    oid = str(uuid.uuid4())
    hub.assign(oid, "Kubernetes Cluster - Azure Arc Onboarding", f"/subscriptions/{SUB}")
    return hub.token(oid)


def connected(hub: RunningHub, name: str, token: str | None = None) -> ConnectedCluster:
    cluster, r = create_cluster(hub, name, token or onboarder(hub))
    assert r.status_code == 201, r.text
    assert cluster.onboard().status_code == 200
    return cluster


def signed_in_cli(
    hub: RunningHub,
    config_dir: Path,
    upn: str,
    role: str,
    scope: str,
    password: str = "correct horse battery",
) -> CliRunner:
    """The CLI signed in, as `kubearc login` does, as a new directory user holding `role` at `scope`.

    The caller points KUBEARC_CONFIG_DIR at `config_dir` (monkeypatch) for the CLI's later calls.
    """

    async def setup() -> str:
        async with hub.hub.sessions() as s:
            return (await directory.create_user(s, upn, password, upn.split("@")[0])).id

    hub.assign(hub.run(setup()), role, scope)
    runner = CliRunner(env={"KUBEARC_CONFIG_DIR": str(config_dir), "KUBEARC_SUBSCRIPTION": SUB})
    signed = runner.invoke(
        app,
        ["login", "--hub", hub.url, "--ca-file", hub.ca, "-u", upn, "--password-stdin"],
        input=password + "\n",
    )
    assert signed.exit_code == 0, signed.output
    return runner
