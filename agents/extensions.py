"""extension-manager: each extension the hub lists becomes a Helm release, every step reported.

One pass per extension, readable as a handler:

1. desired: `GET /agent/v1/extensions` (chart, version, values, or `deleting`);
2. actual: the release as helm knows it (`helm list`, `helm get values`);
3. act: nothing when the deployed release already has that chart version and
   those values (so a restart redoes nothing); else `helm upgrade --install
   --wait --timeout`, and when that fails on an upgrade, `helm rollback` to the
   last good revision; or `helm uninstall` for a deleted extension;
4. report each step as it happens (`PUT /agent/v1/extensions/{name}/status`):
   Resolving, Installing/Upgrading, Succeeded, or Failed with helm's own text,
   RollingBack and RolledBack, Uninstalling, Deleted. A failed generation is not
   retried until the user changes the extension (the hub remembers it failed, so a
   restarted agent does not retry it either).

Values are the catalogue's defaults, then `configurationSettings`, then the
protected settings (dotted keys, `image.tag=v2`, typed as `helm --set` types
them), each in its own mode-0600 file in a private directory that is removed
after helm ran; nothing protected is ever logged or reported.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agents.errors import HubRefused
from agents.hubclient import HubClient
from agents.runtime import LoopMetrics, reconcile_forever, run_with_cluster, use_current_identity
from foundation import helm
from foundation.identitystore import IdentityStore
from foundation.retry import RetryPolicy

log = logging.getLogger("kubearc.agent.extensions")
AGENT_NAME = "extension-manager"
Obj = dict[str, Any]


@dataclass(frozen=True)
class ExtensionSettings:
    hub_url: str
    hub_ca: Path | None
    identity: str = "secret:azure-arc/azure-identity-certificate"
    kubeconfig: Path | None = None
    helm: str | None = None
    once: bool = False
    interval: float = 30.0
    step_timeout: float = 600.0  # helm's --timeout for one install, upgrade or rollback
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def nested(settings: dict[str, str]) -> Obj:
    """`{"image.tag": "v2", "replicas": "2"}` -> `{"image": {"tag": "v2"}, "replicas": 2}`.

    Values are typed as `helm --set` types them (numbers, booleans, else strings)."""
    out: Obj = {}
    for key, text in settings.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        node[leaf] = value if isinstance(value, str | int | float | bool) or value is None else text
    return out


def merged(*layers: Obj) -> Obj:
    out: Obj = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def step(code: str, display: str, message: str = "", level: str = "Information") -> Obj:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"code": code, "displayStatus": display, "level": level, "message": message, "time": now}


class ExtensionManager:
    def __init__(self, settings: ExtensionSettings, hub: HubClient, store: IdentityStore) -> None:
        self.settings, self.hub, self.store = settings, hub, store
        self.helm = helm.find_helm(settings.helm)
        self.metrics = LoopMetrics(AGENT_NAME)
        self.done: dict[str, int] = {}  # extension -> the generation finished (succeeded or failed)

    async def _helm(self, *args: str, namespace: str, limit: float = 120) -> str:
        return await asyncio.to_thread(
            helm.run,
            self.helm,
            *args,
            namespace=namespace,
            kubeconfig=self.settings.kubeconfig,
            timeout=limit,
        )

    async def release(self, name: str, namespace: str) -> Obj | None:
        states = ("--deployed", "--failed", "--pending")
        listed = await self._helm("list", "--filter", f"^{name}$", *states, "-o", "json", namespace=namespace)
        rows = json.loads(listed or "[]")
        return rows[0] if rows else None

    async def report(
        self, ext: Obj, state: str, steps: list[Obj], version: str | None, error: Obj | None = None
    ) -> None:
        doc: Obj = {
            "observedGeneration": ext["generation"],
            "provisioningState": state,
            "installedVersion": version,
            "statuses": steps,
        }
        if error:
            doc["errorInfo"] = error
        await self.hub.call("PUT", f"/agent/v1/extensions/{ext['name']}/status", doc)

    async def reconcile(self, ext: Obj) -> None:
        name, namespace = ext["name"], ext["releaseNamespace"]
        if self.done.get(name) == ext["generation"]:
            return
        if ext.get("observedGeneration") == ext["generation"] and ext.get("provisioningState") == "Failed":
            return  # failed before (this process or an earlier one): not retried until the user changes it
        current = await self.release(name, namespace)
        if ext["deleting"]:
            await self.uninstall(ext, current)
            return
        chart = ext["chart"]
        installed = _chart_version(current, chart["name"])
        values = merged(ext.get("defaultValues") or {}, nested(ext.get("configurationSettings") or {}))
        protected = nested(ext.get("configurationProtectedSettings") or {})
        if current and current["status"] == "deployed" and installed == chart["version"]:
            live = json.loads(
                await self._helm("get", "values", name, "-o", "json", namespace=namespace) or "{}"
            )
            if (live or {}) == merged(values, protected):
                await self.report(
                    ext, "Succeeded", [step("Succeeded", "Succeeded", _deployed(current))], installed
                )
                self.done[name] = ext["generation"]
                return
        await self.install(ext, current, installed, values, protected)

    async def install(
        self, ext: Obj, current: Obj | None, installed: str | None, values: Obj, protected: Obj
    ) -> None:
        name, namespace, chart = ext["name"], ext["releaseNamespace"], ext["chart"]
        state = "Updating" if current else "Creating"
        verb = "Upgrading" if current else "Installing"
        steps = [
            step(
                "Resolving",
                "Resolving chart",
                f"{chart['name']} {chart['version']} from {chart['repository']}",
            )
        ]
        await self.report(ext, state, steps, installed)
        timeout = f"{round(self.settings.step_timeout)}s"
        with tempfile.TemporaryDirectory(prefix="kubearc-ext-") as tmp:  # mode 0700, gone after helm ran
            args = ["upgrade", "--install", name, *_chart_args(chart, Path(tmp)), "--create-namespace"]
            for n, layer in enumerate((values, protected)):
                path = Path(tmp) / f"values-{n}.yaml"
                path.touch(mode=0o600)
                path.write_text(yaml.safe_dump(layer))
                args += ["--values", str(path)]
            args += ["--wait", "--timeout", timeout]
            steps.append(
                step(
                    verb,
                    verb,
                    f"helm upgrade --install {name} {chart['name']} {chart['version']} --timeout {timeout}",
                )
            )
            await self.report(ext, state, steps, installed)
            try:
                await self._helm(*args, namespace=namespace, limit=self.settings.step_timeout + 60)
            except helm.HelmError as exc:
                await self.failed(ext, current, installed, steps, exc)
                return
        after = await self.release(name, namespace)
        steps.append(step("Succeeded", "Succeeded", _deployed(after)))
        await self.report(ext, "Succeeded", steps, chart["version"])
        self.done[name] = ext["generation"]
        log.info("extension %s %s at %s", name, "upgraded" if current else "installed", chart["version"])

    async def failed(
        self, ext: Obj, current: Obj | None, installed: str | None, steps: list[Obj], exc: helm.HelmError
    ) -> None:
        name, namespace = ext["name"], ext["releaseNamespace"]
        steps.append(step("Failed", "Failed", exc.detail, "Error"))
        code = "UpgradeFailed" if current else "InstallFailed"
        message, version = exc.detail, None
        good = await self._last_good(name, namespace) if current else None
        if good is not None:
            steps.append(
                step("RollingBack", "Rolling back", f"to revision {good['revision']} ({good['chart']})")
            )
            await self.report(ext, "Updating", steps, installed)
            try:
                await self._helm(
                    "rollback",
                    name,
                    str(good["revision"]),
                    "--wait",
                    "--timeout",
                    f"{round(self.settings.step_timeout)}s",
                    namespace=namespace,
                    limit=self.settings.step_timeout + 60,
                )
                version = _chart_version({"chart": good["chart"]}, ext["chart"]["name"])
                steps.append(
                    step(
                        "RolledBack",
                        "Rolled back",
                        f"revision {good['revision']} ({good['chart']}) is running again",
                    )
                )
                message += f"; rolled back to {good['chart']}"
            except helm.HelmError as again:
                steps.append(step("Failed", "Rollback failed", again.detail, "Error"))
                message += f"; the rollback failed too: {again.detail}"
        await self.report(
            ext, "Failed", steps, version or installed, {"code": code, "message": message[:16_000]}
        )
        self.done[ext["name"]] = ext["generation"]
        log.warning("extension %s: %s", name, message)

    async def _last_good(self, name: str, namespace: str) -> Obj | None:
        history = json.loads(await self._helm("history", name, "-o", "json", namespace=namespace) or "[]")
        good = [h for h in history if h.get("status") in ("deployed", "superseded")]
        return max(good, key=lambda h: int(h["revision"])) if good else None

    async def uninstall(self, ext: Obj, current: Obj | None) -> None:
        name, namespace = ext["name"], ext["releaseNamespace"]
        steps = []
        if current is not None:
            steps.append(step("Uninstalling", "Uninstalling", f"helm uninstall {name} -n {namespace}"))
            await self.report(
                ext, "Deleting", steps, _chart_version(current, (ext.get("chart") or {}).get("name"))
            )
            try:
                await self._helm(
                    "uninstall",
                    name,
                    "--wait",
                    "--timeout",
                    f"{round(self.settings.step_timeout)}s",
                    namespace=namespace,
                    limit=self.settings.step_timeout + 60,
                )
            except helm.HelmError as exc:
                steps.append(step("Failed", "Uninstall failed", exc.detail, "Error"))
                await self.report(
                    ext, "Failed", steps, None, {"code": "UninstallFailed", "message": exc.detail}
                )
                self.done[name] = ext["generation"]
                return
        await self.report(
            ext, "Deleted", [*steps, step("Deleted", "Deleted", f"release {name} removed")], None
        )
        log.info("extension %s uninstalled", name)

    async def cycle(self) -> None:
        await use_current_identity(self.hub, self.store, self.settings.retry)
        for ext in (await self.hub.call("GET", "/agent/v1/extensions"))["value"]:
            try:
                await self.reconcile(ext)
            except HubRefused as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to report to
                    raise

    async def run(self) -> None:
        s = self.settings
        await reconcile_forever(AGENT_NAME, self.cycle, self.metrics, s.interval, s.once)


def _chart_args(chart: Obj, tmp: Path) -> list[str]:
    ref = chart["repository"].rstrip("/")
    args = [f"{ref}/{chart['name']}"] if ref.startswith("oci://") else [chart["name"], "--repo", ref]
    args += ["--version", chart["version"]]
    if chart.get("caCert"):
        ca = tmp / "repository-ca.crt"
        ca.write_text(chart["caCert"])
        args += ["--ca-file", str(ca)]
    return args


def _chart_version(release: Obj | None, chart: str | None) -> str | None:
    """`demo-1.2.0` (helm's chart column) -> `1.2.0`."""
    if not release or not release.get("chart"):
        return None
    text = str(release["chart"])
    if chart and text.startswith(f"{chart}-"):
        return text[len(chart) + 1 :]
    return text.rsplit("-", 1)[-1]


def _deployed(release: Obj | None) -> str:
    if not release:
        return "deployed"
    return f"release {release['name']} revision {release['revision']} deployed ({release['chart']})"


async def run(settings: ExtensionSettings) -> None:
    await run_with_cluster(settings, lambda hub, store, kube: ExtensionManager(settings, hub, store))
