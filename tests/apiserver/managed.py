"""Field ownership (`metadata.managedFields`) and server-side apply, as structured-merge-diff does them.

Every write names a field manager (`?fieldManager=`, else the User-Agent up to its first
`/`, as the apiserver derives it). A create, update or non-apply patch is an `Update`
operation: its manager takes the fields whose values it set or changed, and other managers
lose them. An apply (`application/apply-patch+yaml`) is an `Apply` operation: its manager
owns exactly the fields of the configuration it sent, so a field it applied before and
leaves out now is removed (unless another manager owns it too), and a field another
manager owns with a different value is a 409 conflict unless the apply says `force=true`,
which takes the field over. Fields are named as in `fieldsV1` (`f:name`, `k:{"name":"x"}`
for items of keyed lists, `v:"x"` for set members); keyed lists are those patch.py merges
by key (ports by port or containerPort and protocol), other lists are atomic, as are
selectors and a binding's roleRef (replaced whole by an apply, never merged).
`apiVersion`, `kind`, the server-set metadata and `status` (owned by status writes) are
nobody's. A write that changes no ownership keeps the entries and their times, so a
no-op apply is a no-op.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from tests.apiserver import errors, patch
from tests.apiserver.resources import Obj, ResourceType

Path = tuple[str, ...]
ITEM = object()  # the value of a keyed list's item: owned as a whole, compared by its fields
# Maps and structs owned as one value (`+mapType=atomic`, `+structType=atomic` in k8s.io/api).
ATOMIC_MAPS = frozenset({"selector", "nodeSelector", "roleRef"})
SERVER_META = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "selfLink",
    "managedFields",
    "generateName",
}


def manager_for(field_manager: str | None, user_agent: str) -> str:
    """A request's field manager: the one it names, else its User-Agent's product (`Helm/4.3.1`: `Helm`)."""
    return (field_manager or user_agent.split("/", 1)[0] or "unknown")[:128]


def _key_fields(name: str, items: list[Any]) -> tuple[str, ...] | str | None:
    """How a list is keyed: its key fields, "set" for a list of distinct scalars, None when atomic."""
    if name in patch.MERGED_PRIMITIVE_LISTS:
        return "set"
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    key = patch.merge_key(name, items)
    if key in ("port", "containerPort"):
        return (key, "protocol")
    return (key,) if key else None


def _item_key(item: Obj, fields: tuple[str, ...]) -> str:
    values = {f: item.get(f, "TCP" if f == "protocol" else None) for f in fields}
    return "k:" + json.dumps(values, sort_keys=True, separators=(",", ":"))


def _walk(node: Any, name: str, path: Path, out: dict[Path, Any]) -> None:
    if isinstance(node, dict) and node and name not in ATOMIC_MAPS:
        for key, value in node.items():
            _walk(value, key, (*path, f"f:{key}"), out)
        return
    keyed = _key_fields(name, node) if isinstance(node, list) and node else None
    if keyed == "set":
        for value in node:
            out[(*path, "v:" + json.dumps(value, separators=(",", ":")))] = value
    elif keyed:
        for item in node:
            item_path = (*path, _item_key(item, keyed))  # type: ignore[arg-type]
            out[item_path] = ITEM
            for key, value in item.items():
                _walk(value, key, (*item_path, f"f:{key}"), out)
    else:
        out[path] = node  # a scalar, an empty map or an atomic list


def fields_of(obj: Obj | None, status: bool = False) -> dict[Path, Any]:
    """The owned-field paths of an object (of its status for a status write), each with its value."""
    out: dict[Path, Any] = {}
    for key, value in (obj or {}).items():
        if key in ("apiVersion", "kind") or (key == "status") != status:
            continue
        if key == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in SERVER_META}
            if not value:
                continue
        _walk(value, key, (f"f:{key}",), out)
    return out


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for element in path:
            node = node.setdefault(element, {})
    for path in paths:  # a node owned itself and through its children gets ".": {}
        node = root
        for element in path:
            node = node[element]
        if node and "." not in node:
            node["."] = {}
    return root


def from_fields_v1(tree: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for element, child in tree.items():
        if element == ".":
            out.add(prefix)
        elif child:
            out |= from_fields_v1(child, (*prefix, element))
        else:
            out.add((*prefix, element))
    return out


def path_string(path: Path) -> str:
    """A path as conflicts name it: `.spec.replicas`, `.spec.containers[name="app"].image`."""
    out = ""
    for element in path:
        kind, _, rest = element.partition(":")
        if kind == "f":
            out += f".{rest}"
        elif kind == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(rest).items()) + "]"
        else:
            out += f"[={rest}]"
    return out


@dataclass
class Entry:
    manager: str
    operation: str  # Apply or Update
    api_version: str
    time: str
    paths: set[Path] = field(default_factory=set)
    subresource: str = ""

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> Entry:
        return cls(
            doc.get("manager", ""),
            doc.get("operation", "Update"),
            doc.get("apiVersion", ""),
            doc.get("time", ""),
            from_fields_v1(doc.get("fieldsV1") or {}),
            doc.get("subresource", ""),
        )

    def render(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.paths),
        }
        if self.subresource:
            doc["subresource"] = self.subresource
        return doc

    def printed(self) -> str:
        """How a conflict names this manager."""
        sub = f' with subresource "{self.subresource}"' if self.subresource else ""
        return f'"{self.manager}"{sub}' + (f" using {self.api_version}" if self.operation == "Update" else "")

    @property
    def of_status(self) -> bool:
        return self.subresource == "status"


def _entries(obj: Obj | None) -> list[Entry]:
    return [Entry.parse(e) for e in ((obj or {}).get("metadata") or {}).get("managedFields") or []]


def _render(entries: list[Entry], before: list[Entry]) -> list[dict[str, Any]]:
    """The entries left (none empty); the previous ones, times and all, when no ownership changed."""
    kept = [e for e in entries if e.paths]
    same = [(e.manager, e.operation, e.subresource, e.paths) for e in kept] == [
        (e.manager, e.operation, e.subresource, e.paths) for e in before
    ]
    return [e.render() for e in (before if same else kept)]


def _find(entries: list[Entry], manager: str, operation: str, subresource: str) -> Entry | None:
    return next(
        (e for e in entries if (e.manager, e.operation, e.subresource) == (manager, operation, subresource)),
        None,
    )


def update(
    rt: ResourceType, old: Obj | None, new: Obj, manager: str, now: str, subresource: str = ""
) -> list[dict[str, Any]]:
    """managedFields after an Update operation (create, update, non-apply patch) by `manager`."""
    status = subresource == "status"
    before, after = fields_of(old, status), fields_of(new, status)
    changed = {p for p, v in after.items() if p not in before or (v is not ITEM and before[p] != v)}
    entries = _entries(old)
    previous = copy.deepcopy(entries)
    for e in entries:
        if e.of_status == status:
            e.paths = (e.paths - changed) & set(after)
    mine = _find(entries, manager, "Update", subresource)
    if mine is None and changed:
        mine = Entry(manager, "Update", rt.group_version, now, subresource=subresource)
        entries.append(mine)
    if mine is not None and changed:
        mine.paths |= changed
        mine.time = now
    return _render(entries, previous)


def _remove(obj: Any, path: Path) -> None:
    """Drop the field, item or set member at `path` (nothing when it is not there)."""
    node = obj
    for element in path[:-1]:
        node = _child(node, element)
        if node is None:
            return
    last = path[-1]
    if last.startswith("f:") and isinstance(node, dict):
        node.pop(last[2:], None)
    elif isinstance(node, list):
        node[:] = [i for i in node if not _matches(i, last)]


def _set(obj: Any, path: Path, value: Any) -> None:
    node = obj
    for element in path[:-1]:
        node = _child(node, element)
    if isinstance(node, dict):
        node[path[-1][2:]] = copy.deepcopy(value)


def _matches(item: Any, element: str) -> bool:
    kind, _, rest = element.partition(":")
    wanted = json.loads(rest)
    if kind == "v":
        return bool(item == wanted)
    return isinstance(item, dict) and all(
        item.get(k, "TCP" if k == "protocol" else None) == v for k, v in wanted.items()
    )


def _child(node: Any, element: str) -> Any:
    if element.startswith("f:"):
        return node.get(element[2:]) if isinstance(node, dict) else None
    if isinstance(node, list):
        return next((i for i in node if _matches(i, element)), None)
    return None


def _conflict(conflicts: list[tuple[Entry, Path]]) -> errors.StatusError:
    causes = [
        {"reason": "FieldManagerConflict", "message": f"conflict with {e.printed()}", "field": path_string(p)}
        for e, p in conflicts
    ]
    if len(conflicts) == 1:
        ((e, p),) = conflicts
        message = f"Apply failed with 1 conflict: conflict with {e.printed()}: {path_string(p)}"
    else:
        lines = []
        for printed in sorted({e.printed() for e, _ in conflicts}):
            lines.append(f"conflicts with {printed}:")
            lines += [f"- {path_string(p)}" for e, p in conflicts if e.printed() == printed]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    error = errors.StatusError(409, "Conflict", message)
    error.details["causes"] = causes
    return error


def apply(
    rt: ResourceType, live: Obj | None, config: Obj, manager: str, force: bool, now: str
) -> tuple[Obj, list[dict[str, Any]]]:
    """Server-side apply of `config` over `live` (None: a create): the merged object and its managedFields."""
    applied, current = fields_of(config), fields_of(live)
    entries = _entries(live)
    previous = copy.deepcopy(entries)
    mine = _find(entries, manager, "Apply", "")
    conflicts = [
        (e, p)
        for e in entries
        if e is not mine and not e.of_status
        for p in sorted(e.paths & set(applied))
        if applied[p] is not ITEM and current.get(p, ITEM) != applied[p]
    ]
    if conflicts and not force:
        raise _conflict(conflicts)
    for e, p in conflicts:
        e.paths.discard(p)
    merged = patch.strategic_merge(copy.deepcopy(live), config) if live is not None else copy.deepcopy(config)
    for path, value in applied.items():  # an atomic map is replaced, not merged
        if path[-1][2:] in ATOMIC_MAPS and isinstance(value, dict):
            _set(merged, path, value)
    others = [p for e in entries if e is not mine and not e.of_status for p in e.paths]
    dropped = (mine.paths if mine else set()) - set(applied)
    for path in sorted(dropped, key=len):  # an item before its fields: once it is gone, they are too
        if not any(o[: len(path)] == path for o in others):
            _remove(merged, path)
    if mine is None:
        mine = Entry(manager, "Apply", rt.group_version, now)
        entries.append(mine)
    if mine.paths != set(applied):
        mine.paths, mine.time = set(applied), now
    remaining = set(fields_of(merged))
    for e in entries:
        if not e.of_status:
            e.paths &= remaining
    return merged, _render(entries, previous)
