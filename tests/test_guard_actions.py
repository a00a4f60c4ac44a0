"""The SubjectAccessReview → (data action, scope) table of guard (REFERENCE §2), row by row."""

from __future__ import annotations

import pytest

from guard.authz.actions import (
    CONNECTED_CLUSTERS,
    MANAGED_CLUSTERS,
    RESOURCE_VERBS,
    ActionMapper,
    Mapped,
    Unmappable,
    map_review,
)
from guard.reviews import NonResourceAttributes, ResourceAttributes, SubjectAccessReview

CID = "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.Kubernetes/connectedClusters/c1"
CC = CONNECTED_CLUSTERS
NS = f"{CID}/namespaces/dev"


def sar(
    verb: str,
    resource: str = "",
    group: str = "",
    ns: str = "",
    sub: str = "",
    path: str | None = None,
    name: str = "",
) -> SubjectAccessReview:
    ra = nra = None
    if path is not None:
        nra = NonResourceAttributes(path=path, verb=verb)
    else:
        ra = ResourceAttributes(
            namespace=ns, verb=verb, group=group, version="v1", resource=resource, subresource=sub, name=name
        )
    return SubjectAccessReview("authorization.k8s.io/v1", "alice", "", [], {"oid": ["x"]}, ra, nra)


# (review, expected action, expected scope)
MAPPED: list[tuple[SubjectAccessReview, str, str]] = [
    # REFERENCE §2 examples
    (sar("get", "pods", ns="dev"), f"{CC}/pods/read", NS),
    (sar("patch", "cronjobs", "batch"), f"{CC}/batch/cronjobs/write", CID),
    (
        sar("impersonate", "userextras", "authentication.k8s.io"),
        f"{CC}/authentication.k8s.io/userextras/impersonate/action",
        CID,
    ),
    (sar("list", path="/apis"), f"{CC}/apis/read", CID),
    # every verb, core group, namespaced
    *[
        (sar(verb, "configmaps", ns="dev"), f"{CC}/configmaps/{action}", NS)
        for verb, action in [
            ("get", "read"),
            ("list", "read"),
            ("watch", "read"),
            ("create", "write"),
            ("update", "write"),
            ("patch", "write"),
            ("delete", "delete"),
            ("deletecollection", "delete"),
            ("bind", "bind/action"),
            ("escalate", "escalate/action"),
            ("use", "use/action"),
            ("impersonate", "impersonate/action"),
            ("*", "*"),
        ]
    ],
    # named groups, cluster-scoped
    (
        sar("create", "clusterrolebindings", "rbac.authorization.k8s.io"),
        f"{CC}/rbac.authorization.k8s.io/clusterrolebindings/write",
        CID,
    ),
    (
        sar("bind", "clusterroles", "rbac.authorization.k8s.io"),
        f"{CC}/rbac.authorization.k8s.io/clusterroles/bind/action",
        CID,
    ),
    (
        sar("escalate", "roles", "rbac.authorization.k8s.io", ns="dev"),
        f"{CC}/rbac.authorization.k8s.io/roles/escalate/action",
        NS,
    ),
    (sar("use", "podsecuritypolicies", "policy"), f"{CC}/policy/podsecuritypolicies/use/action", CID),
    (sar("impersonate", "users"), f"{CC}/users/impersonate/action", CID),
    (sar("impersonate", "serviceaccounts", ns="dev"), f"{CC}/serviceaccounts/impersonate/action", NS),
    (sar("delete", "deployments", "apps", ns="dev"), f"{CC}/apps/deployments/delete", NS),
    (sar("list", "nodes"), f"{CC}/nodes/read", CID),
    (sar("get", "namespaces", ns="dev", name="dev"), f"{CC}/namespaces/read", NS),
    (sar("list", "namespaces"), f"{CC}/namespaces/read", CID),
    (sar("watch", "events", "events.k8s.io", ns="dev"), f"{CC}/events.k8s.io/events/read", NS),
    # case is normalised (ARM compares case-insensitively anyway)
    (sar("GET", "Pods", "Apps", ns="dev"), f"{CC}/apps/pods/read", NS),
    # subresources: ignored except the interactive pod ones
    (sar("create", "pods", ns="dev", sub="exec"), f"{CC}/pods/exec/action", NS),
    (sar("get", "pods", ns="dev", sub="exec"), f"{CC}/pods/exec/action", NS),
    (sar("create", "pods", ns="dev", sub="attach"), f"{CC}/pods/write", NS),
    (sar("get", "pods", ns="dev", sub="attach"), f"{CC}/pods/write", NS),
    (sar("create", "pods", ns="dev", sub="portforward"), f"{CC}/pods/write", NS),
    (sar("get", "pods", ns="dev", sub="portforward"), f"{CC}/pods/write", NS),
    (sar("get", "pods", ns="dev", sub="log"), f"{CC}/pods/read", NS),
    (sar("patch", "pods", ns="dev", sub="status"), f"{CC}/pods/write", NS),
    (sar("create", "pods", ns="dev", sub="eviction"), f"{CC}/pods/write", NS),
    (sar("update", "deployments", "apps", ns="dev", sub="scale"), f"{CC}/apps/deployments/write", NS),
    (sar("create", "serviceaccounts", ns="dev", sub="token"), f"{CC}/serviceaccounts/write", NS),
    (sar("get", "nodes", sub="proxy"), f"{CC}/nodes/read", CID),
    # exec on a same-named resource of another group is not the pod exec action
    (sar("create", "pods", "metrics.k8s.io", ns="dev", sub="exec"), f"{CC}/metrics.k8s.io/pods/write", NS),
    # wildcards stay literal: only a role covering the whole segment grants them
    (sar("*", "pods", ns="dev"), f"{CC}/pods/*", NS),
    (sar("get", "*", ns="dev"), f"{CC}/*/read", NS),
    (sar("list", "deployments", "*"), f"{CC}/*/deployments/read", CID),
    (sar("*", "*", "*"), f"{CC}/*/*/*", CID),
    # non-resource paths
    (sar("get", path="/healthz"), f"{CC}/healthz/read", CID),
    (sar("get", path="/healthz/ping"), f"{CC}/healthz/ping/read", CID),
    (sar("get", path="/metrics"), f"{CC}/metrics/read", CID),
    (sar("get", path="/logs/"), f"{CC}/logs/read", CID),
    (sar("head", path="/version"), f"{CC}/version/read", CID),
    (sar("post", path="/apis/custom"), f"{CC}/apis/custom/write", CID),
    (sar("put", path="/x"), f"{CC}/x/write", CID),
    (sar("patch", path="/x"), f"{CC}/x/write", CID),
    (sar("delete", path="/x"), f"{CC}/x/delete", CID),
    (sar("*", path="/x"), f"{CC}/x/*", CID),
    (sar("get", path="/openapi/v3/apis/apps/v1"), f"{CC}/openapi/v3/apis/apps/v1/read", CID),
]


@pytest.mark.parametrize(("review", "action", "scope"), MAPPED)
def test_mapped(review: SubjectAccessReview, action: str, scope: str) -> None:
    assert map_review(review, CID) == Mapped(action, scope)


UNMAPPABLE: list[tuple[SubjectAccessReview, str]] = [
    (sar("approve", "certificatesigningrequests", "certificates.k8s.io"), "verb 'approve'"),
    (sar("sign", "signers", "certificates.k8s.io"), "verb 'sign'"),
    (sar("proxy", "services", ns="dev"), "verb 'proxy'"),
    (sar("frobnicate", "pods", ns="dev", sub="exec"), "verb 'frobnicate'"),
    (sar("get", ""), "names no resource"),
    (sar("get", "pods", ns="../../other"), "namespace"),
    (sar("get", "pods", ns="a/b"), "namespace"),
    (sar("get", "pods", ns="*"), "namespace"),
    (sar("get", "pods/x"), "resource"),
    (sar("get", "pods", "a/b"), "group"),
    (sar("get", "pods", sub="a/b"), "subresource"),
    (sar("get", "pod*"), "resource"),
    (sar("get", "pods", "apps*"), "group"),
    (sar("get", path="/apis/app*"), "not a plain path"),
    (sar("options", path="/x"), "verb 'options'"),
    (sar("approve", path="/x"), "verb 'approve'"),
    (sar("get", path="/"), "no data action"),
    (sar("get", path="relative"), "no data action"),
    (sar("get", path="/a/../b"), "not a plain path"),
    (sar("get", path="/a b"), "not a plain path"),
]


@pytest.mark.parametrize(("review", "reason"), UNMAPPABLE)
def test_unmappable(review: SubjectAccessReview, reason: str) -> None:
    got = map_review(review, CID)
    assert isinstance(got, Unmappable), got
    assert reason in got.reason


def test_every_known_verb_is_in_the_table() -> None:
    assert set(RESOURCE_VERBS) == {
        "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
        "bind", "escalate", "use", "impersonate", "*",
    }  # fmt: skip


def test_cluster_type_is_configurable_for_aks() -> None:
    aks = "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.ContainerService/managedClusters/a1"
    mapper = ActionMapper(aks, MANAGED_CLUSTERS)
    assert mapper.map(sar("get", "pods", ns="dev")) == Mapped(
        f"{MANAGED_CLUSTERS}/pods/read", f"{aks}/namespaces/dev"
    )
    assert mapper.map(sar("get", path="/metrics")) == Mapped(f"{MANAGED_CLUSTERS}/metrics/read", aks)


@pytest.mark.parametrize(
    "review",
    [
        sar("*", "pods", ns="dev"),
        sar("get", "*"),
        sar("get", "deployments", "*"),
        sar("*", path="/x"),
        sar("get", path="/apis/*"),
    ],
)
def test_wildcards_can_be_refused(review: SubjectAccessReview) -> None:
    got = ActionMapper(CID, wildcards="unmappable").map(review)
    assert isinstance(got, Unmappable) and "wildcard" in got.reason
