"""`kubearc agent controller` with the real helm against the agents' release on the stand-in: an
offered version whose agents do not become ready is rolled back with the reason at the hub; a good
one moves every agent, then the controller-manager itself; a Deployment the release lost comes back.

The test plays the kubelet for the new pods: the stand-in reports every Deployment ready at once, so
a store mutator here keeps the Deployments of a `-broken` image unready, as pods that crash would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from typer.testing import CliRunner

from kubearc.cli import app
from tests.agent_site import AgentSite, until
from tests.apiserver import ApiServer
from tests.apiserver.workloads import DEPLOYMENTS
from tests.clusters import SUB
from tests.conftest import RunningHub
from tests.helm_repo import helm

pytestmark = pytest.mark.sqlite_only
CHART = Path(__file__).resolve().parents[1] / "charts" / "kubearc-agents"
NS = "azure-arc"


class Site(AgentSite):
    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [helm(), *args, "-n", NS, "--kubeconfig", str(self.kubeconfig)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def image(self, deployment: str) -> str:
        obj = self.api.store.find("apps", "deployments", NS, deployment) or {}
        return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])

    def history(self) -> list[dict[str, Any]]:
        return list(json.loads(self.helm("history", "kubearc", "-o", "json").stdout or "[]"))


def crash_broken_pods(rt: Any, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """The stand-in's store mutator: a Deployment of a `-broken` image has no ready replica (its pods
    would crash); any other is up at once, as the stand-in's deployment controller says."""
    if rt is not DEPLOYMENTS:
        return
    image = obj["spec"]["template"]["spec"]["containers"][0]["image"]
    if image.endswith("-broken"):
        generation = obj["metadata"].get("generation", 1)
        obj["status"] = {
            "observedGeneration": generation,
            "replicas": 1,
            "updatedReplicas": 1,
            "readyReplicas": 0,
        }


@pytest.fixture
def site(hub: RunningHub, tmp_path: Path) -> Iterator[Site]:
    with ApiServer() as api:
        api.store.mutators.append(crash_broken_pods)
        s = Site(hub, api, tmp_path, "upgrade")
        try:
            yield s
        finally:
            s.close()


def test_a_broken_version_is_rolled_back_with_the_reason_and_a_good_one_is_rolled_out(site: Site) -> None:
    s = site
    installed = s.helm(
        *["install", "kubearc", str(CHART), "--create-namespace"],
        *["--set", f"hub.url={s.hub.url}", "--set", f"resourceId={s.cluster.resource_id}"],
    )
    assert installed.returncode == 0, installed.stderr
    s.start(
        "controller", "--chart", str(CHART), "--namespace", NS, "--interval", "0.5", "--health-timeout", "6"
    )

    # The hub offers a version whose agents do not become ready: rolled back, the reason at the hub.
    s.hub.config.latest_agent_version = "0.2.0-broken"

    def rolled_back() -> bool:
        return any("Rollback" in h.get("description", "") and h["status"] == "deployed" for h in s.history())

    until("the rollback", rolled_back, timeout=90)
    until("the images back on 0.1.0", lambda: s.image("kubearc-identity").endswith(":0.1.0"), timeout=30)
    assert s.image("kubearc-identity").endswith(":0.1.0") and s.image("kubearc-controller").endswith(":0.1.0")
    assert [h["revision"] for h in s.history()] == [1, 2, 3]  # install, upgrade, rollback: no retry

    def reasons() -> list[str]:
        r = s.user.get(
            f"{s.cluster.resource_id}/agentLogs",
            params={"agent": "controller-manager", "level": "error", "since": "1h"},
        )
        return [e["message"] for e in r.json()["value"]]

    [reason] = until("the reason at the hub", reasons, timeout=30)
    assert "the upgrade to 0.2.0-broken was rolled back to 0.1.0" in reason
    assert "kubearc-identity: 0/1 ready" in reason

    # A good version: every agent first, the controller-manager last.
    s.hub.config.latest_agent_version = "0.2.0"
    until(
        "the controller-manager on 0.2.0",
        lambda: s.image("kubearc-controller").endswith(":0.2.0"),
        timeout=60,
    )
    for agent in ("kubearc-identity", "kubearc-metadata", "kubearc-config", "kubearc-connect"):
        assert s.image(agent).endswith(":0.2.0")
    deployment = s.api.store.find("apps", "deployments", NS, "kubearc-metadata") or {}
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBEARC_AGENT_VERSION"] == "0.2.0"
    # The metadata agent of that pod (its env, as the kubelet gives it) reports it to the hub.
    pod_env = {k: v for k, v in env.items() if v is not None and k != "KUBEARC_HUB_URL"}
    done = subprocess.run(
        [
            *[
                sys.executable,
                "-m",
                "kubearc.cli",
                "agent",
                "metadata",
                "--hub",
                s.hub.url,
                "--hub-ca",
                s.hub.ca,
            ],
            *["--identity", f"file:{s.tmp / 'identity'}", "--kubeconfig", str(s.kubeconfig), "--once"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("KUBEARC_")}, **pod_env},
    )
    assert done.returncode == 0, done.stderr
    shown = s.user.get(s.cluster.resource_id, params={"api-version": "2024-01-01"}).json()["properties"]
    assert shown["agentVersion"] == "0.2.0"
    revisions = len(s.history())

    # A Deployment the release holds but the cluster lost comes back.
    client.AppsV1Api(s.k8s).delete_namespaced_deployment("kubearc-metrics", NS)
    until("kubearc-metrics restored", lambda: s.api.store.find("apps", "deployments", NS, "kubearc-metrics"))
    assert len(s.history()) == revisions + 1
    s.stop()
    assert "Traceback" not in s.log()


def test_cluster_upgrade_from_the_cli_rolls_back_agents_that_do_not_become_ready(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = site
    installed = s.helm(
        *["install", "kubearc", str(CHART), "--create-namespace", "--set", "autoUpgrade=false"],
        *["--set", f"hub.url={s.hub.url}", "--set", f"resourceId={s.cluster.resource_id}"],
    )
    assert installed.returncode == 0, installed.stderr
    monkeypatch.setenv("KUBEARC_SUBSCRIPTION", SUB)
    name = s.cluster.resource_id.rsplit("/", 1)[1]
    where = ["-n", name, "-g", "rg1", "--kube-config", str(s.kubeconfig), "--chart", str(CHART)]
    broken = CliRunner().invoke(
        app, ["cluster", "upgrade", *where, "--agent-version", "0.3.0-broken", "--timeout", "6s"]
    )
    assert broken.exit_code == 1, broken.output
    assert (
        "not ready on 0.3.0-broken within 6s" in broken.stderr
        and "rolled back to revision 1" in broken.stderr
    )
    assert "kubearc-identity: 0/1 ready" in broken.stderr and broken.stderr.count("\n") == 1
    assert s.image("kubearc-identity").endswith(":0.1.0")
    good = CliRunner().invoke(
        app, ["cluster", "upgrade", *where, "--agent-version", "0.3.0", "--timeout", "30s"]
    )
    assert good.exit_code == 0, good.output
    assert s.image("kubearc-identity").endswith(":0.3.0") and s.image("kubearc-controller").endswith(":0.3.0")
