"""`kubearc connect` as an admin runs it: a real hub, the apiserver stand-in, the real helm and the CLI.

The checks come first: a failing one prints one line and leaves nothing behind,
neither on the hub nor in the cluster.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from typer.testing import CliRunner

from hub import directory
from kubearc.cli import app
from tests.apiserver import ApiServer, NodeSpec
from tests.apiserver.resources import NAMESPACES
from tests.clusters import SUB, signed_in_cli
from tests.conftest import RunningHub

pytestmark = pytest.mark.sqlite_only

CC = "providers/Microsoft.Kubernetes/connectedClusters"


@pytest.fixture
def admin(hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The CLI signed in as an Owner of resource group rg1."""
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)
    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("KUBEARC_SUBSCRIPTION", SUB)
    return signed_in_cli(
        hub, tmp_path / "config", "dana@kubearc.test", "Owner", f"/subscriptions/{SUB}/resourceGroups/rg1"
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ApiServer, Path]]:
    nodes = [NodeSpec("node-1", cpu="4"), NodeSpec("node-2", cpu="3500m")]
    with ApiServer(nodes=nodes, version="v1.35.2") as api:
        yield api, api.kubeconfig(tmp_path / "kubeconfig")


def resource(admin: CliRunner, name: str) -> dict[str, object] | None:
    shown = admin.invoke(app, ["cluster", "show", "-n", name, "-g", "rg1"])
    return json.loads(shown.stdout) if shown.exit_code == 0 else None


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60
    )


def test_a_cluster_connected_under_another_name_is_refused_and_nothing_is_created(
    admin: CliRunner, cluster: tuple[ApiServer, Path]
) -> None:
    api, kubeconfig = cluster
    api.store.create(NAMESPACES, None, {"metadata": {"name": "azure-arc"}})
    other = f"/subscriptions/{SUB}/resourceGroups/rg1/{CC}/first"
    made = kubectl(
        kubeconfig,
        "-n",
        "azure-arc",
        "create",
        "configmap",
        "azure-clusterconfig",
        f"--from-literal=AZURE_RESOURCE_ID={other}",
    )
    assert made.returncode == 0, made.stderr
    result = admin.invoke(app, ["connect", "-n", "second", "-g", "rg1", "--kube-config", str(kubeconfig)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: this cluster is already connected as {other}; "
        "delete that connection first (kubearc cluster delete) or use its name"
    )
    assert resource(admin, "second") is None
    assert kubectl(kubeconfig, "-n", "azure-arc", "get", "secret", "azure-arc-onboarding-key").returncode != 0


def test_an_unreachable_apiserver_is_one_line_and_nothing_is_created(
    admin: CliRunner, tmp_path: Path
) -> None:
    with ApiServer() as api:
        kubeconfig = api.kubeconfig(tmp_path / "gone")
    result = admin.invoke(app, ["connect", "-n", "c1", "-g", "rg1", "--kube-config", str(kubeconfig)])
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "error: cannot reach the cluster's apiserver (check --kube-config / --kube-context)"
    )
    assert "Traceback" not in result.output
    assert resource(admin, "c1") is None


def test_a_missing_helm_says_where_to_get_one_before_anything_is_created(
    admin: CliRunner, cluster: tuple[ApiServer, Path], tmp_path: Path
) -> None:
    _, kubeconfig = cluster
    args = [
        "connect",
        "-n",
        "c1",
        "-g",
        "rg1",
        "--kube-config",
        str(kubeconfig),
        "--helm",
        str(tmp_path / "no-helm"),
    ]
    result = admin.invoke(app, args)
    assert result.exit_code == 1
    assert (
        result.stderr.strip().splitlines()[-1] == f"error: --helm {tmp_path / 'no-helm'}: no such executable"
    )
    assert resource(admin, "c1") is None


def release_values(kubeconfig: Path) -> dict[str, Any]:
    helm = str(Path(sys.executable).parent / "helm")
    got = subprocess.run(
        [helm, "get", "values", "kubearc", "-n", "azure-arc", "-o", "json", "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    values: dict[str, Any] = json.loads(got.stdout)
    return values


def _secret(api: ApiServer, namespace: str, name: str) -> dict[str, bytes] | None:
    found = api.store.find("", "secrets", namespace, name)
    return {k: base64.b64decode(v) for k, v in found["data"].items()} if found else None


def test_azure_rbac_gets_guard_a_serving_pair_and_the_apiserver_its_webhook_files_made_once(
    admin: CliRunner, cluster: tuple[ApiServer, Path], hub: RunningHub
) -> None:
    api, kubeconfig = cluster
    connect = ["connect", "-n", "c1", "-g", "rg1", "--kube-config", str(kubeconfig), "--timeout", "1s"]
    first = admin.invoke(app, [*connect, "--enable-features", "azure-rbac"])
    assert "timed out" in first.stderr  # no node runs the agents here; what comes before the wait is made
    tls = _secret(api, "azure-arc", "guard-tls")
    manifests = _secret(api, "kube-system", "kubearc-guard-manifests")
    assert tls is not None and manifests is not None
    serving = x509.load_pem_x509_certificate(tls["tls.crt"])
    ca = x509.load_pem_x509_certificate(tls["ca.crt"])
    serving.verify_directly_issued_by(ca)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubearc-guard.azure-arc.svc" in names.get_values_for_type(x509.DNSName)
    authn = yaml.safe_load(manifests["authn-webhook.kubeconfig"])
    assert (
        authn["clusters"][0]["cluster"]["server"] == "https://kubearc-guard.azure-arc.svc:8443/tokenreviews"
    )
    client_cert = base64.b64decode(authn["users"][0]["user"]["client-certificate-data"])
    x509.load_pem_x509_certificate(client_cert).verify_directly_issued_by(ca)  # guard's --client-ca
    authz = yaml.safe_load(manifests["authorization-config.yaml"])
    hook = next(a["webhook"] for a in authz["authorizers"] if a["type"] == "Webhook")
    assert (
        hook["connectionInfo"]["kubeConfigFile"] == "/etc/kubernetes/kubearc-guard/authz-webhook.kubeconfig"
    )
    assert "--authorization-config=/etc/kubernetes/kubearc-guard/authorization-config.yaml" in first.output
    # guard accepts the hub's own issuer (its users sign in there), read from the hub's discovery.
    with hub.client() as c:
        issuer = c.get("/.well-known/kubearc-configuration").json()["issuer"]
    assert release_values(kubeconfig)["guard"]["issuers"] == [issuer]

    again = admin.invoke(app, [*connect, "--enable-features", "azure-rbac"])
    assert "Secret azure-arc/guard-tls is kept" in again.output  # the apiserver keeps trusting guard
    assert _secret(api, "azure-arc", "guard-tls") == tls

    deleted = admin.invoke(
        app, ["cluster", "delete", "-n", "c1", "-g", "rg1", "--yes", "--kube-config", str(kubeconfig)]
    )
    assert deleted.exit_code == 0, deleted.output
    assert _secret(api, "azure-arc", "guard-tls") is None
    assert _secret(api, "kube-system", "kubearc-guard-manifests") is None


def test_enabling_azure_rbac_later_readies_guard_as_connect_does(
    admin: CliRunner, cluster: tuple[ApiServer, Path], hub: RunningHub
) -> None:
    api, kubeconfig = cluster
    connect = ["connect", "-n", "c2", "-g", "rg1", "--kube-config", str(kubeconfig), "--timeout", "1s"]
    admin.invoke(app, connect)  # times out: no node runs the agents; the release is installed
    assert _secret(api, "azure-arc", "guard-tls") is None
    enabled = admin.invoke(
        app,
        [
            "cluster",
            "enable-features",
            "-n",
            "c2",
            "-g",
            "rg1",
            "--features",
            "azure-rbac",
            "--kube-config",
            str(kubeconfig),
        ],
    )
    assert enabled.exit_code == 0, enabled.output
    assert _secret(api, "azure-arc", "guard-tls") is not None
    assert _secret(api, "kube-system", "kubearc-guard-manifests") is not None
    values = release_values(kubeconfig)
    with hub.client() as c:
        issuer = c.get("/.well-known/kubearc-configuration").json()["issuer"]
    assert values["features"]["azureRbac"] is True and values["guard"]["issuers"] == [issuer]
