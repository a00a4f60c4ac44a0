"""An in-memory object store with the apiserver's write semantics.

One lock guards every object and the cluster-wide resourceVersion counter (as
etcd's revision): each write bumps it, so resourceVersion preconditions, list
resourceVersions and watch resumption all have one order to refer to. Every
write is recorded as a watch `Event` (a bounded history, like etcd's before
compaction) and handed to the listeners that `watch` registered.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.apiserver import errors, managed, patch
from tests.apiserver.resources import Obj, ResourceType, check_name

Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
_SELECTOR_TERM = re.compile(
    r"\s*(?P<neg>!?)\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_./-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
    r"(?:,|$)"
)


HISTORY = 10_000  # watch events kept; older resourceVersions are "too old" (410 Expired)


@dataclass(frozen=True)
class Event:
    """One write, as a watch sees it: `old` is the object before a MODIFIED or DELETED."""

    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    group: str
    plural: str
    obj: Obj
    old: Obj | None = None


Listener = Callable[[Event], None]
Mutator = Callable[[ResourceType, Obj, "Obj | None"], None]


NAMESPACE_MISMATCH = "the namespace of the provided object does not match the namespace sent on the request"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches_labels(labels: dict[str, str], selector: str) -> bool:
    pos = 0
    while pos < len(selector):
        m = _SELECTOR_TERM.match(selector, pos)
        if not m or m.end() == pos:
            raise errors.bad_request(f"unable to parse requirement: invalid label selector {selector!r}")
        pos = m.end()
        key, op, setop = m["key"], m["op"], m["setop"]
        if setop:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            ok = labels.get(key) in values if setop == "in" else labels.get(key) not in values
        elif op:
            ok = (labels.get(key) == m["value"]) if op in ("=", "==") else labels.get(key) != m["value"]
        else:
            ok = (key in labels) != bool(m["neg"])
        if not ok:
            return False
    return True


def _field(obj: Obj, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def _matches_fields(obj: Obj, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise errors.bad_request(f"invalid field selector {selector!r}")
        equal = _field(obj, m[1]) == m[3]
        if equal != (m[2] != "!="):
            return False
    return True


def _generation_fields(rt: ResourceType, obj: Obj) -> Any:
    """What a change must touch to count as a new generation: the spec, or for a custom resource
    everything but metadata (and status, when it has its own subresource), as the apiserver counts."""
    if not rt.custom:
        return obj.get("spec")
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if "status" in rt.subresources else set())
    return {k: v for k, v in obj.items() if k not in skip}


def as_version(rt: ResourceType, obj: Obj) -> Obj:
    """An object as read through `rt`'s version: a CRD's versions share one store, and the
    apiserver's `None` conversion between them changes only `apiVersion`."""
    if obj.get("apiVersion") != rt.group_version and "apiVersion" in obj:
        obj["apiVersion"] = rt.group_version
    return obj


class ObjectStore:
    def __init__(self, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._objects: dict[Key, Obj] = {}
        self._rv = 0
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self._listeners: set[Listener] = set()
        self._watching: dict[Listener, tuple[str, str]] = {}  # open watches, by resource
        # What controllers and the kubelet add to an object on every write (e.g. a pod's status).
        self.mutators: list[Mutator] = []

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, rt: ResourceType, kind: str, obj: Obj, old: Obj | None = None) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), kind, rt.group, rt.plural, obj, old)
        self._history.append(event)
        for listener in list(self._listeners):
            listener(event)

    def watch(
        self, rt: ResourceType, since: str | None, listener: Listener
    ) -> tuple[list[Event], int] | None:
        """Register `listener` for later writes and return what came before it, atomically.

        `since` is the watch's resourceVersion: None or "0" starts with a synthetic
        ADDED for every current object; a number replays the writes after it. Returns
        None when that resourceVersion is older than the history (410 Expired).
        """
        with self._lock:
            if since in (None, "", "0"):
                backlog = [
                    Event(
                        int(o["metadata"]["resourceVersion"]), "ADDED", rt.group, rt.plural, copy.deepcopy(o)
                    )
                    for k, o in sorted(self._objects.items())
                    if k[:2] == (rt.group, rt.plural)
                ]
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise errors.bad_request(f"invalid resourceVersion {since!r}") from None
                oldest = self._history[0].rv - 1 if len(self._history) == self._history.maxlen else 0
                if start < oldest:
                    return None
                backlog = [
                    e for e in self._history if e.rv > start and (e.group, e.plural) == (rt.group, rt.plural)
                ]
            self._listeners.add(listener)
            self._watching[listener] = (rt.group, rt.plural)
            return backlog, self._rv

    def watch_count(self, group: str, plural: str) -> int:
        """How many watches on a resource are open (for tests: is kubectl's `-w` connected yet?)."""
        with self._lock:
            return sum(1 for key in self._watching.values() if key == (group, plural))

    def listen(self, listener: Listener) -> None:
        """Call `listener` (under the store's lock: keep it short) for every write from now on."""
        with self._lock:
            self._listeners.add(listener)

    def find(self, group: str, plural: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            obj = self._objects.get((group, plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list_all(self, group: str, plural: str) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for k, o in sorted(self._objects.items()) if k[:2] == (group, plural)]

    def unwatch(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)
            self._watching.pop(listener, None)

    @staticmethod
    def _key(rt: ResourceType, namespace: str | None, name: str) -> Key:
        return (rt.group, rt.plural, namespace or "" if rt.namespaced else "", name)

    def _require_namespace(self, rt: ResourceType, namespace: str | None) -> None:
        if not rt.namespaced:
            return
        if not namespace:
            raise errors.bad_request("a namespace is required for namespaced resources")
        ns = self._objects.get(("", "namespaces", "", namespace))
        if ns is None:
            raise errors.not_found("namespaces", namespace)
        if ns.get("status", {}).get("phase") == "Terminating":
            raise errors.StatusError(
                403,
                "Forbidden",
                f"{rt.plural} is forbidden: unable to create new content in namespace {namespace} "
                "because it is being terminated",
            )

    def _check_type(self, rt: ResourceType, obj: Obj) -> Obj:
        if not isinstance(obj, dict):
            raise errors.bad_request("the request body must be a JSON object")
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if kind not in (None, rt.kind) or api_version not in (None, rt.group_version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({rt.group_version}) or kind {kind!r} is not {rt.kind!r}"
            )
        out = copy.deepcopy(obj)
        out["kind"], out["apiVersion"] = rt.kind, rt.group_version
        meta = out.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        return out

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None, owner: Owner) -> None:
        if rt.generation:
            generation = (old or {}).get("metadata", {}).get("generation", 0)
            changed = old is None or _generation_fields(rt, old) != _generation_fields(rt, obj)
            obj["metadata"]["generation"] = generation + 1 if changed else generation
        rt.default(obj)
        problems = rt.validate(obj)
        if old is not None and not problems:
            problems = rt.validate_update(old, obj)
        if problems:
            raise errors.invalid(rt.kind, obj["metadata"].get("name", ""), problems, group=rt.group)
        meta = obj["metadata"]
        if owner.entries is not None:  # an apply worked out ownership itself
            meta["managedFields"] = owner.entries
        elif owner.manager:
            now = timestamp(self.clock())
            meta["managedFields"] = managed.update(rt, old, obj, owner.manager, now, owner.subresource)
        elif old is not None and old["metadata"].get("managedFields"):
            meta["managedFields"] = copy.deepcopy(old["metadata"]["managedFields"])
        if not meta.get("managedFields"):
            meta.pop("managedFields", None)
        for mutate in self.mutators:
            mutate(rt, obj, old)

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        obj: Obj,
        *,
        dry_run: bool = False,
        manager: str = "",
        managed_fields: list[Obj] | None = None,
    ) -> Obj:
        obj = self._check_type(rt, obj)
        meta = obj["metadata"]
        with self._lock:
            self._require_namespace(rt, namespace)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            check_name(rt, meta.get("name"))
            if rt.namespaced:
                if meta.get("namespace") not in (None, "", namespace):
                    raise errors.bad_request(NAMESPACE_MISMATCH)
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            key = self._key(rt, namespace, meta["name"])
            if key in self._objects:
                raise errors.already_exists(rt.plural, meta["name"], rt.group)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = timestamp(self.clock())
            for transient in ("deletionTimestamp", "generateName", "resourceVersion", "managedFields"):
                meta.pop(transient, None)
            self._admit(rt, obj, None, Owner(manager, managed_fields))
            if dry_run:
                return copy.deepcopy(obj)
            meta["resourceVersion"] = self._next_rv()
            self._objects[key] = obj
            self._emit(rt, "ADDED", copy.deepcopy(obj))
            return copy.deepcopy(obj)

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self._lock:
            obj = self._objects.get(self._key(rt, namespace, name))
            if obj is None:
                raise errors.not_found(rt.plural, name, rt.group)
            return as_version(rt, copy.deepcopy(obj))

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
    ) -> tuple[list[Obj], dict[str, Any]]:
        """Items in (namespace, name) order plus list metadata (resourceVersion, continue)."""
        start: list[str] = []
        if continue_token:
            try:
                start = json.loads(base64.urlsafe_b64decode(continue_token))["after"]
            except (ValueError, KeyError, TypeError):
                raise errors.StatusError(410, "Expired", "the continue parameter is invalid") from None
        with self._lock:
            rv = str(self._rv)
            keys = sorted(
                k
                for k in self._objects
                if k[:2] == (rt.group, rt.plural)
                and (not namespace or k[2] == namespace)
                and list(k[2:]) > start
            )
            items = [
                self._objects[k]
                for k in keys
                if _matches_labels(self._objects[k]["metadata"].get("labels") or {}, label_selector)
                and _matches_fields(self._objects[k], field_selector)
            ]
            meta: dict[str, Any] = {"resourceVersion": rv}
            if limit and len(items) > limit:
                last = items[limit - 1]["metadata"]
                meta["continue"] = base64.urlsafe_b64encode(
                    json.dumps({"after": [last.get("namespace", ""), last["name"]]}).encode()
                ).decode()
                meta["remainingItemCount"] = len(items) - limit
                items = items[:limit]
            return [as_version(rt, o) for o in copy.deepcopy(items)], meta

    def _update(
        self,
        rt: ResourceType,
        current: Obj,
        new: Obj,
        subresource: str | None = None,
        dry_run: bool = False,
        owner: Owner | None = None,
    ) -> Obj:
        meta, old_meta = new["metadata"], current["metadata"]
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv and wanted_rv != old_meta["resourceVersion"]:
            raise errors.conflict(rt.plural, old_meta["name"], rt.group)
        if subresource == "status":  # a status write changes only the status
            new = {**copy.deepcopy(current), "status": new.get("status")}
            meta = new["metadata"]
        elif "status" in rt.subresources:  # ... and only a status write does
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
        meta.pop("managedFields", None)
        owner = owner or Owner()
        self._admit(rt, new, current, Owner(owner.manager, owner.entries, subresource or ""))
        if {**new, "metadata": {**meta, "resourceVersion": old_meta["resourceVersion"]}} == current:
            return copy.deepcopy(current)  # a no-op write keeps its resourceVersion, as the apiserver does
        if dry_run:
            return copy.deepcopy(new)
        meta["resourceVersion"] = self._next_rv()
        self._objects[self._key(rt, old_meta.get("namespace"), old_meta["name"])] = new
        self._emit(rt, "MODIFIED", copy.deepcopy(new), copy.deepcopy(current))
        return copy.deepcopy(new)

    def replace(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        obj: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        manager: str = "",
    ) -> Obj:
        obj = self._check_type(rt, obj)
        if obj["metadata"].get("name") not in (None, name):
            raise errors.bad_request("the name of the object does not match the name on the URL")
        if rt.namespaced and obj["metadata"].get("namespace") not in (None, "", namespace):
            raise errors.bad_request(NAMESPACE_MISMATCH)
        with self._lock:
            current = self._objects.get(self._key(rt, namespace, name))
            if current is None:
                raise errors.not_found(rt.plural, name, rt.group)
            return self._update(rt, current, obj, subresource, dry_run, Owner(manager))

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        manager: str = "",
    ) -> Obj:
        with self._lock:
            current = self._objects.get(self._key(rt, namespace, name))
            if current is None:
                raise errors.not_found(rt.plural, name, rt.group)
            patched = self._check_type(
                rt, patch.apply(content_type, as_version(rt, copy.deepcopy(current)), body)
            )
            # Only an explicit, different resourceVersion in the patch is a precondition.
            if patched["metadata"].get("resourceVersion") == current["metadata"]["resourceVersion"]:
                patched["metadata"].pop("resourceVersion")
            return self._update(rt, current, patched, subresource, dry_run, Owner(manager))

    def apply(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        manager: str,
        force: bool = False,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Server-side apply (`managed.py`): create when missing, else merge; True when it created."""
        if not isinstance(body, dict):
            raise errors.bad_request("the apply patch must be an object")
        if body.get("apiVersion") != rt.group_version:
            raise errors.bad_request(
                "Incorrect version specified in apply patch. "
                f"Specified patch version: {body.get('apiVersion') or ''}, expected: {rt.group_version}"
            )
        config = self._check_type(rt, body)
        if config["metadata"].get("name") not in (None, name):
            found = config["metadata"]["name"]
            raise errors.bad_request(
                f"the name of the object ({found}) does not match the name on the URL ({name})"
            )
        with self._lock:
            current = self._objects.get(self._key(rt, namespace, name))
            now = timestamp(self.clock())
            merged, entries = managed.apply(rt, current, config, manager, force, now)
            if current is None:
                merged["metadata"]["name"] = name
                return self.create(rt, namespace, merged, dry_run=dry_run, managed_fields=entries), True
            if merged["metadata"].get("resourceVersion") == current["metadata"]["resourceVersion"]:
                merged["metadata"].pop("resourceVersion")
            return self._update(rt, current, merged, None, dry_run, Owner(manager, entries)), False

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        preconditions: dict[str, str] | None = None,
        dry_run: bool = False,
    ) -> Obj:
        with self._lock:
            key = self._key(rt, namespace, name)
            obj = self._objects.get(key)
            if obj is None:
                raise errors.not_found(rt.plural, name, rt.group)
            for field, value in (preconditions or {}).items():
                if value and obj["metadata"].get(field) != value:
                    raise errors.StatusError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {rt.plural} "{name}": Precondition failed: '
                        f"{field.upper() if field == 'uid' else field} in precondition: {value}, "
                        f"{field} in object meta: {obj['metadata'].get(field)}",
                    )
            if dry_run:
                return copy.deepcopy(obj)
            doomed = [key]
            if rt.kind == "Namespace":
                doomed += [k for k in sorted(self._objects) if k[2] == name]
            for k in reversed(doomed):
                gone = self._objects.pop(k)
                gone["metadata"]["resourceVersion"] = self._next_rv()
                owner = rt if k == key else _Plural(k[0], k[1])
                self._emit(owner, "DELETED", copy.deepcopy(gone), copy.deepcopy(gone))  # type: ignore[arg-type]
            return copy.deepcopy(obj)


@dataclass(frozen=True)
class Owner:
    """Who makes a write: its field manager ("" for the stand-in's own writes, which own nothing),
    or the managedFields an apply already worked out, and the subresource written."""

    manager: str = ""
    entries: list[Obj] | None = None
    subresource: str = ""


@dataclass(frozen=True)
class _Plural:
    """Enough of a ResourceType to name the events of objects deleted with their namespace."""

    group: str
    plural: str
