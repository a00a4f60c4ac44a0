"""Services (core v1): defaulting, validation and the cluster IPs and node ports a real apiserver allocates.

Defaults follow `SetDefaults_Service` (type ClusterIP, sessionAffinity None, each port's
protocol TCP and targetPort its port, the traffic policies, an empty load-balancer status)
and validation `ValidateService` (ports, names, protocols, target port names, the type).
`allocator(store)` plays the apiserver's IP and port allocators: a ClusterIP service gets
the lowest free address of the service CIDR (the apiserver's own `default/kubernetes`
service has the first), NodePort and LoadBalancer services the lowest free node ports; an
update that leaves them out keeps the allocated ones, as `patchAllocatedValues` does, and
a given address or port must be free and in range.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import TYPE_CHECKING, Any

from tests.apiserver import errors
from tests.apiserver.resources import AGE, DNS_LABEL, DNS_SUBDOMAIN, NAME, Column, Obj, ResourceType

if TYPE_CHECKING:
    from tests.apiserver.store import Mutator, ObjectStore

Problems = list[tuple[str, str]]
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
NODE_PORTS = range(30000, 32768)
TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
PROTOCOLS = ("SCTP", "TCP", "UDP")
PORT_NAME = re.compile(r"^[-a-z0-9]+$")
PORT_RANGE = "must be between 1 and 65535, inclusive"


def _unsupported(value: object, supported: tuple[str, ...]) -> str:
    return f'Unsupported value: "{value}": supported values: ' + ", ".join(f'"{s}"' for s in supported)


def _uses_node_ports(spec: Obj) -> bool:
    return spec.get("type") in ("NodePort", "LoadBalancer")


def _needs_cluster_ip(spec: Obj) -> bool:
    return spec.get("type", "ClusterIP") != "ExternalName"


def _default_service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        spec.setdefault("sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 10800}})
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if port.get("targetPort") in (None, 0, ""):
                port["targetPort"] = port.get("port")
    if _uses_node_ports(spec):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if spec["type"] != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def port_name_problems(name: str) -> list[str]:
    """`IsValidPortName`: an IANA service name, what a named targetPort must be."""
    found = []
    if len(name) > 15:
        found.append("must be no more than 15 characters")
    if not PORT_NAME.match(name):
        found.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", name):
        found.append("must contain at least one letter (a-z)")
    if "--" in name:
        found.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        found.append("must not begin or end with a hyphen")
    return found


def _port_problems(port: Any, where: str, spec: Obj, several: bool) -> Problems:
    if not isinstance(port, dict):
        return [(where, "Invalid value: must be an object")]
    problems: Problems = []
    name = port.get("name")
    if several and not name:
        problems.append((f"{where}.name", "Required value"))
    elif name and (not isinstance(name, str) or not DNS_LABEL.match(name) or len(name) > 63):
        problems.append((f"{where}.name", f'Invalid value: "{name}": must be a DNS-1123 label'))
    number = port.get("port", 0)
    if not isinstance(number, int) or not 0 < number < 65536:
        problems.append((f"{where}.port", f"Invalid value: {number}: {PORT_RANGE}"))
    if port.get("protocol") not in PROTOCOLS:
        problems.append((f"{where}.protocol", _unsupported(port.get("protocol"), PROTOCOLS)))
    target = port.get("targetPort")
    if isinstance(target, int) and not 0 < target < 65536:
        problems.append((f"{where}.targetPort", f"Invalid value: {target}: {PORT_RANGE}"))
    elif isinstance(target, str):
        problems += [
            (f"{where}.targetPort", f'Invalid value: "{target}": {m}') for m in port_name_problems(target)
        ]
    elif target is not None and not isinstance(target, int):
        problems.append((f"{where}.targetPort", "Invalid value: must be an integer or a port name"))
    if port.get("nodePort") and not _uses_node_ports(spec):
        problems.append(
            (f"{where}.nodePort", f"Forbidden: may not be used when `type` is '{spec.get('type')}'")
        )
    return problems


def _cluster_ip_problems(spec: Obj) -> Problems:
    ip = spec.get("clusterIP")
    if spec.get("type") == "ExternalName":
        return [("spec.clusterIP", "Invalid value: must be empty for ExternalName services")] if ip else []
    if ip in (None, "", "None"):
        return []
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return [("spec.clusterIPs[0]", f'Invalid value: "{ip}": must be a valid IP address, (e.g. 10.9.8.7)')]
    return []


def _validate_service(obj: Obj) -> Problems:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "Required value")]
    problems: Problems = []
    kind = spec.get("type")
    if kind not in TYPES:
        return [("spec.type", _unsupported(kind, TYPES))]
    ports = spec.get("ports") or []
    if not isinstance(ports, list):
        return [("spec.ports", "Invalid value: must be a list of ports")]
    if not ports and spec.get("clusterIP") != "None" and kind != "ExternalName":
        problems.append(("spec.ports", "Required value"))
    names: set[str] = set()
    numbers: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        where = f"spec.ports[{i}]"
        problems += _port_problems(port, where, spec, len(ports) > 1)
        if not isinstance(port, dict):
            continue
        if port.get("name") in names:
            problems.append((f"{where}.name", f'Duplicate value: "{port["name"]}"'))
        names.add(port.get("name") or "")
        key = (port.get("port"), port.get("protocol"))
        if key in numbers:
            problems.append((where, f'Duplicate value: {{"port": {key[0]}, "protocol": "{key[1]}"}}'))
        numbers.add(key)
    if kind == "ExternalName":
        external = spec.get("externalName")
        if not external:
            problems.append(("spec.externalName", "Required value"))
        elif not isinstance(external, str) or not DNS_SUBDOMAIN.match(external.rstrip(".")):
            problems.append(
                ("spec.externalName", f'Invalid value: "{external}": must be a DNS-1123 subdomain')
            )
    if spec.get("sessionAffinity") not in ("ClientIP", "None"):
        problems.append(
            ("spec.sessionAffinity", _unsupported(spec.get("sessionAffinity"), ("ClientIP", "None")))
        )
    selector = spec.get("selector") or {}
    if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
        problems.append(("spec.selector", "Invalid value: must be a map of strings"))
    return problems + _cluster_ip_problems(spec)


def _validate_service_update(old: Obj, new: Obj) -> Problems:
    before, after = old.get("spec") or {}, new.get("spec") or {}
    ip = after.get("clusterIP")
    if _needs_cluster_ip(before) and _needs_cluster_ip(after) and ip and ip != before.get("clusterIP"):
        return [("spec.clusterIPs[0]", f'Invalid value: []string{{"{ip}"}}: may not change once set')]
    return []


# -- the allocators -------------------------------------------------------------------------------------


def _carry_over(spec: Obj, before: Obj) -> None:
    """An update that leaves allocated values out keeps them (`patchAllocatedValues`)."""
    if _needs_cluster_ip(before) and _needs_cluster_ip(spec) and not spec.get("clusterIP"):
        for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if key in before and not spec.get(key):
                spec[key] = before[key]
    if _uses_node_ports(before) and _uses_node_ports(spec):
        old = {(p.get("port"), p.get("protocol")): p.get("nodePort") for p in before.get("ports") or []}
        for port in spec.get("ports") or []:
            found = old.get((port.get("port"), port.get("protocol"))) if isinstance(port, dict) else None
            if found and not port.get("nodePort"):
                port["nodePort"] = found


def _allocate_ip(spec: Obj, name: str, taken: set[str]) -> None:
    ip = spec.get("clusterIP")
    if ip == "None":
        spec["clusterIPs"] = ["None"]
    elif ip:
        if ip not in taken and ipaddress.ip_address(ip) not in SERVICE_CIDR:
            message = (
                f"failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. "
                f"The range of valid IPs is {SERVICE_CIDR}"
            )
            raise errors.invalid(
                "Service", name, [("spec.clusterIPs", f'Invalid value: []string{{"{ip}"}}: {message}')]
            )
        if ip in taken:
            message = f"failed to allocate IP {ip}: provided IP is already allocated"
            raise errors.invalid(
                "Service", name, [("spec.clusterIPs", f'Invalid value: []string{{"{ip}"}}: {message}')]
            )
        spec["clusterIPs"] = [ip]
    else:
        free = next(str(a) for a in SERVICE_CIDR.hosts() if str(a) not in taken)
        spec["clusterIP"], spec["clusterIPs"] = free, [free]
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")


def _allocate_node_ports(spec: Obj, name: str, taken: set[int]) -> None:
    for i, port in enumerate(spec.get("ports") or []):
        wanted = port.get("nodePort")
        if wanted and (wanted in taken or wanted not in NODE_PORTS):
            why = (
                "provided port is already allocated"
                if wanted in taken
                else f"provided port is not in the valid range. The range of valid ports is "
                f"{NODE_PORTS.start}-{NODE_PORTS.stop - 1}"
            )
            raise errors.invalid(
                "Service", name, [(f"spec.ports[{i}].nodePort", f"Invalid value: {wanted}: {why}")]
            )
        port["nodePort"] = wanted or next(p for p in NODE_PORTS if p not in taken)
        taken.add(port["nodePort"])


def allocator(store: ObjectStore) -> Mutator:
    """A store mutator giving services their cluster IP and node ports (under the store's lock)."""

    def allocate(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        if rt is not SERVICES:
            return
        spec, before = obj["spec"], (old or {}).get("spec") or {}
        if old is not None:
            _carry_over(spec, before)
        meta = obj["metadata"]
        others = [
            o.get("spec") or {}
            for o in store.list_all("", "services")
            if (o["metadata"].get("namespace"), o["metadata"]["name"])
            != (meta.get("namespace"), meta["name"])
        ]
        if _needs_cluster_ip(spec):
            _allocate_ip(spec, meta["name"], {s.get("clusterIP", "") for s in others})
        else:
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(key, None)
        if _uses_node_ports(spec):
            _allocate_node_ports(
                spec, meta["name"], {p.get("nodePort") for s in others for p in s.get("ports") or []}
            )
        else:
            for port in spec.get("ports") or []:
                port.pop("nodePort", None)

    return allocate


# -- the resource ---------------------------------------------------------------------------------------


def _external_ip(obj: Obj, _: dt.datetime) -> str:
    spec = obj.get("spec") or {}
    external = list(spec.get("externalIPs") or [])
    if spec.get("type") == "ExternalName":
        return str(spec.get("externalName", ""))
    if spec.get("type") == "LoadBalancer":
        ingress = (obj.get("status") or {}).get("loadBalancer", {}).get("ingress") or []
        external = [i.get("ip") or i.get("hostname") for i in ingress] + external
        return ",".join(external) or "<pending>"
    return ",".join(external) or "<none>"


def _ports(obj: Obj, _: dt.datetime) -> str:
    out = []
    for p in (obj.get("spec") or {}).get("ports") or []:
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        out.append(f"{p.get('port')}{node}/{p.get('protocol')}")
    return ",".join(out) or "<none>"


def _selector(obj: Obj, _: dt.datetime) -> str:
    selector = (obj.get("spec") or {}).get("selector") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>"


SERVICES = ResourceType(
    "",
    "v1",
    "services",
    "service",
    "Service",
    namespaced=True,
    short_names=("svc",),
    default=_default_service,
    validate=_validate_service,
    validate_update=_validate_service_update,
    subresources=("status",),
    categories=("all",),
    columns=(
        NAME,
        Column("Type", lambda o, _: (o.get("spec") or {}).get("type", "")),
        Column("Cluster-IP", lambda o, _: (o.get("spec") or {}).get("clusterIP") or "<none>"),
        Column("External-IP", _external_ip),
        Column("Port(s)", _ports),
        AGE,
        Column("Selector", _selector, priority=1),
    ),
)


def kubernetes_service() -> Obj:
    """`default/kubernetes`, which the apiserver keeps for itself (the first address of the range)."""
    first = str(next(SERVICE_CIDR.hosts()))
    return {
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "clusterIP": first,
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
        },
    }
