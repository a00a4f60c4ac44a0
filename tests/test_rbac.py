"""The hub's Microsoft.Authorization API end to end: role assignments, custom roles, checkAccess,
and the `kubearc role` command line, over real HTTPS on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import gc
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import typer
from starlette.routing import Match
from typer.testing import CliRunner

from foundation import pki, tokens
from hub.rbac.routes import routes as rbac_routes
from hub.store.models import Cluster, DirectoryObject, GroupMember, IdentityCertificate
from tests.conftest import RunningHub

CC = "Microsoft.Kubernetes/connectedClusters"
AUTHZ = "providers/Microsoft.Authorization"
VIEWER_ID = "63f0a09d-1495-4db4-a681-037d84835eb4"
WRITER_ID = "5b999177-9696-4545-85c7-50de3797e5a1"
OWNER_ID = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
POD_READ = f"{CC}/pods/read"
S1 = "11111111-1111-4111-8111-111111111111"  # a subscription no test assigns anything in
JSON = {"content-type": "application/json"}


@pytest.fixture
def sub() -> str:
    return str(uuid.uuid4())  # ARM subscription ids are GUIDs (the hub refuses others)


def cluster(sub: str, name: str = "c1", rg: str = "rg1") -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{CC}/{name}"


def oid() -> str:
    return str(uuid.uuid4())


def owner_of(hub: RunningHub, scope: str) -> httpx.Client:
    """A client for a fresh user holding Owner at `scope`."""
    user = oid()
    hub.assign(user, "Owner", scope)
    return hub.client(hub.token(user))


def under(scope: str, tail: str) -> str:
    return f"{scope.rstrip('/')}/{AUTHZ}/{tail}"


def put_assignment(
    c: httpx.Client, scope: str, role: str, principal: str, kind: str = "User", name: str | None = None
) -> httpx.Response:
    body = {"properties": {"roleDefinitionId": role, "principalId": principal, "principalType": kind}}
    return c.put(
        under(scope, f"roleAssignments/{name or oid()}"), params={"api-version": "2022-04-01"}, json=body
    )


def check(
    c: httpx.Client,
    scope: str,
    subject: str,
    actions: list[str],
    groups: list[str] | None = None,
    data: bool = True,
) -> httpx.Response:
    attrs: dict[str, Any] = {"ObjectId": subject}
    if groups is not None:
        attrs["Groups"] = groups
    body = {
        "Subject": {"Attributes": attrs},
        "Actions": [{"Id": a, "IsDataAction": data, "Attributes": {}} for a in actions],
        "Resource": {"Id": scope},
    }
    return c.post(under(scope, "checkaccess"), params={"api-version": "2018-09-01-preview"}, json=body)


def decisions(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [d["accessDecision"] for d in r.json()]


def error(r: httpx.Response, status: int) -> dict[str, str]:
    assert r.status_code == status, r.text
    err: dict[str, str] = r.json()["error"]
    assert err["code"] and err["message"]
    return err


# ---- role assignments ----------------------------------------------------------------------------


def test_assignment_lifecycle(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    ns1 = f"{scope}/namespaces/ns1"
    user = oid()
    with owner_of(shared_hub, f"/subscriptions/{sub}") as c:
        name = oid()
        role_id = f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{VIEWER_ID}"
        r = put_assignment(c, scope, role_id, user, name=name)
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["id"] == f"{scope}/{AUTHZ}/roleAssignments/{name}"
        assert created["name"] == name
        assert created["type"] == "Microsoft.Authorization/roleAssignments"
        props = created["properties"]
        assert props["roleDefinitionId"] == role_id
        assert (props["principalId"], props["principalType"], props["scope"]) == (user, "User", scope)
        assert dt.datetime.fromisoformat(props["createdOn"].replace("Z", "+00:00")).tzinfo is not None

        assert c.get(created["id"]).json() == created
        # Same PUT again: idempotent. Same triple under another name: conflict. Changing it: refused.
        assert put_assignment(c, scope, VIEWER_ID, user, name=name).status_code == 200
        assert error(put_assignment(c, scope, VIEWER_ID, user), 409)["code"] == "RoleAssignmentExists"
        changed = put_assignment(c, scope, WRITER_ID, user, name=name)
        assert error(changed, 400)["code"] == "RoleAssignmentUpdateNotPermitted"

        def listed(at: str, flt: str | None = None) -> set[str]:
            params = {"$filter": flt} if flt else {}
            r = c.get(under(at, "roleAssignments"), params=params)
            assert r.status_code == 200, r.text
            return {a["name"] for a in r.json()["value"]}

        assert name in listed(scope)
        assert name in listed(f"/subscriptions/{sub}")  # below
        assert name in listed(ns1)  # above
        assert name in listed(ns1, "atScope()")  # atScope(): at or above, never below
        assert name in listed(scope, "atScope()")
        assert name not in listed(f"/subscriptions/{sub}", "atScope()")
        assert listed(f"/subscriptions/{sub}", f"principalId eq '{user}'") == {name}
        assert listed(cluster(sub, "other")) & {name} == set()
        assert error(c.get(under(scope, "roleAssignments"), params={"$filter": "roleName eq 'x'"}), 400)

        assert decisions(check(c, ns1, user, [POD_READ])) == ["Allowed"]
        r = c.delete(created["id"])
        assert r.status_code == 200 and r.json()["name"] == name
        assert error(c.get(created["id"]), 404)["code"] == "RoleAssignmentNotFound"
        assert c.delete(created["id"]).status_code == 204
        assert decisions(check(c, ns1, user, [POD_READ])) == ["NotAllowed"]


def test_assignment_authorization(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    with shared_hub.client(shared_hub.token(oid())) as nobody:
        assert error(put_assignment(nobody, scope, VIEWER_ID, oid()), 403)["code"] == "AuthorizationFailed"
        assert error(nobody.get(under(scope, "roleAssignments")), 403)
    # Viewer may read assignments (Microsoft.Authorization/*/read) but not write them.
    viewer = oid()
    shared_hub.assign(viewer, "Azure Arc Kubernetes Viewer", scope)
    with shared_hub.client(shared_hub.token(viewer)) as c:
        assert c.get(under(scope, "roleAssignments")).status_code == 200
        assert error(put_assignment(c, scope, VIEWER_ID, oid()), 403)
        assert error(c.get(under(f"/subscriptions/{sub}", "roleAssignments")), 403)
    # Owner of one resource group manages assignments there, not in a sibling group.
    with owner_of(shared_hub, f"/subscriptions/{sub}/resourceGroups/rg1") as c:
        assert put_assignment(c, f"{scope}/namespaces/dev", WRITER_ID, oid()).status_code == 201
        assert error(put_assignment(c, cluster(sub, rg="rg2"), WRITER_ID, oid()), 403)
        assert error(put_assignment(c, f"/subscriptions/{sub}", OWNER_ID, oid()), 403)
    # A Contributor may not assign roles.
    contributor = oid()
    shared_hub.assign(contributor, "Contributor", f"/subscriptions/{sub}")
    with shared_hub.client(shared_hub.token(contributor)) as c:
        assert error(put_assignment(c, scope, VIEWER_ID, oid()), 403)
    with shared_hub.client() as anonymous:
        assert error(anonymous.get(under(scope, "roleAssignments")), 401)
        assert error(put_assignment(anonymous, scope, VIEWER_ID, oid()), 401)


@pytest.mark.parametrize(
    ("path_scope", "problem"),
    [
        (f"/subscriptions/{S1}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", "only"),
        (f"/subscriptions/{S1}/locations/westus", "resourceGroups"),
        (f"/subscriptions/{S1}/resourceGroups/rg/providers/{CC}/c1/namespaces/Not_A_Label", "namespace"),
        (f"/subscriptions/{S1}/resourceGroups/rg/providers/{CC}/c1/pods/p1", "namespaces"),
        ("/tenants/t1", "subscriptions"),
    ],
)
def test_malformed_scopes_are_refused(shared_hub: RunningHub, path_scope: str, problem: str) -> None:
    with owner_of(shared_hub, "/") as c:
        err = error(put_assignment(c, path_scope, VIEWER_ID, oid()), 400)
        assert err["code"] == "InvalidScope" and problem in err["message"]
        err = error(check(c, path_scope, oid(), [POD_READ]), 400)
        assert err["code"] == "InvalidScope"


def test_malformed_assignment_bodies(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    with owner_of(shared_hub, f"/subscriptions/{sub}") as c:
        assert "GUID" in error(put_assignment(c, scope, VIEWER_ID, "not-a-guid"), 400)["message"]
        assert "GUID" in error(put_assignment(c, scope, VIEWER_ID, oid(), name="nope"), 400)["message"]
        unknown = error(put_assignment(c, scope, "No Such Role", oid()), 400)
        assert unknown["code"] == "RoleDefinitionDoesNotExist"
        assert (
            "principalType" in error(put_assignment(c, scope, VIEWER_ID, oid(), kind="Robot"), 400)["message"]
        )
        url = under(scope, f"roleAssignments/{oid()}")
        assert "properties" in error(c.put(url, json={"roleDefinitionId": VIEWER_ID}), 400)["message"]
        assert "JSON" in error(c.put(url, content=b"{not json", headers=JSON), 400)["message"]
        # Assignments by role name work too.
        assert put_assignment(c, scope, "Azure Arc Kubernetes Writer", oid()).status_code == 201


def test_routes_are_case_insensitive_and_leave_cluster_routes_alone(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    user = oid()
    shared_hub.assign(user, "Azure Arc Kubernetes Viewer", scope)
    with owner_of(shared_hub, f"/subscriptions/{sub}") as c:
        lower = scope.lower() + "/providers/microsoft.authorization/ROLEASSIGNMENTS"
        assert c.get(lower).status_code == 200
        body = {
            "subject": {"attributes": {"objectId": user.upper(), "groups": []}},
            "actions": [{"id": POD_READ, "isDataAction": True}],
            "resource": {"id": scope.upper()},
        }
        for spelling in ("checkaccess", "checkAccess", "CHECKACCESS"):
            r = c.post(f"{scope}/providers/Microsoft.Authorization/{spelling}", json=body)
            assert decisions(r) == ["Allowed"], spelling
        assert c.get(under(scope, "checkaccess")).status_code == 405

    def matched(path: str, method: str = "GET") -> bool:
        asgi = {"type": "http", "path": path, "root_path": "", "method": method}
        return any(route.matches(asgi)[0] != Match.NONE for route in rbac_routes)

    assert not matched(scope)
    assert not matched(f"{scope}/listClusterUserCredential", "POST")
    assert not matched(f"/subscriptions/{sub}/resourceGroups/rg1/providers/{CC}")
    assert not matched(f"{scope}/providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations/x")
    assert matched(under(scope, "roleAssignments"))
    assert matched("/providers/Microsoft.Authorization/roleDefinitions")


# ---- role definitions ----------------------------------------------------------------------------


def custom_role(sub: str, name: str, **perms: list[str]) -> dict[str, Any]:
    return {
        "properties": {
            "roleName": name,
            "description": "test role",
            "permissions": [perms],
            "assignableScopes": [f"/subscriptions/{sub}"],
        }
    }


def test_custom_role_lifecycle_wildcards_and_not_actions(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    ns = f"{scope}/namespaces/team"
    role_id = oid()
    name = f"Pod operator {sub}"
    body = custom_role(
        sub,
        name,
        dataActions=[f"{CC}/*/read", f"{CC}/pods/*"],
        notDataActions=[f"{CC}/secrets/*", f"{CC}/pods/exec/action"],
    )
    url = under(f"/subscriptions/{sub}", f"roleDefinitions/{role_id}")
    # Defining a role needs roleDefinitions/write at every assignable scope.
    with shared_hub.client(shared_hub.token(oid())) as nobody:
        assert error(nobody.put(url, json=body), 403)
    with owner_of(shared_hub, f"/subscriptions/{sub}/resourceGroups/rg1") as narrow:
        assert error(narrow.put(url, json=body), 403)
    with owner_of(shared_hub, f"/subscriptions/{sub}") as c:
        r = c.put(url, json=body)
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["name"] == role_id
        assert created["properties"]["type"] == "CustomRole"
        assert (
            created["id"]
            == f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{role_id}"
        )
        assert c.get(url).json()["properties"]["roleName"] == name
        with shared_hub.client(shared_hub.token(oid())) as nobody:
            assert error(nobody.delete(url), 403)
            assert nobody.get(url).status_code == 200  # any signed-in caller may read definitions
        listed = c.get(
            under(f"/subscriptions/{sub}", "roleDefinitions"), params={"$filter": f"roleName eq '{name}'"}
        )
        assert [d["name"] for d in listed.json()["value"]] == [role_id]
        elsewhere = c.get(
            under(f"/subscriptions/{uuid.uuid4()}", "roleDefinitions"),
            params={"$filter": "type eq 'CustomRole'"},
        )
        assert role_id not in {d["name"] for d in elsewhere.json()["value"]}

        # Names may not clash with built-in roles or with another custom role.
        clash = custom_role(sub, "azure arc kubernetes viewer", actions=["x/read"])
        assert error(c.put(under(f"/subscriptions/{sub}", f"roleDefinitions/{oid()}"), json=clash), 409)
        again = custom_role(sub, name, actions=["x/read"])
        assert error(c.put(under(f"/subscriptions/{sub}", f"roleDefinitions/{oid()}"), json=again), 409)
        builtin = under(f"/subscriptions/{sub}", f"roleDefinitions/{VIEWER_ID}")
        assert error(c.put(builtin, json=body), 400)["code"] == "BuiltInRole"
        assert error(c.delete(builtin), 400)
        bad = custom_role(sub, "bad", dataActions=["has space/read"])
        assert (
            "action pattern" in error(c.put(under("/", f"roleDefinitions/{oid()}"), json=bad), 400)["message"]
        )
        bad_scope = custom_role(sub, "bad scope", actions=["x/read"])
        bad_scope["properties"]["assignableScopes"] = ["/subscriptions/s/whatever"]
        assert (
            error(c.put(under("/", f"roleDefinitions/{oid()}"), json=bad_scope), 400)["code"]
            == "InvalidScope"
        )

        user = oid()
        assert put_assignment(c, ns, role_id, user).status_code == 201
        # Not assignable outside its assignable scopes.
        with owner_of(shared_hub, "/") as root:
            err = error(put_assignment(root, cluster(str(uuid.uuid4())), role_id, oid()), 400)
            assert err["code"] == "RoleAssignmentScopeNotAssignableToRoleDefinition"

        actions = [
            f"{CC}/configmaps/read",
            f"{CC}/pods/write",
            f"{CC}/pods/exec/action",
            f"{CC}/secrets/read",
        ]
        assert decisions(check(c, ns, user, actions)) == ["Allowed", "Allowed", "NotAllowed", "NotAllowed"]
        # notDataActions remove only from this role: Writer in the same namespace grants exec.
        shared_hub.assign(user, "Azure Arc Kubernetes Writer", ns)
        assert decisions(check(c, ns, user, actions)) == ["Allowed"] * 4

        # Narrowing below an existing assignment, or deleting while assigned, is refused.
        narrowed = json.loads(json.dumps(body))
        narrowed["properties"]["assignableScopes"] = [cluster(sub, "c2")]
        assert error(c.put(url, json=narrowed), 409)["code"] == "RoleDefinitionHasAssignments"
        assert error(c.delete(url), 409)["code"] == "RoleDefinitionHasAssignments"
        # An update keeps the id and changes what the role grants.
        updated = custom_role(
            sub, name, dataActions=[f"{CC}/*/read"], notDataActions=[f"{CC}/configmaps/read"]
        )
        assert c.put(url, json=updated).status_code == 200
        shared_hub.run(_delete_writer(shared_hub, user))
        assert decisions(check(c, ns, user, actions)) == ["NotAllowed", "NotAllowed", "NotAllowed", "Allowed"]

        for a in c.get(under(ns, "roleAssignments"), params={"$filter": f"principalId eq '{user}'"}).json()[
            "value"
        ]:
            assert c.delete(a["id"]).status_code == 200
        r = c.delete(url)
        assert r.status_code == 200 and r.json()["name"] == role_id
        assert error(c.get(url), 404)
        assert c.delete(url).status_code == 204


async def _delete_writer(hub: RunningHub, user: str) -> None:
    from sqlalchemy import delete

    from hub.store.models import RoleAssignment

    async with hub.hub.sessions() as session:
        await session.execute(
            delete(RoleAssignment).where(
                RoleAssignment.principal_id == user, RoleAssignment.role_definition_id == WRITER_ID
            )
        )
        await session.commit()


# ---- checkAccess ---------------------------------------------------------------------------------


def test_group_subscription_and_resource_group_assignments(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    ns = f"{scope}/namespaces/apps"
    group, user, sub_user, rg_user, other_user = oid(), oid(), oid(), oid(), oid()
    shared_hub.assign(group, "Azure Arc Kubernetes Viewer", scope, "Group")
    shared_hub.assign(sub_user, "Azure Arc Kubernetes Writer", f"/subscriptions/{sub}")
    shared_hub.assign(rg_user, "Azure Arc Kubernetes Writer", f"/subscriptions/{sub}/resourceGroups/rg1")
    shared_hub.assign(other_user, "Azure Arc Kubernetes Writer", "/subscriptions/not-this-one")
    with owner_of(shared_hub, "/") as c:
        # Groups in the subject count (guard sends the token's groups, overage resolved).
        r = check(c, ns, user, [POD_READ], groups=[oid(), group])
        assert decisions(r) == ["Allowed"]
        grant = r.json()[0]["roleAssignment"]
        assert (grant["principalId"], grant["principalType"], grant["scope"]) == (group, "Group", scope)
        assert grant["roleDefinitionId"].endswith(f"/roleDefinitions/{VIEWER_ID}")
        assert decisions(check(c, ns, user, [POD_READ], groups=[])) == ["NotAllowed"]
        assert decisions(check(c, ns, user, [POD_READ])) == ["NotAllowed"]
        # Subscription and resource group assignments reach clusters and namespaces below them.
        for who in (sub_user, rg_user):
            for at in (scope, ns):
                assert decisions(check(c, at, who, [f"{CC}/pods/write"])) == ["Allowed"]
        assert decisions(check(c, cluster(sub, rg="rg2"), rg_user, [POD_READ])) == ["NotAllowed"]
        assert decisions(check(c, scope, other_user, [POD_READ])) == ["NotAllowed"]


def test_directory_groups_are_added_to_the_subject(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    user, group, outer = oid(), oid(), oid()

    async def directory() -> None:
        now = dt.datetime.now(dt.UTC)
        async with shared_hub.hub.sessions() as session:
            session.add(
                DirectoryObject(
                    id=user, kind="user", display_name="u", login=f"{user}@t.test", created_at=now
                )
            )
            for g in (group, outer):
                session.add(DirectoryObject(id=g, kind="group", display_name=g, created_at=now))
            await session.flush()
            session.add(GroupMember(group_id=group, member_id=user))
            session.add(GroupMember(group_id=outer, member_id=group))  # nested
            await session.commit()

    shared_hub.run(directory())
    shared_hub.assign(outer, "Azure Arc Kubernetes Viewer", scope, "Group")
    with owner_of(shared_hub, "/") as c:
        assert decisions(check(c, scope, user, [POD_READ], groups=[])) == ["Allowed"]


def test_checkaccess_limits_and_bad_bodies(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    user = oid()
    shared_hub.assign(user, "Azure Arc Kubernetes Cluster Admin", scope)
    with owner_of(shared_hub, "/") as c:
        many = [f"{CC}/kind{i}/read" for i in range(200)]
        assert decisions(check(c, scope, user, many)) == ["Allowed"] * 200
        err = error(check(c, scope, user, [*many, POD_READ]), 400)
        assert "200" in err["message"]
        assert "Actions" in error(check(c, scope, user, []), 400)["message"]
        url = under(scope, "checkaccess")
        assert "JSON" in error(c.post(url, content=b"Subject=", headers=JSON), 400)["message"]
        assert "Subject" in error(c.post(url, json={"Actions": [{"Id": POD_READ}]}), 400)["message"]
        bad_oid = {"Subject": {"Attributes": {"ObjectId": "alice"}}, "Actions": [{"Id": POD_READ}]}
        assert "GUID" in error(c.post(url, json=bad_oid), 400)["message"]
        no_id = {"Subject": {"Attributes": {"ObjectId": user}}, "Actions": [{"IsDataAction": True}]}
        assert "Id" in error(c.post(url, json=no_id), 400)["message"]
        elsewhere = {
            "Subject": {"Attributes": {"ObjectId": user}},
            "Actions": [{"Id": POD_READ, "IsDataAction": True}],
            "Resource": {"Id": cluster(sub, "c2")},
        }
        assert error(c.post(url, json=elsewhere), 400)["code"] == "ResourceIdMismatch"
        # Without Resource the URL's scope is used; IsDataAction defaults to a control-plane action.
        del elsewhere["Resource"]
        assert decisions(c.post(url, json=elsewhere)) == ["Allowed"]
        elsewhere["Actions"] = [{"Id": POD_READ}]
        assert decisions(c.post(url, json=elsewhere)) == ["NotAllowed"]
    with shared_hub.client() as anonymous:
        assert error(check(anonymous, scope, user, [POD_READ]), 401)
    with shared_hub.client("not-a-jwt") as garbage:
        assert error(check(garbage, scope, user, [POD_READ]), 401)


def test_who_may_call_checkaccess(shared_hub: RunningHub, sub: str) -> None:
    scope = cluster(sub)
    alice, bob, group = oid(), oid(), oid()
    shared_hub.assign(group, "Azure Arc Kubernetes Viewer", scope, "Group")
    shared_hub.assign(bob, "Azure Arc Kubernetes Writer", scope)
    # Alice holds no checkAccess permission: she may ask only about herself.
    with shared_hub.client(shared_hub.token(alice)) as c:
        assert error(check(c, scope, bob, [POD_READ]), 403)["code"] == "AuthorizationFailed"
        # Groups in the body do not count for a self-check: her token has none.
        assert decisions(check(c, scope, alice, [POD_READ], groups=[group])) == ["NotAllowed"]
    with shared_hub.client(shared_hub.token(alice, groups=[group])) as c:
        assert decisions(check(c, scope, alice, [POD_READ])) == ["Allowed"]
    # Contributor (through `*`) may check for others; Viewer may not.
    contributor = oid()
    shared_hub.assign(contributor, "Contributor", scope)
    with shared_hub.client(shared_hub.token(contributor, kind="app")) as c:
        assert decisions(check(c, scope, bob, [f"{CC}/pods/write"])) == ["Allowed"]
        assert error(check(c, f"/subscriptions/{sub}", bob, [POD_READ]), 403)
    with shared_hub.client(shared_hub.token(bob)) as c:
        assert error(check(c, scope, alice, [POD_READ]), 403)


def make_agent(hub: RunningHub, resource_id: str) -> str:
    """An agent token for a cluster record made directly in the store (not via onboarding)."""
    parts = resource_id.strip("/").split("/")
    pair = pki.issue_keypair(hub.hub.cluster_ca, resource_id, client=True, validity=dt.timedelta(days=90))

    async def record() -> None:
        async with hub.hub.sessions() as session:
            row = Cluster(
                resource_key=resource_id.lower(),
                subscription_id=parts[1],
                resource_group=parts[3],
                name=parts[-1],
                agent_public_key=pki.public_key_der_b64(pair.key.public_key()),  # type: ignore[arg-type]
                created_at=dt.datetime.now(dt.UTC),
            )
            session.add(row)
            await session.flush()
            session.add(
                IdentityCertificate(
                    serial=format(pair.cert.serial_number, "x"),
                    cluster_id=row.id,
                    not_before=pair.cert.not_valid_before_utc,
                    not_after=pair.cert.not_valid_after_utc,
                )
            )
            await session.commit()

    hub.run(record())
    return tokens.make_agent_token(pair, hub.hub.config.agent_audience)


def test_cluster_agent_checks_access_only_within_its_cluster(shared_hub: RunningHub, sub: str) -> None:
    a, b = cluster(sub, "a"), cluster(sub, "b")
    user = oid()
    shared_hub.assign(user, "Azure Arc Kubernetes Viewer", f"/subscriptions/{sub}")
    with shared_hub.client(make_agent(shared_hub, a)) as agent:
        assert decisions(check(agent, a, user, [POD_READ, f"{CC}/pods/write"])) == ["Allowed", "NotAllowed"]
        assert decisions(check(agent, f"{a}/namespaces/x", user, [POD_READ])) == ["Allowed"]
        assert error(check(agent, b, user, [POD_READ]), 403)
        assert error(check(agent, f"{b}/namespaces/x", user, [POD_READ]), 403)
        assert error(check(agent, f"/subscriptions/{sub}", user, [POD_READ]), 403)
        # Agents use checkAccess, not the assignment API.
        assert error(agent.get(under(a, "roleAssignments")), 403)


# ---- kubearc role --------------------------------------------------------------------------------


@pytest.mark.usefixtures("close_msal_sessions")
def test_role_cli(shared_hub: RunningHub, sub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hub import directory
    from kubearc.commands import login as login_command
    from kubearc.commands.role import app as role_app

    # The `role` group as `kubearc` mounts it, plus `login`; independent of the other command modules.
    app = typer.Typer()
    app.command("login")(login_command.login)
    app.add_typer(role_app, name="role")

    upn, password = f"admin-{sub}@kubearc.test", "correct horse battery"

    async def make_user() -> str:
        async with shared_hub.hub.sessions() as session:
            return (await directory.create_user(session, upn, password)).id

    admin = shared_hub.run(make_user())
    shared_hub.assign(admin, "Owner", f"/subscriptions/{sub}")
    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "cfg"))
    runner = CliRunner()

    def kubearc(*args: str) -> Any:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, (args, result.output, result.stderr if result.stderr_bytes else "")
        return json.loads(result.stdout) if result.stdout.strip().startswith(("{", "[")) else result.stdout

    login = runner.invoke(
        app, ["login", "--hub", shared_hub.url, "--ca-file", shared_hub.ca, "-u", upn, "-p", password]
    )
    if login.exit_code != 0:
        pytest.skip(f"`kubearc login` is not usable yet: {login.output.strip()[:300]}")

    scope = cluster(sub)
    user = oid()
    created = kubearc(
        "role",
        "assignment",
        "create",
        "--assignee",
        user,
        "--role",
        "Azure Arc Kubernetes Viewer",
        "--scope",
        scope,
    )
    assert created["properties"]["principalId"] == user
    assert created["properties"]["roleDefinitionId"].endswith(VIEWER_ID)
    listed = kubearc("role", "assignment", "list", "--scope", scope, "--assignee", user)
    assert [a["id"] for a in listed] == [created["id"]]

    definition = {
        "Name": f"CLI role {sub}",
        "Description": "from the CLI",
        "Actions": [],
        "DataActions": [f"{CC}/pods/read"],
        "NotDataActions": [],
        "AssignableScopes": [f"/subscriptions/{sub}"],
    }
    path = tmp_path / "role.json"
    path.write_text(json.dumps(definition))
    role = kubearc("role", "definition", "create", "--role-definition", str(path))
    assert role["properties"]["type"] == "CustomRole"
    found = kubearc(
        "role", "definition", "list", "--name", f"CLI role {sub}", "--scope", f"/subscriptions/{sub}"
    )
    assert [r["name"] for r in found] == [role["name"]]
    second = kubearc(
        "role", "assignment", "create", "--assignee", user, "--role", f"CLI role {sub}", "--scope", scope
    )
    assert second["properties"]["roleDefinitionId"].endswith(role["name"])

    deleted = kubearc(
        "role", "assignment", "delete", "--scope", scope, "--assignee", user, "--role", f"CLI role {sub}"
    )
    assert [d["name"] for d in deleted] == [second["name"]]
    assert kubearc("role", "assignment", "delete", "--ids", created["id"])[0]["name"] == created["name"]
    assert kubearc("role", "assignment", "list", "--scope", scope, "--assignee", user) == []

    gone = kubearc(
        "role", "definition", "delete", "--name", f"CLI role {sub}", "--scope", f"/subscriptions/{sub}"
    )
    assert gone["name"] == role["name"]

    # Errors: one line naming the problem, exit 1, no traceback.
    def fails(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and result.stderr.count("\n") == 1
        return result.stderr

    assert "no role definition named 'Viewer'" in fails(
        "role", "assignment", "create", "--assignee", user, "--role", "Viewer", "--scope", scope
    )
    assert "InvalidScope" in fails(
        "role",
        "assignment",
        "create",
        "--assignee",
        user,
        "--role",
        VIEWER_ID,
        "--scope",
        f"/subscriptions/{S1}/nope",
    )
    assert "GUID" in fails(
        "role", "assignment", "create", "--assignee", "bob", "--role", VIEWER_ID, "--scope", scope
    )
    denied = fails("role", "assignment", "list", "--scope", f"/subscriptions/{uuid.uuid4()}")
    assert "403" in denied and "does not have authorization" in denied
    assert "neither a readable file nor valid JSON" in fails(
        "role", "definition", "create", "--role-definition", "{x"
    )


@pytest.fixture
def close_msal_sessions() -> Iterator[None]:
    """msal's HTTP sessions (one per command run in this process) keep TLS connections to the hub
    open and would hold up the hub's shutdown; a real `kubearc` process closes them on exit."""
    yield
    for obj in gc.get_objects():
        if isinstance(obj, requests.Session):
            obj.close()
