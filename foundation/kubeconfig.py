"""Writing and merging kubeconfig files (YAML via PyYAML, which the kubernetes client brings)."""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


class KubeconfigError(ValueError):
    """A kubeconfig we cannot read or merge into; the message names the file and the problem."""


def context_config(
    name: str, server: str, ca_pem: bytes, tls_server_name: str | None, user: dict[str, Any]
) -> dict[str, Any]:
    """A kubeconfig holding one cluster, user and context, all called `name`.

    The cluster entry carries the apiserver's CA and TLS server name: kubectl verifies
    the real apiserver through the tunnel. Never `insecure-skip-tls-verify`.
    """
    cluster: dict[str, Any] = {
        "server": server,
        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
    }
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
    }


EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def exec_user(command: str, args: list[str], install_hint: str | None = None) -> dict[str, Any]:
    """A kubeconfig user whose token comes from a client-go exec credential plugin.

    kubectl runs `command args` when it needs a token (and again after it expires or the server
    answers 401), reads an `ExecCredential` from its stdout and lets it talk to the person on
    stderr; stdin only when kubectl itself has a terminal (`IfAvailable`).
    """
    plugin: dict[str, Any] = {
        "apiVersion": EXEC_API_VERSION,
        "command": command,
        "args": list(args),
        "interactiveMode": "IfAvailable",
        "provideClusterInfo": False,
    }
    if install_hint:
        plugin["installHint"] = install_hint
    return {"exec": plugin}


def load(path: Path) -> dict[str, Any]:
    if not path.exists() or path.stat().st_size == 0:
        return {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(f"{path} is not a kubeconfig (expected a mapping at the top)")
    for key in ("clusters", "users", "contexts"):
        if doc.get(key) is None:
            doc[key] = []
        if not isinstance(doc[key], list) or not all(isinstance(e, dict) and "name" in e for e in doc[key]):
            raise KubeconfigError(f"{path}: '{key}' must be a list of named entries")
    return doc


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Entries of `extra` replace same-named ones in `base`; everything else is kept."""
    out = dict(base)
    for key in ("clusters", "users", "contexts"):
        names = {e["name"] for e in extra.get(key, [])}
        out[key] = [e for e in base.get(key, []) if e.get("name") not in names] + list(extra.get(key, []))
    if extra.get("current-context"):
        out["current-context"] = extra["current-context"]
    return out


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def write_merged(path: Path, extra: dict[str, Any]) -> None:
    """Merge `extra` into the kubeconfig at `path` atomically, keeping it private (0600)."""
    merged = merge(load(path), extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kubeconfig-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dump(merged))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
