"""TokenReview and SubjectAccessReview objects: parsed from the apiserver's JSON, answered in its version.

The apiserver sends `authentication.k8s.io/v1` (or `v1beta1`) TokenReviews and
`authorization.k8s.io/v1` (or `v1beta1`) SubjectAccessReviews; the answer carries
the same apiVersion and kind with `status` filled in. `ReviewError` names what is
wrong with a body (the server answers it with a 400).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from guard.errors import ReviewError

AUTHN_VERSIONS = ("authentication.k8s.io/v1", "authentication.k8s.io/v1beta1")
AUTHZ_VERSIONS = ("authorization.k8s.io/v1", "authorization.k8s.io/v1beta1")


def _str(doc: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    value = doc.get(key, "")
    if type(value) is str and (value or not required):  # the common case, checked first
        return value
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ReviewError(f"{where}.{key} must be a string")
    if required and not value:
        raise ReviewError(f"{where}.{key} is required")
    return value


def _strings(doc: dict[str, Any], key: str, where: str) -> list[str]:
    value = doc.get(key) or []
    if type(value) is not list or not _all_str(value):
        raise ReviewError(f"{where}.{key} must be a list of strings")
    return value


def _all_str(values: list[Any]) -> bool:
    for value in values:  # noqa: SIM110 (a loop: `all()` over a generator costs twice as much)
        if type(value) is not str:
            return False
    return True


def _object(body: Any, kind: str, versions: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ReviewError(f"a {kind} must be a JSON object")
    if body.get("kind") != kind:
        raise ReviewError(f"kind must be {kind!r}, got {body.get('kind')!r}")
    if body.get("apiVersion") not in versions:
        raise ReviewError(f"apiVersion must be one of {', '.join(versions)}, got {body.get('apiVersion')!r}")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise ReviewError(f"{kind}.spec must be an object")
    return spec


@dataclass(frozen=True)
class TokenReview:
    api_version: str
    token: str
    audiences: list[str]

    @classmethod
    def parse(cls, body: Any) -> TokenReview:
        spec = _object(body, "TokenReview", AUTHN_VERSIONS)
        return cls(
            body["apiVersion"],
            _str(spec, "token", "spec", required=True),
            _strings(spec, "audiences", "spec"),
        )


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str = ""
    groups: list[str] = field(default_factory=list)
    extra: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"username": self.username}
        if self.uid:
            doc["uid"] = self.uid
        if self.groups:
            doc["groups"] = self.groups
        if self.extra:
            doc["extra"] = self.extra
        return doc


def token_review_response(
    review: TokenReview, user: UserInfo | None, error: str = "", audiences: list[str] | None = None
) -> dict[str, Any]:
    """Authentication failures are HTTP 200 with `authenticated: false` and the reason in `error`."""
    status: dict[str, Any] = {"authenticated": user is not None}
    if user is not None:
        status["user"] = user.to_json()
        if audiences:
            status["audiences"] = audiences
    if error:
        status["error"] = error
    return {"apiVersion": review.api_version, "kind": "TokenReview", "status": status}


class ResourceAttributes(NamedTuple):
    # NamedTuples, not frozen dataclasses: as immutable and hashable, and built at a fraction of
    # the cost (a frozen dataclass sets each field through `object.__setattr__`), once per review.
    namespace: str = ""
    verb: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


class NonResourceAttributes(NamedTuple):
    path: str = ""
    verb: str = ""


_RESOURCE_FIELDS = ResourceAttributes._fields


@dataclass(frozen=True)
class SubjectAccessReview:
    api_version: str
    user: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]
    resource: ResourceAttributes | None
    non_resource: NonResourceAttributes | None

    @classmethod
    def parse(cls, body: Any) -> SubjectAccessReview:
        spec = _object(body, "SubjectAccessReview", AUTHZ_VERSIONS)
        extra = spec.get("extra") or {}
        if type(extra) is not dict or not all(
            type(k) is str and type(v) is list and _all_str(v) for k, v in extra.items()
        ):
            raise ReviewError("spec.extra must map strings to lists of strings")
        # v1beta1 calls the groups field "group".
        groups = _strings(spec, "groups", "spec") or _strings(spec, "group", "spec")
        ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if (ra is None) == (nra is None):
            raise ReviewError("spec needs exactly one of resourceAttributes and nonResourceAttributes")
        resource = non_resource = None
        if ra is not None:
            if not isinstance(ra, dict):
                raise ReviewError("spec.resourceAttributes must be an object")
            w = "spec.resourceAttributes"
            resource = ResourceAttributes._make([_str(ra, k, w) for k in _RESOURCE_FIELDS])
            if not resource.verb:
                raise ReviewError(f"{w}.verb is required")
        else:
            if not isinstance(nra, dict):
                raise ReviewError("spec.nonResourceAttributes must be an object")
            w = "spec.nonResourceAttributes"
            non_resource = NonResourceAttributes(_str(nra, "path", w, True), _str(nra, "verb", w, True))
        return cls(
            body["apiVersion"],
            _str(spec, "user", "spec"),
            _str(spec, "uid", "spec"),
            groups,
            extra,
            resource,
            non_resource,
        )


@dataclass(frozen=True)
class Decision:
    """Allowed, Denied (stop the chain), or neither: NoOpinion (the next authorizer decides)."""

    allowed: bool = False
    denied: bool = False
    reason: str = ""
    evaluation_error: str = ""

    @classmethod
    def allow(cls, reason: str) -> Decision:
        return cls(allowed=True, reason=reason)

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(denied=True, reason=reason)

    @classmethod
    def no_opinion(cls, reason: str, error: str = "") -> Decision:
        return cls(reason=reason, evaluation_error=error)


def subject_access_review_response(review: SubjectAccessReview, decision: Decision) -> dict[str, Any]:
    status: dict[str, Any] = {"allowed": decision.allowed}
    if decision.denied:
        status["denied"] = True
    if decision.reason:
        status["reason"] = decision.reason
    if decision.evaluation_error:
        status["evaluationError"] = decision.evaluation_error
    return {"apiVersion": review.api_version, "kind": "SubjectAccessReview", "status": status}
