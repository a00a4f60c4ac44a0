"""controller-manager: the operator of the agents themselves, their release kept whole and current.

Every `interval`, one pass:

1. desired: the hub's upgrade offer (`GET /agent/v1/upgrade`: latest version,
   whether auto-upgrade is on);
2. actual: the agents' Deployments, and the release's manifest (`helm get manifest`);
3. act: a Deployment the release holds but the cluster lost is restored (`helm
   upgrade --reuse-values` of the same chart); an offered version, when
   auto-upgrade is on, is rolled out in two steps:
   a. every agent but this one moves to the new image (this process keeps running
      the old one, `controller.imageTag`), and it waits up to `health_timeout` for
      their Deployments to have the new generation ready, and to stay ready for a
      few seconds (a crash-looping pod can pass its probe once);
   b. if they do not, `helm rollback` to the revision before, and the reason (which
      agent was not ready, its status) is logged to the hub; that version is not
      tried again until the hub offers another;
   c. if they do, this agent moves too (the release's last step restarts it).

`kubearc cluster upgrade` is an upgrade of the same release by the same values,
run from the admin's machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from agents import AGENT_VERSION
from agents.hubclient import HubClient
from agents.runtime import LoopMetrics, reconcile_forever, run_with_cluster, use_current_identity
from foundation import helm
from foundation.identitystore import IdentityStore
from foundation.kube import Kube
from foundation.retry import RetryPolicy

log = logging.getLogger("kubearc.agent.controller")
AGENT_NAME = "controller-manager"
SELF = "kubearc-controller"
Obj = dict[str, Any]


@dataclass(frozen=True)
class ControllerSettings:
    hub_url: str
    hub_ca: Path | None
    chart: Path
    release: str = "kubearc"
    namespace: str = "azure-arc"
    identity: str = "secret:azure-arc/azure-identity-certificate"
    kubeconfig: Path | None = None
    helm: str | None = None
    once: bool = False
    interval: float = 300.0
    health_timeout: float = 300.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def deployments(api: client.ApiClient, namespace: str, release: str) -> dict[str, Obj]:
    raw: Any = client.AppsV1Api(api).list_namespaced_deployment(
        namespace, label_selector=f"app.kubernetes.io/instance={release},app.kubernetes.io/part-of=kubearc"
    )
    return {d.metadata.name: client.ApiClient().sanitize_for_serialization(d) for d in raw.items}


def not_ready(found: dict[str, Obj], names: list[str], tag: str) -> list[str]:
    """Which of `names` do not run `tag` ready yet (their rollout's own words)."""
    waiting = []
    for name in names:
        d = found.get(name)
        if d is None:
            waiting.append(f"{name}: missing")
            continue
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        status = d.get("status") or {}
        ready = (
            image.endswith(f":{tag}")
            and status.get("observedGeneration", 0) >= d["metadata"].get("generation", 1)
            and status.get("readyReplicas", 0) >= d["spec"].get("replicas", 1)
            and status.get("updatedReplicas", 0) >= d["spec"].get("replicas", 1)
        )
        if not ready:
            waiting.append(f"{name}: {status.get('readyReplicas', 0)}/{d['spec'].get('replicas', 1)} ready")
    return waiting


class ControllerManager:
    def __init__(
        self, settings: ControllerSettings, hub: HubClient, store: IdentityStore, kube: Kube
    ) -> None:
        self.settings, self.hub, self.store, self.kube = settings, hub, store, kube
        self.helm = helm.find_helm(settings.helm)
        self.metrics = LoopMetrics(AGENT_NAME)
        self.refused: set[str] = set()  # versions that failed here: not tried again

    async def _helm(self, *args: str, limit: float = 300) -> str:
        s = self.settings
        return await asyncio.to_thread(
            helm.run, self.helm, *args, namespace=s.namespace, kubeconfig=s.kubeconfig, timeout=limit
        )

    async def _upgrade(self, *sets: str) -> None:
        args = ["upgrade", self.settings.release, str(self.settings.chart), "--reuse-values"]
        for item in sets:
            args += ["--set-string", item]
        await self._helm(*args)

    async def _deployments(self) -> dict[str, Obj]:
        s = self.settings
        return await self.kube.call(lambda api: deployments(api, s.namespace, s.release), "list the agents")

    async def revision(self) -> int:
        rows = json.loads(
            await self._helm("list", "--filter", f"^{self.settings.release}$", "-o", "json") or "[]"
        )
        if not rows:
            raise helm.HelmError(f"no release {self.settings.release} in {self.settings.namespace}")
        return int(rows[0]["revision"])

    async def restore(self, found: dict[str, Obj]) -> None:
        """Put back Deployments the release holds and the cluster lost."""
        manifest = await self._helm("get", "manifest", self.settings.release)
        wanted = {
            d["metadata"]["name"] for d in yaml.safe_load_all(manifest) if d and d.get("kind") == "Deployment"
        }
        missing = sorted(wanted - set(found))
        if missing:
            log.warning("the release's %s went missing: restoring them", ", ".join(missing))
            await self._upgrade()

    async def upgrade(self, version: str, found: dict[str, Obj]) -> None:
        previous, current = await self.revision(), AGENT_VERSION
        agents = sorted(n for n in found if n != SELF)
        log.info("upgrading the agents from %s to %s", current, version)
        await self._upgrade(f"image.tag={version}", f"controller.imageTag={current}")
        deadline = time.monotonic() + self.settings.health_timeout
        settle = min(10.0, self.settings.health_timeout / 3)  # ready for this long, not for a moment
        ready_since: float | None = None
        while True:
            waiting = not_ready(await self._deployments(), agents, version)
            now = time.monotonic()
            ready_since = (ready_since or now) if not waiting else None
            if ready_since is not None and now - ready_since >= settle:
                break
            if now > deadline:
                await self._helm("rollback", self.settings.release, str(previous))
                self.refused.add(version)
                log.error(
                    "the upgrade to %s was rolled back to %s: not ready within %.0fs: %s",
                    version,
                    current,
                    self.settings.health_timeout,
                    "; ".join(waiting or ["ready, but not for long"]),
                )
                return
            await asyncio.sleep(0.5)
        log.info("the agents run %s; moving the controller-manager too", version)
        await self._upgrade(f"controller.imageTag={version}")

    async def cycle(self) -> None:
        await use_current_identity(self.hub, self.store, self.settings.retry)
        offer = await self.hub.get_upgrade()
        found = await self._deployments()
        await self.restore(found)
        latest = offer.get("latestVersion")
        wanted = bool(offer.get("upgradeAvailable") and offer.get("autoUpgrade"))
        if wanted and latest and latest != AGENT_VERSION and latest not in self.refused:
            await self.upgrade(str(latest), found)

    async def run(self) -> None:
        s = self.settings
        await reconcile_forever(AGENT_NAME, self.cycle, self.metrics, s.interval, s.once)


async def run(settings: ControllerSettings) -> None:
    await run_with_cluster(settings, lambda hub, store, kube: ControllerManager(settings, hub, store, kube))
