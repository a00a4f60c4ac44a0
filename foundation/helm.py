"""The real helm binary, run as a subprocess: found once, its failures one `HelmError`.

Both `kubearc connect` (the agents' release) and the extension-manager (every
extension's release) drive helm through `run`; values always travel in private
files, never on helm's command line, so no secret shows in a process list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

INTERRUPT_GRACE = 30.0  # seconds helm gets to record a cancelled operation before it is killed


class HelmError(Exception):
    """helm could not be found or a helm command failed.

    The message is helm's last line; `detail` is all it wrote to stderr.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


def find_helm(explicit: str | None = None) -> str:
    """`--helm`, else helm on PATH, else beside this Python (a venv's bin)."""
    candidates = [explicit] if explicit else [shutil.which("helm"), str(Path(sys.executable).parent / "helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    if explicit:
        raise HelmError(f"--helm {explicit}: no such executable")
    raise HelmError("helm not found: install helm 3.8 or later, or pass --helm PATH")


def run(
    binary: str,
    *args: str,
    namespace: str,
    kubeconfig: Path | None = None,
    context: str | None = None,
    timeout: float = 120,
) -> str:
    """One helm command in `namespace`; its stdout, or HelmError with helm's own words."""
    cmd = [binary, *args, "--namespace", namespace]
    if kubeconfig:
        cmd += ["--kubeconfig", str(kubeconfig)]
    if context:
        cmd += ["--kube-context", context]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _interrupt(proc)
            raise HelmError(f"helm {args[0]} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        stderr = stderr.strip()
        last = (stderr.splitlines() or ["(no output)"])[-1]
        raise HelmError(f"helm {args[0]} failed: {last}", stderr)
    return stdout


def _interrupt(proc: subprocess.Popen[str]) -> None:
    """SIGTERM first: helm (3.7 and later) then marks the release failed rather than leaving it
    pending, which would refuse every later command with "another operation is in progress"."""
    proc.terminate()
    try:
        proc.communicate(timeout=INTERRUPT_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
