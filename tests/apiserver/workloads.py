"""Pods, ConfigMaps and Deployments: the workload types, with the defaults the control plane fills in.

The stand-in has no scheduler, kubelet or controllers, so the defaulting hooks play
their part synchronously: a pod is bound to a node and Running with ready
containers the moment it is written, and a deployment's status reports all its
replicas available. (`kubelet.py` holds the pods' logs, files and ports.)
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from typing import Any

from tests.apiserver.resources import (
    AGE,
    CONFIG_KEY,
    DNS_LABEL,
    NAME,
    Column,
    Obj,
    ResourceType,
    validate_immutable,
)

MAX_CONFIGMAP_BYTES = 1024 * 1024
POD_IP_BASE = "10.244.0."


# -- configmaps -----------------------------------------------------------------------------------------


def _validate_configmap(obj: Obj) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
    if not isinstance(data, dict) or not isinstance(binary, dict):
        return [("data", "Invalid value: must be a map of strings")]
    size = 0
    for field, entries in (("data", data), ("binaryData", binary)):
        for key, value in entries.items():
            if not CONFIG_KEY.match(key) or len(key) > 253:
                problems.append(
                    (
                        f"{field}[{key}]",
                        f'Invalid value: "{key}": a valid config key must consist of alphanumeric '
                        "characters, '-', '_' or '.'",
                    )
                )
            if not isinstance(value, str):
                problems.append((f"{field}[{key}]", "Invalid value: must be a string"))
                continue
            if field == "binaryData":
                try:
                    size += len(base64.b64decode(value, validate=True))
                except (binascii.Error, ValueError):
                    problems.append((f"binaryData[{key}]", "Invalid value: not valid base64"))
            else:
                size += len(value.encode())
    for key in set(data) & set(binary):
        problems.append((f"data[{key}]", f'Invalid value: "{key}": duplicate of key present in binaryData'))
    if size > MAX_CONFIGMAP_BYTES:
        problems.append(("[]", f"Too long: must have at most {MAX_CONFIGMAP_BYTES} bytes"))
    return problems


CONFIGMAPS = ResourceType(
    "",
    "v1",
    "configmaps",
    "configmap",
    "ConfigMap",
    namespaced=True,
    short_names=("cm",),
    validate=_validate_configmap,
    validate_update=lambda old, new: validate_immutable(old, new, ("data", "binaryData")),
    columns=(
        NAME,
        Column(
            "Data",
            lambda o, _: len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            type="integer",
        ),
        AGE,
    ),
)


# -- pod specs (shared by pods and deployment templates) ------------------------------------------------


def _default_container(c: Obj) -> None:
    image = str(c.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
    c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    c.setdefault("resources", {})
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    for port in c.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def default_pod_spec(spec: Obj) -> None:
    for key, value in (
        ("restartPolicy", "Always"),
        ("terminationGracePeriodSeconds", 30),
        ("dnsPolicy", "ClusterFirst"),
        ("securityContext", {}),
        ("schedulerName", "default-scheduler"),
        ("enableServiceLinks", True),
        ("preemptionPolicy", "PreemptLowerPriority"),
        ("priority", 0),
    ):
        spec.setdefault(key, value)
    spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if isinstance(c, dict):
            _default_container(c)


def validate_pod_spec(spec: Any, path: str) -> list[tuple[str, str]]:
    if not isinstance(spec, dict):
        return [(path, "Required value")]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [(f"{path}.containers", "Required value")]
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, c in enumerate(containers):
        where = f"{path}.containers[{i}]"
        if not isinstance(c, dict):
            problems.append((where, "Invalid value: must be an object"))
            continue
        name = c.get("name")
        if not isinstance(name, str) or not name:
            problems.append((f"{where}.name", "Required value"))
        elif not DNS_LABEL.match(name) or len(name) > 63:
            problems.append((f"{where}.name", f'Invalid value: "{name}": must be a DNS-1123 label'))
        elif name in seen:
            problems.append((f"{where}.name", f'Duplicate value: "{name}"'))
        else:
            seen.add(name)
        if not c.get("image"):
            problems.append((f"{where}.image", "Required value"))
        for j, port in enumerate(c.get("ports") or []):
            number = port.get("containerPort") if isinstance(port, dict) else None
            if not isinstance(number, int) or not 0 < number < 65536:
                problems.append(
                    (f"{where}.ports[{j}].containerPort", "Invalid value: must be between 1 and 65535")
                )
    return problems


# -- pods -----------------------------------------------------------------------------------------------


def _pod_ip(obj: Obj) -> str:
    digest = hashlib.sha256(f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}".encode())
    return POD_IP_BASE + str(2 + digest.digest()[0] % 250)


def pod_running_status(obj: Obj, node_ip: str, now: str) -> Obj:
    """The status a kubelet reports once every container has started and is ready."""
    containers = obj["spec"]["containers"]
    conditions = [
        {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
        for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
    ]
    statuses = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": f"docker.io/library/{c['image']}@sha256:"
            + hashlib.sha256(c["image"].encode()).hexdigest(),
            "containerID": "containerd://"
            + hashlib.sha256(f"{obj['metadata']['name']}/{c['name']}".encode()).hexdigest(),
            "ready": True,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": now}},
            "lastState": {},
        }
        for c in containers
    ]
    ip = _pod_ip(obj)
    return {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": node_ip,
        "hostIPs": [{"ip": node_ip}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": now,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    }


def _default_pod(obj: Obj) -> None:
    default_pod_spec(obj.setdefault("spec", {}))


def _validate_pod(obj: Obj) -> list[tuple[str, str]]:
    return validate_pod_spec(obj.get("spec"), "spec")


MUTABLE_POD_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds")


def _validate_pod_update(old: Obj, new: Obj) -> list[tuple[str, str]]:
    """Only container images (and a few scheduling fields) of a pod may change, as on a real cluster."""

    def frozen(spec: Obj) -> Obj:
        spec = {k: v for k, v in spec.items() if k not in MUTABLE_POD_SPEC}
        for key in ("containers", "initContainers"):
            if isinstance(spec.get(key), list):
                spec[key] = [{**c, "image": None} for c in spec[key] if isinstance(c, dict)]
        return spec

    if frozen(old.get("spec") or {}) != frozen(new.get("spec") or {}):
        return [
            (
                "spec",
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
                "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
                "(only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`",
            )
        ]
    return []


def _pod_ready(obj: Obj, _: dt.datetime) -> str:
    statuses = obj.get("status", {}).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{len(obj.get('spec', {}).get('containers') or [])}"


def _pod_status(obj: Obj, _: dt.datetime) -> str:
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status", {})
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state", {})
        for key in ("waiting", "terminated"):
            if state.get(key, {}).get("reason"):
                return str(state[key]["reason"])
    return str(status.get("reason") or status.get("phase") or "Pending")


def _pod_restarts(obj: Obj, _: dt.datetime) -> int:
    return sum(int(s.get("restartCount", 0)) for s in obj.get("status", {}).get("containerStatuses") or [])


PODS = ResourceType(
    "",
    "v1",
    "pods",
    "pod",
    "Pod",
    namespaced=True,
    short_names=("po",),
    default=_default_pod,
    validate=_validate_pod,
    validate_update=_validate_pod_update,
    subresources=("attach", "exec", "log", "portforward", "status"),
    categories=("all",),
    generation=True,
    columns=(
        NAME,
        Column(
            "Ready",
            _pod_ready,
            description="The aggregate readiness state of this pod for accepting traffic.",
        ),
        Column("Status", _pod_status, description="The aggregate status of the containers in this pod."),
        Column(
            "Restarts",
            _pod_restarts,
            type="string",
            description="The number of times the containers restarted.",
        ),
        AGE,
        Column("IP", lambda o, _: o.get("status", {}).get("podIP") or "<none>", priority=1),
        Column("Node", lambda o, _: o.get("spec", {}).get("nodeName") or "<none>", priority=1),
        Column("Nominated Node", lambda o, _: "<none>", priority=1),
        Column("Readiness Gates", lambda o, _: "<none>", priority=1),
    ),
)


# -- deployments ----------------------------------------------------------------------------------------


def _template_hash(template: Any) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join("bcdfghjklmnpqrstvwxz2456789"[int(c, 16)] for c in digest[:10])


def _default_deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        strategy.setdefault("type", "RollingUpdate")
        strategy.setdefault("rollingUpdate", {"maxUnavailable": "25%", "maxSurge": "25%"})
    template = spec.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {})
        default_pod_spec(template.setdefault("spec", {}))
    # The deployment controller: every replica of the current template is up and available.
    replicas = int(spec.get("replicas") or 0)
    now = obj["metadata"].get("creationTimestamp") or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    obj["status"] = {
        "observedGeneration": obj["metadata"].get("generation", 1),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{obj["metadata"].get("name")}-{_template_hash(template)}" '
                "has successfully progressed.",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
        ],
    }
    if not replicas:
        for key in ("readyReplicas", "availableReplicas", "updatedReplicas", "replicas"):
            obj["status"].pop(key)


def _validate_deployment(obj: Obj) -> list[tuple[str, str]]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "Required value")]
    problems: list[tuple[str, str]] = []
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        problems.append(("spec.replicas", "Invalid value: must be greater than or equal to 0"))
    selector = spec.get("selector")
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    match = (selector or {}).get("matchLabels") if isinstance(selector, dict) else None
    if not selector:
        problems.append(("spec.selector", "Required value"))
    elif isinstance(match, dict) and any(labels.get(k) != v for k, v in match.items()):
        problems.append(
            ("spec.template.metadata.labels", "Invalid value: `selector` does not match template `labels`")
        )
    problems += validate_pod_spec((spec.get("template") or {}).get("spec"), "spec.template.spec")
    return problems


def _validate_deployment_update(old: Obj, new: Obj) -> list[tuple[str, str]]:
    if (old.get("spec") or {}).get("selector") != (new.get("spec") or {}).get("selector"):
        return [("spec.selector", "Invalid value: field is immutable")]
    return []


def _images(obj: Obj) -> list[Obj]:
    return ((obj.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []


def _selector(obj: Obj, _: dt.datetime) -> str:
    match = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(match.items())) or "<none>"


DEPLOYMENTS = ResourceType(
    "apps",
    "v1",
    "deployments",
    "deployment",
    "Deployment",
    namespaced=True,
    short_names=("deploy",),
    default=_default_deployment,
    validate=_validate_deployment,
    validate_update=_validate_deployment_update,
    subresources=("scale", "status"),
    categories=("all",),
    generation=True,
    columns=(
        NAME,
        Column(
            "Ready",
            lambda o, _: (
                f"{o.get('status', {}).get('readyReplicas', 0)}/{o.get('spec', {}).get('replicas', 0)}"
            ),
        ),
        Column("Up-to-date", lambda o, _: o.get("status", {}).get("updatedReplicas", 0), type="integer"),
        Column("Available", lambda o, _: o.get("status", {}).get("availableReplicas", 0), type="integer"),
        AGE,
        Column("Containers", lambda o, _: ",".join(c.get("name", "") for c in _images(o)), priority=1),
        Column("Images", lambda o, _: ",".join(c.get("image", "") for c in _images(o)), priority=1),
        Column("Selector", _selector, priority=1),
    ),
)


def scale_of(obj: Obj) -> Obj:
    """The autoscaling/v1 Scale view of a deployment (`kubectl scale`)."""
    meta = obj["metadata"]
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": obj["spec"].get("replicas", 0)},
        "status": {
            "replicas": obj.get("status", {}).get("replicas", 0),
            "selector": _selector(obj, dt.datetime.now(dt.UTC)),
        },
    }
