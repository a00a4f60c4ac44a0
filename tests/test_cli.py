"""The `kubearc` console script as a new user meets it: its version, one-line errors, Ctrl-C.

Real processes (`python -m kubearc.cli`, which is what the console script runs)
against a real hub over HTTPS; what a user sees is the process's exit code and
its stderr, so that is what is asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys

from foundation import __version__


def kubearc(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubearc.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_kubearc_version_prints_the_version_and_exits_0() -> None:
    done = kubearc("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"kubearc {__version__}\n", "")
