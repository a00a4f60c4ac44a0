"""`kubearc cluster delete`: the agents' release, the Secrets it left, then the resource (Arc's order).

The kube context must be the cluster being deleted (its `azure-clusterconfig`
names the resource); a cluster connected as another resource is refused.
`force` removes what a failed or half-finished install left behind, and deletes
the resource even when the cluster cannot be reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from foundation.kube import Kube, KubeError, describe
from kubearc.azurerbac import GUARD_MANIFESTS, GUARD_TLS_SECRET
from kubearc.clusterside import CLUSTER_CONFIG, ConnectError, connected_as, kube_call
from kubearc.helm import NAMESPACE, Helm, HelmError
from kubearc.onboard import API, IDENTITY_SECRET, ONBOARDING_SECRET


def _cleanup_cluster(
    resource_id: str, kube: Kube, helm: Helm, force: bool, say: Callable[[str], None]
) -> None:
    try:
        core = client.CoreV1Api(kube.api)
    except KubeError as exc:
        raise ConnectError(f"{exc}; check --kube-config and --kube-context") from None
    belongs = connected_as(core)
    if belongs and belongs.lower() != resource_id.lower():
        raise ConnectError(
            f"the kube context's cluster is connected as {belongs}, not {resource_id}; "
            "choose the right --kube-context"
        )
    if belongs is None and not force:
        raise ConnectError(
            f"the kube context's cluster has no kubearc agents ({NAMESPACE}/{CLUSTER_CONFIG} is missing); "
            "choose the right --kube-context, or pass --force to delete only the resource"
        )
    if helm.uninstall():
        say("uninstalled the agents (helm uninstall)")
    secrets = [(NAMESPACE, n) for n in (ONBOARDING_SECRET, IDENTITY_SECRET, GUARD_TLS_SECRET)]
    for namespace, name in [*secrets, ("kube-system", GUARD_MANIFESTS)]:
        try:
            core.delete_namespaced_secret(name, namespace)
            say(f"deleted Secret {namespace}/{name}")
        except ApiException as exc:
            if exc.status != 404:
                raise ConnectError(f"cannot delete Secret {namespace}/{name}: {describe(exc)}") from None


def delete_cluster(
    resource_id: str, hub: httpx.Client, kube: Kube, helm: Helm, force: bool, say: Callable[[str], None]
) -> None:
    """Remove the cluster side (unless unreachable under `force`), then the resource."""
    try:
        kube_call(
            "cannot reach the cluster's apiserver (check --kube-config / --kube-context)",
            lambda: client.VersionApi(kube.api).get_code(),
        )
        _cleanup_cluster(resource_id, kube, helm, force, say)
    except (ConnectError, HelmError, KubeError) as exc:
        if not force:
            raise ConnectError(f"{exc} (--force deletes the resource anyway)") from None
        say(f"warning: the cluster side was not cleaned up: {exc}")
    response: Any
    try:
        response = hub.delete(resource_id, params=API)
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach the hub: {exc}") from None
    if response.status_code == 404 and force:
        say(f"{resource_id} did not exist")
        return
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise ConnectError(f"the hub refused to delete {resource_id}: {response.status_code} {message}")
    say(f"deleted {resource_id}")
