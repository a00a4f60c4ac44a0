"""The stand-in reads a request's authorization attributes and words its 403 as kube-apiserver does.

The attributes are what guard receives in a SubjectAccessReview (compare the
captured calls of a real v1.36 apiserver in `tests/captures/`); the messages are
what kubectl prints to a user who lacks a role.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.apiserver.webhooks import Attributes, attributes


@pytest.mark.parametrize(
    ("method", "path", "query", "upgrade", "expected"),
    [
        (
            "GET",
            "/api/v1/namespaces/dev/pods",
            "",
            False,
            Attributes("list", "", "pods", "", "dev", "", "", "v1"),
        ),
        (
            "GET",
            "/api/v1/namespaces/dev/pods/web",
            "",
            False,
            Attributes("get", "", "pods", "", "dev", "web", "", "v1"),
        ),
        (
            "GET",
            "/api/v1/namespaces/dev/configmaps",
            "watch=true&resourceVersion=5",
            False,
            Attributes("watch", "", "configmaps", "", "dev", "", "", "v1"),
        ),
        (
            "POST",
            "/apis/apps/v1/namespaces/dev/deployments",
            "",
            False,
            Attributes("create", "", "deployments", "", "dev", "", "apps", "v1"),
        ),
        (
            "DELETE",
            "/api/v1/namespaces/dev/secrets",
            "",
            False,
            Attributes("deletecollection", "", "secrets", "", "dev", "", "", "v1"),
        ),
        (
            "PATCH",
            "/api/v1/nodes/n1/status",
            "",
            False,
            Attributes("patch", "", "nodes", "status", "", "n1", "", "v1"),
        ),
        (
            "GET",
            "/api/v1/namespaces/dev",
            "",
            False,
            Attributes("get", "", "namespaces", "", "dev", "dev", "", "v1"),
        ),
        (
            "GET",
            "/api/v1/namespaces/dev/pods/web/exec",
            "command=sh&stdin=true",
            True,
            Attributes("create", "", "pods", "exec", "dev", "web", "", "v1"),
        ),
        ("GET", "/apis/apps/v1", "", False, Attributes("get", "/apis/apps/v1")),
        ("GET", "/api", "", False, Attributes("get", "/api")),
    ],
)
def test_a_request_is_read_as_the_attributes_an_apiserver_authorizes(
    method: str, path: str, query: str, upgrade: bool, expected: Attributes
) -> None:
    got = attributes(method, path, query, upgrade)
    assert got == dataclasses.replace(expected, path=path)
    if not expected.resource:
        assert got.wire() == {"nonResourceAttributes": {"path": path, "verb": "get"}}


def test_a_denial_reads_as_the_apiserver_words_it() -> None:
    listed = attributes("GET", "/api/v1/namespaces/dev/secrets").forbidden("ann@example.com", "")
    assert listed.code == 403 and listed.reason == "Forbidden"
    assert listed.message == (
        'secrets is forbidden: User "ann@example.com" cannot list resource "secrets" in API group "" '
        'in the namespace "dev"'
    )
    execd = attributes("POST", "/api/v1/namespaces/dev/pods/web/exec").forbidden("ann", "no role")
    assert execd.message == (
        'pods "web" is forbidden: User "ann" cannot create resource "pods/exec" in API group "" '
        'in the namespace "dev": no role'
    )
    assert execd.body()["details"] == {"name": "web", "kind": "pods"}
    nodes = attributes("GET", "/api/v1/nodes").forbidden("ann", "")
    assert nodes.message.endswith('cannot list resource "nodes" in API group "" at the cluster scope')
    path = attributes("GET", "/metrics").forbidden("ann", "")
    assert path.message == 'forbidden: User "ann" cannot get path "/metrics"'
