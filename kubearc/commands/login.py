"""`kubearc login`: sign in to a hub with msal and remember the session.

Against the hub's local issuer (the default) users sign in with username and
password and service principals with a client secret; the hub's
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
    """Sign in to a hub (users: username and password; service principals: client secret)."""
    from foundation.oidc import ENTRA_AUTHORITY
    from kubearc import session  # msal and requests load only for commands that sign in

    try:
        previous: session.ClientSettings | None = session.ClientSettings.load()
    except session.SessionError:
        previous = None
    hub = (hub or (previous.hub_url if previous else "")).rstrip("/")
    if not hub:
        raise _fail("--hub is required (no hub signed in before)")
    if not hub.startswith("https://"):
        raise _fail(f"hub URL must start with https:// (got {hub!r})")
    ca = (
        str(ca_file.resolve())
        if ca_file
        else (previous.ca_file if previous and previous.hub_url == hub else None)
    )
    if ca and not Path(ca).is_file():
        raise _fail(f"CA file {ca} does not exist")
    if password and password_stdin:
        raise _fail("use either --password or --password-stdin")
    if service_principal and username:
        raise _fail("--username is for users; a service principal signs in with --client-id")
    if service_principal and not client_id:
        raise _fail("--service-principal needs --client-id (the appId)")

    try:
        config = session.discover(hub, ca)
        if tenant:
            authority, oidc = f"{ENTRA_AUTHORITY}/{tenant}", False
        elif config.issuer:
            authority, oidc = config.issuer, True
        else:
            raise session.SessionError(f"{hub} runs no local issuer: sign in with --tenant <Entra tenant id>")
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
            if password_stdin:
                password = _stdin_line("password")
            if username and not password:
                if not sys.stdin.isatty():
                    raise _fail("no password: use --password-stdin or --password")
                password = typer.prompt("Password", hide_input=True)
            if not username and oidc:
                raise _fail(
                    "--username is required: the hub's local issuer has no browser or device-code sign-in"
                )
            signed_in = session.sign_in_user(settings, username, password, lambda m: typer.echo(m, err=True))
            who = str(signed_in.username)
    except session.SessionError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"Signed in to {hub} as {who} (tenant {config.tenant_id or tenant}).")
