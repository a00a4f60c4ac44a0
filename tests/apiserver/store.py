"""An in-memory object store with the apiserver's write semantics.

One lock guards every object and the cluster-wide resourceVersion counter (as
etcd's revision): each write bumps it, so resourceVersion preconditions, list
resourceVersions and (later) watch resumption all have one order to refer to.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from tests.apiserver import errors, patch
from tests.apiserver.resources import Obj, ResourceType, check_name

Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
_SELECTOR_TERM = re.compile(
    r"\s*(?P<neg>!?)\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_./-]*)|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
    r"(?:,|$)"
)


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


class ObjectStore:
    def __init__(self, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._objects: dict[Key, Obj] = {}
        self._rv = 0

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

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

    def _admit(self, rt: ResourceType, obj: Obj) -> None:
        rt.default(obj)
        problems = rt.validate(obj)
        if problems:
            raise errors.invalid(rt.kind, obj["metadata"].get("name", ""), problems, group=rt.group)

    def create(self, rt: ResourceType, namespace: str | None, obj: Obj) -> Obj:
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
            self._admit(rt, obj)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = timestamp(self.clock())
            meta["resourceVersion"] = self._next_rv()
            for transient in ("deletionTimestamp", "generateName"):
                meta.pop(transient, None)
            self._objects[key] = obj
            return copy.deepcopy(obj)

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self._lock:
            obj = self._objects.get(self._key(rt, namespace, name))
            if obj is None:
                raise errors.not_found(rt.plural, name, rt.group)
            return copy.deepcopy(obj)

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
            return copy.deepcopy(items), meta

    def _update(self, rt: ResourceType, current: Obj, new: Obj) -> Obj:
        meta, old_meta = new["metadata"], current["metadata"]
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv and wanted_rv != old_meta["resourceVersion"]:
            raise errors.conflict(rt.plural, old_meta["name"], rt.group)
        for fixed in ("name", "namespace", "uid", "creationTimestamp"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
        self._admit(rt, new)
        if {**new, "metadata": {**meta, "resourceVersion": old_meta["resourceVersion"]}} == current:
            return copy.deepcopy(current)  # a no-op write keeps its resourceVersion, as the apiserver does
        meta["resourceVersion"] = self._next_rv()
        self._objects[self._key(rt, old_meta.get("namespace"), old_meta["name"])] = new
        return copy.deepcopy(new)

    def replace(self, rt: ResourceType, namespace: str | None, name: str, obj: Obj) -> Obj:
        obj = self._check_type(rt, obj)
        if obj["metadata"].get("name") not in (None, name):
            raise errors.bad_request("the name of the object does not match the name on the URL")
        if rt.namespaced and obj["metadata"].get("namespace") not in (None, "", namespace):
            raise errors.bad_request(NAMESPACE_MISMATCH)
        with self._lock:
            current = self._objects.get(self._key(rt, namespace, name))
            if current is None:
                raise errors.not_found(rt.plural, name, rt.group)
            return self._update(rt, current, obj)

    def patch(self, rt: ResourceType, namespace: str | None, name: str, content_type: str, body: Any) -> Obj:
        with self._lock:
            current = self._objects.get(self._key(rt, namespace, name))
            if current is None:
                raise errors.not_found(rt.plural, name, rt.group)
            patched = self._check_type(rt, patch.apply(content_type, copy.deepcopy(current), body))
            # Only an explicit, different resourceVersion in the patch is a precondition.
            if patched["metadata"].get("resourceVersion") == current["metadata"]["resourceVersion"]:
                patched["metadata"].pop("resourceVersion")
            return self._update(rt, current, patched)

    def delete(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self._lock:
            obj = self._objects.pop(self._key(rt, namespace, name), None)
            if obj is None:
                raise errors.not_found(rt.plural, name, rt.group)
            if rt.kind == "Namespace":
                for key in [k for k in self._objects if k[2] == name]:
                    del self._objects[key]
            self._next_rv()
            return obj
