"""ARM's `Microsoft.Authorization` API on the hub: role definitions, role assignments, checkAccess.

Every route sits under `{scope}/providers/Microsoft.Authorization/...` (matched
case-insensitively, as ARM does: `hub/app.py`), so none of them can shadow the cluster routes
mounted after them. `api-version` is accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from hub.auth import current_principal, current_user
from hub.context import Hub, hub_of
from hub.directory import member_groups
from hub.errors import ApiError, bad_request, not_found, read_json, read_model
from hub.rbac import checkaccess, definitions, scopes
from hub.rbac.access import require
from hub.rbac.assignments import (
    PRINCIPAL_TYPES,
    RbacError,
    assignment_to_arm,
    canonical_guid,
    create_assignment,
    find_role,
    list_assignments,
)
from hub.rbac.odata import parse_filter
from hub.rbac.roles import BUILTIN_BY_ID
from hub.resources import scope_key
from hub.store.models import RoleAssignment

AUTHZ = "/providers/Microsoft.Authorization"


def _scope(request: Request) -> scopes.Scope:
    return scopes.parse("/" + str(request.path_params.get("scope", "")))


def _guid(value: str, what: str) -> str:
    try:
        return canonical_guid(value, what)
    except RbacError as exc:
        raise bad_request(str(exc), "InvalidGuid") from None


# ---- role definitions ----------------------------------------------------------------------------


async def list_definitions(request: Request) -> Response:
    await current_user(request)
    scope = _scope(request)
    flt = parse_filter(request.query_params.get("$filter"), {"roleName", "type"}, set())
    async with hub_of(request).sessions() as session:
        roles = await definitions.roles_at(session, scope.path)
    if "roleName" in flt:
        roles = [r for r in roles if r.name.lower() == flt["roleName"].lower()]
    if "type" in flt:
        kind = flt["type"].lower()
        roles = [r for r in roles if ("builtinrole" if r.builtin else "customrole") == kind]
    return JSONResponse({"value": [r.to_arm(scope.path) for r in roles]})


async def get_definition(request: Request) -> Response:
    await current_user(request)
    scope = _scope(request)
    role_id = _guid(request.path_params["role_id"], "role definition id")
    async with hub_of(request).sessions() as session:
        try:
            role = await find_role(session, role_id)
        except RbacError:
            raise not_found(f"role definition {role_id!r}") from None
    return JSONResponse(role.to_arm(scope.path))


async def put_definition(request: Request) -> Response:
    caller = await current_user(request)
    hub = hub_of(request)
    scope = _scope(request)
    role_id = _guid(request.path_params["role_id"], "role definition id")
    if role_id in BUILTIN_BY_ID:
        raise bad_request(
            f"role definition {role_id} is a built-in role and cannot be changed", "BuiltInRole"
        )
    body = await read_model(request, definitions.RoleDefinitionBody)
    assignable = definitions.canonical_scopes(body.properties.assignableScopes)
    async with hub.sessions() as session:
        existing = await definitions.custom_row(session, role_id)
        previous = list(existing.assignable_scopes) if existing else []
    for s in dict.fromkeys([*assignable, *previous]):
        await require(hub, caller, "Microsoft.Authorization/roleDefinitions/write", s)
    async with hub.sessions() as session:
        role, created = await definitions.put_custom_role(
            session, role_id, body.properties, assignable, hub.now()
        )
    return JSONResponse(role.to_arm(scope.path), status_code=201 if created else 200)


async def delete_definition(request: Request) -> Response:
    caller = await current_user(request)
    hub = hub_of(request)
    scope = _scope(request)
    role_id = _guid(request.path_params["role_id"], "role definition id")
    if role_id in BUILTIN_BY_ID:
        raise bad_request(
            f"role definition {role_id} is a built-in role and cannot be deleted", "BuiltInRole"
        )
    async with hub.sessions() as session:
        row = await definitions.custom_row(session, role_id)
        assignable = list(row.assignable_scopes) if row is not None else []
    if row is None:
        return Response(status_code=204)
    for s in assignable:
        await require(hub, caller, "Microsoft.Authorization/roleDefinitions/delete", s)
    async with hub.sessions() as session:
        row = await definitions.custom_row(session, role_id)
        if row is None:
            return Response(status_code=204)
        role = await definitions.delete_custom_role(session, row)
    return JSONResponse(role.to_arm(scope.path))


# ---- role assignments ----------------------------------------------------------------------------


class AssignmentProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")
    roleDefinitionId: str = Field(min_length=1, max_length=600)
    principalId: str = Field(min_length=1, max_length=64)
    principalType: str = "User"
    condition: str | None = None


class AssignmentBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    properties: AssignmentProperties


async def list_role_assignments(request: Request) -> Response:
    caller = await current_user(request)
    hub = hub_of(request)
    scope = _scope(request)
    flt = parse_filter(request.query_params.get("$filter"), {"principalId"}, {"atScope", "assignedTo"})
    await require(hub, caller, "Microsoft.Authorization/roleAssignments/read", scope.path)
    if "principalId" in flt and "assignedTo" in flt:
        raise bad_request("use either principalId eq '...' or assignedTo('...') in $filter, not both")
    async with hub.sessions() as session:
        principals: list[str] | None = None
        if "principalId" in flt:
            principals = [_guid(flt["principalId"], "principalId")]
        elif "assignedTo" in flt:
            oid = _guid(flt["assignedTo"], "assignedTo")
            principals = [oid, *await member_groups(session, oid)]
        rows = await list_assignments(
            session, scope.path, at_scope="atScope" in flt, principal_ids=principals
        )
    return JSONResponse({"value": [assignment_to_arm(r) for r in rows]})


async def _assignment_at(hub: Hub, scope: scopes.Scope, name: str) -> RoleAssignment | None:
    async with hub.sessions() as session:
        row = await session.get(RoleAssignment, name)
    return row if row is not None and row.scope_key == scope_key(scope.path) else None


async def get_role_assignment(request: Request) -> Response:
    caller = await current_user(request)
    hub = hub_of(request)
    scope = _scope(request)
    name = _guid(request.path_params["name"], "role assignment name")
    await require(hub, caller, "Microsoft.Authorization/roleAssignments/read", scope.path)
    row = await _assignment_at(hub, scope, name)
    if row is None:
        raise ApiError(
            404, "RoleAssignmentNotFound", f"role assignment {name} was not found at {scope.path!r}"
        )
    return JSONResponse(assignment_to_arm(row))


async def put_role_assignment(request: Request) -> Response:
    caller = await current_user(request)
    hub = hub_of(request)
    scope = _scope(request)
    name = _guid(request.path_params["name"], "role assignment name")
    body = (await read_model(request, AssignmentBody)).properties
    principal_id = _guid(body.principalId, "principalId")
    if body.principalType not in PRINCIPAL_TYPES:
        raise bad_request(
            f"principalType must be one of {', '.join(PRINCIPAL_TYPES)}, not {body.principalType!r}"
        )
    if body.condition:
        raise bad_request("role assignment conditions (ABAC) are not supported", "ConditionNotSupported")
    await require(hub, caller, "Microsoft.Authorization/roleAssignments/write", scope.path)
    async with hub.sessions() as session:
        try:
            role = await find_role(session, body.roleDefinitionId)
        except RbacError as exc:
            raise bad_request(str(exc), "RoleDefinitionDoesNotExist") from None
        if not role.assignable_at(scope.path):
            raise bad_request(
                f"role {role.name!r} is assignable only at {', '.join(role.assignable_scopes)}, "
                f"not at {scope.path!r}",
                "RoleAssignmentScopeNotAssignableToRoleDefinition",
            )
        key = scope_key(scope.path)
        existing = await session.get(RoleAssignment, name)
        if existing is not None:
            same = (existing.scope_key, existing.role_definition_id, existing.principal_id) == (
                key,
                role.id,
                principal_id,
            )
            if not same:
                raise bad_request(
                    f"role assignment {name} already exists with another scope, role or principal; "
                    "those cannot be updated (delete it and create a new one)",
                    "RoleAssignmentUpdateNotPermitted",
                )
            return JSONResponse(assignment_to_arm(existing), status_code=200)
        twins = await list_assignments(session, scope.path, at_scope=True, principal_ids=[principal_id])
        for twin in twins:
            if twin.scope_key == key and twin.role_definition_id == role.id:
                raise ApiError(
                    409,
                    "RoleAssignmentExists",
                    f"The role assignment already exists (id {assignment_to_arm(twin)['id']}).",
                )
        try:
            row = await create_assignment(
                session, scope.path, role.id, principal_id, body.principalType, hub.now(), name
            )
        except IntegrityError:
            await session.rollback()
            raise ApiError(409, "RoleAssignmentExists", "The role assignment already exists.") from None
        except RbacError as exc:
            raise bad_request(str(exc)) from None
        return JSONResponse(assignment_to_arm(row), status_code=201)


async def delete_role_assignment(request: Request) -> Response:
    caller = await current_user(request)
    hub = hub_of(request)
    scope = _scope(request)
    name = _guid(request.path_params["name"], "role assignment name")
    await require(hub, caller, "Microsoft.Authorization/roleAssignments/delete", scope.path)
    async with hub.sessions() as session:
        row = await session.get(RoleAssignment, name)
        if row is None or row.scope_key != scope_key(scope.path):
            return Response(status_code=204)
        out = assignment_to_arm(row)
        await session.delete(row)
        await session.commit()
    return JSONResponse(out)


# ---- checkAccess ---------------------------------------------------------------------------------


async def check_access(request: Request) -> Response:
    caller = await current_principal(request)
    scope = _scope(request)
    body = checkaccess.parse_request(await read_json(request))
    resource = body.Resource.Id if body.Resource else None
    if resource is not None and scope_key(resource) != scope_key(scope.path):
        raise bad_request(
            f"Resource.Id {resource!r} differs from the scope in the URL {scope.path!r}", "ResourceIdMismatch"
        )
    async with hub_of(request).sessions() as session:
        decisions = await checkaccess.evaluate(session, caller, scope, body)
    return JSONResponse(decisions)


def _routes() -> list[BaseRoute]:
    table: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("roleDefinitions", list_definitions, ["GET"]),
        ("roleDefinitions/{role_id}", get_definition, ["GET"]),
        ("roleDefinitions/{role_id}", put_definition, ["PUT"]),
        ("roleDefinitions/{role_id}", delete_definition, ["DELETE"]),
        ("roleAssignments", list_role_assignments, ["GET"]),
        ("roleAssignments/{name}", get_role_assignment, ["GET"]),
        ("roleAssignments/{name}", put_role_assignment, ["PUT"]),
        ("roleAssignments/{name}", delete_role_assignment, ["DELETE"]),
        ("checkAccess", check_access, ["POST"]),
    ]
    out: list[BaseRoute] = []
    for prefix in ("", "/{scope:path}"):
        for tail, endpoint, methods in table:
            out.append(Route(f"{prefix}{AUTHZ}/{tail}", endpoint, methods=methods))
    return out


routes: list[BaseRoute] = _routes()
