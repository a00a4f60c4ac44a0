"""The `kubearc` console script as a new user meets it: its version, one-line errors, Ctrl-C.

Real processes (`python -m kubearc.cli`, which is what the console script runs)
against a real hub over HTTPS; what a user sees is the process's exit code and
its stderr, so that is what is asserted.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from foundation import __version__, pki
from hub import directory
from kubearc.cli import app
from tests.clusters import SUB, connected
from tests.conftest import RunningHub
from tests.tunnel_stack import free_port

pytestmark = pytest.mark.sqlite_only
PASSWORD = "correct horse battery"


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


@pytest.fixture
def signed_in(hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A user who owns rg1 signed in with `kubearc login`; the environment of their later commands."""
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)

    async def setup() -> str:
        async with hub.hub.sessions() as s:
            return (await directory.create_user(s, "dana@kubearc.test", PASSWORD, "Dana")).id

    hub.assign(hub.run(setup()), "Owner", f"/subscriptions/{SUB}/resourceGroups/rg1")
    env = {"KUBEARC_CONFIG_DIR": str(tmp_path / "config"), "KUBEARC_SUBSCRIPTION": SUB}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    login = ["login", "--hub", hub.url, "--ca-file", hub.ca, "-u", "dana@kubearc.test", "--password-stdin"]
    result = CliRunner().invoke(app, login, input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    return env


def one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """What every failed command prints: exit 1 or 2, one `error: ...` line on stderr, no traceback."""
    assert done.returncode in (1, 2), (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr
    return done.stderr


def test_kubearc_hub_on_an_unsupported_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url, port = "mysql://kube:s3cret@db/hub", str(free_port())  # the hub binds before it opens its database
    done = kubearc("hub", "--state-dir", str(tmp_path), "--port", port, "--no-relay", "--database-url", url)
    one_line_error(done, "cannot start the hub", "'mysql'", "postgresql://")
    assert "s3cret" not in done.stderr


def reachable_cluster(hub: RunningHub, name: str) -> None:
    """A connected cluster that has reported its apiserver CA: `listClusterUserCredential` answers."""
    cluster = connected(hub, name)
    ca = pki.create_ca("apiserver")
    with cluster.agent_client() as agent:
        body = {"clusterCertificateAuthority": ca.cert_pem.decode(), "apiserverServerName": "kubernetes"}
        assert agent.put("/agent/v1/metadata", json=body).status_code == 200


def test_kubearc_proxy_on_a_port_in_use_is_one_line(
    hub: RunningHub, signed_in: dict[str, str], tmp_path: Path
) -> None:
    reachable_cluster(hub, "busy-port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        kubeconfig = tmp_path / "kubeconfig"
        done = kubearc(
            "proxy", "-n", "busy-port", "-g", "rg1", "--port", str(port), "-f", str(kubeconfig), env=signed_in
        )
    one_line_error(done, f"port {port} is in use", "--port")
    assert not kubeconfig.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"apiVersion: v1\nclusters: [\n  {name: a, cluster: {server: x}\n",  # not YAML
        b"- just\n- a list\n",  # YAML, not a kubeconfig
        b"apiVersion: v1\nclusters: 5\n",  # a kubeconfig with a wrong field
    ],
    ids=["not-yaml", "not-a-mapping", "bad-clusters"],
)
def test_kubearc_proxy_with_a_malformed_kubeconfig_is_one_line_and_leaves_it_alone(
    hub: RunningHub, signed_in: dict[str, str], tmp_path: Path, content: bytes
) -> None:
    reachable_cluster(hub, "bad-config")
    (tmp_path / "kube").mkdir()
    kubeconfig = tmp_path / "kube" / "config"
    kubeconfig.write_bytes(content)
    before = kubeconfig.stat()
    done = kubearc(
        "proxy", "-n", "bad-config", "-g", "rg1", "--port", "0", "-f", str(kubeconfig), env=signed_in
    )
    one_line_error(done, str(kubeconfig), "-f")
    assert kubeconfig.read_bytes() == content and kubeconfig.stat().st_mtime_ns == before.st_mtime_ns
    assert [p.name for p in kubeconfig.parent.iterdir()] == ["config"]  # no temporary file left


def _entries(doc: dict[str, Any], kind: str, **changes: Any) -> dict[str, Any]:
    """The cache `doc` with every entry of `kind` changed (None: the key removed)."""
    entries = {k: {f: v for f, v in {**e, **changes}.items() if v is not None} for k, e in doc[kind].items()}
    return {**doc, kind: entries}


# What a cache file may hold after a crash, an editor or a bad merge; each must end in one line
# telling the user to sign in again.
GARBAGE: dict[str, Callable[[dict[str, Any]], str]] = {
    "not-json": lambda doc: "garbage{{{",
    "a-list": lambda doc: "[]",
    "null": lambda doc: "null",
    "entries-not-mappings": lambda doc: json.dumps({**doc, "AccessToken": {"k": "garbage"}}),
    "accounts-a-list": lambda doc: json.dumps({**doc, "Account": [1]}),
    "no-expiry": lambda doc: json.dumps(_entries(doc, "AccessToken", expires_on=None)),
    "expiry-not-a-number": lambda doc: json.dumps(_entries(doc, "AccessToken", expires_on="soon")),
    "token-not-a-jwt": lambda doc: json.dumps(_entries(doc, "AccessToken", secret="garbage")),
}


@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_a_garbage_token_cache_says_to_sign_in_again(
    hub: RunningHub, signed_in: dict[str, str], garbage: str
) -> None:
    cache = Path(signed_in["KUBEARC_CONFIG_DIR"]) / "msal_token_cache.json"
    cache.write_text(GARBAGE[garbage](json.loads(cache.read_text())))
    for command in (["cluster", "list"], ["role", "assignment", "list", "--scope", f"/subscriptions/{SUB}"]):
        one_line_error(kubearc(*command, env=signed_in), "kubearc login")
    login = ["login", "--hub", hub.url, "-u", "dana@kubearc.test", "--password-stdin"]
    assert CliRunner().invoke(app, login, input=PASSWORD + "\n").exit_code == 0  # and signing in again works
    assert kubearc("cluster", "list", env=signed_in).returncode == 0


@pytest.mark.parametrize("garbage", ["garbage{{{", "[]"])
def test_a_garbage_saved_session_says_to_sign_in_again(
    hub: RunningHub, signed_in: dict[str, str], garbage: str
) -> None:
    config = Path(signed_in["KUBEARC_CONFIG_DIR"]) / "config.json"
    config.write_text(garbage)
    without_subscription = {**signed_in, "KUBEARC_SUBSCRIPTION": ""}  # read from the saved session
    for env in (signed_in, without_subscription):
        one_line_error(kubearc("cluster", "list", env=env), str(config), "kubearc login")
    login = ["login", "--hub", hub.url, "--ca-file", hub.ca, "-u", "dana@kubearc.test", "--password-stdin"]
    assert CliRunner().invoke(app, login, input=PASSWORD + "\n").exit_code == 0
    assert kubearc("cluster", "list", env=signed_in).returncode == 0
