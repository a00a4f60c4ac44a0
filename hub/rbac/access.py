"""Authorizing the hub's own API with the RBAC engine (the same one checkAccess uses).

It lives with RBAC because it is RBAC's answer to one question (may this caller
do this here?); the route modules of every resource ask it, and it imports none
of them.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from hub.auth import Principal
from hub.context import Hub
from hub.errors import forbidden
from hub.rbac.assignments import RbacError, find_role
from hub.rbac.engine import is_allowed, role_permits
from hub.resources import scope_key, scope_within
from hub.store.models import RoleAssignment


def _denied(principal: Principal, action: str, scope: str) -> Exception:
    return forbidden(
        f"The client '{principal.name}' with object id '{principal.object_id}' does not have "
        f"authorization to perform action '{action}' over scope '{scope}' or the scope is invalid."
    )


async def require(hub: Hub, principal: Principal, action: str, scope: str) -> None:
    """Raise 403 unless `principal` may perform control-plane `action` at `scope`."""
    async with hub.sessions() as session:
        if not await is_allowed(session, principal.principal_ids, scope, action):
            raise _denied(principal, action, scope)


async def scope_filter(hub: Hub, principal: Principal, action: str) -> Callable[[str], bool]:
    """A predicate telling at which scopes `principal` may perform `action`.

    One query for all of the caller's assignments, then pure checks: listing 10,000
    clusters costs one round trip, not one per cluster.
    """
    async with hub.sessions() as session:
        rows = (
            await session.execute(
                select(RoleAssignment.scope_key, RoleAssignment.role_definition_id).where(
                    RoleAssignment.principal_id.in_([p.lower() for p in principal.principal_ids])
                )
            )
        ).all()
        granting: list[str] = []
        for key, role_id in rows:
            try:
                role = await find_role(session, role_id)
            except RbacError:
                continue
            if role_permits(role, action, False):
                granting.append(key)

    def allowed(scope: str) -> bool:
        key = scope_key(scope)
        return any(scope_within(key, g) for g in granting)

    return allowed
