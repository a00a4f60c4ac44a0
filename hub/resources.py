"""ARM resource ids and scopes. ARM compares ids case-insensitively; we keep the
caller's spelling for display and a lowercased *key* for lookups."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

from hub.errors import bad_request

CLUSTER_TYPE = "Microsoft.Kubernetes/connectedClusters"
# The route template of a resource group's clusters (cluster and configuration routes hang off it).
CC = f"/subscriptions/{{sub}}/resourceGroups/{{rg}}/providers/{CLUSTER_TYPE}"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_RG = re.compile(r"^[-\w._()]{1,90}$")


def cluster_id(subscription: str, resource_group: str, name: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/{CLUSTER_TYPE}/{name}"


def validate_names(subscription: str, resource_group: str, name: str) -> None:
    if not _NAME.match(subscription):
        raise bad_request(f"invalid subscription id {subscription!r}", "InvalidSubscriptionId")
    if not _RG.match(resource_group) or resource_group.endswith("."):
        raise bad_request(f"invalid resource group name {resource_group!r}", "InvalidResourceGroup")
    if not _NAME.match(name):
        raise bad_request(
            f"invalid cluster name {name!r}: 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit",
            "InvalidResourceName",
        )


def scope_key(scope: str) -> str:
    """Normalize a scope for comparison: lowercase, single leading slash, no trailing slash."""
    key = "/" + scope.strip().strip("/").lower()
    return key if key != "/" else "/"


def scope_within(scope: str, parent: str) -> bool:
    """Does `parent` (a scope key) contain `scope` (a scope key)? Segment-wise prefix."""
    return parent == "/" or scope == parent or scope.startswith(parent + "/")


def parse_scope(scope: str) -> dict[str, str]:
    """Split a scope into its known parts (subscription, resourceGroup, cluster, namespace)."""
    parts = scope.strip("/").split("/")
    out: dict[str, str] = {}
    i = 0
    while i + 1 < len(parts):
        k, v = parts[i].lower(), parts[i + 1]
        if k == "subscriptions":
            out["subscription"] = v
        elif k == "resourcegroups":
            out["resourceGroup"] = v
        elif k == "providers" and i + 3 < len(parts):
            out["provider"] = f"{v}/{parts[i + 2]}"
            out["cluster"] = parts[i + 3]
            i += 2
        elif k == "namespaces":
            out["namespace"] = v
        i += 2
    return out


def cluster_child(path_params: Mapping[str, str], child: str) -> tuple[str, str]:
    """The cluster's resource id and the child's name (`child` names the path parameter) of a
    `.../connectedClusters/{name}/providers/.../{child}` route; bad names are a 400."""
    validate_names(path_params["sub"], path_params["rg"], path_params["name"])
    return cluster_id(path_params["sub"], path_params["rg"], path_params["name"]), path_params.get(child, "")


def arm_time(value: dt.datetime | None) -> str | None:
    """A time as ARM writes it: ISO 8601 in UTC with a trailing Z (None stays None)."""
    return value.isoformat().replace("+00:00", "Z") if value else None
