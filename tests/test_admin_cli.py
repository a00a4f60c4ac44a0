"""`kubearc admin` and `kubearc login` (subprocesses) against a running hub, then msal and kubearc.session."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
from typer.testing import CliRunner

from hub import directory
from kubearc import session
from kubearc.cli import app as cli_app
from tests.conftest import RunningHub

PASSWORD = "correct horse battery"
HUB_SCOPE = "api://kubearc-hub/.default"


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap in-process password hashing (each hash records its cost; subprocesses keep the default)."""
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)


def kubearc(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `kubearc ...` (several may run at once; `finish` collects them)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kubearc.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def finish(
    *procs: subprocess.Popen[str], stdins: list[str | None] | None = None
) -> list[tuple[int, str, str]]:
    results = []
    for proc, stdin in zip(procs, stdins or [None] * len(procs), strict=True):
        out, err = proc.communicate(stdin, timeout=60)
        assert "Traceback" not in err, err
        results.append((proc.returncode, out, err))
    return results


def ok(result: tuple[int, str, str]) -> Any:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


def failed(result: tuple[int, str, str], message: str) -> None:
    code, out, err = result
    assert code == 1 and out == "", (code, out, err)
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def cli(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """`kubearc ...` in-process (typer's runner): the same code as a subprocess, minus Python's start-up."""
    result = CliRunner().invoke(cli_app, list(args), input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_admin_bootstraps_directory_for_msal(hub: RunningHub, database_url: str) -> None:
    db = ["--database-url", database_url]
    user, sp = finish(
        kubearc(
            "admin",
            "user",
            "create",
            "Grace@Kubearc.test",
            "--display-name",
            "Grace",
            "--password-stdin",
            *db,
        ),
        kubearc("admin", "sp", "create", "ci", *db),
        stdins=[PASSWORD + "\n", None],
    )
    user, sp = ok(user), ok(sp)
    # In-process from here: the same CLI code without a Python start-up per command.
    group = ok(cli("admin", "group", "create", "platform", *db))
    assert (user["userPrincipalName"], user["displayName"]) == ("grace@kubearc.test", "Grace")
    assert set(sp) >= {"appId", "objectId", "secret"} and sp["objectId"] == sp["id"]
    added = cli("admin", "group", "add-member", "platform", "GRACE@kubearc.test", *db)
    assigned = cli(
        "admin", "role-assignment", "create", "--assignee", "grace@kubearc.test",
        "--role", "Azure Arc Kubernetes Viewer", "--scope", "/subscriptions/s1/resourceGroups/rg1", *db,
    )  # fmt: skip
    assert ok(added) == {"groupId": group["id"], "memberId": user["id"], "added": True}
    properties = ok(assigned)["properties"]
    assert (properties["principalId"], properties["principalType"]) == (user["id"], "User")
    assert properties["roleDefinitionId"].endswith("63f0a09d-1495-4db4-a681-037d84835eb4")

    # What the CLI created signs in with real msal against the running hub. kubearc.session's HTTP
    # client for msal trusts the hub CA despite $REQUESTS_CA_BUNDLE and sends msal's user-realm probe
    # to the hub's port.
    http = session.issuer_http_client(hub.ca, hub.hub.issuer)
    app = msal.PublicClientApplication("kubearc-cli", oidc_authority=hub.hub.issuer, http_client=http)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = app.acquire_token_by_username_password("grace@kubearc.test", PASSWORD, [HUB_SCOPE])
    assert _claims(result["access_token"])["groups"] == [group["id"]], result.get("error_description")
    confidential = msal.ConfidentialClientApplication(
        sp["appId"], client_credential=sp["secret"], oidc_authority=hub.hub.issuer, http_client=http
    )
    assert _claims(confidential.acquire_token_for_client([HUB_SCOPE])["access_token"])["oid"] == sp["id"]
    http.close()


def test_admin_state_dir_and_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    created = cli(
        "admin", "user", "create", "heidi@kubearc.test", "--password-stdin", *state, stdin=PASSWORD + "\n"
    )
    assert ok(created)["userPrincipalName"] == "heidi@kubearc.test"
    assert (tmp_path / "state" / "hub.db").exists()
    monkeypatch.setenv("KUBEARC_STATE_DIR", str(tmp_path / "state"))
    assert [u["userPrincipalName"] for u in ok(cli("admin", "user", "list"))] == ["heidi@kubearc.test"]
    failed(
        cli("admin", "user", "create", "HEIDI@kubearc.test", "--password-stdin", stdin=PASSWORD),
        "already exists",
    )
    failed(cli("admin", "user", "create", "not an upn", "--password", PASSWORD), "user principal name")
    failed(cli("admin", "user", "create", "ivan@kubearc.test", "--password", "short"), "at least 8")
    failed(cli("admin", "user", "create", "ivan@kubearc.test", stdin=""), "--password-stdin")
    failed(cli("admin", "group", "add-member", "heidi@kubearc.test", "heidi@kubearc.test"), "no group")
    ok(cli("admin", "group", "create", "ops"))
    failed(cli("admin", "group", "add-member", "ops", "nobody@kubearc.test"), "nobody@kubearc.test")
    failed(cli("admin", "group", "add-member", "ops", "ops"), "itself")
    ra = ["admin", "role-assignment", "create", "--assignee", "heidi@kubearc.test"]
    failed(cli(*ra, "--role", "No Such Role", "--scope", "/subscriptions/s1"), "No Such Role")
    failed(cli(*ra, "--role", "Reader", "--scope", "subscriptions"), "--scope")
    entra = ["admin", "role-assignment", "create", "--assignee", "7d3c3a4e-0000-4000-8000-000000000000"]
    failed(cli(*entra, "--role", "Reader", "--scope", "/subscriptions/s1"), "--assignee-principal-type")
    external = ok(
        cli(*entra, "--role", "Reader", "--scope", "/subscriptions/s1", "--assignee-principal-type", "Group")
    )
    assert external["properties"]["principalType"] == "Group"
    # A real process too: one line on stderr, exit code 1, no traceback, no password echoed.
    (bad_db,) = finish(
        kubearc("admin", "user", "list", "--database-url", "postgresql://nobody:hunter2@127.0.0.1:1/x")
    )
    failed(bad_db, "database postgresql://nobody:***@127.0.0.1:1/x")
    assert "hunter2" not in bad_db[2]


def test_login_then_session(hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def setup() -> tuple[str, str, str, str]:
        async with hub.hub.sessions() as s:
            user = await directory.create_user(s, "judy@kubearc.test", PASSWORD, "Judy")
            group = await directory.create_group(s, "judy's team")
            await directory.add_member(s, group.id, user.id)
            _, app_id, secret = await directory.create_service_principal(s, "automation")
            return user.id, group.id, app_id, secret

    oid, group, app_id, secret = hub.run(setup())
    config = tmp_path / "config"
    env = {"KUBEARC_CONFIG_DIR": str(config)}
    (signed_in,) = finish(
        kubearc(
            "login",
            "--hub",
            hub.url,
            "--ca-file",
            hub.ca,
            "-u",
            "Judy@kubearc.test",
            "--password-stdin",
            env=env,
        ),
        stdins=[PASSWORD + "\n"],
    )
    code, out, err = signed_in
    assert code == 0, err
    assert "judy@kubearc.test" in out and "eyJ" not in out + err  # says who, never a token
    assert stat.S_IMODE((config / session.CACHE_FILE).stat().st_mode) == 0o600
    saved = json.loads((config / "config.json").read_text())
    assert saved["hub_url"] == hub.url and saved["ca_file"] == hub.ca and saved["auth_mode"] == "user"

    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(config))
    claims = _claims(session.access_token())
    assert (claims["upn"], claims["aud"], claims["groups"]) == (
        "judy@kubearc.test",
        "api://kubearc-hub",
        [group],
    )
    with session.hub_client() as client:
        response = client.post(f"/v1.0/users/{oid}/getMemberGroups", json={"securityEnabledOnly": False})
        assert response.json()["value"] == [group]
        assert client.get("/v1.0/users/judy@kubearc.test").json()["displayName"] == "Judy"

    # A service principal signs in with its secret (the CA is remembered for the same hub).
    sp_login = ["login", "--hub", hub.url, "--service-principal", "--client-id", app_id, "--password-stdin"]
    code, out, err = cli(*sp_login, stdin=secret + "\n")
    assert code == 0 and app_id in out, err
    assert stat.S_IMODE((config / session.SECRET_FILE).stat().st_mode) == 0o600
    assert _claims(session.access_token())["idtyp"] == "app"
    with session.hub_client() as client:  # service principals may read anyone's groups
        response = client.post(f"/v1.0/users/{oid}/getMemberGroups", json={"securityEnabledOnly": True})
        assert response.status_code == 200

    # A failed sign-in is one line naming Entra's error, and saves nothing.
    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "other"))
    code, out, err = cli(
        "login", "--hub", hub.url, "--ca-file", hub.ca, "-u", "judy@kubearc.test", "-p", "wrong pw!"
    )
    assert code == 1 and "AADSTS50126" in err and len(err.splitlines()) == 1
    with pytest.raises(session.SessionError, match="kubearc login"):
        session.access_token()
