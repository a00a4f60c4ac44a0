"""foundation.helm.run: a helm command that overruns its time is interrupted the way helm can recover from.

A helm killed outright leaves its release pending-install or pending-upgrade, and every later
command fails with "another operation (install/upgrade/rollback) is in progress"; helm 3.7 and
later, sent SIGTERM, records the operation as failed instead. The stand-in below is a shell
script that records which signal reached it, so the test can tell the two apart.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from foundation.helm import HelmError, run


def _slow_helm(tmp_path: Path) -> tuple[Path, Path]:
    record = tmp_path / "signal"
    script = tmp_path / "helm"
    script.write_text(
        f"#!/bin/sh\ntrap 'echo TERM > {record}; kill $!; exit 1' TERM\nsleep 30 >/dev/null 2>&1 &\nwait $!\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, record


def test_an_overrunning_helm_is_sent_sigterm_so_it_can_mark_its_release_failed(tmp_path: Path) -> None:
    helm, record = _slow_helm(tmp_path)
    with pytest.raises(HelmError, match=r"helm upgrade did not finish within 1s"):
        run(str(helm), "upgrade", "--install", "kubearc", "chart", namespace="azure-arc", timeout=1)
    assert record.read_text().strip() == "TERM"


def test_a_failing_helm_reports_its_last_line_and_keeps_all_it_wrote(tmp_path: Path) -> None:
    helm = tmp_path / "helm"
    helm.write_text(
        "#!/bin/sh\necho 'coalesce.go: warning' >&2\necho 'Error: UPGRADE FAILED: nope' >&2\nexit 1\n"
    )
    helm.chmod(0o755)
    with pytest.raises(HelmError) as failed:
        run(str(helm), "upgrade", namespace="azure-arc")
    assert str(failed.value) == "helm upgrade failed: Error: UPGRADE FAILED: nope"
    assert "coalesce.go: warning" in failed.value.detail
