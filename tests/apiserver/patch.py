"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge.

Strategic merge is applied as a JSON merge patch. The two agree on maps, which is
all that secrets, namespaces and nodes carry; list-merge keys (containers by
name) come with the workload resources that need them.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.apiserver import errors

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise errors.bad_request(f"json patch path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise errors.StatusError(422, "Invalid", f"json patch: path {path!r} does not exist") from None
    return node


def _index(container: list[Any], part: str, path: str, allow_end: bool) -> int:
    if part == "-" and allow_end:
        return len(container)
    try:
        idx = int(part)
    except ValueError:
        raise errors.StatusError(422, "Invalid", f"json patch: bad array index in {path!r}") from None
    if not 0 <= idx <= len(container) - (0 if allow_end else 1):
        raise errors.StatusError(422, "Invalid", f"json patch: index out of range in {path!r}")
    return idx


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise errors.bad_request("json patch body must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise errors.bad_request(f"json patch operation needs 'op' and 'path': {op!r}")
        kind, path = op["op"], op["path"]
        parts = _pointer(path)
        if not parts:
            raise errors.bad_request("json patch on the whole document is not supported")
        parent, last = _parent(doc, parts, path), parts[-1]
        if kind in ("add", "replace"):
            if "value" not in op:
                raise errors.bad_request(f"json patch {kind} needs a 'value': {op!r}")
            value = copy.deepcopy(op["value"])
            if isinstance(parent, list):
                idx = _index(parent, last, path, allow_end=kind == "add")
                if kind == "add":
                    parent.insert(idx, value)
                else:
                    parent[idx] = value
            elif isinstance(parent, dict):
                if kind == "replace" and last not in parent:
                    raise errors.StatusError(422, "Invalid", f"json patch: path {path!r} does not exist")
                parent[last] = value
            else:
                raise errors.StatusError(422, "Invalid", f"json patch: path {path!r} does not exist")
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[_index(parent, last, path, allow_end=False)]
            elif isinstance(parent, dict) and last in parent:
                del parent[last]
            else:
                raise errors.StatusError(422, "Invalid", f"json patch: path {path!r} does not exist")
        elif kind == "test":
            current = (
                parent[_index(parent, last, path, False)]
                if isinstance(parent, list)
                else (parent.get(last) if isinstance(parent, dict) else None)
            )
            if current != op.get("value"):
                raise errors.StatusError(422, "Invalid", f"json patch: test failed at {path!r}")
        else:
            raise errors.bad_request(f"json patch operation {kind!r} is not supported")
    return doc


def apply(content_type: str, target: Any, body: Any) -> Any:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in (MERGE, STRATEGIC):
        if not isinstance(body, dict):
            raise errors.bad_request("merge patch body must be a JSON object")
        return merge_patch(target, body)
    if media == JSON_PATCH:
        return json_patch(target, body)
    raise errors.unsupported_media_type(content_type or "<none>")
