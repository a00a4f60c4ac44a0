"""Extensions on the hub: the catalogue, Arc's resource shape, 400s naming the field, protected
settings kept from users, versions from release trains, and deletion through the cluster."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hub import admin
from kubearc.cli import app
from tests.clusters import SUB, connected, onboarder, signed_in_cli
from tests.conftest import RunningHub

KIND = "providers/Microsoft.KubernetesConfiguration/extensions"
SECRET = "s3cr3t-password-for-the-extension"


def catalogue(
    hub: RunningHub, name: str = "demo", versions: tuple[str, ...] = ("1.0.0", "1.1.0", "2.0.0-rc.1:preview")
) -> None:
    async def go() -> None:
        async with hub.hub.sessions() as session:
            await admin.extension_type_set(
                session,
                name=name,
                repository="https://charts.example/demo",
                chart="demo",
                versions=list(versions),
                release_namespace="demo-system",
                default_values={"replicas": 1},
                ca_cert=None,
            )

    hub.run(go())


def owner(hub: RunningHub) -> str:
    oid = str(uuid.uuid4())
    hub.assign(oid, "Owner", f"/subscriptions/{SUB}")
    return hub.token(oid)


def body(**properties: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "extensionType": "Demo",
        "releaseTrain": "Stable",
        "autoUpgradeMinorVersion": True,
        "configurationSettings": {"image.tag": "v1", "replicas": "2"},
        "configurationProtectedSettings": {"auth.password": SECRET},
    }
    base.update(properties)
    return {"properties": base}


def test_an_extension_gets_its_trains_newest_version_and_its_secrets_reach_only_its_agent(
    hub: RunningHub,
) -> None:
    catalogue(hub)
    token = onboarder(hub)
    a, b = connected(hub, "ext-a", token), connected(hub, "ext-b", token)
    url = f"{a.resource_id}/{KIND}/demo"
    with hub.client(owner(hub)) as user:
        r = user.put(url, json=body())
        assert r.status_code == 201, r.text
        for response in (r, user.get(url), user.get(f"{a.resource_id}/{KIND}")):
            assert SECRET not in response.text
        props = user.get(url).json()["properties"]
        assert props["extensionType"] == "demo" and props["releaseTrain"] == "stable"
        assert props["targetVersion"] == "1.1.0" and props["provisioningState"] == "Creating"
        assert props["scope"] == {"cluster": {"releaseNamespace": "demo-system"}}
        assert props["configurationProtectedSettings"] == {"auth.password": None}
        types = user.get("/providers/Microsoft.KubernetesConfiguration/extensionTypes").json()["value"]
        assert [t["name"] for t in types] == ["demo"]
    with a.agent_client() as agent:
        [pulled] = agent.get("/agent/v1/extensions").json()["value"]
    assert pulled["chart"] == {
        "repository": "https://charts.example/demo",
        "name": "demo",
        "version": "1.1.0",
        "caCert": None,
    }
    assert pulled["releaseNamespace"] == "demo-system" and pulled["deleting"] is False
    assert pulled["configurationProtectedSettings"] == {"auth.password": SECRET}
    assert pulled["defaultValues"] == {"replicas": 1}
    with b.agent_client() as agent:
        assert agent.get("/agent/v1/extensions").json() == {"value": []}
    viewer = str(uuid.uuid4())
    hub.assign(viewer, "Reader", a.resource_id)
    with hub.client(hub.token(viewer)) as c:
        assert SECRET not in c.get(url).text
        assert c.put(url, json=body()).status_code == 403
        assert c.get("/agent/v1/extensions").status_code == 403


BAD = [
    ({"extensionType": "nope"}, "not in the hub's catalogue (it has: demo)"),
    ({"version": "1.0.0"}, "autoUpgradeMinorVersion must be false"),
    (
        {"version": "9.9.9", "autoUpgradeMinorVersion": False},
        "version '9.9.9' of demo is not in the catalogue",
    ),
    ({"autoUpgradeMinorVersion": False}, "give a version"),
    ({"releaseTrain": "nightly"}, "releaseTrain 'nightly' of demo has no versions"),
    ({"scope": {"cluster": {}, "namespace": {"targetNamespace": "x"}}}, "give exactly one of cluster"),
    ({"scope": {"namespace": {"targetNamespace": "Bad_NS"}}}, "scope.namespace.targetNamespace"),
    ({"configurationSettings": {"image tag": "v1"}}, "setting 'image tag'"),
    ({"configurationSettings": {"replicas": 2}}, "configurationSettings.replicas"),
]


@pytest.mark.parametrize(("change", "named"), BAD, ids=[n for _, n in BAD])
def test_a_bad_extension_is_a_400_naming_the_field(
    shared_hub: RunningHub, change: dict[str, Any], named: str
) -> None:
    hub = shared_hub
    catalogue(hub)
    cluster = connected(hub, f"ext-bad-{uuid.uuid4().hex[:6]}", onboarder(hub))
    with hub.client(owner(hub)) as user:
        r = user.put(f"{cluster.resource_id}/{KIND}/demo", json=body(**change))
        assert r.status_code == 400 and named in r.json()["error"]["message"], r.text
        assert user.get(f"{cluster.resource_id}/{KIND}").json() == {"value": []}


def status(
    generation: int, state: str, version: str | None = None, error: dict[str, str] | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "observedGeneration": generation,
        "provisioningState": state,
        "installedVersion": version,
        "statuses": [
            {"code": "Installing", "displayStatus": "Installing", "message": "helm upgrade --install"}
        ],
    }
    if error:
        doc["errorInfo"] = error
    return doc


def test_reports_upgrades_within_the_major_and_deletion_through_the_cluster(hub: RunningHub) -> None:
    catalogue(hub)
    cluster = connected(hub, "ext-life", onboarder(hub))
    url = f"{cluster.resource_id}/{KIND}/demo"
    with hub.client(owner(hub)) as user, cluster.agent_client() as agent:
        assert user.put(url, json=body()).status_code == 201
        done = agent.put("/agent/v1/extensions/demo/status", json=status(1, "Succeeded", "1.1.0"))
        assert done.json()["current"] is True
        props = user.get(url).json()["properties"]
        assert (props["provisioningState"], props["installedVersion"]) == ("Succeeded", "1.1.0")
        assert props["statuses"][0]["code"] == "Installing" and props["errorInfo"] is None

        # The catalogue gains 1.2.0 and 2.0.0: auto-upgrade takes 1.2.0 (same major), not 2.0.0.
        catalogue(hub, versions=("1.0.0", "1.1.0", "1.2.0", "2.0.0"))
        [pulled] = agent.get("/agent/v1/extensions").json()["value"]
        assert (pulled["chart"]["version"], pulled["generation"]) == ("1.2.0", 2)
        assert user.get(url).json()["properties"]["provisioningState"] == "Updating"
        failed = status(
            2, "Failed", "1.1.0", {"code": "UpgradeFailed", "message": "hook failed; rolled back to 1.1.0"}
        )
        agent.put("/agent/v1/extensions/demo/status", json=failed)
        props = user.get(url).json()["properties"]
        assert props["provisioningState"] == "Failed" and props["installedVersion"] == "1.1.0"
        assert props["errorInfo"] == {"code": "UpgradeFailed", "message": "hook failed; rolled back to 1.1.0"}

        # A pinned version; then the settings change and the protected one is kept (null on a PUT back).
        pinned = user.put(url, json=body(version="1.0.0", autoUpgradeMinorVersion=False))
        assert pinned.json()["properties"]["targetVersion"] == "1.0.0"
        shown = user.get(url).json()
        shown["properties"]["configurationSettings"]["replicas"] = "3"
        assert user.put(url, json=shown).status_code == 200
        [pulled] = agent.get("/agent/v1/extensions").json()["value"]
        assert pulled["configurationSettings"]["replicas"] == "3"
        assert pulled["configurationProtectedSettings"] == {"auth.password": SECRET}
        moved = user.put(url, json=body(scope={"namespace": {"targetNamespace": "elsewhere"}}))
        assert moved.status_code == 400 and "scope of an extension cannot change" in moved.text

        # Delete: Deleting until the extension-manager reports it uninstalled, then gone.
        gone = user.delete(url)
        assert gone.status_code == 202 and gone.json()["properties"]["provisioningState"] == "Deleting"
        [pulled] = agent.get("/agent/v1/extensions").json()["value"]
        assert pulled["deleting"] is True
        assert user.put(url, json=body()).status_code == 409
        generation = pulled["generation"]
        agent.put("/agent/v1/extensions/demo/status", json=status(generation, "Deleted"))
        assert user.get(url).status_code == 404
        assert agent.get("/agent/v1/extensions").json() == {"value": []}

        # --force forgets at once (a cluster that is gone).
        assert user.put(url, json=body()).status_code == 201
        assert user.delete(url, params={"force": "true"}).status_code == 200
        assert user.get(url).status_code == 404


@pytest.mark.sqlite_only
def test_the_catalogue_and_extensions_on_the_command_line(
    hub: RunningHub, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = tmp_path / "defaults.yaml"
    values.write_text("replicas: 1\nimage:\n  tag: stable\n")
    admin_cli = CliRunner()
    db = ["--database-url", database_url]
    added = admin_cli.invoke(
        app,
        [
            *[
                "admin",
                "extension-type",
                "set",
                "Demo",
                "--repository",
                "https://charts.example/demo",
                "--chart",
            ],
            *["demo", "--version", "1.0.0", "--version", "1.1.0", "--version", "2.0.0-rc.1:preview"],
            *["--release-namespace", "demo-system", "--values-file", str(values), *db],
        ],
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["versions"][2] == {"version": "2.0.0-rc.1", "releaseTrain": "preview"}
    bad = admin_cli.invoke(
        app,
        [
            "admin",
            "extension-type",
            "set",
            "x",
            "--repository",
            "ftp://x",
            "--chart",
            "x",
            "--version",
            "1",
            "--release-namespace",
            "x",
            *db,
        ],
    )
    assert bad.exit_code == 1 and "--repository 'ftp://x'" in bad.stderr and bad.stderr.count("\n") == 1

    cluster = connected(hub, "cli-ext", onboarder(hub))
    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "config"))
    cli = signed_in_cli(hub, tmp_path / "config", "jo@kubearc.test", "Owner", f"/subscriptions/{SUB}")
    where = ["-c", "cli-ext", "-g", "rg1", "-t", "connectedClusters"]
    types = cli.invoke(app, ["k8s-extension", "extension-types", "list"])
    assert "demo: demo from https://charts.example/demo; 1.0.0 (stable)" in types.stdout, types.output
    secret = tmp_path / "protected.yaml"
    secret.write_text(f"auth.password: {SECRET}\n")
    made = cli.invoke(
        app,
        [
            *["k8s-extension", "create", "-n", "demo", *where, "--extension-type", "demo"],
            *["--configuration-settings", "image.tag=v2", "--config-protected-file", str(secret)],
        ],
    )
    assert made.exit_code == 0, made.output
    assert SECRET not in made.output
    props = json.loads(made.stdout)["properties"]
    assert props["targetVersion"] == "1.1.0" and props["configurationSettings"] == {"image.tag": "v2"}
    pinned = cli.invoke(
        app, ["k8s-extension", "update", "-n", "demo", *where, "--version", "1.0.0", "-o", "table"]
    )
    assert "demo: Updating (demo -, target 1.0.0)" in pinned.stdout, pinned.output
    with cluster.agent_client() as agent:
        [pulled] = agent.get("/agent/v1/extensions").json()["value"]
    assert pulled["configurationProtectedSettings"] == {"auth.password": SECRET}  # kept by the update
    listed = cli.invoke(app, ["k8s-extension", "list", *where])
    assert "demo" in listed.stdout and "Updating" in listed.stdout
    wrong = cli.invoke(app, ["k8s-extension", "create", "-n", "x", *where, "--extension-type", "nope"])
    assert wrong.exit_code == 1 and "not in the hub's catalogue (it has: demo)" in wrong.output
    gone = cli.invoke(app, ["k8s-extension", "delete", "-n", "demo", *where, "--yes"])
    assert gone.exit_code == 0 and "deleting extension demo" in gone.stdout
    shown = cli.invoke(app, ["k8s-extension", "show", "-n", "demo", *where])
    assert json.loads(shown.stdout)["properties"]["provisioningState"] == "Deleting"
