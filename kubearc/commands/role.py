"""`kubearc role`: role definitions and role assignments over the hub's ARM-shaped API.

The verbs and flags follow `az role` so that muscle memory and scripts carry
over; output is the hub's JSON. Every hub error becomes one line on stderr and
exit status 1 (never a traceback).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

if TYPE_CHECKING:
    import httpx

app = typer.Typer(no_args_is_help=True, help="Role definitions and role assignments.")
assignment_app = typer.Typer(no_args_is_help=True, help="Role assignments: who holds which role where.")
definition_app = typer.Typer(no_args_is_help=True, help="Built-in and custom role definitions.")
app.add_typer(assignment_app, name="assignment")
app.add_typer(definition_app, name="definition")

API_VERSION = "2022-04-01"
AUTHZ = "providers/Microsoft.Authorization"
PRINCIPAL_TYPES = ("User", "Group", "ServicePrincipal")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _client() -> httpx.Client:
    # Imported here: the session module pulls in msal, which `kubearc --help` does not need.
    import httpx

    from kubearc.session import SessionError, hub_client

    try:
        return hub_client()
    except SessionError as exc:
        _fail(str(exc))
    except (OSError, httpx.HTTPError) as exc:
        _fail(f"cannot reach the hub: {exc}")


def _call(
    client: httpx.Client, method: str, path: str, *, params: dict[str, str] | None = None, **kw: Any
) -> Any:
    """One hub request; the hub's `{"error": {...}}` becomes the error line."""
    import httpx

    from kubearc.session import SessionError

    try:
        response = client.request(method, path, params={"api-version": API_VERSION, **(params or {})}, **kw)
    except SessionError as exc:
        _fail(str(exc))
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the hub: {exc}")
    if response.status_code >= 400:
        try:
            err = response.json()["error"]
            message = f"{err['code']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:500] or response.reason_phrase
        again = ": sign in again with `kubearc login`" if response.status_code == 401 else ""
        _fail(f"{method} {path} failed ({response.status_code}) {message}{again}")
    return response.json() if response.content else None


def _scope(scope: str) -> str:
    scope = scope.strip()
    return "/" + scope.strip("/") if scope.strip("/") else "/"


def _under(scope: str, tail: str) -> str:
    return f"{_scope(scope).rstrip('/')}/{AUTHZ}/{tail}"


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _role_id(client: httpx.Client, role: str, scope: str) -> str:
    """A role definition id from a GUID, a full id, or a role name (looked up at `scope`)."""
    if "/roledefinitions/" in role.lower() or _is_guid(role):
        return role
    quoted = role.replace("'", "''")
    found = _call(
        client, "GET", _under(scope, "roleDefinitions"), params={"$filter": f"roleName eq '{quoted}'"}
    )
    values = found.get("value", []) if isinstance(found, dict) else []
    if not values:
        _fail(f"no role definition named {role!r} is assignable at {_scope(scope)!r}")
    return str(values[0]["id"])


# ---- role assignment -----------------------------------------------------------------------------


@assignment_app.command("create")
def assignment_create(
    assignee: str = typer.Option(
        ..., "--assignee", help="Object id of the user, group or service principal."
    ),
    role: str = typer.Option(..., "--role", help="Role name or role definition id."),
    scope: str = typer.Option(..., "--scope", help="Scope, e.g. a connected cluster's resource id."),
    principal_type: str = typer.Option(
        "User", "--assignee-principal-type", help="User, Group or ServicePrincipal."
    ),
) -> None:
    """Assign a role to a principal at a scope."""
    if principal_type not in PRINCIPAL_TYPES:
        _fail(f"--assignee-principal-type must be one of {', '.join(PRINCIPAL_TYPES)}")
    with _client() as client:
        body = {
            "properties": {
                "roleDefinitionId": _role_id(client, role, scope),
                "principalId": assignee,
                "principalType": principal_type,
            }
        }
        _print(_call(client, "PUT", _under(scope, f"roleAssignments/{uuid.uuid4()}"), json=body))


def _matching(
    client: httpx.Client, scope: str, assignee: str | None, role: str | None, exact: bool
) -> list[Any]:
    params = {"$filter": f"principalId eq '{assignee}'"} if assignee else {}
    if exact:
        params["$filter"] = " and ".join(f for f in ("atScope()", params.get("$filter")) if f)
    found = _call(client, "GET", _under(scope, "roleAssignments"), params=params)["value"]
    if exact:
        want = _scope(scope).lower()
        found = [a for a in found if str(a["properties"]["scope"]).lower() == want]
    if role:
        role_guid = _role_id(client, role, scope).rsplit("/", 1)[-1].lower()
        found = [
            a for a in found if a["properties"]["roleDefinitionId"].rsplit("/", 1)[-1].lower() == role_guid
        ]
    return found


@assignment_app.command("list")
def assignment_list(
    scope: str = typer.Option(..., "--scope", help="Lists assignments at, above and below this scope."),
    assignee: str | None = typer.Option(None, "--assignee", help="Only this principal's object id."),
    role: str | None = typer.Option(None, "--role", help="Only this role (name or id)."),
    at_scope: bool = typer.Option(False, "--at-scope", help="Only assignments exactly at --scope."),
) -> None:
    """List role assignments."""
    with _client() as client:
        _print(_matching(client, scope, assignee, role, at_scope))


@assignment_app.command("delete")
def assignment_delete(
    ids: list[str] = typer.Option(None, "--ids", help="Full role assignment ids (repeatable)."),
    assignee: str | None = typer.Option(None, "--assignee", help="Object id whose assignments to delete."),
    role: str | None = typer.Option(None, "--role", help="Role name or id whose assignments to delete."),
    scope: str | None = typer.Option(None, "--scope", help="Scope of the assignments to delete."),
) -> None:
    """Delete role assignments by id, or those exactly at --scope matching --assignee/--role."""
    if ids and (assignee or role):
        _fail("use either --ids or --assignee/--role/--scope")
    if not ids and not scope:
        _fail("give --ids, or --scope with --assignee and/or --role")
    if not ids and not (assignee or role):
        _fail("refusing to delete every assignment at the scope: add --assignee and/or --role")
    deleted: list[Any] = []
    with _client() as client:
        if ids:
            for assignment_id in ids:
                if "/providers/microsoft.authorization/roleassignments/" not in assignment_id.lower():
                    _fail(
                        f"{assignment_id!r} is not a role assignment id (.../{AUTHZ}/roleAssignments/<guid>)"
                    )
                if scope and not assignment_id.lower().startswith(_scope(scope).rstrip("/").lower() + "/"):
                    _fail(f"{assignment_id!r} is not at --scope {scope!r}")
                result = _call(client, "DELETE", assignment_id)
                if result is None:
                    _fail(f"role assignment {assignment_id!r} does not exist")
                deleted.append(result)
        else:
            assert scope is not None
            matches = _matching(client, scope, assignee, role, exact=True)
            if not matches:
                _fail(f"no role assignment at {_scope(scope)!r} matches --assignee/--role")
            deleted = [_call(client, "DELETE", a["id"]) for a in matches]
    _print(deleted)


# ---- role definition -----------------------------------------------------------------------------


@definition_app.command("list")
def definition_list(
    name: str | None = typer.Option(None, "--name", "-n", help="Only the role with this name (or id)."),
    scope: str = typer.Option("/", "--scope", help="Roles assignable at this scope."),
    custom_role_only: bool = typer.Option(False, "--custom-role-only", help="Only custom roles."),
) -> None:
    """List role definitions."""
    with _client() as client:
        if name and (_is_guid(name) or "/roledefinitions/" in name.lower()):
            guid = name.rsplit("/", 1)[-1]
            roles = [_call(client, "GET", _under(scope, f"roleDefinitions/{guid}"))]
        else:
            clauses = []
            if name:
                clauses.append("roleName eq '{}'".format(name.replace("'", "''")))
            if custom_role_only:
                clauses.append("type eq 'CustomRole'")
            params = {"$filter": " and ".join(clauses)} if clauses else {}
            roles = _call(client, "GET", _under(scope, "roleDefinitions"), params=params)["value"]
    if custom_role_only:
        roles = [r for r in roles if r["properties"]["type"] == "CustomRole"]
    _print(roles)


_AZ_KEYS = {
    "name": "roleName",
    "rolename": "roleName",
    "description": "description",
    "actions": "actions",
    "notactions": "notActions",
    "dataactions": "dataActions",
    "notdataactions": "notDataActions",
    "assignablescopes": "assignableScopes",
}


def _load_definition(source: str) -> tuple[str, dict[str, Any]]:
    """(role id, ARM body) from an `az role definition create` JSON or an ARM role definition."""
    path = Path(source)
    try:
        text = path.read_text() if not source.lstrip().startswith("{") and path.is_file() else source
    except OSError as exc:
        _fail(f"cannot read {source!r}: {exc}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"--role-definition is neither a readable file nor valid JSON: {exc}")
    if not isinstance(data, dict):
        _fail("--role-definition must be a JSON object")
    role_id = str(data.get("id") or data.get("Id") or "").rsplit("/", 1)[-1]
    if isinstance(data.get("properties"), dict):
        props = data["properties"]
        role_id = role_id or str(data.get("name") or "")
    else:
        flat = {_AZ_KEYS[k.lower()]: v for k, v in data.items() if k.lower() in _AZ_KEYS}
        perms = {k: flat.pop(k, []) for k in ("actions", "notActions", "dataActions", "notDataActions")}
        props = {**flat, "permissions": [perms]}
    if not role_id or not _is_guid(role_id):
        role_id = str(uuid.uuid4())
    scopes = props.get("assignableScopes")
    if not isinstance(scopes, list) or not scopes or not isinstance(scopes[0], str):
        _fail("the role definition needs AssignableScopes (a list of scopes)")
    return role_id, {"properties": props}


@definition_app.command("create")
def definition_create(
    role_definition: str = typer.Option(
        ..., "--role-definition", help="JSON file or JSON text (az format or ARM roleDefinition)."
    ),
) -> None:
    """Create (or update, when the JSON carries an existing id) a custom role."""
    role_id, body = _load_definition(role_definition)
    scope = body["properties"]["assignableScopes"][0]
    with _client() as client:
        _print(_call(client, "PUT", _under(scope, f"roleDefinitions/{role_id}"), json=body))


@definition_app.command("delete")
def definition_delete(
    name: str = typer.Option(..., "--name", "-n", help="Custom role name or id."),
    scope: str = typer.Option("/", "--scope", help="Scope the role is assignable at."),
) -> None:
    """Delete a custom role (refused while it is assigned)."""
    with _client() as client:
        role_id = _role_id(client, name, scope).rsplit("/", 1)[-1]
        result = _call(client, "DELETE", _under(scope, f"roleDefinitions/{role_id}"))
    if result is None:
        _fail(f"role definition {name!r} does not exist")
    _print(result)
