"""Flux configurations on the hub: Arc's shape, 400s naming the field, protected settings kept from
users, and the config-agent's reports turning into compliance for the right generation."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from tests.clusters import SUB, connected, onboarder
from tests.conftest import RunningHub

KIND = "providers/Microsoft.KubernetesConfiguration/fluxConfigurations"
SSH_KEY = base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY-----\nvery-secret\n").decode()
HTTPS_KEY = base64.b64encode(b"ghp_flux-token-0123456789").decode()


def body(**properties: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "scope": "cluster",
        "namespace": "flux-system",
        "sourceKind": "GitRepository",
        "gitRepository": {
            "url": "ssh://git@github.com/example/fleet.git",
            "repositoryRef": {"branch": "main"},
            "sshKnownHosts": base64.b64encode(b"github.com ssh-ed25519 AAAA").decode(),
        },
        "kustomizations": {
            "infra": {"path": "./infrastructure", "prune": True},
            "apps": {"path": "./apps", "dependsOn": ["infra"]},
        },
        "configurationProtectedSettings": {"sshPrivateKey": SSH_KEY},
    }
    base.update(properties)
    return {"properties": base}


def owner_of(hub: RunningHub) -> str:
    owner = str(uuid.uuid4())
    hub.assign(owner, "Owner", f"/subscriptions/{SUB}")
    return hub.token(owner)


def test_a_flux_configuration_reaches_only_its_clusters_agents_with_its_secrets(hub: RunningHub) -> None:
    token = onboarder(hub)
    a, b = connected(hub, "flux-a", token), connected(hub, "flux-b", token)
    with hub.client(owner_of(hub)) as c:
        r = c.put(f"{a.resource_id}/{KIND}/fleet", json=body())
        assert r.status_code == 201, r.text
        shown = c.get(f"{a.resource_id}/{KIND}/fleet")
        listed = c.get(f"{a.resource_id}/{KIND}")
        for response in (r, shown, listed):
            assert SSH_KEY not in response.text
        props = shown.json()["properties"]
        assert props["configurationProtectedSettings"] == {"sshPrivateKey": None}
        assert props["provisioningState"] == "Creating" and props["complianceState"] == "Pending"
        assert props["kustomizations"]["infra"] == {
            "path": "./infrastructure",
            "dependsOn": [],
            "timeoutInSeconds": 600,
            "syncIntervalInSeconds": 600,
            "prune": True,
            "force": False,
            "wait": True,
        }
        assert props["gitRepository"]["repositoryRef"] == {"branch": "main"}
        assert [item["name"] for item in listed.json()["value"]] == ["fleet"]
        assert shown.json()["type"] == "Microsoft.KubernetesConfiguration/fluxConfigurations"

    with a.agent_client() as c:
        pulled = c.get("/agent/v1/fluxConfigurations").json()["value"]
    assert [(p["name"], p["generation"]) for p in pulled] == [("fleet", 1)]
    assert pulled[0]["configurationProtectedSettings"] == {"sshPrivateKey": SSH_KEY}
    assert pulled[0]["kustomizations"]["apps"]["dependsOn"] == ["infra"]
    with b.agent_client() as c:
        assert c.get("/agent/v1/fluxConfigurations").json() == {"value": []}

    async def stored() -> bytes:
        from sqlalchemy import select

        from hub.store.models import FluxConfiguration

        async with hub.hub.sessions() as session:
            return (await session.execute(select(FluxConfiguration.protected_settings))).scalar_one()

    raw = hub.run(stored())
    assert SSH_KEY.encode() not in raw and b"very-secret" not in raw

    viewer = str(uuid.uuid4())
    hub.assign(viewer, "Azure Arc Kubernetes Viewer", a.resource_id)
    with hub.client(hub.token(viewer)) as c:
        assert c.get("/agent/v1/fluxConfigurations").status_code == 403
        assert c.get(f"{a.resource_id}/{KIND}/fleet").status_code == 403
    reader = str(uuid.uuid4())
    hub.assign(reader, "Reader", a.resource_id)
    with hub.client(hub.token(reader)) as c:
        assert SSH_KEY not in c.get(f"{a.resource_id}/{KIND}/fleet").text
        assert c.put(f"{a.resource_id}/{KIND}/other", json=body()).status_code == 403


BAD_BODIES = [
    ({"gitRepository": None}, "needs gitRepository"),
    (
        {"gitRepository": {"url": "https://x/y.git", "repositoryRef": {"branch": "a", "tag": "v1"}}},
        "gitRepository.repositoryRef",
    ),
    ({"gitRepository": {"url": "ftp://x/y", "repositoryRef": {"branch": "a"}}}, "gitRepository.url"),
    ({"namespace": "Flux_System"}, "namespace"),
    ({"scope": "everywhere"}, "scope"),
    ({"sourceKind": "AzureBlob"}, "sourceKind"),
    ({"configurationProtectedSettings": {"password": "eA=="}}, "unknown keys ['password']"),
    ({"configurationProtectedSettings": {"sshPrivateKey": "not base64!"}}, "sshPrivateKey: not base64"),
    ({"kustomizations": {"apps": {"dependsOn": ["infra"]}}}, "kustomizations.apps.dependsOn"),
    (
        {"kustomizations": {"a": {"dependsOn": ["b"]}, "b": {"dependsOn": ["a"]}}},
        "dependsOn makes a cycle",
    ),
    ({"kustomizations": {"infra": {"prune": "sometimes"}}}, "kustomizations.infra.prune"),
    ({"kustomizations": {"infra": {"pathh": "./x"}}}, "kustomizations.infra.pathh"),
    ({"kustomizations": {"Infra": {}}}, "invalid name 'Infra'"),
    (
        {
            "gitRepository": {
                "url": "https://x/y.git",
                "repositoryRef": {"branch": "a"},
                "syncIntervalInSeconds": 0,
            }
        },
        "syncIntervalInSeconds",
    ),
]


@pytest.mark.parametrize(("change", "named"), BAD_BODIES, ids=[n for _, n in BAD_BODIES])
def test_a_bad_flux_body_is_a_400_naming_the_field_and_stores_nothing(
    shared_hub: RunningHub, change: dict[str, Any], named: str
) -> None:
    hub = shared_hub
    cluster = connected(hub, f"flux-bad-{uuid.uuid4().hex[:6]}", onboarder(hub))
    with hub.client(owner_of(hub)) as c:
        r = c.put(f"{cluster.resource_id}/{KIND}/fleet", json=body(**change))
        assert r.status_code == 400, r.text
        assert named in r.json()["error"]["message"], r.text
        assert c.get(f"{cluster.resource_id}/{KIND}").json() == {"value": []}


def test_a_bad_name_or_a_moved_namespace_is_refused(hub: RunningHub) -> None:
    cluster = connected(hub, "flux-names", onboarder(hub))
    with hub.client(owner_of(hub)) as c:
        r = c.put(f"{cluster.resource_id}/{KIND}/Fleet_1", json=body())
        assert r.status_code == 400 and "invalid flux configuration name" in r.text
        assert c.put(f"{cluster.resource_id}/{KIND}/fleet", json=body()).status_code == 201
        moved = c.put(f"{cluster.resource_id}/{KIND}/fleet", json=body(namespace="elsewhere"))
        assert moved.status_code == 400 and "cannot change" in moved.text
        assert c.get(f"{cluster.resource_id}/{KIND}/fleet").json()["properties"]["namespace"] == "flux-system"


def report(generation: int, state: str = "Compliant", **extra: Any) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "provisioningState": "Succeeded",
        "complianceState": state,
        "statuses": [
            {
                "kind": "GitRepository",
                "name": "fleet",
                "namespace": "flux-system",
                "complianceState": state,
                "statusConditions": [
                    {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "ok"}
                ],
            }
        ],
        **extra,
    }


def test_the_agents_report_sets_compliance_only_for_the_generation_it_applied(hub: RunningHub) -> None:
    cluster = connected(hub, "flux-status", onboarder(hub))
    url = f"{cluster.resource_id}/{KIND}/fleet"
    with hub.client(owner_of(hub)) as user, cluster.agent_client() as agent:
        assert user.put(url, json=body()).status_code == 201
        r = agent.put(
            "/agent/v1/fluxConfigurations/fleet/status", json=report(1, sourceSyncedCommitId="main@sha1:abc")
        )
        assert r.status_code == 200 and r.json()["current"] is True, r.text
        props = user.get(url).json()["properties"]
        assert (props["provisioningState"], props["complianceState"]) == ("Succeeded", "Compliant")
        assert props["sourceSyncedCommitId"] == "main@sha1:abc" and props["statusUpdatedAt"]
        assert props["statuses"][0]["statusConditions"][0]["reason"] == "Succeeded"

        # A change is Updating until the agent reports the new generation; an older report does not end it.
        assert user.put(url, json=body(suspend=False, kustomizations={})).status_code == 200
        assert user.get(url).json()["properties"]["provisioningState"] == "Updating"
        stale = agent.put("/agent/v1/fluxConfigurations/fleet/status", json=report(1))
        assert stale.json()["current"] is False
        assert user.get(url).json()["properties"]["provisioningState"] == "Updating"
        failing = report(2, "Non-Compliant", errorMessage="kustomize build failed: apps not found")
        agent.put("/agent/v1/fluxConfigurations/fleet/status", json=failing)
        props = user.get(url).json()["properties"]
        assert (props["provisioningState"], props["complianceState"]) == ("Succeeded", "Non-Compliant")
        assert props["errorMessage"] == "kustomize build failed: apps not found"

        # Reports from the future, with unknown states, or for configurations that do not exist are refused.
        assert agent.put("/agent/v1/fluxConfigurations/fleet/status", json=report(9)).status_code == 400
        assert (
            agent.put("/agent/v1/fluxConfigurations/fleet/status", json=report(2, "Fine")).status_code == 400
        )
        assert agent.put("/agent/v1/fluxConfigurations/nope/status", json=report(1)).status_code == 404
        # Users cannot report for the agent.
        assert user.put("/agent/v1/fluxConfigurations/fleet/status", json=report(2)).status_code == 403

        assert user.delete(url).status_code == 200
        assert agent.get("/agent/v1/fluxConfigurations").json() == {"value": []}
        assert user.get(url).status_code == 404


def test_a_suspended_configuration_says_so_until_resumed(hub: RunningHub) -> None:
    cluster = connected(hub, "flux-suspend", onboarder(hub))
    url = f"{cluster.resource_id}/{KIND}/fleet"
    with hub.client(owner_of(hub)) as user:
        assert user.put(url, json=body(suspend=True)).json()["properties"]["complianceState"] == "Suspended"
        assert user.put(url, json=body(suspend=False)).json()["properties"]["complianceState"] == "Pending"


def test_what_a_get_returns_can_be_put_back_and_keeps_the_secrets(hub: RunningHub) -> None:
    cluster = connected(hub, "flux-roundtrip", onboarder(hub))
    url = f"{cluster.resource_id}/{KIND}/fleet"
    with hub.client(owner_of(hub)) as user, cluster.agent_client() as agent:
        assert user.put(url, json=body()).status_code == 201
        shown = user.get(url).json()
        shown["properties"]["gitRepository"]["repositoryRef"] = {"tag": "v1.2.0"}
        r = user.put(url, json=shown)
        assert r.status_code == 200, r.text
        pulled = agent.get("/agent/v1/fluxConfigurations").json()["value"][0]
        assert pulled["configurationProtectedSettings"] == {"sshPrivateKey": SSH_KEY}
        assert pulled["gitRepository"]["repositoryRef"] == {"tag": "v1.2.0"}
        # Dropping the key drops the secret; a null with nothing stored is a 400.
        assert user.put(url, json=body(configurationProtectedSettings={})).status_code == 200
        assert (
            agent.get("/agent/v1/fluxConfigurations").json()["value"][0]["configurationProtectedSettings"]
            == {}
        )
        r = user.put(url, json=body(configurationProtectedSettings={"sshPrivateKey": None}))
        assert r.status_code == 400 and "configurationProtectedSettings.sshPrivateKey" in r.text
