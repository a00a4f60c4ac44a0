"""Every built-in Arc Kubernetes role against a table of data actions, through checkAccess.

The expected table is written out by hand from Azure's role definitions (not
computed from `hub/rbac/roles.py`), so a wrong role definition or a wrong
engine rule fails here. One hub per database backend serves the whole table.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import RunningHub

CC = "Microsoft.Kubernetes/connectedClusters"
SUB = "00000000-0000-0000-0000-00000000b1d1"
CLUSTER = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/{CC}/table"
NS1 = f"{CLUSTER}/namespaces/ns1"
NS2 = f"{CLUSTER}/namespaces/ns2"

# Short data action names (prefix CC/). Resource kinds each role lists, some it lists only
# for reading, cluster-scoped kinds no namespaced role lists, special verbs and
# non-resource URLs (guard maps `get /apis` to `.../apis/read`).
DATA_ACTIONS = [
    "pods/read",
    "pods/write",
    "pods/delete",
    "pods/exec/action",
    "secrets/read",
    "secrets/write",
    "secrets/delete",
    "configmaps/read",
    "configmaps/write",
    "configmaps/delete",
    "apps/deployments/read",
    "apps/deployments/write",
    "apps/deployments/delete",
    "apps/controllerrevisions/read",
    "apps/controllerrevisions/write",
    "apps/statefulsets/write",
    "apps/daemonsets/read",
    "batch/cronjobs/write",
    "batch/jobs/read",
    "autoscaling/horizontalpodautoscalers/write",
    "extensions/ingresses/write",
    "networking.k8s.io/networkpolicies/write",
    "networking.k8s.io/ingresses/read",
    "policy/poddisruptionbudgets/read",
    "policy/poddisruptionbudgets/write",
    "services/write",
    "serviceaccounts/read",
    "serviceaccounts/impersonate/action",
    "persistentvolumeclaims/write",
    "endpoints/read",
    "replicationcontrollers/write",
    "namespaces/read",
    "namespaces/write",
    "namespaces/delete",
    "resourcequotas/read",
    "resourcequotas/write",
    "limitranges/read",
    "limitranges/write",
    "events/read",
    "events/write",
    "events.k8s.io/events/read",
    "rbac.authorization.k8s.io/rolebindings/read",
    "rbac.authorization.k8s.io/rolebindings/write",
    "rbac.authorization.k8s.io/roles/write",
    "rbac.authorization.k8s.io/roles/bind/action",
    "rbac.authorization.k8s.io/clusterrolebindings/write",
    "rbac.authorization.k8s.io/clusterroles/read",
    "authorization.k8s.io/localsubjectaccessreviews/write",
    "authorization.k8s.io/subjectaccessreviews/write",
    "nodes/read",
    "persistentvolumes/read",
    "storage.k8s.io/storageclasses/read",
    "apiextensions.k8s.io/customresourcedefinitions/write",
    "users/impersonate/action",
    "apis/read",
    "healthz/read",
    "listClusterUserCredential/action",
]
# Control-plane actions (IsDataAction false).
CONTROL_ACTIONS = [f"{CC}/listClusterUserCredential/action", f"{CC}/pods/read"]

VIEWER = {
    "pods/read",
    "configmaps/read",
    "apps/deployments/read",
    "apps/controllerrevisions/read",
    "apps/daemonsets/read",
    "batch/jobs/read",
    "networking.k8s.io/ingresses/read",
    "policy/poddisruptionbudgets/read",
    "serviceaccounts/read",
    "endpoints/read",
    "namespaces/read",
    "resourcequotas/read",
    "limitranges/read",
    "events/read",
    "events.k8s.io/events/read",
}
WRITER = VIEWER | {
    "pods/write",
    "pods/delete",
    "pods/exec/action",
    "secrets/read",
    "secrets/write",
    "secrets/delete",
    "configmaps/write",
    "configmaps/delete",
    "apps/deployments/write",
    "apps/deployments/delete",
    "apps/statefulsets/write",
    "batch/cronjobs/write",
    "autoscaling/horizontalpodautoscalers/write",
    "extensions/ingresses/write",
    "networking.k8s.io/networkpolicies/write",
    "policy/poddisruptionbudgets/write",
    "services/write",
    "serviceaccounts/impersonate/action",
    "persistentvolumeclaims/write",
    "replicationcontrollers/write",
}
ADMIN = WRITER | {
    "rbac.authorization.k8s.io/rolebindings/read",
    "rbac.authorization.k8s.io/rolebindings/write",
    "rbac.authorization.k8s.io/roles/write",
    "rbac.authorization.k8s.io/roles/bind/action",
    "authorization.k8s.io/localsubjectaccessreviews/write",
}
EXPECTED: dict[str, tuple[set[str], set[str]]] = {
    # role name: (allowed data actions, allowed control-plane actions)
    "Azure Arc Kubernetes Viewer": (VIEWER, set()),
    "Azure Arc Kubernetes Writer": (WRITER, set()),
    "Azure Arc Kubernetes Admin": (ADMIN, set()),
    "Azure Arc Kubernetes Cluster Admin": (set(DATA_ACTIONS), set()),
    "Azure Arc Enabled Kubernetes Cluster User Role": (set(), {f"{CC}/listClusterUserCredential/action"}),
}

# REFERENCE section 3, verbatim lists: the five roles' dataActions exactly.
_VIEW = [
    "apps/controllerrevisions", "apps/daemonsets", "apps/deployments", "apps/replicasets",
    "apps/statefulsets", "autoscaling/horizontalpodautoscalers", "batch/cronjobs", "batch/jobs",
    "configmaps", "endpoints", "events.k8s.io/events", "events", "extensions/daemonsets",
    "extensions/deployments", "extensions/ingresses", "extensions/networkpolicies", "extensions/replicasets",
    "limitranges", "namespaces", "networking.k8s.io/ingresses", "networking.k8s.io/networkpolicies",
    "persistentvolumeclaims", "pods", "policy/poddisruptionbudgets", "replicationcontrollers",
    "resourcequotas", "serviceaccounts", "services",
]  # fmt: skip
_WRITE_ALL = [
    "apps/daemonsets", "apps/deployments", "apps/replicasets", "apps/statefulsets",
    "autoscaling/horizontalpodautoscalers", "batch/cronjobs", "batch/jobs", "configmaps", "endpoints",
    "extensions/daemonsets", "extensions/deployments", "extensions/ingresses", "extensions/networkpolicies",
    "extensions/replicasets", "networking.k8s.io/ingresses", "networking.k8s.io/networkpolicies",
    "persistentvolumeclaims", "pods", "policy/poddisruptionbudgets", "replicationcontrollers", "secrets",
    "serviceaccounts", "services",
]  # fmt: skip
_WRITE_READ = ["events.k8s.io/events", "events", "limitranges", "namespaces", "resourcequotas"]
_WRITER_DATA = {
    f"{CC}/apps/controllerrevisions/read",
    *(f"{CC}/{r}/*" for r in _WRITE_ALL),
    *(f"{CC}/{r}/read" for r in _WRITE_READ),
}
REFERENCE_DATA_ACTIONS = {
    ("63f0a09d-1495-4db4-a681-037d84835eb4", "Azure Arc Kubernetes Viewer"): {
        f"{CC}/{r}/read" for r in _VIEW
    },
    ("5b999177-9696-4545-85c7-50de3797e5a1", "Azure Arc Kubernetes Writer"): _WRITER_DATA,
    ("dffb1e0c-446f-4dde-a09f-99eb5cc68b96", "Azure Arc Kubernetes Admin"): _WRITER_DATA
    | {
        f"{CC}/authorization.k8s.io/localsubjectaccessreviews/write",
        f"{CC}/rbac.authorization.k8s.io/rolebindings/*",
        f"{CC}/rbac.authorization.k8s.io/roles/*",
    },
    ("8393591c-06b9-48a2-a542-1bd6b377f6a2", "Azure Arc Kubernetes Cluster Admin"): {f"{CC}/*"},
    ("00493d72-78f6-4148-b6c5-d3ce8e4799dd", "Azure Arc Enabled Kubernetes Cluster User Role"): set(),
}


@pytest.fixture(scope="module")
def checker(shared_hub: RunningHub) -> str:
    """A guard-like caller: Owner at the root, so it may checkAccess for anyone."""
    oid = str(uuid.uuid4())
    shared_hub.assign(oid, "Owner", "/")
    return shared_hub.token(oid, kind="app")


def check(hub: RunningHub, token: str, scope: str, subject: str) -> dict[tuple[str, bool], dict[str, Any]]:
    actions = [{"Id": f"{CC}/{a}", "IsDataAction": True, "Attributes": {}} for a in DATA_ACTIONS]
    actions += [{"Id": a, "IsDataAction": False, "Attributes": {}} for a in CONTROL_ACTIONS]
    assert len(actions) <= 200
    body = {"Subject": {"Attributes": {"ObjectId": subject}}, "Actions": actions, "Resource": {"Id": scope}}
    with hub.client(token) as c:
        r = c.post(
            f"{scope}/providers/Microsoft.Authorization/checkaccess?api-version=2018-09-01-preview", json=body
        )
    assert r.status_code == 200, r.text
    out = r.json()
    assert [d["actionId"] for d in out] == [a["Id"] for a in actions]
    return {(d["actionId"], d["isDataAction"]): d for d in out}


def allowed(decisions: dict[tuple[str, bool], dict[str, Any]]) -> tuple[set[str], set[str]]:
    data = {a for (a, is_data), d in decisions.items() if is_data and d["accessDecision"] == "Allowed"}
    control = {a for (a, is_data), d in decisions.items() if not is_data and d["accessDecision"] == "Allowed"}
    for d in decisions.values():
        assert d["denyAssignment"] is None
        if d["accessDecision"] == "Allowed":
            assert d["timeToLiveInMs"] == 300_000 and d["roleAssignment"] is not None
        else:
            assert d["accessDecision"] == "NotAllowed"
            assert d["timeToLiveInMs"] == 30_000 and d["roleAssignment"] is None
    return {a.removeprefix(f"{CC}/") for a in data}, control


@pytest.mark.parametrize("role", list(EXPECTED))
def test_role_assigned_at_cluster_applies_to_cluster_and_namespaces(
    shared_hub: RunningHub, checker: str, role: str
) -> None:
    user = str(uuid.uuid4())
    shared_hub.assign(user, role, CLUSTER)
    for scope in (CLUSTER, NS1):
        decisions = check(shared_hub, checker, scope, user)
        assert allowed(decisions) == EXPECTED[role], (role, scope)
        for d in decisions.values():
            if d["accessDecision"] == "Allowed":
                assert d["roleAssignment"]["scope"] == CLUSTER
                assert d["roleAssignment"]["principalId"] == user
                assert d["roleAssignment"]["id"].startswith(f"{CLUSTER}/providers/Microsoft.Authorization/")


@pytest.mark.parametrize("role", list(EXPECTED))
def test_role_assigned_at_namespace_applies_to_that_namespace_only(
    shared_hub: RunningHub, checker: str, role: str
) -> None:
    user = str(uuid.uuid4())
    shared_hub.assign(user, role, NS1)
    assert allowed(check(shared_hub, checker, NS1, user)) == EXPECTED[role]
    assert allowed(check(shared_hub, checker, NS2, user)) == (set(), set())
    assert allowed(check(shared_hub, checker, CLUSTER, user)) == (set(), set())


def test_builtin_definitions_match_reference(shared_hub: RunningHub, checker: str) -> None:
    """The five Arc roles as the API serves them: Azure's ids, names and exact data actions."""
    with shared_hub.client(checker) as c:
        for (role_id, name), data_actions in REFERENCE_DATA_ACTIONS.items():
            r = c.get(
                "/providers/Microsoft.Authorization/roleDefinitions",
                params={"$filter": f"roleName eq '{name}'", "api-version": "2022-04-01"},
            )
            assert r.status_code == 200, r.text
            [role] = r.json()["value"]
            assert role["name"] == role_id
            assert role["properties"]["type"] == "BuiltInRole"
            [perms] = role["properties"]["permissions"]
            assert set(perms["dataActions"]) == data_actions, name
            assert len(perms["dataActions"]) == len(data_actions), f"{name}: duplicate data actions"
            assert perms["notDataActions"] == []
            if not data_actions:
                assert f"{CC}/listClusterUserCredential/action" in perms["actions"]
