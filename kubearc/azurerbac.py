"""Azure RBAC on a cluster: whom guard (or the kube-aad-proxy) accepts, and guard's TLS.

`kubearc connect --enable-features azure-rbac` and `kubearc cluster
enable-features --features azure-rbac` both call these. The issuers come from
the hub's discovery document (its own issuer, the Entra tenants it accepts), so
the users who sign in at the hub are the users the cluster accepts. In webhook
mode guard needs a serving pair the apiserver trusts and the apiserver a client
pair guard trusts: made once (the apiserver keeps trusting them across
upgrades) into `azure-arc/guard-tls`, with the webhook files for the control
plane in `kube-system/kubearc-guard-manifests` (Arc's
`azure-arc-guard-manifests`), which the admin places on each control plane node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from foundation import pki
from foundation.kube import describe
from foundation.wire import DISCOVERY_PATH, Discovery, WireError
from guard import webhook_config
from kubearc.clusterside import ConnectError, create_secret
from kubearc.helm import NAMESPACE

GUARD_TLS_SECRET = "guard-tls"  # the chart's guard.tlsSecret
GUARD_MANIFESTS = "kubearc-guard-manifests"
GUARD_SERVICE, GUARD_PORT = "kubearc-guard", 8443  # the chart's Service and guard.port
APISERVER_CONFIG_DIR = "/etc/kubernetes/kubearc-guard"  # where the admin places the manifests


def guard_values(hub: httpx.Client) -> dict[str, Any]:
    """The chart's `guard` values for who signs users in: the hub's issuer and its Entra tenants."""
    try:
        response = hub.get(DISCOVERY_PATH)
        response.raise_for_status()
        found = Discovery.from_json(response.json())
    except (httpx.HTTPError, ValueError, WireError) as exc:
        raise ConnectError(f"cannot read the hub's discovery document: {exc}") from None
    values: dict[str, Any] = {"entraTenants": list(found.entra_tenants)}
    if found.issuer:
        values["issuers"] = [found.issuer]
    return values


def guard_secrets(core: client.CoreV1Api, say: Callable[[str], None]) -> None:
    """Guard's serving pair and the apiserver's client pair, unless the cluster has them already."""
    try:
        core.read_namespaced_secret(GUARD_TLS_SECRET, NAMESPACE)
        say(f"guard's TLS: Secret {NAMESPACE}/{GUARD_TLS_SECRET} is kept")
        return
    except ApiException as exc:
        if exc.status != 404:
            raise ConnectError(
                f"cannot read Secret {NAMESPACE}/{GUARD_TLS_SECRET}: {describe(exc)}"
            ) from None
    ca = pki.create_ca("kubearc guard CA")
    names = [GUARD_SERVICE, f"{GUARD_SERVICE}.{NAMESPACE}", f"{GUARD_SERVICE}.{NAMESPACE}.svc"]
    names.append(f"{names[-1]}.cluster.local")
    serving = pki.issue_keypair(ca, GUARD_SERVICE, sans=names, server=True)
    apiserver = pki.issue_keypair(ca, "kube-apiserver", client=True)
    server = f"https://{GUARD_SERVICE}.{NAMESPACE}.svc:{GUARD_PORT}"
    files = webhook_config.manifests(
        server, ca.cert_pem, apiserver.cert_pem, apiserver.key_pem, APISERVER_CONFIG_DIR
    )
    # The manifests first: guard's pair without them would be a secret no apiserver can use.
    manifests = {name: yaml.safe_dump(doc, sort_keys=False).encode() for name, doc in files.items()}
    create_secret(core, "kube-system", GUARD_MANIFESTS, manifests)
    pair = {"tls.crt": serving.cert_pem, "tls.key": serving.key_pem, "ca.crt": ca.cert_pem}
    create_secret(core, NAMESPACE, GUARD_TLS_SECRET, pair, kind="kubernetes.io/tls")
    say(
        f"guard's TLS: made Secret {NAMESPACE}/{GUARD_TLS_SECRET}; the apiserver's webhook files are in "
        f"Secret kube-system/{GUARD_MANIFESTS}: place them in {APISERVER_CONFIG_DIR} on each control "
        f"plane node and start kube-apiserver with {webhook_config.apiserver_flags(APISERVER_CONFIG_DIR)}"
    )
