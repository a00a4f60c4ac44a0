"""`kubearc admin`: bootstrap the hub's directory and role assignments on the hub host.

These commands open the hub's database directly (the state directory's SQLite
file, or `--database-url`), so the first user and the first role assignment can
exist before anyone can sign in. Output is JSON on stdout; bad input gets a
one-line message on stderr and exit code 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from foundation.settings import default_state_dir

app = typer.Typer(
    no_args_is_help=True, help="Bootstrap the hub's directory and role assignments on the hub host."
)
user_app = typer.Typer(no_args_is_help=True, help="Users of the hub's local issuer.")
group_app = typer.Typer(no_args_is_help=True, help="Security groups (may nest).")
sp_app = typer.Typer(no_args_is_help=True, help="Service principals (client id + secret).")
ra_app = typer.Typer(no_args_is_help=True, help="Role assignments.")
ext_app = typer.Typer(no_args_is_help=True, help="The extension catalogue (what k8s-extension installs).")
app.add_typer(user_app, name="user")
app.add_typer(group_app, name="group")
app.add_typer(sp_app, name="sp")
app.add_typer(ra_app, name="role-assignment")
app.add_typer(ext_app, name="extension-type")

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", envvar="KUBEARC_STATE_DIR", help="The hub's state directory (SQLite database)."
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="KUBEARC_DATABASE_URL", help="The hub's database (e.g. PostgreSQL)."
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def _run(state_dir: Path | None, database_url: str | None, operation: str, **kwargs: Any) -> None:
    """Run one operation of `hub.admin` on the hub's database and print its result as JSON."""
    # Imported here: every `kubearc` command loads this module, only `kubearc admin` needs SQLAlchemy.
    from sqlalchemy.exc import SQLAlchemyError

    from hub import admin
    from hub.errors import HubError
    from hub.store.db import sqlite_url

    if database_url:
        url = database_url
    else:
        state = state_dir or default_state_dir()
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _fail(f"cannot create the state directory {state}: {exc}") from None
        url = sqlite_url(state)
    try:
        result = asyncio.run(admin.run(url, getattr(admin, operation), **kwargs))
    except (HubError, ValueError) as exc:  # directory and RBAC errors, bad input: they name the problem
        raise _fail(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise _fail(f"database {_redacted(url)}: {type(exc).__name__}: {first}") from None
    except Exception as exc:  # a CLI prints a message, never a traceback
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    typer.echo(json.dumps(result, indent=2))


def _password(password: str | None, password_stdin: bool) -> str:
    if password and password_stdin:
        raise _fail("use either --password or --password-stdin")
    if password_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise _fail("no password on standard input")
        return value
    if password:
        return password
    if not sys.stdin.isatty():
        raise _fail("no password: use --password-stdin (or --password)")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


# ---------------------------------------------------------------- users


@user_app.command("create")
def user_create(
    upn: str = typer.Argument(..., help="userPrincipalName, e.g. alice@example.com"),
    display_name: str | None = typer.Option(None, "--display-name"),
    password: str | None = typer.Option(None, "--password", help="Password (prefer --password-stdin)."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from standard input."
    ),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a user who can sign in with `kubearc login --username`."""
    secret = _password(password, password_stdin)
    _run(state_dir, database_url, "user_create", upn=upn, password=secret, display_name=display_name)


@user_app.command("list")
def user_list(state_dir: StateDir = None, database_url: DatabaseUrl = None) -> None:
    _run(state_dir, database_url, "user_list")


@user_app.command("reset-password")
def user_reset_password(
    user: str = typer.Argument(..., help="UPN or object id"),
    password: str | None = typer.Option(None, "--password"),
    password_stdin: bool = typer.Option(False, "--password-stdin"),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Set a new password; the user's existing refresh tokens stop working."""
    secret = _password(password, password_stdin)
    _run(state_dir, database_url, "user_reset_password", user=user, password=secret)


@user_app.command("delete")
def user_delete(
    user: str = typer.Argument(..., help="UPN or object id"),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    _run(state_dir, database_url, "delete", ref=user, kind="user")


# ---------------------------------------------------------------- groups


@group_app.command("create")
def group_create(
    name: str = typer.Argument(..., help="Display name"),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    _run(state_dir, database_url, "group_create", name=name)


@group_app.command("list")
def group_list(state_dir: StateDir = None, database_url: DatabaseUrl = None) -> None:
    _run(state_dir, database_url, "group_list")


@group_app.command("add-member")
def group_add_member(
    group: str = typer.Argument(..., help="Group object id or unique display name"),
    member: str = typer.Argument(..., help="Object id, UPN, appId or group name"),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    _run(state_dir, database_url, "group_add_member", group=group, member=member)


@group_app.command("remove-member")
def group_remove_member(
    group: str = typer.Argument(...),
    member: str = typer.Argument(...),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    _run(state_dir, database_url, "group_remove_member", group=group, member=member)


@group_app.command("members")
def group_members(
    group: str = typer.Argument(...), state_dir: StateDir = None, database_url: DatabaseUrl = None
) -> None:
    """Direct members of a group."""
    _run(state_dir, database_url, "group_members", group=group)


@group_app.command("delete")
def group_delete(
    group: str = typer.Argument(...), state_dir: StateDir = None, database_url: DatabaseUrl = None
) -> None:
    _run(state_dir, database_url, "delete", ref=group, kind="group")


# ---------------------------------------------------------------- service principals


@sp_app.command("create")
def sp_create(
    name: str = typer.Argument(..., help="Display name"),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a service principal; its secret is printed once and cannot be shown again."""
    _run(state_dir, database_url, "sp_create", name=name)


@sp_app.command("list")
def sp_list(state_dir: StateDir = None, database_url: DatabaseUrl = None) -> None:
    _run(state_dir, database_url, "sp_list")


@sp_app.command("delete")
def sp_delete(
    sp: str = typer.Argument(..., help="appId or object id"),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    _run(state_dir, database_url, "delete", ref=sp, kind="servicePrincipal")


# ---------------------------------------------------------------- role assignments


@ra_app.command("create")
def role_assignment_create(
    assignee: str = typer.Option(..., "--assignee", help="Object id, UPN, appId or group name"),
    role: str = typer.Option(..., "--role", help="Role name or id, e.g. 'Azure Arc Kubernetes Viewer'"),
    scope: str = typer.Option(..., "--scope", help="e.g. /subscriptions/<sub>/resourceGroups/<rg>"),
    principal_type: str | None = typer.Option(
        None,
        "--assignee-principal-type",
        help="User|Group|ServicePrincipal; needed only for object ids outside the hub's directory (Entra)",
    ),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Assign a role to a user, group or service principal at a scope."""
    if not scope.strip().startswith("/"):
        raise _fail(f"--scope must be an ARM scope starting with '/' (got {scope!r})")
    _run(
        state_dir,
        database_url,
        "role_assignment_create",
        assignee=assignee,
        role=role,
        scope=scope.strip(),
        principal_type=principal_type,
    )


# ---------------------------------------------------------------- the extension catalogue


@ext_app.command("set")
def extension_type_set(
    name: str = typer.Argument(..., help="The extensionType users name, e.g. microsoft.flux"),
    repository: str = typer.Option(
        ..., "--repository", help="https:// Helm repository or oci://registry/path"
    ),
    chart: str = typer.Option(..., "--chart", help="The chart's name in that repository"),
    version: list[str] = typer.Option(
        ..., "--version", help="1.2.3, or 1.3.0-rc.1:preview for another train"
    ),
    release_namespace: str = typer.Option(
        ..., "--release-namespace", help="Default namespace of its release"
    ),
    values_file: Path | None = typer.Option(None, "--values-file", help="Default values (YAML)"),
    ca_file: Path | None = typer.Option(None, "--ca-file", help="CA of a private repository (PEM)"),
    state_dir: StateDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create or replace a catalogue entry."""
    import yaml

    try:
        values = yaml.safe_load(values_file.read_text()) if values_file else {}
        ca = ca_file.read_text() if ca_file else None
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(f"cannot read {values_file or ca_file}: {exc}") from None
    if not isinstance(values, dict):
        raise _fail(f"--values-file {values_file}: a YAML mapping of values")
    _run(
        state_dir,
        database_url,
        "extension_type_set",
        name=name,
        repository=repository,
        chart=chart,
        versions=version,
        release_namespace=release_namespace,
        default_values=values,
        ca_cert=ca,
    )


@ext_app.command("list")
def extension_type_list(state_dir: StateDir = None, database_url: DatabaseUrl = None) -> None:
    _run(state_dir, database_url, "extension_type_list")


@ext_app.command("remove")
def extension_type_remove(
    name: str = typer.Argument(...), state_dir: StateDir = None, database_url: DatabaseUrl = None
) -> None:
    """Remove a catalogue entry (installed extensions of it can still be deleted)."""
    _run(state_dir, database_url, "extension_type_remove", name=name)
