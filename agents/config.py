"""config-agent: the cluster's flux configurations from the hub become Flux v2 objects; their
conditions go back as compliance.

One pass, readable as a handler:

1. desired: `GET /agent/v1/fluxConfigurations` (every `sync_interval`);
2. actual: are Flux's CRDs served? what do the owned objects say?
3. act: create or replace each configuration's namespace, Secret, source and
   Kustomizations (`agents.flux.manifests`); delete owned objects no
   configuration wants any more (owner labels, never anything else); an object of
   the same name that this agent does not own is left alone and reported;
4. report: `PUT /agent/v1/fluxConfigurations/{name}/status` when the report
   changed (`agents.flux.compliance`), so Flux's progress reaches the hub within
   one `status_interval` and an unchanged cluster costs the hub nothing.

Without Flux's CRDs each configuration is reported Non-Compliant with what to
install, and the agent keeps trying. After a restart it compares before it
writes, so nothing finished is redone.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from agents import flux
from agents.errors import HubRefused
from agents.hubclient import HubClient
from agents.runtime import LoopMetrics, reconcile_forever, run_with_cluster, use_current_identity
from foundation.identitystore import IdentityStore
from foundation.kube import Kube, KubeError
from foundation.retry import RetryPolicy

log = logging.getLogger("kubearc.agent.config")
AGENT_NAME = "config-agent"
Obj = dict[str, Any]
OWNED = f"{flux.OWNER},app.kubernetes.io/managed-by={flux.MANAGED_BY['app.kubernetes.io/managed-by']}"


@dataclass(frozen=True)
class ConfigSettings:
    hub_url: str
    hub_ca: Path | None
    identity: str = "secret:azure-arc/azure-identity-certificate"
    kubeconfig: Path | None = None
    once: bool = False
    sync_interval: float = 30.0  # between pulls of the desired configurations
    status_interval: float = 5.0  # between reads of the Flux objects' conditions
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class NotOurs(Exception):
    """An object the configuration needs exists and belongs to someone else."""


# ---------------------------------------------------------------- the apiserver side (threads)


def _custom(api: client.ApiClient) -> Any:  # custom objects are plain dicts, not models
    return client.CustomObjectsApi(api)


def _core(api: client.ApiClient) -> Any:  # bodies go as plain dicts, as the apiserver takes them
    return client.CoreV1Api(api)


def missing_kinds(api: client.ApiClient, kinds: set[str]) -> list[str]:
    """Which Flux kinds the apiserver does not serve (their CRDs are not installed)."""
    missing = []
    for kind in sorted(kinds):
        group, version, plural = flux.KINDS[kind]
        try:
            _custom(api).list_cluster_custom_object(group, version, plural, limit=1)
        except ApiException as exc:
            if exc.status != 404:
                raise
            missing.append(f"{plural}.{group}/{version}")
    return missing


def _owned_by(obj: Obj, desired: flux.Desired) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(flux.OWNER) == desired.name and labels.get(flux.OWNER_NAMESPACE) == desired.namespace


def _ensure_namespace(api: client.ApiClient, name: str) -> None:
    core = _core(api)
    try:
        core.read_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        body = {"metadata": {"name": name, "labels": dict(flux.MANAGED_BY)}}
        try:
            core.create_namespace(body)
        except ApiException as again:
            if again.status != 409:
                raise


def _apply_secret(api: client.ApiClient, desired: flux.Desired, secret: Obj) -> bool:
    core, meta = _core(api), secret["metadata"]
    try:
        live = core.read_namespaced_secret(meta["name"], meta["namespace"]).to_dict()
    except ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_secret(meta["namespace"], secret)
        return True
    if not _owned_by({"metadata": {"labels": live["metadata"].get("labels")}}, desired):
        raise NotOurs(f"Secret {meta['namespace']}/{meta['name']} exists and is not this configuration's")
    if live.get("data") == secret["data"]:
        return False
    version = live["metadata"]["resource_version"]
    core.replace_namespaced_secret(
        meta["name"], meta["namespace"], {**secret, "metadata": {**meta, "resourceVersion": version}}
    )
    return True


def _apply_object(api: client.ApiClient, desired: flux.Desired, obj: Obj) -> bool:
    group, version, plural = flux.KINDS[obj["kind"]]
    meta = obj["metadata"]
    try:
        live = _custom(api).get_namespaced_custom_object(
            group, version, meta["namespace"], plural, meta["name"]
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
        _custom(api).create_namespaced_custom_object(group, version, meta["namespace"], plural, obj)
        return True
    what = f"{obj['kind']} {meta['namespace']}/{meta['name']}"
    if not _owned_by(live, desired):
        raise NotOurs(f"{what} exists and is not this configuration's")
    labels = live["metadata"].get("labels") or {}
    if live.get("spec") == obj["spec"] and all(labels.get(k) == v for k, v in meta["labels"].items()):
        return False
    live["spec"], live["metadata"]["labels"] = obj["spec"], {**labels, **meta["labels"]}
    _custom(api).replace_namespaced_custom_object(
        group, version, meta["namespace"], plural, meta["name"], live
    )
    return True


def _check_ours(api: client.ApiClient, desired: flux.Desired) -> None:
    """Refuse before writing anything when an object the configuration names is someone else's."""
    for obj, live in zip(desired.objects, live_objects(api, desired), strict=True):
        if live is not None and not _owned_by(live, desired):
            meta = obj["metadata"]
            raise NotOurs(
                f"{obj['kind']} {meta['namespace']}/{meta['name']} exists and is not this configuration's"
            )


def apply(api: client.ApiClient, desired: flux.Desired) -> int:
    """Make the cluster hold what `desired` says; how many objects were written."""
    try:
        _check_ours(api, desired)
    except ApiException as exc:
        if exc.status != 404:  # no namespace yet: nothing there to be someone else's
            raise
    _ensure_namespace(api, desired.namespace)
    written = 0
    if desired.secret is not None:
        written += _apply_secret(api, desired, desired.secret)
    for obj in desired.objects:
        written += _apply_object(api, desired, obj)
    return written


def prune(api: client.ApiClient, wanted: list[flux.Desired]) -> list[str]:
    """Delete owned objects (and Secrets) no configuration wants; what was deleted."""
    keep = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for d in wanted for o in d.objects}
    keep |= {("Secret", d.namespace, d.secret["metadata"]["name"]) for d in wanted if d.secret}
    deleted = []
    custom = _custom(api)
    for kind, (group, version, plural) in sorted(flux.KINDS.items()):
        try:
            items = custom.list_cluster_custom_object(group, version, plural, label_selector=OWNED)["items"]
        except ApiException as exc:
            if exc.status == 404:  # not served: nothing of that kind to delete
                continue
            raise
        for item in items:
            m = item["metadata"]
            if (kind, m["namespace"], m["name"]) not in keep:
                _delete(
                    custom.delete_namespaced_custom_object, group, version, m["namespace"], plural, m["name"]
                )
                deleted.append(f"{kind} {m['namespace']}/{m['name']}")
    core = _core(api)
    for secret in core.list_secret_for_all_namespaces(label_selector=OWNED).items:
        m = secret.metadata
        if ("Secret", m.namespace, m.name) not in keep:
            _delete(core.delete_namespaced_secret, m.name, m.namespace)
            deleted.append(f"Secret {m.namespace}/{m.name}")
    return deleted


def _delete(call: Any, *args: str) -> None:
    try:
        call(*args)
    except ApiException as exc:
        if exc.status != 404:
            raise


def live_objects(api: client.ApiClient, desired: flux.Desired) -> list[Obj | None]:
    out: list[Obj | None] = []
    for obj in desired.objects:
        group, version, plural = flux.KINDS[obj["kind"]]
        meta = obj["metadata"]
        try:
            ns, name = meta["namespace"], meta["name"]
            out.append(_custom(api).get_namespaced_custom_object(group, version, ns, plural, name))
        except ApiException as exc:
            if exc.status != 404:
                raise
            out.append(None)
    return out


# ---------------------------------------------------------------- the loop


class ConfigAgent:
    def __init__(self, settings: ConfigSettings, hub: HubClient, store: IdentityStore, kube: Kube) -> None:
        self.settings, self.hub, self.store, self.kube = settings, hub, store, kube
        self.metrics = LoopMetrics(AGENT_NAME)
        self.desired: list[flux.Desired] = []
        self.blocked: dict[str, Obj] = {}  # configuration -> its report while it cannot be applied
        self.reported: dict[str, Obj] = {}  # configuration -> what the hub last accepted
        self._pulled_at = -float("inf")

    def ready(self) -> str | None:
        return None if self.metrics.succeeded_once else "no reconcile pass has succeeded yet"

    async def sync(self) -> None:
        """Desired state from the hub, made true in the cluster."""
        await use_current_identity(self.hub, self.store, self.settings.retry)
        configs = (await self.hub.call("GET", "/agent/v1/fluxConfigurations"))["value"]
        self.desired = [flux.manifests(c) for c in configs]
        self.blocked = {}
        kinds = {o["kind"] for d in self.desired for o in d.objects}
        missing = await self.kube.call(lambda api: missing_kinds(api, kinds), "look for Flux's CRDs")
        if missing:
            for d in self.desired:
                self.blocked[d.name] = flux.not_installed(d, missing)
            log.warning("Flux's CRDs are not installed: %s", ", ".join(missing))
            return
        for d in self.desired:
            try:
                written = await self.kube.call(functools.partial(apply, desired=d), f"apply {d.name}")
            except (NotOurs, KubeError) as exc:
                self.blocked[d.name] = {**flux.not_installed(d, []), "errorMessage": str(exc)}
                continue
            if written:
                log.info("applied flux configuration", extra={"configuration": d.name, "objects": written})
        deleted = await self.kube.call(lambda api: prune(api, self.desired), "delete what nothing wants")
        for what in deleted:
            log.info("deleted %s: its configuration is gone", what)
        self._pulled_at = time.monotonic()

    async def report(self) -> None:
        """Each configuration's compliance to the hub, when it changed."""
        for d in self.desired:
            doc = self.blocked.get(d.name)
            if doc is None:
                live = await self.kube.call(
                    functools.partial(live_objects, desired=d), f"read {d.name}'s objects"
                )
                doc = flux.compliance(d, live)
            if self.reported.get(d.name) == doc:
                continue
            try:
                await self.hub.call("PUT", f"/agent/v1/fluxConfigurations/{d.name}/status", doc)
            except HubRefused as exc:
                if exc.status != 404:  # deleted meanwhile: the next sync drops it
                    raise
                continue
            self.reported[d.name] = doc
            log.info("reported %s %s", d.name, doc["complianceState"], extra={"configuration": d.name})

    def _start_over(self) -> None:
        self._pulled_at = -float("inf")  # after a failure, from the hub again

    async def cycle(self) -> None:
        if time.monotonic() - self._pulled_at >= self.settings.sync_interval:
            await self.sync()
        await self.report()

    async def run(self) -> None:
        s = self.settings
        await reconcile_forever(
            AGENT_NAME, self.cycle, self.metrics, s.status_interval, s.once, on_failure=self._start_over
        )


async def run(settings: ConfigSettings) -> None:
    await run_with_cluster(settings, lambda hub, store, kube: ConfigAgent(settings, hub, store, kube))
