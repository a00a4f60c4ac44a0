"""Request attributes as the apiserver derives them (RequestInfoFactory), and the proxy's header rules.

The table rows follow k8s.io/apiserver/pkg/endpoints/request/requestinfo.go and
its tests: what the impersonating proxy authorizes must be what the apiserver
will execute.
"""

from __future__ import annotations

import pytest

from guard.impersonation import headers as hdr
from guard.impersonation.requestinfo import RequestInfo, RequestInfoError, exact_name, request_info
from guard.reviews import UserInfo

NS = "/api/v1/namespaces/ns1"

# method, target, (verb, group, version, namespace, resource, subresource, name)
RESOURCE_ROWS = [
    ("GET", "/api/v1/namespaces", ("list", "", "v1", "", "namespaces", "", "")),
    ("GET", NS, ("get", "", "v1", "ns1", "namespaces", "", "ns1")),
    ("GET", f"{NS}/status", ("get", "", "v1", "ns1", "namespaces", "status", "ns1")),
    ("PUT", f"{NS}/finalize", ("update", "", "v1", "ns1", "namespaces", "finalize", "ns1")),
    ("GET", f"{NS}/pods", ("list", "", "v1", "ns1", "pods", "", "")),
    ("GET", "/api/v1/pods", ("list", "", "v1", "", "pods", "", "")),
    ("GET", "/api/v1/pods/", ("list", "", "v1", "", "pods", "", "")),
    ("GET", f"{NS}/pods?watch=true", ("watch", "", "v1", "ns1", "pods", "", "")),
    ("GET", f"{NS}/pods?watch=1&resourceVersion=5", ("watch", "", "v1", "ns1", "pods", "", "")),
    ("GET", f"{NS}/pods?watch=", ("watch", "", "v1", "ns1", "pods", "", "")),
    ("GET", f"{NS}/pods?watch=false", ("list", "", "v1", "ns1", "pods", "", "")),
    ("GET", f"{NS}/pods?watch=False", ("list", "", "v1", "ns1", "pods", "", "")),
    ("GET", f"{NS}/pods?watch=0&watch=1", ("list", "", "v1", "ns1", "pods", "", "")),
    ("HEAD", f"{NS}/pods/p1", ("get", "", "v1", "ns1", "pods", "", "p1")),
    ("GET", f"{NS}/pods/p1", ("get", "", "v1", "ns1", "pods", "", "p1")),
    ("GET", f"{NS}/pods/p1?watch=true", ("get", "", "v1", "ns1", "pods", "", "p1")),
    ("GET", f"{NS}/pods/p1/log?follow=true", ("get", "", "v1", "ns1", "pods", "log", "p1")),
    ("POST", f"{NS}/pods/p1/exec?command=ls", ("create", "", "v1", "ns1", "pods", "exec", "p1")),
    ("GET", f"{NS}/pods/p1/exec?command=ls", ("get", "", "v1", "ns1", "pods", "exec", "p1")),
    ("GET", f"{NS}/pods/p1/portforward", ("get", "", "v1", "ns1", "pods", "portforward", "p1")),
    ("POST", f"{NS}/pods", ("create", "", "v1", "ns1", "pods", "", "")),
    ("PUT", f"{NS}/pods/p1", ("update", "", "v1", "ns1", "pods", "", "p1")),
    ("PATCH", f"{NS}/pods/p1", ("patch", "", "v1", "ns1", "pods", "", "p1")),
    ("DELETE", f"{NS}/pods/p1", ("delete", "", "v1", "ns1", "pods", "", "p1")),
    ("DELETE", f"{NS}/pods", ("deletecollection", "", "v1", "ns1", "pods", "", "")),
    ("OPTIONS", f"{NS}/pods", ("", "", "v1", "ns1", "pods", "", "")),
    ("GET", "/apis/apps/v1/deployments", ("list", "apps", "v1", "", "deployments", "", "")),
    (
        "PATCH",
        "/apis/apps/v1/namespaces/ns1/deployments/d1/scale",
        ("patch", "apps", "v1", "ns1", "deployments", "scale", "d1"),
    ),
    (
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        ("create", "authorization.k8s.io", "v1", "", "selfsubjectaccessreviews", "", ""),
    ),
    (
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        ("get", "rbac.authorization.k8s.io", "v1", "", "clusterroles", "", "admin"),
    ),
    # legacy path verbs
    ("GET", "/api/v1/watch/namespaces/ns1/pods", ("watch", "", "v1", "ns1", "pods", "", "")),
    ("GET", "/api/v1/watch/namespaces/ns1/pods/p1", ("watch", "", "v1", "ns1", "pods", "", "p1")),
    ("GET", "/api/v1/watch/pods", ("watch", "", "v1", "", "pods", "", "")),
    ("GET", "/api/v1/proxy/namespaces/ns1/pods/p1/a/b", ("proxy", "", "v1", "ns1", "pods", "", "p1")),
    ("GET", f"{NS}/services/s1/proxy/a/b", ("get", "", "v1", "ns1", "services", "proxy", "s1")),
    # a single-object list or watch: fieldSelector metadata.name names it
    ("GET", f"{NS}/pods?fieldSelector=metadata.name%3Dp1", ("list", "", "v1", "ns1", "pods", "", "p1")),
    (
        "GET",
        f"{NS}/pods?watch=1&fieldSelector=metadata.name%3D%3Dp1%2Cstatus.phase%3DRunning",
        ("watch", "", "v1", "ns1", "pods", "", "p1"),
    ),
    ("GET", f"{NS}/pods?fieldSelector=metadata.name%21%3Dp1", ("list", "", "v1", "ns1", "pods", "", "")),
    ("GET", f"{NS}/pods?fieldSelector=metadata.name%3Da%3Db", ("list", "", "v1", "ns1", "pods", "", "")),
    ("GET", f"{NS}/pods?fieldSelector=metadata.name%3D..", ("list", "", "v1", "ns1", "pods", "", "")),
    (
        "DELETE",
        f"{NS}/pods?fieldSelector=metadata.name%3Dp1",
        ("deletecollection", "", "v1", "ns1", "pods", "", ""),
    ),
    # the path is percent-decoded first, as Go's URL.Path is
    ("GET", "/api/v1/namespaces/ns%31/pods", ("list", "", "v1", "ns1", "pods", "", "")),
]


@pytest.mark.parametrize(("method", "target", "want"), RESOURCE_ROWS)
def test_resource_requests(method: str, target: str, want: tuple[str, ...]) -> None:
    info = request_info(method, target)
    assert info.is_resource_request
    got = (
        info.verb,
        info.api_group,
        info.api_version,
        info.namespace,
        info.resource,
        info.subresource,
        info.name,
    )
    assert got == want


@pytest.mark.parametrize(
    ("method", "target", "verb", "path"),
    [
        ("GET", "/", "get", "/"),
        ("GET", "/api", "get", "/api"),
        ("GET", "/api/v1", "get", "/api/v1"),
        ("GET", "/apis", "get", "/apis"),
        ("GET", "/apis/apps", "get", "/apis/apps"),
        ("GET", "/apis/apps/v1", "get", "/apis/apps/v1"),
        ("GET", "/version?timeout=32s", "get", "/version"),
        ("HEAD", "/healthz", "head", "/healthz"),
        ("POST", "/openapi/v3/api/v1", "post", "/openapi/v3/api/v1"),
        ("GET", "/other/v1/namespaces/ns1/pods", "get", "/other/v1/namespaces/ns1/pods"),
    ],
)
def test_non_resource_requests(method: str, target: str, verb: str, path: str) -> None:
    assert request_info(method, target) == RequestInfo(is_resource_request=False, path=path, verb=verb)


@pytest.mark.parametrize("target", ["/api/v1/watch", "/apis/apps/v1/proxy", "/api/v1/watch/"])
def test_a_path_verb_without_a_resource_is_an_error(target: str) -> None:
    with pytest.raises(RequestInfoError, match="unable to determine kind and namespace"):
        request_info("GET", target)


@pytest.mark.parametrize(
    ("selector", "name"),
    [
        ("metadata.name=a", "a"),
        ("metadata.name==a", "a"),
        ("metadata.name!=a", None),
        ("status.phase=Running,metadata.name=b", "b"),
        (r"metadata.name=a\,b", "a,b"),
        (r"metadata.name=a\=b\\c", "a=b\\c"),
        ("metadata.name=a,metadata.name=b", "a"),  # terms are sorted first
        (r"metadata.name=a\x", None),  # an unknown escape invalidates the whole selector
        ("spec.nodeName", None),  # no operator: invalid
        ("", None),
    ],
)
def test_field_selector_exact_name(selector: str, name: str | None) -> None:
    assert exact_name(selector) == name


ALICE = UserInfo(
    "alice@example.com",
    "0b4e6c2e-0000-4000-8000-000000000001",
    ["1f0c0000-0000-4000-8000-0000000000aa", "team"],
    {"oid": ["0b4e6c2e-0000-4000-8000-000000000001"], "example.com/Team Name%": ["a", "b"]},
)


def test_impersonation_headers_one_per_group_and_extra_value_with_escaped_keys() -> None:
    assert hdr.impersonation_headers(ALICE) == [
        (b"Impersonate-User", b"alice@example.com"),
        (b"Impersonate-Group", b"1f0c0000-0000-4000-8000-0000000000aa"),
        (b"Impersonate-Group", b"team"),
        (b"Impersonate-Extra-example.com%2FTeam%20Name%25", b"a"),
        (b"Impersonate-Extra-example.com%2FTeam%20Name%25", b"b"),
        (b"Impersonate-Extra-oid", b"0b4e6c2e-0000-4000-8000-000000000001"),
    ]


def test_upstream_headers_swap_the_credential_and_drop_hop_by_hop_and_front_proxy_headers() -> None:
    incoming = [
        (b"host", b"127.0.0.1:47011"),
        (b"authorization", b"Bearer user-token"),
        (b"connection", b"keep-alive, x-private"),
        (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"x-remote-user", b"root"),
        (b"x-remote-group", b"system:masters"),
        (b"accept", b"application/json"),
        (b"content-length", b"12"),
    ]
    out = hdr.upstream_request_headers(
        incoming, ALICE, host="10.0.0.1:6443", credential="Bearer agent-token", upgrade=None
    )
    names = [n.lower() for n, _ in out]
    assert (b"Host", b"10.0.0.1:6443") in out and names.count(b"host") == 1
    assert [v for n, v in out if n.lower() == b"authorization"] == [b"Bearer agent-token"]
    for gone in (b"connection", b"x-private", b"keep-alive", b"te", b"x-remote-user", b"x-remote-group"):
        assert gone not in names
    assert (b"accept", b"application/json") in out and (b"content-length", b"12") in out
    assert (b"Impersonate-User", b"alice@example.com") in out


def test_upgrades_are_announced_again_and_a_client_certificate_sends_no_authorization() -> None:
    incoming = [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-key", b"k")]
    assert hdr.upgrade_of(incoming) == b"websocket"
    assert hdr.upgrade_of([(b"upgrade", b"websocket")]) is None  # not declared in Connection
    out = hdr.upstream_request_headers(incoming, ALICE, host="h:1", credential=None, upgrade=b"websocket")
    assert out[-2:] == [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]
    assert (b"sec-websocket-key", b"k") in out
    assert not any(n.lower() == b"authorization" for n, _ in out)


def test_refused_and_bearer_headers() -> None:
    assert hdr.refused_header([(b"Accept", b"*/*"), (b"Impersonate-Group", b"system:masters")]) == (
        "Impersonate-Group"
    )
    assert hdr.refused_header([(b"impersonate-extra-scopes", b"x")]) == "impersonate-extra-scopes"
    assert hdr.refused_header([(b"Authorization", b"Bearer t")]) is None
    assert hdr.bearer_token([(b"authorization", b"Bearer  abc ")]) == "abc"
    for bad, why in (
        ([], "no bearer token"),
        ([(b"authorization", b"Basic YTpi")], "not a bearer token"),
        ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], "more than one"),
    ):
        with pytest.raises(ValueError, match=why):
            hdr.bearer_token(bad)


def test_access_review_and_forbidden_message_match_the_apiservers() -> None:
    info = request_info("GET", "/api/v1/namespaces/dev/pods?watch=1")
    review = hdr.access_review(info, ALICE)
    assert review.resource is not None and review.non_resource is None
    assert (review.resource.verb, review.resource.namespace, review.resource.resource) == (
        "watch",
        "dev",
        "pods",
    )
    assert review.user == ALICE.username and review.extra["oid"] == ALICE.extra["oid"]
    assert review.groups[-1] == "system:authenticated"
    assert hdr.forbidden_message(info, "bob", "no role") == (
        'pods is forbidden: User "bob" cannot watch resource "pods" in API group "" '
        'in the namespace "dev": no role'
    )
    one = request_info("GET", "/apis/apps/v1/deployments/d1")
    assert hdr.forbidden_message(one, "bob", "") == (
        'deployments "d1" is forbidden: User "bob" cannot get resource "deployments" in API group "apps" '
        "at the cluster scope"
    )
    path = request_info("GET", "/logs/x")
    assert hdr.access_review(path, ALICE).non_resource is not None
    assert hdr.forbidden_message(path, "bob", "r") == 'forbidden: User "bob" cannot get path "/logs/x": r'
