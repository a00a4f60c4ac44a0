"""flux-logs-agent: the logs of Flux's controllers, followed and pushed to the hub per controller.

Every `interval` it reads, for each container of each Flux controller pod (pods
with an `app` label in the Flux namespace), the log lines written since the last
one it shipped (`sinceSeconds` and `timestamps=true` of the pods/log API), and
pushes them under the controller's name (`source-controller`, ...) with the
level Flux's JSON lines carry. Where to carry on is kept only once the hub has
accepted a batch; after a restart it starts from the hub's newest line of each
controller (`GET /agent/v1/logs/latest`), so no line is sent twice and none is
lost while the agent was away (as far as the kubelet still has it). A pod that
restarted is a new pod: its lines are all new.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from agents.hubclient import HubClient
from agents.runtime import LoopMetrics, reconcile_forever, run_with_cluster, use_current_identity
from foundation.identitystore import IdentityStore
from foundation.kube import Kube
from foundation.retry import RetryPolicy

log = logging.getLogger("kubearc.agent.fluxlogs")
AGENT_NAME = "flux-logs-agent"
BATCH = 1000  # the hub's largest log batch
Key = tuple[str, str]  # (pod, container)


@dataclass(frozen=True)
class FluxLogsSettings:
    hub_url: str
    hub_ca: Path | None
    flux_namespace: str = "flux-system"
    identity: str = "secret:azure-arc/azure-identity-certificate"
    kubeconfig: Path | None = None
    once: bool = False
    interval: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Line:
    controller: str
    when: dt.datetime
    stamp: str  # as the kubelet wrote it (nanoseconds)
    text: str

    def entry(self) -> dict[str, str]:
        level = "info"
        try:
            doc = json.loads(self.text)
            if isinstance(doc, dict) and isinstance(doc.get("level"), str):
                level = doc["level"].lower()
        except ValueError:
            pass
        stamp = self.when.isoformat().replace("+00:00", "Z")  # microseconds: what the hub keeps
        return {"agent": self.controller, "timestamp": stamp, "level": level, "message": self.text}


def parse(controller: str, text: str) -> list[Line]:
    """`2026-12-03T10:00:00.123456789Z {"level":"info",...}` lines (timestamps=true) into Lines."""
    lines = []
    for raw in text.splitlines():
        stamp, _, rest = raw.partition(" ")
        try:
            when = _time(stamp)
        except ValueError:
            continue  # not a timestamped line (a torn read)
        lines.append(Line(controller, when, stamp, rest))
    return lines


def _time(stamp: str) -> dt.datetime:
    """RFC 3339 with up to nanoseconds; Python keeps microseconds, enough to order a log."""
    base, dot, frac = stamp.rstrip("Z").partition(".")
    text = base + (f".{frac[:6]}" if dot else "") + "+00:00"
    return dt.datetime.fromisoformat(text)


def controller_pods(api: client.ApiClient, namespace: str) -> list[tuple[str, str, list[str]]]:
    """(pod, controller, containers) of every Flux controller pod that has started."""
    raw: Any = client.CoreV1Api(api).list_namespaced_pod(namespace)
    out = []
    for pod in raw.items:
        controller = (pod.metadata.labels or {}).get("app")
        if controller and pod.status.phase in ("Running", "Succeeded", "Failed"):
            out.append((pod.metadata.name, controller, [c.name for c in pod.spec.containers]))
    return out


def read_since(
    api: client.ApiClient, namespace: str, pod: str, container: str, since: dt.datetime | None
) -> str:
    kwargs: dict[str, Any] = {"container": container, "timestamps": True}
    if since is not None:  # whole seconds, with a second to spare: the lines before `since` are dropped here
        age = (dt.datetime.now(dt.UTC) - since).total_seconds()
        kwargs["since_seconds"] = max(1, math.ceil(age) + 1)
    text: Any = client.CoreV1Api(api).read_namespaced_pod_log(pod, namespace, **kwargs)
    return str(text or "")


class FluxLogsAgent:
    def __init__(self, settings: FluxLogsSettings, hub: HubClient, store: IdentityStore, kube: Kube) -> None:
        self.settings, self.hub, self.store, self.kube = settings, hub, store, kube
        self.metrics = LoopMetrics(AGENT_NAME)
        self.shipped: dict[Key, dt.datetime] = {}  # the newest line of each container the hub has
        self.resumed: dict[str, dt.datetime | None] = {}  # controller -> the hub's newest line at start

    async def _resume_point(self, controller: str) -> dt.datetime | None:
        if controller not in self.resumed:
            doc = await self.hub.call("GET", f"/agent/v1/logs/latest?agent={controller}")
            self.resumed[controller] = _time(doc["timestamp"]) if doc.get("timestamp") else None
        return self.resumed[controller]

    async def cycle(self) -> None:
        await use_current_identity(self.hub, self.store, self.settings.retry)
        ns = self.settings.flux_namespace
        try:
            pods = await self.kube.call(lambda api: controller_pods(api, ns), f"list the pods in {ns}")
        except ApiException as exc:
            if exc.status == 404:
                return  # no Flux namespace (yet): nothing to follow
            raise
        for pod, controller, containers in pods:
            for container in containers:
                key = (pod, container)
                since = self.shipped.get(key) or await self._resume_point(controller)
                try:
                    read = functools.partial(
                        read_since, namespace=ns, pod=pod, container=container, since=since
                    )
                    text = await self.kube.call(read, f"read {pod}'s log")
                except ApiException as exc:
                    if exc.status in (400, 404):  # not started yet, or gone meanwhile
                        continue
                    raise
                lines = [line for line in parse(controller, text) if since is None or line.when > since]
                for start in range(0, len(lines), BATCH):
                    batch = lines[start : start + BATCH]
                    await self.hub.post_logs([line.entry() for line in batch])
                    self.shipped[key] = batch[-1].when  # only once the hub has them
                if lines:
                    log.debug("shipped %d lines of %s/%s", len(lines), pod, container)
        alive = {(p, c) for p, _, cs in pods for c in cs}
        self.shipped = {k: v for k, v in self.shipped.items() if k in alive}

    async def run(self) -> None:
        s = self.settings
        await reconcile_forever(AGENT_NAME, self.cycle, self.metrics, s.interval, s.once)


async def run(settings: FluxLogsSettings) -> None:
    await run_with_cluster(settings, lambda hub, store, kube: FluxLogsAgent(settings, hub, store, kube))
