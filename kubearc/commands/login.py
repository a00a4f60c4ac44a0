"""`kubearc login`: sign in to a hub with msal and remember the session.

Against the hub's local issuer (the default) users sign in with username and
password, or without `--username` through the device code flow (the hub's
verification page), and service principals with a client secret; the hub's
`/.well-known/kubearc-configuration` says which issuer, audience and client id
to use. With `--tenant` the authority is that Entra tenant instead (device code
flow for users). `kubearc.session` uses the saved session afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _stdin_line(what: str) -> str:
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise _fail(f"no {what} on standard input")
    return value


def _check_flags(
    password: str | None,
    password_stdin: bool,
    service_principal: bool,
    username: str | None,
    client_id: str | None,
) -> None:
    if password and password_stdin:
        raise _fail("use either --password or --password-stdin")
    if service_principal and username:
        raise _fail("--username is for users; a service principal signs in with --client-id")
    if service_principal and not client_id:
        raise _fail("--service-principal needs --client-id (the appId)")


def _user_password(username: str | None, password: str | None, password_stdin: bool) -> str | None:
    """The password from stdin, the flag or a prompt; none without a username (device code)."""
    if password_stdin:
        password = _stdin_line("password")
    if username and not password:
        if not sys.stdin.isatty():
            raise _fail("no password: use --password-stdin or --password")
        password = typer.prompt("Password", hide_input=True)
    return password


def login(
    hub: str | None = typer.Option(None, "--hub", help="Hub URL, e.g. https://hub.example.com:8443."),
    ca_file: Path | None = typer.Option(
        None, "--ca-file", help="CA bundle that signed the hub's certificate."
    ),
    username: str | None = typer.Option(None, "--username", "-u", help="User principal name."),
    password: str | None = typer.Option(None, "--password", "-p", help="Password (prefer --password-stdin)."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password (or client secret) from standard input."
    ),
    service_principal: bool = typer.Option(
        False, "--service-principal", help="Sign in as a service principal."
    ),
    client_id: str | None = typer.Option(
        None, "--client-id", help="Service principal appId (or public client id)."
    ),
    client_secret: str | None = typer.Option(
        None, "--client-secret", envvar="KUBEARC_CLIENT_SECRET", help="Service principal secret."
    ),
    tenant: str | None = typer.Option(
        None, "--tenant", help="Sign in with this Entra ID tenant, not the hub's."
    ),
) -> None:
    """Sign in to a hub (users: username and password or device code; service principals: secret)."""
    from kubearc import session  # msal and requests load only for commands that sign in

    try:
        hub, ca = session.login_target(hub, ca_file)
        _check_flags(password, password_stdin, service_principal, username, client_id)
        config = session.discover(hub, ca)
        authority, oidc = session.authority_for(config, hub, tenant)
        scope = f"{config.hub_audience}/.default"
        if service_principal:
            secret = client_secret or (_stdin_line("client secret") if password_stdin else None)
            if not secret:
                raise _fail(
                    "--service-principal needs --client-secret, $KUBEARC_CLIENT_SECRET or --password-stdin"
                )
            settings = session.ClientSettings(
                hub, ca, session.SERVICE_PRINCIPAL, authority, oidc, str(client_id), scope
            )
            session.sign_in_service_principal(settings, secret)
            who = f"service principal {client_id}"
        else:
            default_client = config.cli_client_id if oidc else session.ENTRA_CLI_CLIENT_ID
            settings = session.ClientSettings(
                hub, ca, session.USER, authority, oidc, client_id or default_client, scope
            )
            password = _user_password(username, password, password_stdin)
            signed_in = session.sign_in_user(settings, username, password, lambda m: typer.echo(m, err=True))
            who = str(signed_in.username)
    except session.SessionError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"Signed in to {hub} as {who} (tenant {config.tenant_id or tenant}).")
