"""Kubernetes `Status` failures, shaped exactly as the apiserver sends them.

kubectl and client libraries read `reason`, `code` and `details` (for example
`kubectl create` reports AlreadyExists, and client retry loops key off Conflict),
so the stand-in raises these rather than ad-hoc errors.
"""

from __future__ import annotations

from typing import Any


class StatusError(Exception):
    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        group: str = "",
        causes: list[dict[str, str]] | None = None,
        empty_details: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details: dict[str, Any] = {}
        self.empty_details = empty_details  # `"details": {}`, as go-restful's 404 for an unknown path has
        if name is not None:
            self.details["name"] = name
        if group:
            self.details["group"] = group
        if kind is not None:
            self.details["kind"] = kind
        if causes:
            self.details["causes"] = causes

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details or self.empty_details:
            doc["details"] = self.details
        return doc


def success(name: str, kind: str, uid: str | None = None, group: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    if uid:
        details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, name: str, group: str = "") -> StatusError:
    message = f'{_qualified(plural, group)} "{name}" not found'
    return StatusError(404, "NotFound", message, name=name, kind=plural, group=group)


def already_exists(plural: str, name: str, group: str = "") -> StatusError:
    return StatusError(
        409,
        "AlreadyExists",
        f'{_qualified(plural, group)} "{name}" already exists',
        name=name,
        kind=plural,
        group=group,
    )


def conflict(plural: str, name: str, group: str = "") -> StatusError:
    return StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        name=name,
        kind=plural,
        group=group,
    )


def invalid(kind: str, name: str, problems: list[tuple[str, str]], group: str = "") -> StatusError:
    """422 with one cause per bad field, worded like the apiserver's field errors."""
    text = ", ".join(f"{field}: {msg}" for field, msg in problems)
    if len(problems) > 1:
        text = f"[{text}]"  # the apiserver's aggregate of several field errors
    return StatusError(
        422,
        "Invalid",
        f'{_qualified(kind, group)} "{name}" is invalid: {text}',
        name=name,
        kind=kind,
        group=group,
        causes=[{"reason": "FieldValueInvalid", "message": msg, "field": field} for field, msg in problems],
    )


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


def method_not_allowed(message: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> StatusError:
    message = f"the body of the request was in an unknown format: {content_type}"
    return StatusError(415, "UnsupportedMediaType", message)


def unsupported_patch(accepted: tuple[str, ...]) -> StatusError:
    """A patch type the resource does not take (strategic merge on a custom resource)."""
    listed = ", ".join(accepted)
    message = f"the body of the request was in an unknown format - accepted media types include: {listed}"
    return StatusError(415, "UnsupportedMediaType", message)
