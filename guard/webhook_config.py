"""What the apiserver needs to call guard: two webhook kubeconfigs and an AuthorizationConfiguration.

Written by `kubearc guard kubeconfig` for an operator's own guard and by
`kubearc connect --enable-features azure-rbac` into the Secret
`kube-system/kubearc-guard-manifests` (Arc's `azure-arc-guard-manifests`), for
the admin to place on the control plane. The authorizer chain is Node, guard
(skipping `system:` users through a CEL match condition, so the cluster's own
components never wait on Azure RBAC), then Kubernetes RBAC.
"""

from __future__ import annotations

import base64
from typing import Any

AUTHN_FILE = "authn-webhook.kubeconfig"
AUTHZ_FILE = "authz-webhook.kubeconfig"
AUTHZ_CONFIG_FILE = "authorization-config.yaml"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def webhook_kubeconfig(
    server: str, ca: bytes, client_cert: bytes, client_key: bytes, name: str
) -> dict[str, Any]:
    """A kubeconfig the apiserver uses to call one webhook: its URL, CA and the client pair for mTLS."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [
            {
                "name": "apiserver",
                "user": {"client-certificate-data": _b64(client_cert), "client-key-data": _b64(client_key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "apiserver"}}],
        "current-context": name,
    }


def authorization_config(
    kubeconfig: str,
    timeout: str = "5s",
    authorized_ttl: str = "5m",
    unauthorized_ttl: str = "30s",
    failure_policy: str = "NoOpinion",
) -> dict[str, Any]:
    """AuthorizationConfiguration: Node, then guard (skipping `system:` users via CEL), then RBAC."""
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthorizationConfiguration",
        "authorizers": [
            {"type": "Node", "name": "node"},
            {
                "type": "Webhook",
                "name": "kubearc-guard",
                "webhook": {
                    "timeout": timeout,
                    "authorizedTTL": authorized_ttl,
                    "unauthorizedTTL": unauthorized_ttl,
                    "failurePolicy": failure_policy,
                    "subjectAccessReviewVersion": "v1",
                    "matchConditionSubjectAccessReviewVersion": "v1",
                    "connectionInfo": {"type": "KubeConfigFile", "kubeConfigFile": kubeconfig},
                    "matchConditions": [{"expression": "!request.user.startsWith('system:')"}],
                },
            },
            {"type": "RBAC", "name": "rbac"},
        ],
    }


def manifests(
    server: str, ca: bytes, client_cert: bytes, client_key: bytes, config_dir: str, **authz: str
) -> dict[str, dict[str, Any]]:
    """The three files by name; `config_dir` is where the apiserver will read them from."""
    base = server.rstrip("/")
    return {
        AUTHN_FILE: webhook_kubeconfig(
            f"{base}/tokenreviews", ca, client_cert, client_key, "kubearc-guard-authn"
        ),
        AUTHZ_FILE: webhook_kubeconfig(
            f"{base}/subjectaccessreviews", ca, client_cert, client_key, "kubearc-guard-authz"
        ),
        AUTHZ_CONFIG_FILE: authorization_config(f"{config_dir.rstrip('/')}/{AUTHZ_FILE}", **authz),
    }


def apiserver_flags(config_dir: str) -> str:
    d = config_dir.rstrip("/")
    return (
        f"--authentication-token-webhook-config-file={d}/{AUTHN_FILE} "
        f"--authentication-token-webhook-version=v1 --authorization-config={d}/{AUTHZ_CONFIG_FILE}"
    )
