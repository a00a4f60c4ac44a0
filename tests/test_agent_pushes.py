"""Agent pushes (metadata, usage, logs) and pulls (upgrade), and the cluster-connect credential."""

from __future__ import annotations

import base64
import uuid

import jwt

from foundation import pki
from tests.clusters import SUB, connected, onboarder
from tests.conftest import RunningHub


def test_metadata_then_cluster_user_credential(hub: RunningHub) -> None:
    token = onboarder(hub)
    cluster = connected(hub, "connect-me", token)
    user = str(uuid.uuid4())
    hub.assign(user, "Azure Arc Enabled Kubernetes Cluster User Role", cluster.resource_id)
    with hub.client(hub.token(user)) as c:
        r = c.post(f"{cluster.resource_id}/listClusterUserCredential")
    assert r.status_code == 409 and r.json()["error"]["code"] == "ClusterNotReady"

    apiserver_ca = pki.create_ca("apiserver CA")
    with cluster.agent_client() as c:
        r = c.put(
            "/agent/v1/metadata",
            json={
                "kubernetesVersion": "v1.31.4",
                "totalNodeCount": 3,
                "totalCoreCount": 24,
                "agentVersion": "0.0.9",
                "clusterCertificateAuthority": apiserver_ca.cert_pem.decode(),
                "apiserverServerName": "kubernetes.default.svc",
            },
        )
    assert r.status_code == 200 and r.json()["connectivityStatus"] == "Connected"

    with hub.client(hub.token(user)) as c:
        r = c.post(f"{cluster.resource_id}/listClusterUserCredential")
    assert r.status_code == 200, r.text
    cred = r.json()
    assert base64.b64decode(cred["clusterConnect"]["certificateAuthorityData"]) == apiserver_ca.cert_pem
    assert cred["clusterConnect"]["tlsServerName"] == "kubernetes.default.svc"
    relay = cred["hybridConnectionConfig"]
    assert relay["relay"].startswith("wss://")
    claims = jwt.decode(relay["token"], options={"verify_signature": False})
    assert claims["sub"] == user and claims["cluster"] == cluster.resource_id.lower()
    assert claims["aud"] == "kubearc-relay" and claims["exp"] == relay["expirationTime"]
    assert claims["exp"] - claims["iat"] == 15 * 60

    # A Viewer of the cluster (data actions only) cannot open cluster connect.
    viewer = str(uuid.uuid4())
    hub.assign(viewer, "Azure Arc Kubernetes Viewer", cluster.resource_id)
    with hub.client(hub.token(viewer)) as c:
        r = c.post(f"{cluster.resource_id}/listClusterUserCredential")
    assert r.status_code == 403 and "listClusterUserCredential/action" in r.json()["error"]["message"]

    with hub.client(token) as c:
        props = c.get(cluster.resource_id).json()["properties"]
    assert (props["kubernetesVersion"], props["totalNodeCount"], props["totalCoreCount"]) == (
        "v1.31.4",
        3,
        24,
    )
    assert props["agentVersion"] == "0.0.9"


def test_upgrade_availability_follows_agent_version(start_hub: object) -> None:
    hub: RunningHub = start_hub(latest_agent_version="1.2.0")  # type: ignore[operator]
    token = onboarder(hub)
    cluster = connected(hub, "upgrade-me", token)
    with cluster.agent_client() as c:
        c.put("/agent/v1/metadata", json={"agentVersion": "1.1.9"})
        up = c.get("/agent/v1/upgrade").json()
        assert up == {
            "currentVersion": "1.1.9",
            "latestVersion": "1.2.0",
            "upgradeAvailable": True,
            "autoUpgrade": True,
        }
        c.put("/agent/v1/metadata", json={"agentVersion": "1.2.0"})
        assert c.get("/agent/v1/upgrade").json()["upgradeAvailable"] is False
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", f"/subscriptions/{SUB}")
    with hub.client(hub.token(owner)) as c:
        r = c.patch(cluster.resource_id, json={"properties": {"autoUpgrade": False}})
        assert r.status_code == 200 and r.json()["properties"]["autoUpgrade"] is False
        assert c.patch(cluster.resource_id, json={"properties": {"distribution": "x"}}).status_code == 400
    with cluster.agent_client() as c:
        assert c.get("/agent/v1/upgrade").json()["autoUpgrade"] is False


def test_usage_and_logs_are_stored_for_the_callers_cluster(hub: RunningHub) -> None:
    token = onboarder(hub)
    a = connected(hub, "usage-a", token)
    with a.agent_client() as c:
        r = c.put(
            "/agent/v1/usage",
            json={
                "agents": [
                    {"name": "clusterconnect-agent", "cpuMillicores": 120, "memoryBytes": 64 << 20},
                    {"name": "metadata", "cpuMillicores": 5, "memoryBytes": 30 << 20},
                ]
            },
        )
        assert r.json() == {"accepted": 2}
        r = c.put(
            "/agent/v1/usage",
            json={"agents": [{"name": "metadata", "cpuMillicores": 7, "memoryBytes": 31 << 20}]},
        )
        assert r.status_code == 200
        r = c.post(
            "/agent/v1/logs",
            json={
                "entries": [
                    {
                        "agent": "metadata",
                        "level": "info",
                        "message": "pushed",
                        # recent: lines older than the retention (7 days) are dropped at once
                        "timestamp": hub.config.clock().isoformat(),
                    },
                    {"agent": "metadata", "level": "error", "message": "apiserver timeout"},
                ]
            },
        )
        assert r.json() == {"accepted": 2}

    async def stored() -> tuple[list[tuple[str, int]], list[str]]:
        from sqlalchemy import select

        from hub.store.models import AgentLog, AgentUsage

        async with hub.hub.sessions() as s:
            usage = (
                await s.execute(
                    select(AgentUsage.agent, AgentUsage.cpu_millicores).order_by(AgentUsage.agent)
                )
            ).all()
            logs = (await s.execute(select(AgentLog.message).order_by(AgentLog.id))).scalars().all()
        return [tuple(u) for u in usage], list(logs)  # type: ignore[misc]

    usage, logs = hub.run(stored())
    assert usage == [("clusterconnect-agent", 120), ("metadata", 7)]
    assert logs == ["pushed", "apiserver timeout"]
