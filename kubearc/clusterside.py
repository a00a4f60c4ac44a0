"""The cluster side of the cluster commands: their error, Kubernetes calls, and `azure-clusterconfig`.

`connect`, `cluster delete|update|...` and `troubleshoot` act on the kube
context's cluster through these, so a failure reads the same everywhere (one
line naming the problem and the next step) and the configmap that says which
resource the cluster is connected as is read in one place.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from foundation.kube import KubeError, describe
from kubearc.helm import NAMESPACE

CLUSTER_CONFIG = "azure-clusterconfig"


class ConnectError(Exception):
    """A step of `connect` failed; the message names the problem and what to do next."""


def kube_call(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ApiException as exc:
        raise ConnectError(f"{what}: {describe(exc)}") from None
    except KubeError as exc:  # no usable kubeconfig
        raise ConnectError(f"{exc}; check --kube-config and --kube-context") from None
    except (OSError, ValueError, urllib3.exceptions.HTTPError) as exc:  # unreachable, bad kubeconfig data
        reason = getattr(exc, "reason", None) or exc
        raise ConnectError(f"{what}: {reason}") from None


def create_secret(
    core: client.CoreV1Api, namespace: str, name: str, data: dict[str, bytes], kind: str = "Opaque"
) -> None:
    """Create the Secret, or replace one of that name (a connect run again)."""
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        type=kind,
        data={k: base64.b64encode(v).decode() for k, v in data.items()},
    )
    try:
        core.create_namespaced_secret(namespace, secret)
    except ApiException as exc:
        if exc.status != 409:
            raise ConnectError(f"cannot create Secret {namespace}/{name}: {describe(exc)}") from None
        kube_call(
            f"cannot replace Secret {namespace}/{name}",
            lambda: core.replace_namespaced_secret(name, namespace, secret),
        )


def cluster_config(core: client.CoreV1Api) -> dict[str, str] | None:
    """The cluster's `azure-clusterconfig` (AZURE_RESOURCE_ID names the resource it is connected as);
    None when no agents are installed. The one place connect, delete and the cluster commands read it."""
    try:
        config = core.read_namespaced_config_map(CLUSTER_CONFIG, NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise ConnectError(f"cannot read {NAMESPACE}/{CLUSTER_CONFIG}: {describe(exc)}") from None
    return dict(config.data or {})


def connected_as(core: client.CoreV1Api) -> str | None:
    return (cluster_config(core) or {}).get("AZURE_RESOURCE_ID")
