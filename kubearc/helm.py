"""The agents' release, as `kubearc connect` and `kubearc cluster delete` drive helm (foundation.helm).

Values go to helm in a private temporary file, never on its command line; the
kubeconfig and context are the ones the user chose for the whole command.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from foundation.helm import HelmError, find_helm, run

__all__ = ["CHART", "NAMESPACE", "RELEASE", "Helm", "HelmError", "find_helm"]

RELEASE = "kubearc"
NAMESPACE = "azure-arc"
CHART = Path(__file__).resolve().parents[1] / "charts" / "kubearc-agents"


@dataclass
class Helm:
    binary: str
    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str = NAMESPACE

    def _run(self, *args: str, timeout: float = 120) -> str:
        return run(
            self.binary,
            *args,
            namespace=self.namespace,
            kubeconfig=self.kubeconfig,
            context=self.context,
            timeout=timeout,
        )

    def version(self) -> str:
        done = subprocess.run(
            [self.binary, "version", "--short"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise HelmError(f"{self.binary} does not run: {done.stderr.strip()[:200]}")
        return done.stdout.strip()

    def upgrade_install(self, chart: Path | str, values: dict[str, Any], timeout: float = 600) -> None:
        with tempfile.TemporaryDirectory(prefix="kubearc-helm-") as tmp:  # mode 0700
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(values, sort_keys=False))
            self._run("upgrade", "--install", RELEASE, str(chart), "--values", str(path), timeout=timeout)

    def release(self) -> dict[str, Any] | None:
        """The release as `helm list` reports it, or None when there is none."""
        rows = json.loads(self._run("list", "--filter", f"^{RELEASE}$", "--output", "json") or "[]")
        return rows[0] if rows else None

    def values_json(self) -> str:
        """The values the release was installed with (user-supplied), as JSON."""
        return self._run("get", "values", RELEASE, "--output", "json")

    def uninstall(self) -> bool:
        """Remove the release; False when there was none."""
        if self.release() is None:
            return False
        self._run("uninstall", RELEASE)
        return True

    def rollback(self, revision: int) -> None:
        self._run("rollback", RELEASE, str(revision))
