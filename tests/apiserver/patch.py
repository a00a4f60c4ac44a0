"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge and apply.

Strategic merge patch is what `kubectl apply` (client-side) sends for built-in
types: maps merge, and lists of objects merge by their patch merge key
(containers, env and volumes by name, container ports by containerPort, ...)
instead of being replaced; the directives `$patch` (replace/delete/merge),
`$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>` and `$retainKeys`
are honoured. The merge keys come from a table keyed by field name, which is
right for the types served here. Server-side apply (`apply-patch+yaml`) merges
the applied configuration the same way; which fields it then removes, and whose
fields it may not change, is field ownership (`managed.py`).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.apiserver import errors

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"
CUSTOM_PATCH_TYPES = (JSON_PATCH, MERGE, APPLY)  # a custom resource has no strategic merge patch


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


# Lists merged item by item on this key (k8s.io/api `patchMergeKey`); other lists are replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "ownerReferences": "uid",
    "conditions": "type",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
MERGED_PRIMITIVE_LISTS = {"finalizers"}  # patchStrategy "merge" on a list of strings


def merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":  # container ports merge on containerPort, service ports on port
        sample = next((i for i in items if isinstance(i, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return MERGE_KEYS.get(field)


def _merge_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current = list(current) if isinstance(current, list) else []
    if field in MERGED_PRIMITIVE_LISTS and all(not isinstance(i, dict) for i in patch):
        return current + [i for i in patch if i not in current]
    key = merge_key(field, current + patch)
    if key is None or not all(isinstance(i, dict) for i in patch):
        return [strategic_merge(None, i) for i in patch]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [strategic_merge(None, i) for i in patch if i.get("$patch") != "replace"]
    result = [copy.deepcopy(i) for i in current]
    for item in patch:
        index = next(
            (n for n, c in enumerate(result) if isinstance(c, dict) and c.get(key) == item.get(key)), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(strategic_merge(None, item))
        else:
            result[index] = strategic_merge(result[index], item)
    return result


def _order(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """`$setElementOrder`: items named in `order` in that order, the others after them."""

    def ident(i: Any) -> Any:
        return i.get(key) if key and isinstance(i, dict) else i

    wanted = [ident(o) for o in order]
    ranked = [i for w in wanted for i in items if ident(i) == w]
    return ranked + [i for i in items if ident(i) not in wanted]


def strategic_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: strategic_merge(None, v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
        elif key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [i for i in result[field] if i not in value]
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _order(result[field], order, merge_key(field, result[field]))
    if isinstance(patch.get("$retainKeys"), list):
        result = {k: v for k, v in result.items() if k in patch["$retainKeys"]}
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
    if media in (MERGE, STRATEGIC, APPLY):
        if not isinstance(body, dict):
            raise errors.bad_request("merge patch body must be a JSON object")
        return merge_patch(target, body) if media == MERGE else strategic_merge(target, body)
    if media == JSON_PATCH:
        return json_patch(target, body)
    raise errors.unsupported_media_type(content_type or "<none>")
