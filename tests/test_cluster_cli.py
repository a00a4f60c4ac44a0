"""`kubearc cluster list|show|delete` as a signed-in user, against a running hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub import directory
from kubearc.cli import app
from tests.clusters import SUB, connected
from tests.conftest import RunningHub

pytestmark = pytest.mark.sqlite_only

PASSWORD = "correct horse battery"


@pytest.fixture
def signed_in(hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)

    async def setup() -> str:
        async with hub.hub.sessions() as s:
            return (await directory.create_user(s, "carol@kubearc.test", PASSWORD, "Carol")).id

    oid = hub.run(setup())
    hub.assign(oid, "Owner", f"/subscriptions/{SUB}/resourceGroups/rg1")
    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("KUBEARC_SUBSCRIPTION", SUB)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["login", "--hub", hub.url, "--ca-file", hub.ca, "-u", "carol@kubearc.test", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    return runner


def test_list_show_delete(hub: RunningHub, signed_in: CliRunner, tmp_path: Path) -> None:
    a = connected(hub, "cli-a")
    connected(hub, "cli-b")
    assert a.heartbeat().status_code == 200

    result = signed_in.invoke(app, ["cluster", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "NAME",
        "RESOURCE",
        "GROUP",
        "STATUS",
        "VERSION",
        "NODES",
        "LAST",
        "CONNECTED",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["cli-a"][1:3] == ["rg1", "Connected"] and rows["cli-b"][1:3] == ["rg1", "Connecting"]

    listed = json.loads(signed_in.invoke(app, ["cluster", "list", "-g", "rg1", "-o", "json"]).output)
    assert sorted(c["name"] for c in listed) == ["cli-a", "cli-b"]

    shown = signed_in.invoke(app, ["cluster", "show", "-n", "cli-a", "-g", "rg1"])
    assert json.loads(shown.output)["id"] == a.resource_id

    # No cluster to reach here: without --force the delete stops before anything is removed.
    nowhere = ["--kube-config", str(tmp_path / "no-kubeconfig")]
    kept = signed_in.invoke(app, ["cluster", "delete", "-n", "cli-a", "-g", "rg1", "--yes", *nowhere])
    assert kept.exit_code == 1 and kept.stderr.startswith("error: ") and "--force" in kept.stderr
    assert a.heartbeat().status_code == 200
    gone = signed_in.invoke(
        app, ["cluster", "delete", "-n", "cli-a", "-g", "rg1", "--yes", "--force", *nowhere]
    )
    assert gone.exit_code == 0, gone.output
    assert "warning: the cluster side was not cleaned up" in gone.stderr
    missing = signed_in.invoke(app, ["cluster", "show", "-n", "cli-a", "-g", "rg1"])
    assert missing.exit_code == 1 and "404" in missing.output and "was not found" in missing.output
    assert a.heartbeat().status_code == 401  # its identity went with it


def test_errors_are_one_line(hub: RunningHub, signed_in: CliRunner) -> None:
    denied = signed_in.invoke(app, ["cluster", "show", "-n", "x", "-g", "rg2"])
    assert denied.exit_code == 1 and "403" in denied.output and "Traceback" not in denied.output
    bad = signed_in.invoke(app, ["cluster", "show", "-n", "-bad-", "-g", "rg1"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
