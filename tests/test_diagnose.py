"""`kubearc agent diagnose`: the first failing step names the problem.

The CA, DNS, then TCP; through a proxy, the proxy is what is checked and named.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubearc.cli import app


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def checks(*args: str) -> tuple[int, list[dict[str, object]]]:
    result = CliRunner().invoke(app, ["agent", "diagnose", *args])
    return result.exit_code, [json.loads(line) for line in result.stdout.splitlines()]


def test_an_unreadable_hub_ca_is_one_failed_check_naming_the_file(tmp_path: Path) -> None:
    code, found = checks("--hub", "https://127.0.0.1:1", "--hub-ca", str(tmp_path / "missing.crt"))
    assert code == 1 and [c["check"] for c in found] == ["hub ca"]
    assert "missing.crt" in str(found[0]["detail"]) and found[0]["ok"] is False


def test_a_refused_port_stops_at_tcp_after_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    port = closed_port()
    code, found = checks("--hub", f"https://127.0.0.1:{port}")
    assert code == 1 and [(c["check"], c["ok"]) for c in found] == [("dns hub", True), ("tcp hub", False)]
    assert f"127.0.0.1:{port}" in str(found[1]["detail"]) and "refused" in str(found[1]["detail"])


def test_through_a_proxy_the_proxy_is_what_is_checked_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy}")
    monkeypatch.setenv("NO_PROXY", "")
    code, found = checks("--hub", "https://hub.example.test:8443")
    assert code == 1 and [(c["check"], c["ok"]) for c in found] == [("dns hub", True), ("tcp hub", False)]
    assert f"through the proxy 127.0.0.1:{proxy}" in str(found[1]["detail"])
