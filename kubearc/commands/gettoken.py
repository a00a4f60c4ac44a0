"""`kubearc get-token`: a client-go exec credential plugin, like kubelogin's `get-token`.

kubectl runs it from a kubeconfig user (`exec:`), reads the `ExecCredential` it
prints on stdout and passes its stderr to the person. The token comes from
msal's token cache, the one `kubearc login` fills (a cached refresh token is
used silently, for any audience); only when nothing usable is cached does it
sign in: the device code flow (`--login devicecode`, the message on stderr),
username and password (`--login ropc`, the password on `--password-stdin`) or a
service principal's client credentials (`--login spn --client-id APP`, the
secret in `$KUBEARC_CLIENT_SECRET` or saved by `kubearc login --service-principal`,
never on the command line).

Where to sign in: the hub's local issuer (`--hub`, default the hub of `kubearc
login`; its discovery document names the issuer and client id), or an Entra
tenant (`--tenant`). The token is for `--server-id` (scope `SERVER_ID/.default`):
the audience guard or kube-aad-proxy accept, `--audience` there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from foundation.wire import CLUSTER_AUDIENCE, ENTRA_AUTHORITY

EXEC_APIS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
INSTALL_HINT = (
    "kubearc is not on PATH: install it (pip install kubearc) or put the directory that holds it on PATH"
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _exec_api() -> str:
    """The ExecCredential version kubectl asked for (`$KUBERNETES_EXEC_INFO`), v1 when run by hand."""
    raw = os.environ.get("KUBERNETES_EXEC_INFO", "")
    if not raw:
        return EXEC_APIS[0]
    try:
        version = json.loads(raw).get("apiVersion")
    except (ValueError, AttributeError):
        raise _fail(
            "$KUBERNETES_EXEC_INFO is not an ExecCredential: run get-token from kubectl or by hand"
        ) from None
    if version not in EXEC_APIS:
        raise _fail(
            f"kubectl asked for ExecCredential {version}; kubearc get-token speaks {', '.join(EXEC_APIS)}: "
            "set the kubeconfig user's exec.apiVersion to client.authentication.k8s.io/v1"
        )
    return str(version)


def _infer_login(login: str | None, username: str | None, client_id: str | None) -> str:
    from kubearc import session

    if login:
        if login not in session.LOGINS:
            raise _fail(f"--login {login} is not one of {', '.join(session.LOGINS)}")
        return login
    if username:
        return session.ROPC
    if client_id and os.environ.get(session.SECRET_ENV):
        return session.SPN
    return session.DEVICE_CODE


def exec_credential(api_version: str, token: str, expires_in: int | None) -> dict[str, Any]:
    status: dict[str, Any] = {"token": token}
    if expires_in is not None:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(expires_in))
        status["expirationTimestamp"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": api_version, "kind": "ExecCredential", "status": status}


def get_token(
    login: str | None = typer.Option(
        None,
        "--login",
        "-l",
        help="devicecode, ropc or spn (default: ropc with --username, spn with --client-id and "
        "$KUBEARC_CLIENT_SECRET, else devicecode).",
    ),
    hub: str | None = typer.Option(None, "--hub", help="Hub URL (default: the hub of `kubearc login`)."),
    ca_file: Path | None = typer.Option(None, "--ca-file", help="CA bundle of the hub's certificate."),
    tenant: str | None = typer.Option(
        None, "--tenant", "-t", help="Sign in at this Entra tenant, not the hub's issuer."
    ),
    client_id: str | None = typer.Option(
        None, "--client-id", help="Public client id, or the service principal's appId with --login spn."
    ),
    server_id: str = typer.Option(
        CLUSTER_AUDIENCE,
        "--server-id",
        "--audience",
        help="Audience of the apiserver's token (guard's --audience); the scope is SERVER_ID/.default.",
    ),
    username: str | None = typer.Option(
        None, "--username", "-u", help="Which cached account; with ropc the user to sign in."
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="ropc: read the password from standard input."
    ),
) -> None:
    """Print an ExecCredential for kubectl (client-go exec plugin); sign in on stderr if needed."""
    from kubearc import session

    api_version = _exec_api()
    mode = _infer_login(login, username, client_id)
    if mode == session.SPN and not client_id:
        raise _fail("--login spn needs --client-id (the service principal's appId)")
    if password_stdin and mode != session.ROPC:
        raise _fail("--password-stdin is for --login ropc")
    scope = server_id if server_id.endswith("/.default") else f"{server_id.rstrip('/')}/.default"
    try:
        saved: session.ClientSettings | None = session.ClientSettings.load()
    except session.SessionError:
        saved = None
    try:
        if tenant:  # Entra: no need to ask the hub anything
            hub_url, ca = (hub or (saved.hub_url if saved else "")).rstrip("/"), None
            authority, oidc = f"{ENTRA_AUTHORITY}/{tenant}", False
            default_client = session.ENTRA_CLI_CLIENT_ID
        else:
            hub_url, ca = session.login_target(hub, ca_file)
            config = session.discover(hub_url, ca)
            authority, oidc = session.authority_for(config, hub_url, tenant)
            default_client = config.cli_client_id if oidc else session.ENTRA_CLI_CLIENT_ID
        settings = session.ClientSettings(
            hub_url,
            ca,
            session.SERVICE_PRINCIPAL if mode == session.SPN else session.USER,
            authority,
            oidc,
            client_id or default_client,
            scope,
        )
        preferred = (
            saved.username
            if saved and saved.auth_mode == session.USER and saved.authority == authority
            else None
        )
        result = session.acquire_token(
            settings,
            mode,
            username=username,
            password=_stdin_password if password_stdin else None,
            preferred_username=preferred,
            show=lambda message: typer.echo(message, err=True),
        )
    except session.SessionError as exc:
        raise _fail(str(exc)) from None
    credential = exec_credential(api_version, str(result["access_token"]), result.get("expires_in"))
    sys.stdout.write(json.dumps(credential) + "\n")
    sys.stdout.flush()


def _stdin_password() -> str:
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise _fail("no password on standard input")
    return value


def exec_args(settings: Any, server_id: str) -> list[str]:
    """`get-token`'s arguments for a saved `kubearc login` (`session.ClientSettings`), as kubeconfigs
    carry them: the hub and its CA, Entra's tenant if it is one, the user's or service principal's
    client id, the apiserver's audience."""
    from kubearc import session

    args = ["get-token", "--hub", settings.hub_url]
    if settings.ca_file:
        args += ["--ca-file", str(settings.ca_file)]
    if not settings.oidc_authority:
        args += ["--tenant", settings.authority.rstrip("/").rsplit("/", 1)[-1]]
    spn = settings.auth_mode == session.SERVICE_PRINCIPAL
    args += ["--login", session.SPN if spn else session.DEVICE_CODE]
    if settings.client_id:
        args += ["--client-id", settings.client_id]
    return [*args, "--server-id", server_id]


def login_exec_user(server_id: str) -> dict[str, Any]:
    """The kubeconfig user that runs `kubearc get-token` for the saved `kubearc login`."""
    from foundation import kubeconfig
    from kubearc import session

    try:
        settings = session.ClientSettings.load()
    except session.SessionError as exc:
        raise _fail(str(exc)) from None
    return kubeconfig.exec_user("kubearc", exec_args(settings, server_id), INSTALL_HINT)
