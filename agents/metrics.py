"""metrics-agent: CPU and memory of every kubearc agent in the cluster, pushed to the hub per agent.

Every `interval` it reads the agents' pods (label `app.kubernetes.io/part-of=kubearc`
in its namespace) and takes each one's usage:

- from the metrics API (`metrics.k8s.io/v1beta1` PodMetrics) when the cluster
  serves it (metrics-server), which measures the containers from outside;
- otherwise from the agent itself: each agent answers `/metrics` on its probes
  port, whose `process_cpu_seconds_total` (differenced between two readings; the
  first reading averages since the process started) and
  `process_resident_memory_bytes` are its own.

The readings go to `PUT /agent/v1/usage` under Arc's agent names, one batch per pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity
from prometheus_client.parser import text_string_to_metric_families

from agents.hubclient import HubClient
from agents.runtime import LoopMetrics, reconcile_forever, run_with_cluster, use_current_identity
from foundation.identitystore import IdentityStore
from foundation.kube import Kube
from foundation.retry import RetryPolicy

log = logging.getLogger("kubearc.agent.metrics")
AGENT_NAME = "metrics-agent"
SELECTOR = "app.kubernetes.io/part-of=kubearc"
# The chart's component label -> the agent's name as Arc shows it.
ARC_NAMES = {
    "identity": "clusteridentityoperator",
    "metadata": "cluster-metadata-operator",
    "config": "config-agent",
    "extensions": "extension-manager",
    "connect": "clusterconnect-agent",
    "guard": "guard",
    "aad-proxy": "kube-aad-proxy",
    "metrics": "metrics-agent",
    "flux-logs": "flux-logs-agent",
    "controller": "controller-manager",
}


@dataclass(frozen=True)
class MetricsSettings:
    hub_url: str
    hub_ca: Path | None
    namespace: str = "azure-arc"
    identity: str = "secret:azure-arc/azure-identity-certificate"
    kubeconfig: Path | None = None
    once: bool = False
    interval: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Pod:
    agent: str  # Arc's name
    name: str
    ip: str | None
    probes_port: int | None


def agent_pods(api: client.ApiClient, namespace: str) -> list[Pod]:
    raw: Any = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=SELECTOR)
    pods = []
    for pod in raw.items:
        component = (pod.metadata.labels or {}).get("app.kubernetes.io/component", "")
        port = next(
            (p.container_port for c in pod.spec.containers for p in (c.ports or []) if p.name == "probes"),
            None,
        )
        if pod.status.phase == "Running":
            pods.append(Pod(ARC_NAMES.get(component, component), pod.metadata.name, pod.status.pod_ip, port))
    return pods


def pod_metrics(api: client.ApiClient, namespace: str) -> dict[str, tuple[int, int]] | None:
    """pod name -> (millicores, bytes) from the metrics API; None when the cluster does not serve it."""
    try:
        doc: Any = client.CustomObjectsApi(api).list_namespaced_custom_object(
            "metrics.k8s.io", "v1beta1", namespace, "pods"
        )
    except ApiException as exc:
        if exc.status in (404, 503):  # no metrics-server (or it is not ready)
            return None
        raise
    out = {}
    for item in doc.get("items") or []:
        cpu = sum(
            (Decimal(parse_quantity(c["usage"]["cpu"])) for c in item.get("containers") or []), Decimal(0)
        )
        memory = sum((int(parse_quantity(c["usage"]["memory"])) for c in item.get("containers") or []), 0)
        out[item["metadata"]["name"]] = (round(cpu * 1000), memory)
    return out


def own_reading(text: str) -> tuple[float, float, int] | None:
    """(cpu seconds, process start time, resident bytes) from an agent's /metrics, if it has them."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (
                "process_cpu_seconds_total",
                "process_start_time_seconds",
                "process_resident_memory_bytes",
            ):
                values[sample.name] = sample.value
    try:
        return (
            values["process_cpu_seconds_total"],
            values["process_start_time_seconds"],
            int(values["process_resident_memory_bytes"]),
        )
    except KeyError:
        return None


class MetricsAgent:
    def __init__(self, settings: MetricsSettings, hub: HubClient, store: IdentityStore, kube: Kube) -> None:
        self.settings, self.hub, self.store, self.kube = settings, hub, store, kube
        self.metrics = LoopMetrics(AGENT_NAME)
        self.previous: dict[str, tuple[float, float]] = {}  # pod -> (wall time, cpu seconds)

    async def scrape(self, http: httpx.AsyncClient, pod: Pod) -> tuple[int, int] | None:
        if not pod.ip or not pod.probes_port:
            return None
        try:
            r = await http.get(f"http://{pod.ip}:{pod.probes_port}/metrics")
            reading = own_reading(r.text) if r.status_code == 200 else None
        except httpx.HTTPError as exc:
            log.debug("no reading from %s: %s", pod.name, exc)
            return None
        if reading is None:
            return None
        cpu, started, memory = reading
        now = time.time()
        last = self.previous.get(pod.name)
        self.previous[pod.name] = (now, cpu)
        since, used = (last[0], cpu - last[1]) if last else (started, cpu)
        return round(max(used, 0.0) / max(now - since, 1e-3) * 1000), memory

    async def cycle(self) -> None:
        await use_current_identity(self.hub, self.store, self.settings.retry)
        ns = self.settings.namespace
        pods = await self.kube.call(lambda api: agent_pods(api, ns), "list the agents' pods")
        measured = await self.kube.call(lambda api: pod_metrics(api, ns), "read the metrics API")
        usage: dict[str, list[int]] = {}
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            for pod in pods:
                reading = measured.get(pod.name) if measured is not None else await self.scrape(http, pod)
                if reading is not None:
                    total = usage.setdefault(pod.agent, [0, 0])  # replicas of one agent add up
                    total[0] += reading[0]
                    total[1] += reading[1]
        self.previous = {k: v for k, v in self.previous.items() if k in {p.name for p in pods}}
        if usage:
            items = [{"name": a, "cpuMillicores": c, "memoryBytes": m} for a, (c, m) in sorted(usage.items())]
            await self.hub.put_usage(items)
            log.info(
                "pushed usage of %d agents (%s)",
                len(items),
                "metrics API" if measured is not None else "their own readings",
            )

    async def run(self) -> None:
        s = self.settings
        await reconcile_forever(AGENT_NAME, self.cycle, self.metrics, s.interval, s.once)


async def run(settings: MetricsSettings) -> None:
    await run_with_cluster(settings, lambda hub, store, kube: MetricsAgent(settings, hub, store, kube))
