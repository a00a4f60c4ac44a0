"""`kubearc cluster update|upgrade|enable-features|disable-features`: change a connected cluster's agents.

Each reads the release's values, changes what was asked and runs `helm upgrade`
with the same chart, on the kube context whose `azure-clusterconfig` names the
resource (any other cluster is refused). `upgrade` is refused while the agents
upgrade themselves (`autoUpgrade`), as Arc refuses it; it then waits for the agents
by the controller-manager's rule and rolls back when they are not ready in time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client

from foundation.kube import Kube, KubeError
from kubearc.clusterside import CLUSTER_CONFIG, ConnectError, cluster_config
from kubearc.helm import NAMESPACE, RELEASE, Helm, HelmError

Values = dict[str, Any]


def _check_cluster(resource_id: str, kube: Kube) -> dict[str, str]:
    try:
        data = cluster_config(client.CoreV1Api(kube.api))
    except KubeError as exc:
        raise ConnectError(f"{exc}; check --kube-config and --kube-context") from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise ConnectError(
            f"cannot reach the cluster's apiserver (check --kube-config / --kube-context): {exc}"
        ) from None
    if data is None:
        raise ConnectError(
            f"the kube context's cluster has no kubearc agents ({NAMESPACE}/{CLUSTER_CONFIG} is missing); "
            "run `kubearc connect` first"
        )
    belongs = data.get("AZURE_RESOURCE_ID", "")
    if belongs.lower() != resource_id.lower():
        raise ConnectError(f"the kube context's cluster is connected as {belongs}, not {resource_id}")
    return data


def change(
    resource_id: str, kube: Kube, helm: Helm, chart: Path | str, edit: Callable[[Values, dict[str, str]], str]
) -> str:
    """Apply `edit` to the release's values (it returns what it did) and upgrade the release."""
    config = _check_cluster(resource_id, kube)
    try:
        values: Values = json.loads(helm.values_json() or "{}") or {}
    except (HelmError, ValueError) as exc:
        raise ConnectError(f"cannot read the agents' release: {exc}; run `kubearc connect` again") from None
    what = edit(values, config)
    helm.upgrade_install(chart, values)
    return what


def features(
    enable: list[str],
    disable: list[str],
    authn_mode: str | None,
    azure_rbac: Callable[[str], dict[str, Any]] | None = None,
) -> Callable[[Values, dict[str, str]], str]:
    """`azure_rbac(mode)` readies a cluster for Azure RBAC (guard's TLS in webhook mode) and
    returns the chart's `guard` values; it runs when azure-rbac is being enabled."""

    def edit(values: Values, _: dict[str, str]) -> str:
        chosen = values.setdefault("features", {})
        for name, on in [*((f, True) for f in enable), *((f, False) for f in disable)]:
            chosen["clusterConnect" if name == "cluster-connect" else "azureRbac"] = on
        if authn_mode:
            chosen["authnMode"] = authn_mode
        if azure_rbac is not None and "azure-rbac" in enable:
            values.setdefault("guard", {}).update(azure_rbac(chosen.get("authnMode", "webhook")))
        return (
            ", ".join([*(f"enabled {f}" for f in enable), *(f"disabled {f}" for f in disable)]) or "no change"
        )

    return edit


def upgrade(version: str) -> Callable[[Values, dict[str, str]], str]:
    def edit(values: Values, config: dict[str, str]) -> str:
        if config.get("AZURE_ARC_AUTOUPDATE", "true") == "true":
            raise ConnectError(
                "the agents upgrade themselves (auto-upgrade is on); "
                "turn it off first: kubearc cluster update --auto-upgrade false"
            )
        values.setdefault("image", {})["tag"] = version
        values.setdefault("controller", {})["imageTag"] = ""  # the controller-manager moves with them
        return f"agents set to version {version}"

    return edit


def settings(
    proxy_https: str | None,
    proxy_skip_range: str | None,
    proxy_cert: Path | None,
    auto_upgrade: bool | None,
) -> Callable[[Values, dict[str, str]], str]:
    def edit(values: Values, _: dict[str, str]) -> str:
        done = []
        proxy = values.setdefault("proxy", {})
        if proxy_https is not None:
            proxy["https"] = proxy_https
            done.append(f"proxy {proxy_https or 'off'}")
        if proxy_skip_range is not None:
            proxy["noProxy"] = proxy_skip_range
            done.append("no_proxy")
        if proxy_cert is not None:
            proxy["caCert"] = proxy_cert.read_text()
            done.append("proxy CA")
        if auto_upgrade is not None:
            values["autoUpgrade"] = auto_upgrade
            done.append(f"auto-upgrade {'on' if auto_upgrade else 'off'}")
        return ", ".join(done) or "no change"

    return edit


def wait_rolled_out(kube: Kube, helm: Helm, version: str, previous: int, timeout: float) -> None:
    """Until every agent runs `version` ready (and stays so for a few seconds, the controller-manager's
    rule); else roll the release back to `previous` and say which agents were not ready."""
    import time

    from agents.controller import deployments, not_ready

    deadline, ready_since = time.monotonic() + timeout, None
    while True:
        found = deployments(kube.api, NAMESPACE, RELEASE)
        waiting = not_ready(found, sorted(found), version)
        now = time.monotonic()
        ready_since = (ready_since or now) if not waiting else None
        if ready_since is not None and now - ready_since >= min(5.0, timeout / 3):
            return
        if now > deadline:
            helm.rollback(previous)
            raise ConnectError(
                f"the agents were not ready on {version} within {timeout:.0f}s "
                f"({'; '.join(waiting) or 'not for long'}); rolled back to revision {previous}"
            )
        time.sleep(1)
