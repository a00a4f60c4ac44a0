"""`kubearc agent extensions` with the real helm against the stand-in, a chart repository over HTTPS
and a real hub: install, settings, an auto-upgrade whose hook fails and is rolled back with the
reason, a pinned downgrade, a restart that redoes nothing, and uninstall on delete."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub import admin
from tests.agent_site import AgentSite, exists, until
from tests.apiserver import ApiServer
from tests.conftest import RunningHub
from tests.helm_repo import HelmRepo, add_version, helm, serve

pytestmark = pytest.mark.sqlite_only
KIND = "providers/Microsoft.KubernetesConfiguration/extensions"
PASSWORD = "extension-secret-7c1d"


class Site(AgentSite):
    repo: HelmRepo

    def catalogue(self, *versions: str) -> None:
        async def go() -> None:
            async with self.hub.hub.sessions() as session:
                await admin.extension_type_set(
                    session,
                    name="demo",
                    repository=self.repo.url,
                    chart="demo",
                    versions=list(versions),
                    release_namespace="demo-system",
                    default_values={"replicas": 1},
                    ca_cert=self.repo.ca_pem,
                )

        self.hub.run(go())

    @property
    def url(self) -> str:
        return f"{self.cluster.resource_id}/{KIND}/demo"

    def props(self) -> dict[str, Any]:
        return self.user.get(self.url).json()["properties"]

    def settled(self, state: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            p = self.props()
            return p if p["provisioningState"] == state else None

        return until(f"{state}\n{self.log()}", probe, timeout=90)

    def configmap(self) -> dict[str, str]:
        return dict(self.core.read_namespaced_config_map("demo-settings", "demo-system").data)

    def history(self) -> list[dict[str, Any]]:
        done = subprocess.run(
            [
                helm(),
                "history",
                "demo",
                "-n",
                "demo-system",
                "-o",
                "json",
                "--kubeconfig",
                str(self.kubeconfig),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(done.stdout) if done.returncode == 0 else []


@pytest.fixture
def site(hub: RunningHub, tmp_path: Path) -> Iterator[Site]:
    with ApiServer() as api, serve(tmp_path / "charts", {"1.0.0": False, "1.1.0": False}) as repo:
        s = Site(hub, api, tmp_path, "ext")
        s.repo = repo
        try:
            yield s
        finally:
            s.close()


def test_an_extension_is_installed_upgraded_rolled_back_with_the_reason_and_uninstalled(site: Site) -> None:
    s = site
    s.catalogue("1.0.0", "1.1.0")
    body = {
        "properties": {
            "extensionType": "demo",
            "autoUpgradeMinorVersion": True,
            "configurationSettings": {"image.tag": "v2", "replicas": "2"},
            "configurationProtectedSettings": {"auth.password": PASSWORD},
        }
    }
    assert s.user.put(s.url, json=body).status_code == 201
    s.start("extensions", "--interval", "0.5", "--step-timeout", "60")

    props = s.settled("Succeeded")
    assert props["installedVersion"] == "1.1.0"
    assert [st["code"] for st in props["statuses"]] == ["Resolving", "Installing", "Succeeded"]
    assert s.configmap() == {"tag": "v2", "replicas": "2", "chartVersion": "1.1.0"}
    password = s.core.read_namespaced_secret("demo-auth", "demo-system").data["password"]
    assert base64.b64decode(password).decode() == PASSWORD
    assert PASSWORD not in s.log() and PASSWORD not in json.dumps(props)

    # A settings change is an upgrade of the same version.
    shown = s.user.get(s.url).json()
    shown["properties"]["configurationSettings"]["image.tag"] = "v3"
    assert s.user.put(s.url, json=shown).status_code == 200
    until("the new tag", lambda: s.configmap()["tag"] == "v3")
    props = s.settled("Succeeded")
    assert [st["code"] for st in props["statuses"]] == ["Resolving", "Upgrading", "Succeeded"]

    # The catalogue offers 1.2.0, whose pre-upgrade hook fails: Failed, rolled back, the reason shown.
    add_version(s.tmp / "charts", s.repo, "1.2.0", failing_hook=True)
    s.catalogue("1.0.0", "1.1.0", "1.2.0")
    props = s.settled("Failed")
    assert props["targetVersion"] == "1.2.0" and props["installedVersion"] == "1.1.0"
    codes = [st["code"] for st in props["statuses"]]
    assert codes == ["Resolving", "Upgrading", "Failed", "RollingBack", "RolledBack"], props["statuses"]
    assert props["errorInfo"]["code"] == "UpgradeFailed"
    assert "Not_A_Valid_Name" in props["errorInfo"]["message"]
    assert "rolled back to demo-1.1.0" in props["errorInfo"]["message"]
    assert s.configmap()["chartVersion"] == "1.1.0" and s.configmap()["tag"] == "v3"
    revisions = len(s.history())

    # A restarted extension-manager neither retries the failed upgrade nor reinstalls what runs.
    s.stop()
    s.start("extensions")
    time.sleep(3)
    assert s.settled("Failed") and len(s.history()) == revisions
    pinned = s.user.put(
        s.url,
        json={"properties": {**shown["properties"], "version": "1.0.0", "autoUpgradeMinorVersion": False}},
    )
    assert pinned.status_code == 200, pinned.text
    props = s.settled("Succeeded")
    assert props["installedVersion"] == "1.0.0" and s.configmap()["chartVersion"] == "1.0.0"
    assert len(s.history()) == revisions + 1  # the downgrade, and nothing between
    s.stop()
    s.start("extensions")
    time.sleep(3)  # several passes of the restarted agent (every 0.5 s)
    assert s.settled("Succeeded")["installedVersion"] == "1.0.0"
    assert len(s.history()) == revisions + 1

    # Delete: Deleting while helm uninstalls, then the resource and the release are gone.
    assert s.user.delete(s.url).status_code == 202
    until("the extension gone", lambda: s.user.get(s.url).status_code == 404)
    assert s.history() == []
    assert not exists(lambda: s.core.read_namespaced_config_map("demo-settings", "demo-system"))
    s.stop()
    assert "Traceback" not in s.log()
