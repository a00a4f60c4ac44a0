"""Websocket upgrades: `pods/exec`, `pods/attach` and `pods/portforward`.

Authentication, the pod and container checks and subprotocol negotiation
happen before the upgrade, so a failure is an ordinary HTTP response carrying a
`Status` (kubectl prints its message). The stand-in speaks only the websocket
forms; a plain HTTP request to these subresources (an SPDY upgrade from an old
client) gets a 400 saying so.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.websockets import WebSocket

from tests.apiserver import errors, portforward, remotecommand
from tests.apiserver.workloads import PODS

if TYPE_CHECKING:
    from tests.apiserver.app import ApiServerState

STREAMING = ("exec", "attach", "portforward")
SPDY_UNSUPPORTED = (
    "this apiserver stand-in serves exec, attach and port-forward over websockets only "
    "(v5.channel.k8s.io, SPDY/3.1+portforward.k8s.io), not SPDY upgrades"
)


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
        state.authenticate(ws.url.path, ws.headers.get("authorization", ""))
        namespace, name, kind = _parse(ws.url.path)
        pod = state.store.get(PODS, namespace, name)
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        supported = portforward.PROTOCOLS if kind == "portforward" else remotecommand.PROTOCOLS
        chosen = next((p for p in offered if p in supported), None)
        if chosen is None:
            raise errors.bad_request(
                f"none of the subprotocols {offered} is supported; use one of {list(supported)}"
            )
        query = ws.query_params
        runtime = kubelet.pod(namespace, name)
        if kind == "portforward":
            ports = [int(p) for v in query.getlist("ports") for p in v.split(",") if p.strip().isdigit()]
            if chosen == portforward.CHANNEL_PROTOCOL and not ports:
                raise errors.bad_request('query parameter "port" is required')
            await ws.accept(subprotocol=chosen)
            if chosen == portforward.TUNNEL_PROTOCOL:
                await portforward.TunnelSession(ws, kubelet, runtime).run()
            else:
                await portforward.run_channels(ws, kubelet, runtime, ports)
            return
        container = kubelet.container(namespace, name, query.get("container"))
        if pod.get("status", {}).get("phase") not in ("Running", None) or container.ended:
            raise errors.bad_request(
                f"cannot {kind} into a container in a completed pod; current phase is "
                f"{pod.get('status', {}).get('phase')}"
            )
        command = query.getlist("command")
        if kind == "exec" and not command:
            raise errors.bad_request("you must specify at least 1 command")
        flags = {k: _truthy(query.get(k)) for k in ("stdin", "stdout", "stderr", "tty")}
        if not (flags["stdin"] or flags["stdout"] or flags["stderr"]):
            raise errors.bad_request("you must specify at least 1 of stdin, stdout, stderr")
    except errors.StatusError as exc:
        await _deny(ws, exc)
        return
    await ws.accept(subprotocol=chosen)
    channels = remotecommand.Channels(ws, **flags)
    if kind == "exec":
        await remotecommand.run_exec(channels, command, container)
    else:
        await remotecommand.run_attach(channels, kubelet, container)
