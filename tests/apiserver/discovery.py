"""Discovery documents derived from the registry, in both the legacy and the aggregated form.

kubectl and helm (client-go 1.3x) ask `/api` and `/apis` for aggregated discovery
(`apidiscovery.k8s.io/v2` APIGroupDiscoveryList, every group's resources in one
answer) and fall back to the legacy documents (`/apis`, then one APIResourceList per
group-version) when the answer is plain `application/json`. A real v1.36 apiserver
answers the aggregated form, so the stand-in does too when asked; both are derived
from the registry at the time of the request, so a CRD's kinds appear (and disappear)
at once.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from tests.apiserver.resources import Registry, ResourceType


def version_info(git_version: str) -> dict[str, str]:
    m = re.match(r"v?(\d+)\.(\d+)", git_version)
    major, minor = (m[1], m[2]) if m else ("1", "0")
    return {
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": dt.datetime(2025, 1, 1, tzinfo=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _resource(rt: ResourceType) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": sorted(rt.verbs),
    }
    if rt.short_names:
        doc["shortNames"] = list(rt.short_names)
    if rt.categories:
        doc["categories"] = list(rt.categories)
    return doc


# subresource → (kind, verbs, group, version); group/version only when they differ from the parent's
SUBRESOURCES: dict[str, tuple[str, list[str], str | None, str | None]] = {
    "attach": ("PodAttachOptions", ["create", "get"], None, None),
    "exec": ("PodExecOptions", ["create", "get"], None, None),
    "log": ("Pod", ["get"], None, None),
    "portforward": ("PodPortForwardOptions", ["create", "get"], None, None),
    "scale": ("Scale", ["get", "patch", "update"], "autoscaling", "v1"),
    "status": ("", ["get", "patch", "update"], None, None),
}


def _subresources(rt: ResourceType) -> list[dict[str, Any]]:
    out = []
    for sub in rt.subresources:
        kind, verbs, group, version = SUBRESOURCES[sub]
        doc: dict[str, Any] = {
            "name": f"{rt.plural}/{sub}",
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": kind or rt.kind,
            "verbs": verbs,
        }
        if group is not None:
            doc["group"], doc["version"] = group, version
        out.append(doc)
    return out


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [doc for rt in types for doc in (_resource(rt), *_subresources(rt))],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def group(registry: Registry, name: str) -> dict[str, Any] | None:
    versions = registry.groups().get(name)
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)} if versions else None


def group_list(registry: Registry) -> dict[str, Any]:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(name, versions) for name, versions in registry.groups().items()],
    }


AGGREGATED = ("apidiscovery.k8s.io", "v2", "APIGroupDiscoveryList")
AGGREGATED_MEDIA = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def wants_aggregated(accept: str) -> bool:
    """Whether the Accept header offers the aggregated v2 JSON form (the first choice of client-go)."""
    for option in accept.split(","):
        media, *params = (p.strip() for p in option.split(";"))
        values = dict(p.partition("=")[::2] for p in params)
        if (
            media.lower() == "application/json"
            and (values.get("g"), values.get("v"), values.get("as")) == AGGREGATED
        ):
            return True
    return False


def _gvk(group: str, version: str, kind: str) -> dict[str, str]:
    return {"group": group, "version": version, "kind": kind}


def _aggregated_resource(rt: ResourceType) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resource": rt.plural,
        "responseKind": _gvk(rt.group, rt.version, rt.kind),
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular,
        "verbs": sorted(rt.verbs),
    }
    if rt.short_names:
        doc["shortNames"] = list(rt.short_names)
    if rt.categories:
        doc["categories"] = list(rt.categories)
    subresources = []
    for sub in rt.subresources:
        kind, verbs, group, version = SUBRESOURCES[sub]
        kind_of = _gvk(rt.group if group is None else group, version or rt.version, kind or rt.kind)
        subresources.append({"subresource": sub, "responseKind": kind_of, "verbs": verbs})
    if subresources:
        doc["subresources"] = subresources
    return doc


def aggregated(registry: Registry, core: bool) -> dict[str, Any]:
    """`/api` (core) or `/apis` as an APIGroupDiscoveryList; a group's first version is its preferred."""
    groups = {"": ["v1"]} if core else registry.groups()
    items = []
    for name, versions in groups.items():
        entries = [
            {
                "version": version,
                "resources": [_aggregated_resource(rt) for rt in registry.in_group_version(name, version)],
                "freshness": "Current",
            }
            for version in versions
        ]
        meta: dict[str, Any] = (
            {"name": name, "creationTimestamp": None} if name else {"creationTimestamp": None}
        )
        items.append({"metadata": meta, "versions": entries})
    return {
        "kind": AGGREGATED[2],
        "apiVersion": f"{AGGREGATED[0]}/{AGGREGATED[1]}",
        "metadata": {},
        "items": items,
    }
