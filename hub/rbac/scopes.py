"""Well-formed RBAC scopes: where role assignments and checkAccess may point.

A role assignment at a malformed scope would silently never apply (or apply too
widely), so every scope the API accepts is parsed here and rebuilt with ARM's
canonical keyword spelling; names keep the caller's spelling (ARM compares ids
case-insensitively, `hub.resources.scope_key` does the comparing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hub.errors import bad_request
from hub.resources import CLUSTER_TYPE

_SUB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_RG = re.compile(r"^[-\w._()]{1,90}$")
_CLUSTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SHAPE = (
    "/, /subscriptions/{sub}, /subscriptions/{sub}/resourceGroups/{rg}, "
    f"/subscriptions/{{sub}}/resourceGroups/{{rg}}/providers/{CLUSTER_TYPE}/{{name}} "
    "or that cluster id followed by /namespaces/{namespace}"
)


@dataclass(frozen=True)
class Scope:
    """A parsed scope; `path` is its canonical spelling (`/` for the root)."""

    path: str
    subscription: str | None = None
    resource_group: str | None = None
    cluster: str | None = None
    namespace: str | None = None

    @property
    def kind(self) -> str:
        if self.namespace:
            return "namespace"
        if self.cluster:
            return "cluster"
        if self.resource_group:
            return "resourceGroup"
        return "subscription" if self.subscription else "root"

    @property
    def cluster_path(self) -> str | None:
        """The connected cluster's resource id when the scope is a cluster or one of its namespaces."""
        if not self.cluster:
            return None
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/" + (
            f"{CLUSTER_TYPE}/{self.cluster}"
        )


def _fail(scope: str, problem: str) -> Exception:
    return bad_request(f"invalid scope {scope!r}: {problem}; expected {_SHAPE}", "InvalidScope")


def parse(scope: str) -> Scope:
    """Parse and validate `scope`; a 400 names the offending segment."""
    if not isinstance(scope, str) or not scope.strip():
        raise _fail(str(scope), "the scope is empty")
    raw = scope.strip()
    if not raw.startswith("/"):
        raise _fail(raw, "a scope starts with '/'")
    body = raw.strip("/")
    if not body:
        return Scope("/")
    parts = body.split("/")
    if any(not p for p in parts):
        raise _fail(raw, "empty path segment ('//')")
    if parts[0].lower() != "subscriptions":
        raise _fail(raw, f"unexpected segment {parts[0]!r} (the first segment must be 'subscriptions')")
    if len(parts) < 2:
        raise _fail(raw, "the subscription id is missing")
    sub = parts[1]
    if not _SUB.match(sub):
        raise _fail(raw, f"bad subscription id {sub!r}")
    if len(parts) == 2:
        return Scope(f"/subscriptions/{sub}", sub)
    if parts[2].lower() != "resourcegroups" or len(parts) < 4:
        raise _fail(
            raw, f"expected 'resourceGroups/{{name}}' after the subscription, got {'/'.join(parts[2:])!r}"
        )
    rg = parts[3]
    if not _RG.match(rg) or rg.endswith("."):
        raise _fail(raw, f"bad resource group name {rg!r}")
    rg_path = f"/subscriptions/{sub}/resourceGroups/{rg}"
    if len(parts) == 4:
        return Scope(rg_path, sub, rg)
    provider = "/".join(parts[4:7]).lower()
    if provider != f"providers/{CLUSTER_TYPE}".lower() or len(parts) < 8:
        raise _fail(
            raw,
            f"only {CLUSTER_TYPE} resources are scopes below a resource group, got {'/'.join(parts[4:])!r}",
        )
    name = parts[7]
    if not _CLUSTER.match(name):
        raise _fail(raw, f"bad cluster name {name!r}")
    cluster_path = f"{rg_path}/providers/{CLUSTER_TYPE}/{name}"
    if len(parts) == 8:
        return Scope(cluster_path, sub, rg, name)
    if parts[8].lower() != "namespaces" or len(parts) != 10:
        raise _fail(
            raw, f"only '/namespaces/{{namespace}}' may follow a cluster id, got {'/'.join(parts[8:])!r}"
        )
    ns = parts[9]
    if not _NAMESPACE.match(ns):
        raise _fail(raw, f"bad namespace {ns!r} (a Kubernetes namespace is a lowercase DNS label)")
    return Scope(f"{cluster_path}/namespaces/{ns}", sub, rg, name, ns)


def child_id(scope: str, kind: str, name: str | None = None) -> str:
    """`{scope}/providers/Microsoft.Authorization/{kind}[/{name}]` without a double slash at the root."""
    base = f"{scope.rstrip('/')}/providers/Microsoft.Authorization/{kind}"
    return f"{base}/{name}" if name else base
