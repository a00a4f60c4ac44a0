"""Kubernetes request attributes from an HTTP request line, the way the apiserver derives them.

A port of `RequestInfoFactory.NewRequestInfo` (k8s.io/apiserver/pkg/endpoints/
request/requestinfo.go) with the apiserver's defaults (API prefixes `api` and
`apis`, `api` groupless). The impersonating proxy must authorize exactly what the
apiserver will execute, so the rules are the apiserver's, quirks included:

- `GET`/`HEAD` without a name is `list`, or `watch` when the first `watch` query
  value is anything but `0`/`false`; a `fieldSelector` of `metadata.name=X`
  then names the object (a single-object list or watch);
- `DELETE` without a name is `deletecollection`;
- the legacy `/watch/` and `/proxy/` path verbs; `proxy` has no subresource;
- `/namespaces/{ns}/status` and `/finalize` are subresources of the namespace,
  any other segment after a namespace is a namespaced resource;
- fewer than three path segments, or a prefix other than `api`/`apis`, is a
  non-resource request whose verb is the lowercase HTTP method.

The path is percent-decoded first (Go's `URL.Path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from guard.errors import GuardError

API_PREFIXES = frozenset({"api", "apis"})
GROUPLESS_PREFIXES = frozenset({"api"})
SPECIAL_VERBS = frozenset({"proxy", "watch"})
SPECIAL_VERBS_NO_SUBRESOURCES = frozenset({"proxy"})
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


class RequestInfoError(GuardError, ValueError):
    """The path names an API but not which resource (the apiserver answers these with an error)."""


@dataclass(frozen=True)
class RequestInfo:
    """What a request does, in the terms RBAC and SubjectAccessReviews use."""

    is_resource_request: bool
    path: str
    verb: str
    api_prefix: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def _split(path: str) -> list[str]:
    path = path.strip("/")
    return path.split("/") if path else []


def _unescape_value(value: str) -> str:
    """fields.UnescapeValue: a backslash escapes a backslash, comma or equals sign; any other escape,
    or a bare comma or equals sign, makes the selector invalid."""
    out, escaped = [], False
    for ch in value:
        if escaped:
            if ch not in "\\,=":
                raise RequestInfoError(f"invalid escape sequence \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            raise RequestInfoError(f"unescaped {ch!r} in a field selector value")
        else:
            out.append(ch)
    if escaped:
        raise RequestInfoError("a field selector value may not end with a backslash")
    return "".join(out)


def _split_terms(selector: str) -> list[str]:
    """fields.splitTerms: split on commas not escaped with a backslash (escapes are kept)."""
    terms, start, escaped = [], 0, False
    for i, ch in enumerate(selector):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str]:
    """fields.splitTerm: the first position where `!=`, `==` or `=` starts splits the term."""
    for i in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
    raise RequestInfoError(f"cannot understand {term!r}")


def exact_name(field_selector: str) -> str | None:
    """The X of `metadata.name=X` (or `==`), as `fields.ParseSelector(...).RequiresExactMatch` finds it:
    None when no term names it, or when the selector does not parse (the apiserver then drops it)."""
    try:
        terms = [_split_term(t) for t in sorted(_split_terms(field_selector)) if t]
        values = [(lhs, op, _unescape_value(rhs)) for lhs, op, rhs in terms]
    except RequestInfoError:
        return None
    return next((value for lhs, op, value in values if lhs == "metadata.name" and op != "!="), None)


def _valid_path_segment(name: str) -> bool:
    """path.IsValidPathSegmentName: not `.` or `..`, no `/` or `%`."""
    return name not in (".", "..") and "/" not in name and "%" not in name


def request_info(method: str, target: str) -> RequestInfo:
    """Derive the request's attributes from its method and request target (`/path?query`).

    Raises RequestInfoError for `/api/v1/watch` and the like: a special verb and nothing after it.
    """
    raw_path, _, raw_query = target.partition("?")
    path = unquote(raw_path)
    verb = method.lower()
    info = RequestInfo(is_resource_request=False, path=path, verb=verb)
    parts = _split(path)
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return info
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return info
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in SPECIAL_VERBS:
        if len(parts) < 2:
            raise RequestInfoError(f"unable to determine kind and namespace from url {target[:200]}")
        verb, parts = parts[0], parts[1:]
    else:
        verb = METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    subresource = name = resource = ""
    if len(parts) >= 3 and verb not in SPECIAL_VERBS_NO_SUBRESOURCES:
        subresource = parts[2]
    if len(parts) >= 2:
        name = parts[1]
    resource = parts[0]
    if not name and verb == "get":
        query = parse_qs(raw_query, keep_blank_values=True)
        watch = query.get("watch")
        verb = "watch" if watch and watch[0].lower() not in ("0", "false") else "list"
        selector = query.get("fieldSelector")
        selected = exact_name(selector[0]) if selector else None
        if selected and _valid_path_segment(selected):
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(
        is_resource_request=True,
        path=path,
        verb=verb,
        api_prefix=prefix,
        api_group=group,
        api_version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
    )
