"""Pure parts of RBAC: action patterns, role evaluation, scope parsing, $filter, checkAccess bodies."""

from __future__ import annotations

import pytest

from hub.errors import ApiError
from hub.rbac import checkaccess, scopes
from hub.rbac.engine import Grant, action_matches, decide, role_permits
from hub.rbac.odata import parse_filter
from hub.rbac.roles import ARC_ADMIN, ARC_VIEWER, ARC_WRITER, CONTRIBUTOR, OWNER, Role

CC = "Microsoft.Kubernetes/connectedClusters"
CLUSTER = f"/subscriptions/sub1/resourceGroups/rg1/providers/{CC}/c1"


@pytest.mark.parametrize(
    ("pattern", "action", "expected"),
    [
        (f"{CC}/pods/*", f"{CC}/pods/exec/action", True),
        (f"{CC}/pods/*", f"{CC}/pods/read", True),
        (f"{CC}/pods/*", f"{CC}/podtemplates/read", False),
        (f"{CC}/pods/read", f"{CC}/pods/read/extra", False),
        (f"{CC}/*/read", f"{CC}/apps/deployments/read", True),
        (f"{CC}/*/read", f"{CC}/apps/deployments/write", False),
        ("*", "anything/at/all", True),
        ("microsoft.kubernetes/CONNECTEDCLUSTERS/Pods/READ", f"{CC}/pods/read", True),
        (
            f"{CC}/rbac.authorization.k8s.io/rolebindings/*",
            f"{CC}/rbac.authorization.k8s.io/rolebindings/write",
            True,
        ),
        (
            f"{CC}/rbac.authorization.k8s.io/rolebindings/*",
            f"{CC}/rbac.authorization.k8s.io/clusterrolebindings/write",
            False,
        ),
        # A dot is literal, not a regex wildcard.
        (f"{CC}/events.k8s.io/events/read", f"{CC}/eventsXk8s.io/events/read", False),
    ],
)
def test_action_matches(pattern: str, action: str, expected: bool) -> None:
    assert action_matches(pattern, action) is expected


def test_not_actions_subtract_within_one_role_only() -> None:
    custom = Role(
        "00000000-0000-0000-0000-000000000001",
        "custom",
        "",
        data_actions=(f"{CC}/*",),
        not_data_actions=(f"{CC}/secrets/*",),
    )
    assert role_permits(custom, f"{CC}/pods/read", True)
    assert not role_permits(custom, f"{CC}/secrets/read", True)
    # Data actions are not control-plane actions and vice versa.
    assert not role_permits(custom, f"{CC}/pods/read", False)
    # Another role that grants secrets is not blocked by this role's notDataActions.
    grants = [Grant("a1", CLUSTER, custom), Grant("a2", CLUSTER, ARC_WRITER)]
    decision = decide(grants, f"{CC}/secrets/read", True)
    assert decision.allowed and decision.assignment is not None
    assert decision.assignment.assignment_id == "a2"


def test_owner_and_contributor_control_plane() -> None:
    assign = "Microsoft.Authorization/roleAssignments/write"
    assert role_permits(OWNER, assign, False)
    assert not role_permits(CONTRIBUTOR, assign, False)
    assert role_permits(CONTRIBUTOR, checkaccess.CHECK_ACCESS_ACTION, False)
    assert role_permits(ARC_VIEWER, "Microsoft.Authorization/roleAssignments/read", False)
    assert not role_permits(ARC_ADMIN, f"{CC}/rbac.authorization.k8s.io/clusterroles/write", True)


@pytest.mark.parametrize(
    ("raw", "path", "kind"),
    [
        ("/", "/", "root"),
        ("/subscriptions/sub1", "/subscriptions/sub1", "subscription"),
        (
            "/SUBSCRIPTIONS/sub1/resourcegroups/rg1/",
            "/subscriptions/sub1/resourceGroups/rg1",
            "resourceGroup",
        ),
        (
            "/subscriptions/sub1/resourceGroups/rg1/providers/microsoft.kubernetes/CONNECTEDclusters/c1",
            CLUSTER,
            "cluster",
        ),
        (f"{CLUSTER}/Namespaces/kube-system", f"{CLUSTER}/namespaces/kube-system", "namespace"),
    ],
)
def test_scope_parse_canonicalizes(raw: str, path: str, kind: str) -> None:
    parsed = scopes.parse(raw)
    assert (parsed.path, parsed.kind) == (path, kind)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("subscriptions/sub1", "starts with '/'"),
        ("/tenants/t1", "first segment"),
        ("/subscriptions/sub1//resourceGroups/rg", "empty path segment"),
        ("/subscriptions/sub1/locations/westus", "resourceGroups"),
        ("/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1", "only"),
        (f"{CLUSTER}/pods/p1", "namespaces"),
        (f"{CLUSTER}/namespaces/Bad_NS", "bad namespace"),
        (f"{CLUSTER}/namespaces/ns1/extra", "namespaces"),
        ("/subscriptions/s u b", "bad subscription"),
    ],
)
def test_scope_parse_rejects(raw: str, problem: str) -> None:
    with pytest.raises(ApiError) as err:
        scopes.parse(raw)
    assert err.value.status == 400 and err.value.code == "InvalidScope"
    assert problem in err.value.message


def test_scope_cluster_path() -> None:
    assert scopes.parse(f"{CLUSTER}/namespaces/ns1").cluster_path == CLUSTER
    assert scopes.parse("/subscriptions/sub1").cluster_path is None


def test_odata_filter() -> None:
    fields, fns = {"principalId"}, {"atScope", "assignedTo"}
    assert parse_filter(None, fields, fns) == {}
    assert parse_filter("atScope()", fields, fns) == {"atScope": ""}
    assert parse_filter("atscope() and PrincipalId eq 'abc'", fields, fns) == {
        "atScope": "",
        "principalId": "abc",
    }
    assert parse_filter("roleName eq 'O''Brien and co'", {"roleName"}, set()) == {
        "roleName": "O'Brien and co"
    }
    for bad in ("roleName eq 'x'", "atScope() or principalId eq 'x'", "principalId ne 'x'", "atScope() and "):
        with pytest.raises(ApiError) as err:
            parse_filter(bad, fields, fns)
        assert err.value.status == 400


def test_checkaccess_body_keys_are_case_insensitive() -> None:
    oid = "6F1C3C4E-0000-4000-8000-000000000001"
    body = checkaccess.parse_request(
        {
            "subject": {"attributes": {"objectId": oid, "groups": ["g"]}},
            "actions": [{"id": f"{CC}/pods/read", "isDataAction": True, "attributes": {"Keep": "Me"}}],
            "resource": {"id": CLUSTER},
        }
    )
    assert body.Subject.Attributes.ObjectId == oid.lower()
    assert body.Subject.Attributes.Groups == ["g"]
    assert body.Actions[0].IsDataAction is True
    assert body.Actions[0].Attributes == {"Keep": "Me"}
    assert body.Resource is not None and body.Resource.Id == CLUSTER


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "JSON object"),
        ({"Actions": [{"Id": "x"}]}, "Subject"),
        ({"Subject": {"Attributes": {"ObjectId": "nope"}}, "Actions": [{"Id": "x"}]}, "GUID"),
        (
            {"Subject": {"Attributes": {"ObjectId": "6f1c3c4e-0000-4000-8000-000000000001"}}, "Actions": []},
            "Actions",
        ),
        (
            {
                "Subject": {"Attributes": {"ObjectId": "6f1c3c4e-0000-4000-8000-000000000001"}},
                "Actions": [{"Id": "x"}],
                "actions": [{"Id": "y"}],
            },
            "more than once",
        ),
        (
            {
                "Subject": {"Attributes": {"ObjectId": "6f1c3c4e-0000-4000-8000-000000000001"}},
                "Actions": [{"Id": "x"}] * 201,
            },
            "at most 200",
        ),
    ],
)
def test_checkaccess_body_rejects(body: object, problem: str) -> None:
    with pytest.raises(ApiError) as err:
        checkaccess.parse_request(body)
    assert err.value.status == 400
    assert problem in err.value.message
