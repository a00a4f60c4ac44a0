"""GitOps configurations: protected settings reach the cluster's own agents and no one else."""

from __future__ import annotations

import uuid

from tests.clusters import SUB, connected, onboarder
from tests.conftest import RunningHub

KIND = "providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations"
SECRET_KEY = "LS0tLS1CRUdJTiBPUEVOU1NIIFBSSVZBVEUgS0VZLS0tLS0K-very-secret"
SECRET_TOKEN = "ghp_exampletoken0123456789"


def test_protected_settings_only_for_the_clusters_agents(hub: RunningHub) -> None:
    token = onboarder(hub)
    a = connected(hub, "gitops-a", token)
    b = connected(hub, "gitops-b", token)
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", f"/subscriptions/{SUB}")
    body = {
        "properties": {
            "repositoryUrl": "git@github.com:example/fleet.git",
            "operatorNamespace": "flux-system",
            "operatorParams": "--git-readonly --git-path=clusters/a",
            "operatorScope": "cluster",
            "sshKnownHostsContents": "Z2l0aHViLmNvbSBzc2gtZWQyNTUxOQ==",
            "configurationProtectedSettings": {"sshPrivateKey": SECRET_KEY, "httpsKey": SECRET_TOKEN},
        }
    }
    with hub.client(hub.token(owner)) as c:
        r = c.put(f"{a.resource_id}/{KIND}/fleet", json=body)
        assert r.status_code == 201, r.text
        for response in (r, c.get(f"{a.resource_id}/{KIND}/fleet"), c.get(f"{a.resource_id}/{KIND}")):
            assert SECRET_KEY not in response.text and SECRET_TOKEN not in response.text
        shown = c.get(f"{a.resource_id}/{KIND}/fleet").json()["properties"]
        assert shown["configurationProtectedSettings"] == {"httpsKey": None, "sshPrivateKey": None}
        assert shown["repositoryUrl"] == "git@github.com:example/fleet.git"

    with a.agent_client() as c:
        pulled = c.get("/agent/v1/configurations").json()["value"]
    assert pulled[0]["name"] == "fleet"
    assert pulled[0]["configurationProtectedSettings"] == {
        "sshPrivateKey": SECRET_KEY,
        "httpsKey": SECRET_TOKEN,
    }
    with b.agent_client() as c:
        other = c.get("/agent/v1/configurations")
    assert other.json() == {"value": []}

    # Encrypted at rest: the database row does not hold the plaintext.
    async def raw() -> bytes:
        from sqlalchemy import select

        from hub.store.models import Configuration

        async with hub.hub.sessions() as session:
            return (await session.execute(select(Configuration.protected_settings))).scalar_one()

    stored = hub.run(raw())
    assert SECRET_KEY.encode() not in stored and SECRET_TOKEN.encode() not in stored

    # A user who may read the cluster (Viewer) cannot fetch secrets through the agent API either.
    viewer = str(uuid.uuid4())
    hub.assign(viewer, "Azure Arc Kubernetes Viewer", a.resource_id)
    with hub.client(hub.token(viewer)) as c:
        assert c.get("/agent/v1/configurations").status_code == 403
        assert c.get(f"{a.resource_id}/{KIND}/fleet").status_code == 403  # no configuration read right


def test_compliance_report_and_bad_settings(hub: RunningHub) -> None:
    token = onboarder(hub)
    a = connected(hub, "gitops-c", token)
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", a.resource_id)
    with hub.client(hub.token(owner)) as c:
        bad = c.put(
            f"{a.resource_id}/{KIND}/x",
            json={
                "properties": {"repositoryUrl": "https://g/x", "configurationProtectedSettings": {"pw": "1"}}
            },
        )
        assert bad.status_code == 400 and "unknown keys ['pw']" in bad.json()["error"]["message"]
        assert (
            c.put(f"{a.resource_id}/{KIND}/x", json={"properties": {"repositoryUrl": "ftp://x"}}).status_code
            == 400
        )
        ok = c.put(f"{a.resource_id}/{KIND}/x", json={"properties": {"repositoryUrl": "https://g/x"}})
        assert ok.status_code == 201
    with a.agent_client() as c:
        r = c.put("/agent/v1/configurations/x/status", json={"complianceState": "Installed", "message": "ok"})
        assert r.status_code == 200
        assert c.put("/agent/v1/configurations/x/status", json={"complianceState": "Nope"}).status_code == 400
        assert (
            c.put("/agent/v1/configurations/zz/status", json={"complianceState": "Installed"}).status_code
            == 404
        )
    with hub.client(hub.token(owner)) as c:
        state = c.get(f"{a.resource_id}/{KIND}/x").json()["properties"]["complianceStatus"]
        assert state["complianceState"] == "Installed"
        assert c.delete(f"{a.resource_id}/{KIND}/x").status_code == 200
        assert c.get(f"{a.resource_id}/{KIND}/x").status_code == 404
