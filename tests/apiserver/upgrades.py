"""Streaming upgrades: `pods/exec`, `pods/attach` and `pods/portforward`, over websockets here.

Authentication, the pod and container checks and protocol negotiation happen
before the upgrade, so a failure is an ordinary HTTP response carrying a
`Status` (kubectl prints its message). `check` and `validate` are shared with
the direct SPDY/3.1 upgrades of older clients (`spdy_upgrade.py`), which never
reach the ASGI app; a plain HTTP request to these subresources gets a 400.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.websockets import WebSocket

from tests.apiserver import errors, portforward, remotecommand
from tests.apiserver.workloads import PODS

if TYPE_CHECKING:
    from tests.apiserver.app import ApiServerState
    from tests.apiserver.kubelet import Container, PodRuntime
    from tests.apiserver.resources import Obj

STREAMING = ("exec", "attach", "portforward")
UPGRADE_REQUIRED = (
    "Upgrade request required: exec, attach and port-forward need a websocket "
    "(v5.channel.k8s.io, SPDY/3.1+portforward.k8s.io) or an SPDY/3.1 upgrade"
)


@dataclass
class Target:
    """The pod a streaming request is for."""

    namespace: str
    name: str
    kind: str  # exec, attach or portforward
    pod: Obj


@dataclass
class Session:
    """What a validated streaming request asks for."""

    kind: str
    runtime: PodRuntime
    container: Container | None = None  # exec and attach
    command: list[str] = field(default_factory=list)
    flags: dict[str, bool] = field(default_factory=dict)  # stdin, stdout, stderr, tty
    ports: list[int] = field(default_factory=list)  # port-forward's `?ports=` (websocket channels)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _parse(path: str) -> tuple[str, str, str]:
    parts = [p for p in path.split("/") if p]
    if (
        len(parts) == 7
        and parts[:3] == ["api", "v1", "namespaces"]
        and parts[4] == "pods"
        and parts[6] in STREAMING
    ):
        return parts[3], parts[5], parts[6]
    raise errors.StatusError(404, "NotFound", "the server could not find the requested resource")


def check(state: ApiServerState, path: str, authorization: str) -> Target:
    """The caller is authenticated and the pod exists (before protocol negotiation)."""
    state.authenticate(path, authorization)
    namespace, name, kind = _parse(path)
    return Target(namespace, name, kind, state.store.get(PODS, namespace, name))


def validate(state: ApiServerState, t: Target, query: QueryParams) -> Session:
    """The container, command and streams a request names are usable (after protocol negotiation)."""
    kubelet = state.kubelet
    assert kubelet is not None
    runtime = kubelet.pod(t.namespace, t.name)
    if t.kind == "portforward":
        ports = [int(p) for v in query.getlist("ports") for p in v.split(",") if p.strip().isdigit()]
        return Session(t.kind, runtime, ports=ports)
    container = kubelet.container(t.namespace, t.name, query.get("container"))
    phase = t.pod.get("status", {}).get("phase")
    if phase not in ("Running", None) or container.ended:
        raise errors.bad_request(
            f"cannot {t.kind} into a container in a completed pod; current phase is {phase}"
        )
    command = query.getlist("command")
    if t.kind == "exec" and not command:
        raise errors.bad_request("you must specify at least 1 command")
    flags = {k: _truthy(query.get(k)) for k in ("stdin", "stdout", "stderr", "tty")}
    if not (flags["stdin"] or flags["stdout"] or flags["stderr"]):
        raise errors.bad_request("you must specify at least 1 of stdin, stdout, stderr")
    return Session(t.kind, runtime, container, command, flags)


async def _deny(ws: WebSocket, exc: errors.StatusError) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        body = json.dumps(exc.body()).encode()
        await ws.send_denial_response(Response(body, exc.code, media_type="application/json"))
    else:
        await ws.close(1008, exc.message[:120])


async def handle(ws: WebSocket, state: ApiServerState) -> None:
    kubelet = state.kubelet
    assert kubelet is not None
    try:
        target = check(state, ws.url.path, ws.headers.get("authorization", ""))
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        supported = portforward.PROTOCOLS if target.kind == "portforward" else remotecommand.PROTOCOLS
        chosen = next((p for p in offered if p in supported), None)
        if chosen is None:
            raise errors.bad_request(
                f"none of the subprotocols {offered} is supported; use one of {list(supported)}"
            )
        session = validate(state, target, ws.query_params)
        if chosen == portforward.CHANNEL_PROTOCOL and not session.ports:
            raise errors.bad_request('query parameter "port" is required')
    except errors.StatusError as exc:
        await _deny(ws, exc)
        return
    await ws.accept(subprotocol=chosen)
    if session.kind == "portforward":
        if chosen == portforward.TUNNEL_PROTOCOL:
            await portforward.TunnelSession(
                portforward.websocket_receiver(ws), ws.send_bytes, kubelet, session.runtime
            ).run()
        else:
            await portforward.run_channels(ws, kubelet, session.runtime, session.ports)
        return
    assert session.container is not None
    channels = remotecommand.Channels(ws, **session.flags)
    if session.kind == "exec":
        await remotecommand.run_exec(channels, session.command, session.container)
    else:
        await remotecommand.run_attach(channels, kubelet, session.container)
