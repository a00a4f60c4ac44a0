"""cluster-metadata-operator with resource sync and heartbeat: tell the hub what the cluster is.

Every interval the agent reads the Kubernetes version, node count and total
vCPU, the apiserver's CA and TLS server name (which `kubearc proxy` puts in
kubeconfigs so kubectl verifies the real apiserver through the tunnel), pushes
them when they changed or went stale, then heartbeats. Its own CPU and memory go
to the hub's usage endpoint, best effort.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from agents import AGENT_VERSION
from agents.errors import HubRefused
from agents.hubclient import HubClient
from agents.runtime import use_current_identity
from foundation.identitystore import IdentityStore, open_store
from foundation.kube import Kube, KubeError, describe
from foundation.retry import RetriesExhausted, RetryPolicy

log = logging.getLogger("kubearc.agent.metadata")
AGENT_NAME = "cluster-metadata-operator"
NODE_PAGE = 500
USAGE_RETRY = RetryPolicy(base=0.5, cap=2.0, attempts=2, deadline=10.0)
# Hub answers the loop rides out (identity being renewed, cluster being re-onboarded);
# anything else is a configuration problem and ends the process.
TOLERATED_HUB_STATUSES = (401, 403, 404, 409)


@dataclass(frozen=True)
class MetadataSettings:
    hub_url: str
    hub_ca: Path | None
    identity: str = "secret:azure-arc/azure-identity-certificate"
    kubeconfig: Path | None = None
    once: bool = False
    interval: float = 60.0
    refresh: float = 600.0  # push unchanged metadata again after this long
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class ClusterFacts:
    kubernetes_version: str
    node_count: int
    core_count: int
    ca_pem: bytes | None
    server_name: str

    def as_metadata(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kubernetesVersion": self.kubernetes_version,
            "totalNodeCount": self.node_count,
            "totalCoreCount": self.core_count,
            "agentVersion": AGENT_VERSION,
            "apiserverServerName": self.server_name,
        }
        if self.ca_pem:
            doc["clusterCertificateAuthority"] = self.ca_pem.decode()
        return doc


def total_cores(cpus: list[str]) -> int:
    """Sum node CPU capacities ("4", "3500m"); a fractional total is rounded up to whole vCPUs."""
    total = sum((Decimal(parse_quantity(q)) for q in cpus), Decimal(0))
    return math.ceil(total)


def _gather(api: client.ApiClient) -> tuple[str, list[str]]:
    try:
        version = client.VersionApi(api).get_code().git_version
        core, cpus, token = client.CoreV1Api(api), [], None
        while True:  # raw JSON pages: thousands of nodes without building thousands of models
            raw: Any = core.list_node(limit=NODE_PAGE, _continue=token, _preload_content=False)
            page = json.loads(raw.data)
            for node in page.get("items") or []:
                cpus.append(str(((node.get("status") or {}).get("capacity") or {}).get("cpu", "0")))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return version, cpus
    except ApiException as exc:
        if exc.status in (401, 403, 404):
            raise KubeError(f"cannot read cluster facts: {describe(exc)}") from None
        raise


async def collect(kube: Kube) -> ClusterFacts:
    version, cpus = await kube.call(_gather, "read version and nodes from the apiserver")
    try:
        cores = total_cores(cpus)
    except ValueError as exc:
        raise KubeError(f"a node reports an unreadable CPU capacity: {exc}") from None
    info = await asyncio.to_thread(kube.apiserver_info)
    if info.ca_pem is None:
        log.warning("the kubeconfig skips TLS verification; no cluster CA to report")
    return ClusterFacts(version, len(cpus), cores, info.ca_pem, info.server_name)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, in KiB on Linux


class UsageSampler:
    """This process's CPU (millicores averaged since the last sample) and resident memory."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), _cpu_seconds())

    def sample(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), _cpu_seconds()
        wall, used = now - self._last[0], cpu - self._last[1]
        self._last = (now, cpu)
        millicores = round(max(used, 0.0) / max(wall, 1e-3) * 1000)
        return {"name": AGENT_NAME, "cpuMillicores": millicores, "memoryBytes": _rss_bytes()}


class MetadataAgent:
    def __init__(self, settings: MetadataSettings, hub: HubClient, store: IdentityStore, kube: Kube) -> None:
        self.settings, self.hub, self.store, self.kube = settings, hub, store, kube
        self.sampler = UsageSampler()
        self._pushed: ClusterFacts | None = None
        self._pushed_at = 0.0
        self._status: str | None = None

    async def load_identity(self) -> None:
        await use_current_identity(self.hub, self.store, self.settings.retry)

    async def cycle(self) -> None:
        await self.load_identity()
        facts = await collect(self.kube)
        stale = time.monotonic() - self._pushed_at >= self.settings.refresh
        if facts != self._pushed or stale:
            await self.hub.put_metadata(facts.as_metadata())
            self._pushed, self._pushed_at = facts, time.monotonic()
            log.info(
                "pushed cluster metadata",
                extra={
                    "kubernetes_version": facts.kubernetes_version,
                    "nodes": facts.node_count,
                    "cores": facts.core_count,
                },
            )
        status = (await self.hub.heartbeat()).get("connectivityStatus")
        if status != self._status:
            log.info("hub reports the cluster %s", status)
            self._status = status
        try:
            await self.hub.put_usage([self.sampler.sample()], retry=USAGE_RETRY)
        except (HubRefused, RetriesExhausted) as exc:
            log.debug("usage report skipped: %s", exc)

    async def run(self) -> None:
        while True:
            try:
                await self.cycle()
                if self.settings.once:
                    return
            except (RetriesExhausted, HubRefused, KubeError) as exc:
                tolerated = isinstance(exc, RetriesExhausted) or (
                    isinstance(exc, HubRefused) and exc.status in TOLERATED_HUB_STATUSES
                )
                if self.settings.once or not tolerated:
                    raise
                self._pushed = None  # the hub may not have it: push again next time
                log.warning("metadata pass failed, next try in %.0fs: %s", self.settings.interval, exc)
            await asyncio.sleep(self.settings.interval)


async def run(settings: MetadataSettings) -> None:
    kube = Kube(settings.kubeconfig, settings.retry)
    try:
        store = open_store(settings.identity, kube)
        async with HubClient(settings.hub_url, settings.hub_ca, retry=settings.retry) as hub:
            await MetadataAgent(settings, hub, store, kube).run()
    finally:
        kube.close()
