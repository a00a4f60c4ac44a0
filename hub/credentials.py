"""`listClusterUserCredential`: what the client proxy needs to open cluster connect.

The relay credential is a short JWT signed by the hub's issuer key (the relay
verifies it against the issuer's JWKS, like any other token): it names one user
and one cluster, and nothing else. The cluster's CA and TLS server name let the
proxy write a kubeconfig that verifies the real apiserver end to end (or, in
impersonation mode, the cluster's kube-aad-proxy: see hub/aadproxy.py).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import jwt

from foundation.wire import RELAY_AUDIENCE, RELAY_CLIENT_PATH, RELAY_TOKEN_TYPE
from hub.auth import Principal
from hub.context import Hub
from hub.errors import ApiError
from hub.store.models import Cluster


def relay_url(hub: Hub) -> str:
    return hub.config.relay + RELAY_CLIENT_PATH


def issue_relay_token(hub: Hub, principal: Principal, cluster_resource_key: str) -> tuple[str, int]:
    now = hub.now()
    exp = int((now + hub.config.relay_credential_ttl).timestamp())
    claims = {
        "iss": hub.issuer,
        "aud": RELAY_AUDIENCE,
        "sub": principal.object_id,
        "name": principal.name,
        "cluster": cluster_resource_key,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()) - 5,
        "exp": exp,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(
        claims, hub.issuer_key, algorithm="RS256", headers={"kid": hub.issuer_kid, "typ": RELAY_TOKEN_TYPE}
    )
    return token, exp


def _tls_target(hub: Hub, cluster: Cluster, rid: str) -> tuple[str, str, str]:
    """(mode, CA PEM, server name) kubectl must verify: the kube-aad-proxy's while its serving
    certificate is valid (impersonation mode, hub/aadproxy.py), else the apiserver's."""
    expires = cluster.aad_proxy_expires_at
    if cluster.aad_proxy_server_name and expires is not None and expires > hub.now():
        return "impersonation", hub.cluster_ca.cert_pem.decode(), cluster.aad_proxy_server_name
    if cluster.cluster_ca is None or cluster.apiserver_server_name is None:
        raise ApiError(
            409,
            "ClusterNotReady",
            f"connected cluster '{rid}' has not reported its apiserver CA and TLS server name yet; "
            "check that its metadata agent is running",
        )
    return "passthrough", cluster.cluster_ca, cluster.apiserver_server_name


def cluster_user_credential(hub: Hub, principal: Principal, cluster: Cluster, rid: str) -> dict[str, Any]:
    mode, ca_pem, server_name = _tls_target(hub, cluster, rid)
    token, exp = issue_relay_token(hub, principal, cluster.resource_key)
    return {
        "kubeconfigs": [],
        "hybridConnectionConfig": {
            "relay": relay_url(hub),
            "hybridConnectionName": rid,
            "token": token,
            "expirationTime": exp,
        },
        "clusterConnect": {
            "mode": mode,
            "certificateAuthorityData": base64.b64encode(ca_pem.encode()).decode(),
            "tlsServerName": server_name,
        },
    }
