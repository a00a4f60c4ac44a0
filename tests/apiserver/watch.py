"""`?watch=true`: a stream of `{"type": ..., "object": ...}` lines, one per event.

The stream starts where the request's `resourceVersion` says: after that
version (replayed from the store's history; too old a version gets a 410
Expired ERROR event), or, when it is unset or "0", with a synthetic ADDED per
current object. `sendInitialEvents=true` does the latter and, with
`allowWatchBookmarks`, ends the initial burst with the `k8s.io/initial-events-end`
BOOKMARK. Label and field selectors apply to the objects before and after each
change, so an object moving out of a selection is DELETED from the watcher's
view and one moving in is ADDED. `Accept: ...;as=Table` gets each object as a
one-row Table, the way `kubectl get -w` asks for it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.apiserver import errors, tables
from tests.apiserver.resources import Obj, ResourceType
from tests.apiserver.store import Event, ObjectStore, _matches_fields, _matches_labels, as_version

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def _matcher(namespace: str | None, name: str | None, labels: str, fields: str) -> Callable[[Obj], bool]:
    _matches_labels({}, labels)  # a malformed selector is a 400 before the stream starts
    _matches_fields({"metadata": {}}, fields)

    def matches(obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        return (
            (not namespace or meta.get("namespace") == namespace)
            and (name is None or meta.get("name") == name)
            and _matches_labels(meta.get("labels") or {}, labels)
            and _matches_fields(obj, fields)
        )

    return matches


def _seen_as(event: Event, matches: Callable[[Obj], bool]) -> str | None:
    """The event type this watcher sees, or None when the change is outside its selection."""
    now = event.type != "DELETED" and matches(event.obj)
    before = event.old is not None and matches(event.old)
    if event.type == "DELETED":
        return "DELETED" if before or matches(event.obj) else None
    if event.type == "ADDED":
        return "ADDED" if now else None
    if now:
        return "MODIFIED" if before else "ADDED"
    return "DELETED" if before else None


def expired(since: str) -> dict[str, Any]:
    return {
        "type": "ERROR",
        "object": errors.StatusError(410, "Expired", f"too old resource version: {since}").body(),
    }


async def serve_watch(
    request: Request, store: ObjectStore, rt: ResourceType, namespace: str | None, name: str | None
) -> Response:
    q = request.query_params
    matches = _matcher(namespace, name, q.get("labelSelector", ""), q.get("fieldSelector", ""))
    as_table = tables.wants_table(request.headers.get("accept", ""))
    include = q.get("includeObject", "Metadata")
    initial = q.get("sendInitialEvents") in ("true", "1")
    bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
    try:
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else None
    except ValueError:
        raise errors.bad_request("timeoutSeconds must be an integer") from None
    since = None if initial else q.get("resourceVersion")

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def listener(event: Event) -> None:
        if (event.group, event.plural) == (rt.group, rt.plural):
            loop.call_soon_threadsafe(queue.put_nowait, event)

    started = store.watch(rt, since, listener)

    def encode(kind: str, obj: Obj) -> bytes:
        if kind not in ("ERROR", "BOOKMARK"):
            obj = as_version(rt, dict(obj))
        if as_table and kind != "ERROR" and kind != "BOOKMARK":
            meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
            obj = tables.table(rt, [obj], meta, store.clock(), include)
        return json.dumps({"type": kind, "object": obj}).encode() + b"\n"

    async def stream() -> AsyncIterator[bytes]:
        if started is None:
            yield json.dumps(expired(since or "")).encode() + b"\n"
            return
        backlog, rv = started
        try:
            for event in backlog:
                kind = _seen_as(event, matches)
                if kind:
                    yield encode(kind, event.obj)
            if initial and bookmarks:
                mark: dict[str, Any] = {"kind": rt.kind, "apiVersion": rt.group_version}
                mark["metadata"] = {"resourceVersion": str(rv), "annotations": {INITIAL_EVENTS_END: "true"}}
                yield encode("BOOKMARK", mark)
            deadline = loop.time() + timeout if timeout else None
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    return
                kind = _seen_as(event, matches)
                if kind:
                    yield encode(kind, event.obj)
        finally:
            store.unwatch(listener)

    media = tables.TABLE_MEDIA if as_table else "application/json"
    return StreamingResponse(stream(), media_type=media)
