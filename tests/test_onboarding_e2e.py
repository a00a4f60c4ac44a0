"""From zero to Connected: `kubearc connect` with the real helm, the chart's own manifests driving the agents.

The cluster is the apiserver stand-in plus the node emulator, which runs the
Deployments helm applied as processes in their own network and mount
namespaces; the hub is reached over the node's bridge, as from a data center.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from typer.testing import CliRunner

from hub import directory
from kubearc.cli import app
from tests import node_emulator
from tests.apiserver import ApiServer, NodeSpec
from tests.clusters import SUB, signed_in_cli
from tests.conftest import RunningHub
from tests.flux_crds import flux_crds, mark

pytestmark = pytest.mark.sqlite_only

NODE_IP = "10.77.0.1"
CC = "providers/Microsoft.Kubernetes/connectedClusters"
WHY_NOT = node_emulator.available()


@dataclass
class Site:
    hub: RunningHub
    api: ApiServer
    node: node_emulator.NodeEmulator
    kubeconfig: Path
    admin: CliRunner

    def cli(self, *args: str) -> tuple[int, str, str]:
        result = self.admin.invoke(app, list(args))
        return result.exit_code, result.stdout, result.stderr

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        helm = str(Path(sys.executable).parent / "helm")
        return subprocess.run(
            [helm, *args, "-n", "azure-arc", "--kubeconfig", str(self.kubeconfig)],
            capture_output=True,
            text=True,
        )

    def wait_ready(self, deployment: str, within: float = 120) -> None:
        """Until the deployment's current generation has a ready replica (the node emulator's report)."""
        deadline = time.monotonic() + within
        while True:
            obj = self.api.store.find("apps", "deployments", "azure-arc", deployment) or {}
            status = obj.get("status") or {}
            generation = (obj.get("metadata") or {}).get("generation")
            if status.get("readyReplicas") == 1 and status.get("observedGeneration") == generation:
                return
            assert time.monotonic() < deadline, (
                f"{deployment} not ready: {status}\n{self.node.logs(deployment)}"
            )
            time.sleep(0.5)

    def resource(self, name: str) -> dict[str, object] | None:
        code, out, _ = self.cli("cluster", "show", "-n", name, "-g", "rg1")
        return json.loads(out) if code == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site(start_hub: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)
    with node_emulator.exclusive_network():  # one run at a time owns the node network
        node_emulator.bridge(NODE_IP)
        port = free_port()
        hub: RunningHub = start_hub(host="0.0.0.0", port=port, public_url=f"https://{NODE_IP}:{port}")  # type: ignore[operator]

        monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "config"))
        monkeypatch.setenv("KUBEARC_SUBSCRIPTION", SUB)
        scope = f"/subscriptions/{SUB}/resourceGroups/rg1"
        admin = signed_in_cli(hub, tmp_path / "config", "erin@kubearc.test", "Owner", scope)
        api = ApiServer(
            nodes=[NodeSpec("node-1", cpu="4"), NodeSpec("node-2", cpu="2")], host=NODE_IP
        ).start()
        node = node_emulator.NodeEmulator(api, NODE_IP).start()
        try:
            yield Site(hub, api, node, api.kubeconfig(tmp_path / "kubeconfig"), admin)
        finally:
            node.stop()
            api.stop()
            node_emulator.remove_bridge()


def test_connect_brings_the_cluster_to_connected_is_idempotent_and_delete_leaves_nothing(site: Site) -> None:
    code, _out, err = site.cli(
        "connect",
        "-n",
        "c1",
        "-g",
        "rg1",
        "--kube-config",
        str(site.kubeconfig),
        "--distribution",
        "k3s",
        "--timeout",
        "3m",
    )
    assert code == 0, err + "\n" + site.node.logs("kubearc-identity") + site.node.logs("kubearc-metadata")
    assert "ok  the identity certificate (identity agent)" in err
    assert "ok  the first heartbeat (metadata agent)" in err
    resource = site.resource("c1")
    assert resource is not None
    props = resource["properties"]
    assert isinstance(props, dict)
    assert props["connectivityStatus"] == "Connected" and props["distribution"] == "k3s"
    assert props["totalCoreCount"] == 6

    code, out, err = site.cli(
        "cluster",
        "troubleshoot",
        "-n",
        "c1",
        "-g",
        "rg1",
        "--kube-config",
        str(site.kubeconfig),
        "--bundle",
        str(site.kubeconfig.parent / "healthy.tar.gz"),
    )
    # This site's hub runs no relay (the firewall test has one): from inside the cluster, the relay's
    # port is the one problem, found by `kubearc agent diagnose` in the connect agent's pod.
    problems = [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("problem")]
    assert code == 1 and len(problems) == 1, out + err
    assert problems[0].startswith("network tcp relay: from kubearc-connect-") and "refused" in problems[0]
    checked = {line.split(None, 1)[1].split(":", 1)[0] for line in out.splitlines()}
    assert {
        "agent identity",
        "agent metadata",
        "agent connect",
        "identity",
        "hub",
        "helm",
        "clock",
    } <= checked
    # From inside the cluster (`kubearc agent diagnose` in the connect agent's pod): names, ports, TLS.
    network = {"network dns hub", "network tcp hub", "network tls hub", "network dns relay"}
    assert network <= checked, out

    again = site.cli(
        "connect", "-n", "c1", "-g", "rg1", "--kube-config", str(site.kubeconfig), "--timeout", "3m"
    )
    assert again[0] == 0, again[2]
    assert "is this cluster's: upgrading its agents" in again[2]
    history = json.loads(site.helm("history", "kubearc", "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2]

    # Day two: versions, settings and features, each a helm upgrade of the same release.
    where = ["-n", "c1", "-g", "rg1", "--kube-config", str(site.kubeconfig)]
    code, _, err = site.cli("cluster", "upgrade", *where, "--agent-version", "0.2.0")
    assert code == 1 and "auto-upgrade is on" in err
    assert site.cli("cluster", "update", *where, "--no-auto-upgrade", "--tags", "team=platform")[0] == 0
    assert site.cli("cluster", "upgrade", *where, "--agent-version", "0.2.0")[0] == 0
    identity = site.api.store.find("apps", "deployments", "azure-arc", "kubearc-identity")
    assert identity is not None
    assert identity["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.2.0")
    shown = site.resource("c1")
    assert shown is not None and shown["tags"] == {"team": "platform"}
    rbac = ["--features", "azure-rbac", "--azure-rbac-mode", "impersonation"]
    assert site.cli("cluster", "enable-features", *where, *rbac)[0] == 0
    assert site.api.store.find("apps", "deployments", "azure-arc", "kubearc-aad-proxy") is not None
    assert site.cli("cluster", "disable-features", *where, "--features", "azure-rbac")[0] == 0
    assert site.api.store.find("apps", "deployments", "azure-arc", "kubearc-aad-proxy") is None
    revisions = [h["revision"] for h in json.loads(site.helm("history", "kubearc", "-o", "json").stdout)]
    assert revisions == [1, 2, 3, 4, 5, 6]

    # The helm upgrades restarted the agents: let them come back before breaking anything.
    for agent in ("kubearc-identity", "kubearc-metadata"):
        site.wait_ready(agent)

    gitops_through_the_chart(site, tmp_path=site.kubeconfig.parent)

    # Break two things: the connect agent stops, the identity Secret is gone.
    for change in (
        ["scale", "deploy/kubearc-connect", "--replicas=0"],
        ["delete", "secret", "azure-identity-certificate"],
    ):
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(site.kubeconfig), "-n", "azure-arc", *change],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    for agent in ("kubearc-identity", "kubearc-metadata"):  # the network checks run in the latter's pod
        site.wait_ready(agent)
    deadline = time.monotonic() + 60
    while ("azure-arc", "kubearc-connect") in site.node.pods:  # its pod terminated, not terminating
        assert time.monotonic() < deadline
        time.sleep(0.2)
    bundle = site.kubeconfig.parent / "broken.tar.gz"
    args = ["-n", "c1", "-g", "rg1", "--kube-config", str(site.kubeconfig), "--bundle", str(bundle)]
    code, out, err = site.cli("cluster", "troubleshoot", *args)
    assert code == 1
    problems = [
        line.split(None, 1)[1].split(":", 1)[0] for line in out.splitlines() if line.startswith("problem")
    ]
    assert problems == ["agent connect", "identity", "network tcp relay"], out
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        contents = b"".join(f.read() for m in tar.getmembers() if (f := tar.extractfile(m)) is not None)
    assert {"kubearc-troubleshoot/summary.txt", "kubearc-troubleshoot/hub-resource.json"} <= names
    assert b"PRIVATE KEY" not in contents  # Secrets appear by name and expiry only

    code, _, err = site.cli(
        "cluster", "delete", "-n", "c1", "-g", "rg1", "--yes", "--kube-config", str(site.kubeconfig)
    )
    assert code == 0, err
    assert site.resource("c1") is None
    assert site.helm("list", "-o", "json").stdout.strip() in ("[]", "")
    secrets = site.api.store.list_all("", "secrets")
    assert not [s for s in secrets if s["metadata"].get("namespace") == "azure-arc"]


def gitops_through_the_chart(site: Site, tmp_path: Path) -> None:
    """A flux configuration made with the CLI, applied by the chart's config-agent, reported back."""
    chart = Path(__file__).resolve().parents[1] / "charts" / "kubearc-agents"
    tuned = site.helm(
        "upgrade",
        "kubearc",
        str(chart),
        "--reuse-values",
        "--set",
        "gitops.syncInterval=1",
        "--set",
        "gitops.statusInterval=1",
    )
    assert tuned.returncode == 0, tuned.stderr
    site.wait_ready("kubearc-config")
    crds = tmp_path / "flux-crds.yaml"
    crds.write_text(yaml.safe_dump_all(flux_crds()))
    kubectl = ["kubectl", "--kubeconfig", str(site.kubeconfig)]
    done = subprocess.run([*kubectl, "apply", "-f", str(crds)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    key = tmp_path / "deploy-key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nchart-e2e\n-----END OPENSSH PRIVATE KEY-----\n")
    where = ["-c", "c1", "-g", "rg1"]
    code, _, err = site.cli(
        "k8s-configuration",
        "flux",
        "create",
        "-n",
        "fleet",
        *where,
        "--namespace",
        "flux-system",
        "-u",
        "ssh://git@github.com/example/fleet.git",
        "--branch",
        "main",
        "--ssh-private-key-file",
        str(key),
        "--kustomization",
        "name=apps path=./apps prune=true",
    )
    assert code == 0, err

    def found(group: str, plural: str, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while (obj := site.api.store.find(group, plural, "flux-system", name)) is None:
            assert time.monotonic() < deadline, f"no {plural}/{name}\n{site.node.logs('kubearc-config')}"
            time.sleep(0.3)
        return obj

    repo = found("source.toolkit.fluxcd.io", "gitrepositories", "fleet")
    apps = found("kustomize.toolkit.fluxcd.io", "kustomizations", "fleet-apps")
    assert repo["spec"]["secretRef"] == {"name": "fleet-auth"} and apps["spec"]["prune"] is True
    secret = found("", "secrets", "fleet-auth")
    assert base64.b64decode(secret["data"]["identity"]) == key.read_bytes()

    # Playing Flux's controllers: both Ready, the source at a commit.
    k8s: Any = client.CustomObjectsApi(config.new_client_from_config(str(site.kubeconfig)))
    for gv, plural, obj, revision in (
        (("source.toolkit.fluxcd.io", "v1"), "gitrepositories", repo, "main@sha1:9b1f00d"),
        (("kustomize.toolkit.fluxcd.io", "v1"), "kustomizations", apps, None),
    ):
        marked = mark(obj, True, "Succeeded", "reconciled", revision)
        k8s.patch_namespaced_custom_object_status(*gv, "flux-system", plural, obj["metadata"]["name"], marked)
    deadline = time.monotonic() + 60
    while True:
        code, out, err = site.cli("k8s-configuration", "flux", "show", "-n", "fleet", *where)
        shown = json.loads(out)["properties"] if code == 0 else {}
        if shown.get("complianceState") == "Compliant":
            break
        assert time.monotonic() < deadline, f"{out}{err}\n{site.node.logs('kubearc-config')}"
        time.sleep(0.5)
    assert shown["sourceSyncedCommitId"] == "main@sha1:9b1f00d"

    # The config-agent's own log lines reached the hub from the chart's pod.
    deadline = time.monotonic() + 30  # they go out every 5 s
    while True:
        code, out, _ = site.cli("cluster", "logs", "-n", "c1", "-g", "rg1", "--agent", "config-agent")
        if code == 0 and "applied flux configuration" in out:
            break
        assert time.monotonic() < deadline, out
        time.sleep(1)

    assert site.cli("k8s-configuration", "flux", "delete", "-n", "fleet", *where, "--yes")[0] == 0
    deadline = time.monotonic() + 60
    while site.api.store.find("source.toolkit.fluxcd.io", "gitrepositories", "flux-system", "fleet"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert site.api.store.find("", "secrets", "flux-system", "fleet-auth") is None


def test_a_connect_whose_agents_cannot_reach_the_hub_stops_at_the_timeout_naming_the_step(site: Site) -> None:
    # The agents' egress proxy refuses every connection: they run, but never reach the hub.
    code, _, err = site.cli(
        "connect",
        "-n",
        "c2",
        "-g",
        "rg1",
        "--kube-config",
        str(site.kubeconfig),
        "--proxy-https",
        f"http://{NODE_IP}:1",
        "--timeout",
        "40s",
    )
    assert code == 1
    assert "ok  agent identity running" in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("error: timed out after 40s waiting for the identity certificate (identity agent); ")
    )
