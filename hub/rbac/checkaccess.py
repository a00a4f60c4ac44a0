"""Azure's checkAccess (`POST {scope}/providers/Microsoft.Authorization/checkaccess`), wire-compatible.

guard in a cluster sends the same body to Azure or to the hub, so the request is
read the way Azure reads it (PascalCase keys, case-insensitively) and the answer
has Azure's shape: one decision per action, in order, each with the assignment
that granted it and a time-to-live. Allow and deny get separate TTLs: a grant may
be cached longer than a refusal, so a fresh role assignment takes effect fast.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.ext.asyncio import AsyncSession

from hub.auth import Principal
from hub.directory import member_groups
from hub.errors import bad_request, forbidden
from hub.rbac.engine import Decision, check_access, is_allowed
from hub.rbac.roles import definition_id
from hub.rbac.scopes import Scope, child_id
from hub.resources import scope_key, scope_within

MAX_ACTIONS = 200
ALLOWED_TTL_MS = 300_000
NOT_ALLOWED_TTL_MS = 30_000
CHECK_ACCESS_ACTION = "Microsoft.Authorization/checkAccess/action"

_KEYS = {
    k.lower(): k
    for k in (
        "Subject",
        "Attributes",
        "ObjectId",
        "Groups",
        "Actions",
        "Id",
        "IsDataAction",
        "Resource",
        "Type",
    )
}


class SubjectAttributes(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ObjectId: str
    Groups: list[str] | None = None

    @field_validator("ObjectId")
    @classmethod
    def _guid(cls, v: str) -> str:
        try:
            return str(uuid.UUID(v))
        except ValueError:
            raise ValueError(f"{v!r} is not an object id (GUID)") from None


class SubjectInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    Attributes: SubjectAttributes


class ActionInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    Id: str = Field(min_length=1, max_length=1024)
    IsDataAction: bool = False
    Attributes: dict[str, Any] | None = None


class ResourceInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    Id: str | None = None
    Type: str | None = None
    Attributes: dict[str, Any] | None = None


class CheckAccessRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    Subject: SubjectInfo
    Actions: list[ActionInfo] = Field(min_length=1, max_length=MAX_ACTIONS)
    Resource: ResourceInfo | None = None


def _canon(obj: Any, where: str) -> Any:
    """Rename known keys to their PascalCase spelling; a key given twice (in any case) is a 400."""
    if not isinstance(obj, dict):
        return obj
    out: dict[Any, Any] = {}
    for key, value in obj.items():
        name = _KEYS.get(key.lower(), key) if isinstance(key, str) else key
        if name in out:
            raise bad_request(
                f"{where}: key {name!r} appears more than once (keys compare case-insensitively)"
            )
        out[name] = value
    return out


def parse_request(data: Any) -> CheckAccessRequest:
    """Validate a checkAccess body; the 400 names each bad field."""
    if not isinstance(data, dict):
        raise bad_request("the checkAccess body must be a JSON object with Subject, Actions and Resource")
    body = _canon(data, "body")
    subject = body.get("Subject") or None
    if isinstance(subject, dict):
        subject = _canon(subject, "Subject")
        if isinstance(subject.get("Attributes"), dict):
            subject["Attributes"] = _canon(subject["Attributes"], "Subject.Attributes")
        body["Subject"] = subject
    actions = body.get("Actions")
    if isinstance(actions, list):
        if len(actions) > MAX_ACTIONS:
            raise bad_request(
                f"Actions has {len(actions)} entries; at most {MAX_ACTIONS} actions are allowed per request",
                "TooManyActions",
            )
        body["Actions"] = [_canon(a, f"Actions[{i}]") for i, a in enumerate(actions)]
    if isinstance(body.get("Resource"), dict):
        body["Resource"] = _canon(body["Resource"], "Resource")
    try:
        return CheckAccessRequest.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise bad_request(f"invalid checkAccess body: {problems}") from None


async def authorize_caller(
    session: AsyncSession, caller: Principal, scope: Scope, request: CheckAccessRequest
) -> bool:
    """May `caller` ask this question? Returns True when it asks about itself (groups then come
    from its own token, not from the body). Raises 403 otherwise, unless it is the scope's cluster
    agent or holds checkAccess/action at the scope."""
    key = scope_key(scope.path)
    subject = request.Subject.Attributes.ObjectId
    if caller.kind == "agent":
        if scope.cluster_path and scope_within(key, caller.object_id):
            return False
        raise forbidden(
            f"cluster agent {caller.name!r} may only check access within its own cluster, "
            f"not at {scope.path!r}"
        )
    if await is_allowed(session, caller.principal_ids, scope.path, CHECK_ACCESS_ACTION):
        return False
    if subject == caller.object_id.lower():
        return True
    raise forbidden(
        f"The client '{caller.name}' with object id '{caller.object_id}' does not have authorization to "
        f"perform action '{CHECK_ACCESS_ACTION}' over scope '{scope.path}' (a caller without it may "
        "only check its own access)"
    )


async def evaluate(
    session: AsyncSession, caller: Principal, scope: Scope, request: CheckAccessRequest
) -> list[dict[str, Any]]:
    """Decide every action; the subject's groups are the body's (or, for a self-check, the token's)
    plus those the hub's directory knows for it."""
    self_check = await authorize_caller(session, caller, scope, request)
    oid = request.Subject.Attributes.ObjectId
    groups = set(caller.groups) if self_check else set(request.Subject.Attributes.Groups or [])
    groups |= set(await member_groups(session, oid))
    actions = [(a.Id, a.IsDataAction) for a in request.Actions]
    decisions = await check_access(session, [oid, *sorted(groups)], scope.path, actions)
    return [render(d) for d in decisions]


def render(decision: Decision) -> dict[str, Any]:
    """One decision in Azure's wire shape (what guard's `AuthorizationDecision` decodes)."""
    grant = decision.assignment
    assignment = None
    if decision.allowed and grant is not None:
        assignment = {
            "id": child_id(grant.scope, "roleAssignments", grant.assignment_id),
            "name": grant.assignment_id,
            "roleDefinitionId": definition_id(grant.role.id, grant.scope),
            "principalId": grant.principal_id,
            "principalType": grant.principal_type,
            "scope": grant.scope,
            "condition": None,
            "conditionVersion": None,
            "canDelegate": False,
            "delegatedManagedIdentityResourceId": None,
        }
    return {
        "accessDecision": "Allowed" if decision.allowed else "NotAllowed",
        "actionId": decision.action_id,
        "isDataAction": decision.is_data_action,
        "roleAssignment": assignment,
        "denyAssignment": None,
        "timeToLiveInMs": ALLOWED_TTL_MS if decision.allowed else NOT_ALLOWED_TTL_MS,
    }
