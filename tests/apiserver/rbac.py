"""Who workloads run as and what they may do: ServiceAccounts (v1) and RBAC (`rbac.authorization.k8s.io/v1`).

Defaulting and validation follow k8s.io/kubernetes `pkg/apis/rbac` (v1 defaults, `ValidatePolicyRule`,
`ValidateRoleBindingSubject`): RBAC names are path segments (`system:controller:x` is
fine, `a/b` is not), a rule needs verbs and, unless it is about non-resource URLs (cluster
roles only), API groups and resources; a binding's `roleRef` is required, refers to a Role
or ClusterRole in this group and never changes; subjects are ServiceAccounts (namespaced in
a cluster binding), Users or Groups. The stand-in stores the rules and enforces one kind:
who may impersonate (`cluster_allows`, what the kube-aad-proxy's ClusterRole grants); it does
not refuse escalation, which a real apiserver would.
As the controller manager would, it gives every new namespace a `default` ServiceAccount.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from tests.apiserver.resources import (
    AGE,
    DNS_SUBDOMAIN,
    NAME,
    Column,
    Obj,
    ResourceType,
    path_segment_problem,
)

if TYPE_CHECKING:
    from tests.apiserver.store import Event, ObjectStore

GROUP = "rbac.authorization.k8s.io"
Problems = list[tuple[str, str]]


def _unsupported(value: object, supported: tuple[str, ...]) -> str:
    listed = ", ".join(f'"{s}"' for s in supported)
    return f'Unsupported value: "{value}": supported values: {listed}'


# -- serviceaccounts ------------------------------------------------------------------------------------


def _validate_service_account(obj: Obj) -> Problems:
    problems: Problems = []
    for field in ("secrets", "imagePullSecrets"):
        refs = obj.get(field) or []
        if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
            problems.append((field, "Invalid value: must be a list of object references"))
    automount = obj.get("automountServiceAccountToken")
    if automount is not None and not isinstance(automount, bool):
        problems.append(("automountServiceAccountToken", "Invalid value: must be a boolean"))
    return problems


SERVICEACCOUNTS = ResourceType(
    "",
    "v1",
    "serviceaccounts",
    "serviceaccount",
    "ServiceAccount",
    namespaced=True,
    short_names=("sa",),
    validate=_validate_service_account,
    columns=(NAME, Column("Secrets", lambda o, _: len(o.get("secrets") or []), type="integer"), AGE),
)


def default_service_accounts(store: ObjectStore) -> None:
    """The service account controller's part: each new namespace gets its `default` ServiceAccount."""

    def on_event(event: Event) -> None:
        if event.type == "ADDED" and (event.group, event.plural) == ("", "namespaces"):
            store.create(SERVICEACCOUNTS, event.obj["metadata"]["name"], {"metadata": {"name": "default"}})

    store.listen(on_event)


# -- roles and cluster roles ----------------------------------------------------------------------------


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def validate_rule(rule: object, path: str, namespaced: bool) -> Problems:
    if not isinstance(rule, dict):
        return [(path, "Invalid value: must be an object")]
    problems: Problems = []
    for field in ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"):
        if rule.get(field) is not None and not _strings(rule[field]):
            problems.append((f"{path}.{field}", "Invalid value: must be a list of strings"))
    if problems:
        return problems
    if not rule.get("verbs"):
        problems.append((f"{path}.verbs", "Required value: verbs must contain at least one value"))
    if rule.get("nonResourceURLs"):
        urls = rule["nonResourceURLs"]
        if namespaced:
            problems.append(
                (
                    f"{path}.nonResourceURLs",
                    f"Invalid value: {urls}: namespaced rules cannot apply to non-resource URLs",
                )
            )
        elif rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
            problems.append(
                (
                    f"{path}.nonResourceURLs",
                    f"Invalid value: {urls}: rules cannot apply to both regular "
                    "resources and non-resource URLs",
                )
            )
        return problems
    if not rule.get("apiGroups"):
        problems.append(
            (f"{path}.apiGroups", "Required value: resource rules must supply at least one api group")
        )
    if not rule.get("resources"):
        problems.append(
            (f"{path}.resources", "Required value: resource rules must supply at least one resource")
        )
    return problems


def _rules_problems(obj: Obj, namespaced: bool) -> Problems:
    rules = obj.get("rules") or []
    if not isinstance(rules, list):
        return [("rules", "Invalid value: must be a list of policy rules")]
    return [p for i, rule in enumerate(rules) for p in validate_rule(rule, f"rules[{i}]", namespaced)]


def _validate_role(obj: Obj) -> Problems:
    return _rules_problems(obj, namespaced=True)


def _validate_cluster_role(obj: Obj) -> Problems:
    problems = _rules_problems(obj, namespaced=False)
    aggregation = obj.get("aggregationRule")
    if aggregation is not None:
        selectors = aggregation.get("clusterRoleSelectors") if isinstance(aggregation, dict) else None
        if not isinstance(selectors, list) or not all(isinstance(s, dict) for s in selectors):
            problems.append(
                ("aggregationRule.clusterRoleSelectors", "Invalid value: must be a list of label selectors")
            )
    return problems


def _created_at(obj: Obj, _: dt.datetime) -> str:
    return str(obj["metadata"].get("creationTimestamp", ""))


CREATED_AT = Column(
    "Created At", _created_at, type="date", description="CreationTimestamp is when this object was created."
)

ROLES = ResourceType(
    GROUP,
    "v1",
    "roles",
    "role",
    "Role",
    namespaced=True,
    validate=_validate_role,
    columns=(NAME, CREATED_AT),
    path_segment_names=True,
)

CLUSTERROLES = ResourceType(
    GROUP,
    "v1",
    "clusterroles",
    "clusterrole",
    "ClusterRole",
    namespaced=False,
    validate=_validate_cluster_role,
    columns=(NAME, CREATED_AT),
    path_segment_names=True,
)


# -- role bindings and cluster role bindings ------------------------------------------------------------


def _default_binding(obj: Obj) -> None:
    """rbac/v1 defaults: roleRef.apiGroup, and the RBAC group for User and Group subjects."""
    ref = obj.get("roleRef")
    if isinstance(ref, dict) and not ref.get("apiGroup"):
        ref["apiGroup"] = GROUP
    for subject in obj.get("subjects") or []:
        if (
            isinstance(subject, dict)
            and subject.get("kind") in ("User", "Group")
            and not subject.get("apiGroup")
        ):
            subject["apiGroup"] = GROUP


def _validate_subject(subject: object, path: str, namespaced: bool) -> Problems:
    if not isinstance(subject, dict):
        return [(path, "Invalid value: must be an object")]
    problems: Problems = []
    name, kind, group = subject.get("name"), subject.get("kind"), subject.get("apiGroup", "")
    if not name:
        problems.append((f"{path}.name", "Required value"))
    if kind == "ServiceAccount":
        if name and (not isinstance(name, str) or not DNS_SUBDOMAIN.match(name) or len(name) > 253):
            problems.append(
                (
                    f"{path}.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                    "lower case alphanumeric characters, '-' or '.'",
                )
            )
        if group:
            problems.append((f"{path}.apiGroup", _unsupported(group, ("",))))
        if not namespaced and not subject.get("namespace"):
            problems.append((f"{path}.namespace", "Required value"))
    elif kind in ("User", "Group"):
        if group != GROUP:
            problems.append((f"{path}.apiGroup", _unsupported(group, (GROUP,))))
    else:
        problems.append((f"{path}.kind", _unsupported(kind, ("ServiceAccount", "User", "Group"))))
    return problems


def _binding_problems(obj: Obj, namespaced: bool) -> Problems:
    problems: Problems = []
    ref = obj.get("roleRef")
    kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    if not isinstance(ref, dict) or not ref:
        problems.append(("roleRef", "Required value"))
    else:
        if ref.get("apiGroup") != GROUP:
            problems.append(("roleRef.apiGroup", _unsupported(ref.get("apiGroup"), (GROUP,))))
        if ref.get("kind") not in kinds:
            problems.append(("roleRef.kind", _unsupported(ref.get("kind"), kinds)))
        name = ref.get("name")
        if not name or not isinstance(name, str):
            problems.append(("roleRef.name", "Required value"))
        elif (bad := path_segment_problem(name)) is not None:
            problems.append(("roleRef.name", f'Invalid value: "{name}": {bad}'))
    subjects = obj.get("subjects") or []
    if not isinstance(subjects, list):
        return [*problems, ("subjects", "Invalid value: must be a list of subjects")]
    for i, subject in enumerate(subjects):
        problems += _validate_subject(subject, f"subjects[{i}]", namespaced)
    return problems


def _validate_binding_update(old: Obj, new: Obj) -> Problems:
    if old.get("roleRef") != new.get("roleRef"):
        return [("roleRef", f"Invalid value: {new.get('roleRef')}: cannot change roleRef")]
    return []


def _subjects(kind: str) -> Callable[[Obj, dt.datetime], str]:
    def cell(obj: Obj, _: dt.datetime) -> str:
        found = []
        for s in obj.get("subjects") or []:
            if isinstance(s, dict) and s.get("kind") == kind:
                ns = s.get("namespace") if kind == "ServiceAccount" else None
                found.append(f"{ns}/{s.get('name')}" if ns else str(s.get("name")))
        return ", ".join(found)

    return cell


def _role_ref(obj: Obj, _: dt.datetime) -> str:
    ref = obj.get("roleRef") or {}
    return f"{ref.get('kind')}/{ref.get('name')}"


BINDING_COLUMNS = (
    NAME,
    Column(
        "Role",
        _role_ref,
        description="RoleRef can reference a Role in the current namespace or a ClusterRole.",
    ),
    AGE,
    Column("Users", _subjects("User"), priority=1, description="Users in the binding"),
    Column("Groups", _subjects("Group"), priority=1, description="Groups in the binding"),
    Column(
        "ServiceAccounts",
        _subjects("ServiceAccount"),
        priority=1,
        description="ServiceAccounts in the binding",
    ),
)

ROLEBINDINGS = ResourceType(
    GROUP,
    "v1",
    "rolebindings",
    "rolebinding",
    "RoleBinding",
    namespaced=True,
    default=_default_binding,
    validate=lambda obj: _binding_problems(obj, namespaced=True),
    validate_update=_validate_binding_update,
    columns=BINDING_COLUMNS,
    path_segment_names=True,
)

CLUSTERROLEBINDINGS = ResourceType(
    GROUP,
    "v1",
    "clusterrolebindings",
    "clusterrolebinding",
    "ClusterRoleBinding",
    namespaced=False,
    default=_default_binding,
    validate=lambda obj: _binding_problems(obj, namespaced=False),
    validate_update=_validate_binding_update,
    columns=BINDING_COLUMNS,
    path_segment_names=True,
)

RBAC_TYPES = (ROLES, ROLEBINDINGS, CLUSTERROLES, CLUSTERROLEBINDINGS)


def _bound(subject: Obj, user: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "ServiceAccount":
        return user == f"system:serviceaccount:{subject.get('namespace')}:{name}"
    return kind == "User" and name == user


def _grants(rule: Obj, verb: str, group: str, resource: str) -> bool:
    def has(values: object, value: str) -> bool:
        return isinstance(values, list) and ("*" in values or value in values)

    return (
        has(rule.get("verbs"), verb)
        and has(rule.get("apiGroups"), group)
        and has(rule.get("resources"), resource)
    )


def cluster_allows(store: ObjectStore, user: str, verb: str, group: str, resource: str) -> bool:
    """Whether a ClusterRoleBinding gives `user` (a User or ServiceAccount subject) a ClusterRole rule
    for `verb` on `group`/`resource` cluster-wide: the RBAC authorizer's answer for cluster-scoped
    verbs such as `impersonate` (groups, namespaced Roles and resourceNames are not evaluated)."""
    for binding in store.list_all("rbac.authorization.k8s.io", "clusterrolebindings"):
        ref = binding.get("roleRef") or {}
        if ref.get("kind") != "ClusterRole" or not any(
            _bound(s, user) for s in binding.get("subjects") or []
        ):
            continue
        role = store.find("rbac.authorization.k8s.io", "clusterroles", "", ref.get("name", "")) or {}
        if any(_grants(rule, verb, group, resource) for rule in role.get("rules") or []):
            return True
    return False
