"""The resource types the stand-in serves, described once and used by every layer.

Discovery documents, URL routing, defaulting, validation and `kubectl get`
tables all derive from `ResourceType`, so adding a resource (pods, configmaps,
deployments under `apps/v1`) is one `registry.add(...)` with its hooks.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.apiserver import errors

Obj = dict[str, Any]
ALL_VERBS = ("create", "delete", "get", "list", "patch", "update")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
MAX_SECRET_BYTES = 1024 * 1024  # of decoded data, as for ConfigMaps


@dataclass(frozen=True)
class Column:
    """One column of a `meta.k8s.io/v1` Table, as `kubectl get` prints it."""

    name: str
    cell: Callable[[Obj, dt.datetime], Any]
    type: str = "string"
    format: str = ""
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" is the core group, served under /api
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    # Fills in defaults on create and update (e.g. Secret stringData → data).
    default: Callable[[Obj], None] = lambda obj: None
    # Returns (field, message) problems; any problem turns the request into a 422.
    validate: Callable[[Obj], list[tuple[str, str]]] = lambda obj: []
    # Problems with changing `old` into `new` (immutable fields), checked on update and patch.
    validate_update: Callable[[Obj, Obj], list[tuple[str, str]]] = lambda old, new: []
    columns: tuple[Column, ...] = ()
    subresources: tuple[str, ...] = ()  # served under .../{name}/{subresource}
    generation: bool = False  # metadata.generation counts spec changes
    categories: tuple[str, ...] = ()  # e.g. "all", for `kubectl get all`
    path_segment_names: bool = False  # RBAC: any name that is a URL path segment, not a DNS subdomain
    # A custom resource (crds.py): no strategic merge patch, no known fields to check, and
    # metadata.generation counts every change but metadata (and status, with a status subresource).
    custom: bool = False

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name_pattern(self) -> re.Pattern[str]:
        return DNS_LABEL if self.kind == "Namespace" else DNS_SUBDOMAIN


@dataclass
class Registry:
    types: list[ResourceType] = field(default_factory=list)

    def add(self, rt: ResourceType) -> ResourceType:
        self.types = [*self.types, rt]  # a new list: requests may be iterating the old one
        return rt

    def replace(self, group: str, plural: str, types: list[ResourceType]) -> list[ResourceType]:
        """Serve `types` in place of every version of `group`/`plural` (a CRD changed); returns the old."""
        old = [rt for rt in self.types if (rt.group, rt.plural) == (group, plural)]
        self.types = [rt for rt in self.types if rt not in old] + types
        return old

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        for rt in self.types:
            if (rt.group, rt.version, rt.plural) == (group, version, plural):
                return rt
        return None

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self.types if (rt.group, rt.version) == (group, version)]

    def groups(self) -> dict[str, list[str]]:
        """Non-core groups and their versions, in registration order."""
        out: dict[str, list[str]] = {}
        for rt in self.types:
            if rt.group and rt.version not in out.setdefault(rt.group, []):
                out[rt.group].append(rt.version)
        return out

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self.types)


def age(obj: Obj, now: dt.datetime) -> str:
    """kubectl's human duration (`5m12s`, `3h`, `12d`) of an object's creationTimestamp."""
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    seconds = int((now - dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d" if days < 365 * 2 else f"{days // 365}y"


def _name(obj: Obj, _: dt.datetime) -> str:
    return str(obj["metadata"]["name"])


NAME = Column("Name", _name, format="name", description="Name must be unique within a namespace.")
AGE = Column("Age", age, description="CreationTimestamp is when this object was created.")


# -- namespaces -----------------------------------------------------------------------------------------


def _default_namespace(obj: Obj) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


NAMESPACES = ResourceType(
    "",
    "v1",
    "namespaces",
    "namespace",
    "Namespace",
    namespaced=False,
    short_names=("ns",),
    default=_default_namespace,
    columns=(NAME, Column("Status", lambda o, _: o.get("status", {}).get("phase", "")), AGE),
)


# -- nodes ----------------------------------------------------------------------------------------------


def _node_status(obj: Obj, _: dt.datetime) -> str:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == "Ready":
            return "Ready" if cond.get("status") == "True" else "NotReady"
    return "Unknown"


def _node_roles(obj: Obj, _: dt.datetime) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix) :] for k in obj["metadata"].get("labels", {}) if k.startswith(prefix))
    return ",".join(roles) or "<none>"


NODES = ResourceType(
    "",
    "v1",
    "nodes",
    "node",
    "Node",
    namespaced=False,
    short_names=("no",),
    columns=(
        NAME,
        Column("Status", _node_status, description="The status of the node"),
        Column("Roles", _node_roles, description="The roles of the node"),
        AGE,
        Column("Version", lambda o, _: o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", "")),
    ),
)


# -- secrets --------------------------------------------------------------------------------------------

SECRET_TYPES_REQUIRED_KEYS = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/basic-auth": (),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
}


def _default_secret(obj: Obj) -> None:
    """The apiserver folds write-only `stringData` into base64 `data` and defaults the type."""
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {}) if string_data else obj.get("data")
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()  # type: ignore[index]
    obj.setdefault("type", "Opaque")


def _validate_secret(obj: Obj) -> list[tuple[str, str]]:
    problems = []
    data = obj.get("data") or {}
    if not isinstance(data, dict):
        return [("data", "Invalid value: must be a map of strings")]
    for key, value in data.items():
        if not CONFIG_KEY.match(key):
            problems.append(
                (
                    f"data[{key}]",
                    f'Invalid value: "{key}": a valid config key must consist of '
                    "alphanumeric characters, '-', '_' or '.'",
                )
            )
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            problems.append((f"data[{key}]", "Invalid value: not valid base64"))
    for key in SECRET_TYPES_REQUIRED_KEYS.get(obj.get("type", ""), ()):
        if key not in data:
            problems.append((f"data[{key}]", "Required value"))
    size = sum(len(k) + len(str(v)) * 3 // 4 for k, v in data.items())
    if size > MAX_SECRET_BYTES:
        problems.append(("data", f"Too long: must have at most {MAX_SECRET_BYTES} bytes"))
    return problems


def validate_immutable(old: Obj, new: Obj, fields: tuple[str, ...]) -> list[tuple[str, str]]:
    """ConfigMaps and Secrets marked `immutable: true` keep their data and the mark."""
    if not old.get("immutable"):
        return []
    forbidden = "Forbidden: field is immutable when `immutable` is set"
    return [(f, forbidden) for f in ("immutable", *fields) if old.get(f) != new.get(f)]


def _validate_secret_update(old: Obj, new: Obj) -> list[tuple[str, str]]:
    problems = validate_immutable(old, new, ("data",))
    if old.get("type") != new.get("type"):
        problems.append(("type", f'Invalid value: "{new.get("type")}": field is immutable'))
    return problems


SECRETS = ResourceType(
    "",
    "v1",
    "secrets",
    "secret",
    "Secret",
    namespaced=True,
    default=_default_secret,
    validate=_validate_secret,
    validate_update=_validate_secret_update,
    columns=(
        NAME,
        Column("Type", lambda o, _: o.get("type", "")),
        Column("Data", lambda o, _: len(o.get("data") or {}), type="integer"),
        AGE,
    ),
)


def default_registry() -> Registry:
    from tests.apiserver.crds import CRDS
    from tests.apiserver.rbac import RBAC_TYPES, SERVICEACCOUNTS
    from tests.apiserver.services import SERVICES
    from tests.apiserver.workloads import CONFIGMAPS, DEPLOYMENTS, PODS

    registry = Registry()
    for rt in (
        NAMESPACES,
        NODES,
        PODS,
        CONFIGMAPS,
        SECRETS,
        SERVICEACCOUNTS,
        SERVICES,
        DEPLOYMENTS,
        *RBAC_TYPES,
        CRDS,
    ):
        registry.add(rt)
    return registry


def path_segment_problem(name: str) -> str | None:
    """`path.IsValidPathSegmentName`: what RBAC object names must be."""
    if name in (".", ".."):
        return f"may not be '{name}'"
    for bad in ("/", "%"):
        if bad in name:
            return f"may not contain '{bad}'"
    return None


def check_name(rt: ResourceType, name: object) -> None:
    if not isinstance(name, str) or not name:
        problem = ("metadata.name", "Required value: name or generateName is required")
        raise errors.invalid(rt.kind, "", [problem], group=rt.group)
    if rt.path_segment_names:
        if (bad := path_segment_problem(name)) is not None:
            raise errors.invalid(
                rt.kind, name, [("metadata.name", f'Invalid value: "{name}": {bad}')], rt.group
            )
        return
    limit = 63 if rt.name_pattern is DNS_LABEL else 253
    if len(name) > limit or not rt.name_pattern.match(name):
        message = (
            f'Invalid value: "{name}": a lowercase RFC 1123 name must consist of lower case alphanumeric '
            "characters, '-' or '.', and must start and end with an alphanumeric character "
            f"(at most {limit} characters)"
        )
        raise errors.invalid(rt.kind, name, [("metadata.name", message)], group=rt.group)
