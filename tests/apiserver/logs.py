"""`pods/{name}/log`: a container's log as `text/plain`, streamed while `follow=true`.

The options kubectl sends are honoured: `container`, `follow`, `tailLines`,
`limitBytes`, `timestamps`, `sinceSeconds`/`sinceTime`; `previous` fails as it
does for a container that never restarted. A followed log ends when the test
ends it (`ApiServer.end_logs`) or the pod is deleted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.apiserver import errors
from tests.apiserver.kubelet import Container, Kubelet, LogEntry
from tests.apiserver.workloads import PODS


def _int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise errors.bad_request(f"{name}: invalid value {value!r}: must be an integer") from None
    if number < 0:
        raise errors.bad_request(f"{name}: Invalid value: {number}: must be greater than or equal to 0")
    return number


def _since(request: Request) -> dt.datetime | None:
    seconds = _int(request, "sinceSeconds")
    if seconds is not None:
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    stamp = request.query_params.get("sinceTime")
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def _render(entry: LogEntry, timestamps: bool) -> bytes:
    if not timestamps:
        return entry.data
    stamp = entry.when.strftime("%Y-%m-%dT%H:%M:%S.%f000Z").encode()
    return stamp + b" " + entry.data


async def serve_log(request: Request, kubelet: Kubelet, namespace: str, name: str) -> Response:
    q = request.query_params
    pod = kubelet.store.get(PODS, namespace, name)
    containers = [c["name"] for c in pod["spec"]["containers"]]
    wanted = q.get("container")
    if wanted is None and len(containers) > 1:
        annotations = pod["metadata"].get("annotations") or {}
        wanted = annotations.get("kubectl.kubernetes.io/default-container")
        if wanted is None:
            raise errors.bad_request(
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
            )
    if wanted is not None and wanted not in containers:
        raise errors.bad_request(f"container {wanted} is not valid for pod {name}")
    container = kubelet.container(namespace, name, wanted)
    if q.get("previous") in ("true", "1"):
        raise errors.bad_request(
            f'previous terminated container "{container.name}" in pod "{name}" not found'
        )
    follow = q.get("follow") in ("true", "1")
    tail, limit, since = _int(request, "tailLines"), _int(request, "limitBytes"), _since(request)
    timestamps = q.get("timestamps") in ("true", "1")
    return StreamingResponse(
        _stream(kubelet, container, follow, tail, limit, since, timestamps),
        media_type="text/plain",
    )


async def _stream(
    kubelet: Kubelet,
    c: Container,
    follow: bool,
    tail: int | None,
    limit: int | None,
    since: dt.datetime | None,
    timestamps: bool,
) -> AsyncIterator[bytes]:
    entries, ended, seen = kubelet.entries(c, 0)
    index = len(entries)
    if since is not None:
        entries = [e for e in entries if e.when >= since]
    if tail is not None:
        entries = entries[-tail:] if tail else []
    budget = limit if limit is not None else -1
    while True:
        for entry in entries:
            chunk = _render(entry, timestamps)
            if budget >= 0:
                chunk, budget = chunk[:budget], budget - len(chunk[:budget])
            if chunk:
                yield chunk
            if budget == 0:
                return
        if not follow or ended:
            return
        await c.changed.wait_past(seen)
        entries, ended, seen = kubelet.entries(c, index)
        index += len(entries)
