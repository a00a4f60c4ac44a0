"""What every agent shares: its clients, its reconcile loop and metrics, the current identity, and
its log lines shipped to the hub.

Each agent is one reconcile pass (read desired state from the hub, actual state
from the apiserver, act, report) run on an interval; these helpers keep that
pass short. The metrics are the ones an operator alerts on: passes by result and
the time of the last good one (`kubearc_agent_last_success_timestamp_seconds`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from kubernetes.client.rest import ApiException
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from agents.errors import HubRefused, IdentityNotReady
from agents.hubclient import HubClient
from foundation.helm import HelmError
from foundation.identitystore import IdentityStore, StoreError, open_store
from foundation.kube import Kube, KubeError, describe
from foundation.logship import LogShipper
from foundation.retry import RetriesExhausted, RetryPolicy, retrying

log = logging.getLogger("kubearc.agent")
# What a pass rides out (the next pass tries again); anything else ends the agent.
PASS_FAILURES = (RetriesExhausted, HubRefused, KubeError, ApiException, HelmError)


async def use_current_identity(hub: HubClient, store: IdentityStore, retry: RetryPolicy) -> None:
    """Use the identity agent's current certificate, waiting for the first one if need be."""

    async def attempt() -> None:
        stored = await store.load()
        if stored is None:
            raise IdentityNotReady(f"no identity certificate in {store.description} yet")
        if stored.not_after <= dt.datetime.now(dt.UTC):
            raise IdentityNotReady(f"the identity certificate in {store.description} has expired")
        hub.set_identity(stored.pair)

    def waitable(exc: BaseException) -> float | None:
        return 0.0 if isinstance(exc, IdentityNotReady | StoreError) else None

    await retrying(attempt, retry, waitable, "load the identity certificate")


class LoopMetrics:
    """Reconcile passes of one agent, by result, and when the last one succeeded."""

    _shared: dict[int, tuple[Counter, Gauge]] = {}

    def __init__(self, agent: str, registry: CollectorRegistry = REGISTRY) -> None:
        if id(registry) not in self._shared:  # one family per registry, a label per agent
            self._shared[id(registry)] = (
                Counter(
                    "kubearc_agent_reconciles", "Reconcile passes.", ["agent", "result"], registry=registry
                ),
                Gauge(
                    "kubearc_agent_last_success_timestamp_seconds",
                    "When the last reconcile pass succeeded (Unix time).",
                    ["agent"],
                    registry=registry,
                ),
            )
        passes, last = self._shared[id(registry)]
        self.ok, self.failed = passes.labels(agent, "ok"), passes.labels(agent, "error")
        self.last = last.labels(agent)
        self.succeeded_once = False

    def success(self) -> None:
        self.ok.inc()
        self.last.set(time.time())
        self.succeeded_once = True

    def failure(self) -> None:
        self.failed.inc()


async def ship_logs(
    agent: str, hub_url: str, hub_ca: Path | None, identity: str, kubeconfig: Path | None, **options: Any
) -> None:
    """Ship this process's log lines to the hub as `agent` until cancelled (see foundation.logship).

    The lines are signed for with the identity agent's current certificate; until there is
    one (the identity agent's first minutes) they wait in the buffer.
    """
    shipper = LogShipper(agent, **options)
    kube = Kube(kubeconfig) if identity.startswith("secret:") else None
    store = open_store(identity, kube)
    root = logging.getLogger()
    root.addHandler(shipper)
    once = RetryPolicy(base=0.2, cap=1.0, attempts=2, deadline=10.0)
    try:
        async with HubClient(hub_url, hub_ca, retry=once) as hub:

            async def post(entries: list[dict[str, str]]) -> None:
                stored = await store.load()
                if stored is None:
                    raise IdentityNotReady(f"no identity certificate in {store.description} yet")
                current = hub.identity
                if current is None or current.cert.serial_number != stored.pair.cert.serial_number:
                    hub.set_identity(stored.pair)
                await hub.post_logs(entries)

            await shipper.run(post)
    finally:
        root.removeHandler(shipper)
        if kube is not None:
            kube.close()


class AgentSettings(Protocol):
    @property
    def hub_url(self) -> str: ...
    @property
    def hub_ca(self) -> Path | None: ...
    @property
    def identity(self) -> str: ...
    @property
    def kubeconfig(self) -> Path | None: ...
    @property
    def retry(self) -> RetryPolicy: ...


class Runnable(Protocol):
    async def run(self) -> None: ...


async def run_with_cluster(
    settings: AgentSettings, make: Callable[[HubClient, IdentityStore, Kube], Runnable]
) -> None:
    """Open what an agent works with (the apiserver, its identity store, the hub), run it, close them."""
    kube = Kube(settings.kubeconfig, settings.retry)
    try:
        store = open_store(settings.identity, kube)
        async with HubClient(settings.hub_url, settings.hub_ca, retry=settings.retry) as hub:
            await make(hub, store, kube).run()
    finally:
        kube.close()


async def reconcile_forever(
    name: str,
    cycle: Callable[[], Awaitable[None]],
    metrics: LoopMetrics,
    interval: float,
    once: bool,
    on_failure: Callable[[], None] | None = None,
) -> None:
    """Run `cycle` every `interval` seconds; with `once`, one pass whose failure is the agent's."""
    while True:
        try:
            await cycle()
            metrics.success()
            if once:
                return
        except PASS_FAILURES as exc:
            metrics.failure()
            if once:
                raise
            if on_failure is not None:
                on_failure()
            detail = describe(exc) if isinstance(exc, ApiException) else exc
            log.warning("%s pass failed, next try in %.0fs: %s", name, interval, detail)
        await asyncio.sleep(interval)
