"""kubeconfig files pointing at the stand-in, the way a cluster admin would hand one out."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml


def kubeconfig(
    server: str,
    ca_pem: bytes,
    token: str,
    *,
    tls_server_name: str | None = None,
    name: str = "standin",
    namespace: str | None = None,
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "server": server,
        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
    }
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    context: dict[str, Any] = {"cluster": name, "user": f"{name}-admin"}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": f"{name}-admin", "user": {"token": token}}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, server: str, ca_pem: bytes, token: str, **options: Any) -> Path:
    """Write a kubeconfig readable by its owner only (it holds a bearer token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(kubeconfig(server, ca_pem, token, **options), sort_keys=False))
    return path
