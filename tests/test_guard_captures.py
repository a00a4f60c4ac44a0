"""guard answering the exact webhook calls a real kube-apiserver v1.36 made (tests/captures/).

Each captured call is replayed as it was sent (path with `?timeout=30s`, the
apiserver's headers: note there is no Audit-ID) over mutual TLS. guard must
parse what the apiserver really sends (v1beta1 groups in `spec.group`,
`version: "*"`), answer in the request's apiVersion, and give its authenticator
and authorizer the same user, groups, extra and attributes the apiserver meant.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guard.app import GuardState
from guard.authn.chain import AuthnChain
from guard.config import GuardConfig
from guard.reviews import Decision, SubjectAccessReview, UserInfo
from guard.server import GuardThread
from tests.guard_doubles import PlainAuthenticator, PlainAuthorizer
from tests.test_guard_server import write_tls

CAPTURES = sorted((Path(__file__).parent / "captures").glob("*.jsonl"))
USER = UserInfo("viewer@kubearc.test", "ae4c868e-08a9-4972-bb1e-2b0dceb6053f", ["g1"], {"oid": ["o1"]})


def calls() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for capture in CAPTURES:
        for n, line in enumerate(capture.read_text().splitlines()):
            if line.strip():
                found.append((f"{capture.stem}:{n + 1}", json.loads(line)))
    return found


class Seen:
    def __init__(self) -> None:
        self.tokens: list[tuple[str, list[str]]] = []
        self.reviews: list[SubjectAccessReview] = []


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GuardThread, httpx.Client, Seen]]:
    where = tmp_path_factory.mktemp("guard")
    write_tls(where)
    seen = Seen()

    async def authenticate(token: str, audiences: list[str]) -> UserInfo:
        seen.tokens.append((token, audiences))
        return USER

    async def authorize(review: SubjectAccessReview, deadline: float) -> Decision:
        seen.reviews.append(review)
        return Decision.no_opinion("replayed")

    async def make() -> tuple[GuardState, Any]:
        chain = AuthnChain([], PlainAuthenticator(authenticate))  # redacted tokens: not JWTs
        config = GuardConfig(
            where / "tls.crt", where / "tls.key", where / "client-ca.crt", port=0, health_port=0
        )
        return GuardState(config, chain, PlainAuthorizer(authorize)), None

    thread = GuardThread(make).start()
    assert thread.server is not None
    ctx = ssl.create_default_context(cafile=str(where / "ca.crt"))
    ctx.load_cert_chain(str(where / "c.crt"), str(where / "c.key"))
    with httpx.Client(base_url=f"https://127.0.0.1:{thread.server.port}", verify=ctx, timeout=15) as client:
        try:
            yield thread, client, seen
        finally:
            thread.stop()


@pytest.mark.parametrize(("where", "call"), calls(), ids=[w for w, _ in calls()])
def test_every_captured_apiserver_call_is_understood_as_the_apiserver_meant_it(
    guard: tuple[GuardThread, httpx.Client, Seen], where: str, call: dict[str, Any]
) -> None:
    _, client, seen = guard
    assert "Audit-ID" not in call["headers"]  # what a real apiserver sends: no audit id
    headers = {
        k: v for k, v in call["headers"].items() if k not in ("Host", "Content-Length", "Accept-Encoding")
    }
    request = call["request"]
    reviews_before = len(seen.reviews)
    response = client.post(call["path"], content=json.dumps(request), headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["apiVersion"], answer["kind"]) == (request["apiVersion"], request["kind"])
    spec = request["spec"]
    if request["kind"] == "TokenReview":
        assert seen.tokens[-1] == (spec["token"], spec.get("audiences") or [])
        assert answer["status"]["authenticated"] is True
        assert answer["status"]["user"]["username"] == USER.username
        return
    assert len(seen.reviews) == reviews_before + 1, "every captured review reaches the authorizer"
    review = seen.reviews[-1]
    assert review.user == spec["user"]
    assert review.groups == (spec.get("groups") or spec.get("group") or [])
    assert review.extra == (spec.get("extra") or {})
    attributes = spec.get("resourceAttributes")
    if attributes is not None:
        assert review.resource is not None
        assert review.resource.verb == attributes["verb"]
        assert review.resource.version == attributes.get("version", "")
        assert review.resource.resource == attributes.get("resource", "")
    else:
        assert review.non_resource is not None
        assert review.non_resource.path == spec["nonResourceAttributes"]["path"]
    assert answer["status"]["allowed"] is False and answer["status"].get("denied") is not True


def test_the_captures_hold_both_webhook_versions_and_the_wildcard_version() -> None:
    bodies = [call["request"] for _, call in calls()]
    versions = {b["apiVersion"] for b in bodies}
    assert {
        "authentication.k8s.io/v1beta1",
        "authentication.k8s.io/v1",
        "authorization.k8s.io/v1beta1",
    } <= versions
    assert any((b["spec"].get("resourceAttributes") or {}).get("version") == "*" for b in bodies)
    assert any("group" in b["spec"] for b in bodies if b["kind"] == "SubjectAccessReview")
