"""`--max-window`, the tunnel option of the relay, the hub, the agent and the client proxy."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from foundation.settings import parse_size
from kubearc.cli import app
from kubearc.commands.tunnelopts import tunnel_settings

pytestmark = pytest.mark.sqlite_only


@pytest.mark.parametrize(
    ("text", "size"),
    [("262144", 262144), ("256Ki", 262144), ("16Mi", 16 * 2**20), ("1G", 10**9), (" 2gi ", 2 * 2**30)],
)
def test_sizes_take_kubernetes_suffixes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "Mi", "-1Mi", "1.5Mi", "16MB", "0", "sixteen"])
def test_bad_sizes_are_named(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_the_setting_reaches_the_session_settings() -> None:
    assert tunnel_settings("64Mi").max_window == 64 * 2**20
    assert tunnel_settings("512Ki").max_window == tunnel_settings("512Ki").initial_window


COMMANDS = [
    ["relay", "--hub", "https://hub.invalid"],
    ["agent", "connect", "--hub", "https://hub.invalid"],
    ["proxy", "-n", "c", "-g", "rg"],
    ["hub"],
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("value", "message"), [("64k", "(the starting window)"), ("lots", "invalid size 'lots'")]
)
def test_each_command_refuses_a_bad_window_before_starting(
    command: list[str], value: str, message: str
) -> None:
    result = CliRunner().invoke(app, [*command, "--max-window", value])
    assert result.exit_code == 2, result.output
    assert "--max-window" in result.output and message in " ".join(result.output.split())


def test_a_bad_flag_on_the_command_line_is_one_line_naming_it() -> None:
    """The console script (`kubearc.cli.main`): no panel, no traceback, one line and the exit code 2."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "kubearc.cli", "relay", "--hub", "https://hub.test", "--drain", "5x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "--drain" in done.stderr and "'5x'" in done.stderr and "--help" in done.stderr
