"""Request bodies in `application/vnd.kubernetes.protobuf`, decoded to the JSON form the store keeps.

kubectl's typed clients (`create` of configmaps, secrets, namespaces, deployments,
serviceaccounts, services and the RBAC kinds, `run`) send protobuf, and so does helm's
release storage (its Secrets, and the DeleteOptions of a DELETE). A body is the magic `k8s\\x00` then a
`runtime.Unknown` (1: typeMeta {1: apiVersion, 2: kind}, 2: raw, 3:
contentEncoding, 4: contentType) whose `raw` is the object's own message.

Messages are described below by field number (from k8s.io/api's
generated.proto) for the types served; a field this table does not know is a
400 naming it, never silently dropped. As with the Go types' `omitempty`,
empty strings, zero numbers and false booleans decode to absent fields, except
for pointer fields (marked `*`), where a sent zero means zero.

Field spec: "jsonName:type" with type one of s (string), b (bool), i (integer),
bytes (base64 in JSON), time, quantity, intstr, a message name; prefixed by
`[]` for repeated, `{}` for a map of strings to that type, `*` for a pointer;
`~` before the json name embeds the message's fields in the parent (Go inline).
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from tests.apiserver import errors

MAGIC = b"k8s\x00"
MEDIA = "application/vnd.kubernetes.protobuf"

SCHEMAS: dict[str, dict[int, str]] = {
    "Unknown": {1: "typeMeta:TypeMeta", 2: "raw:bytes", 3: "contentEncoding:s", 4: "contentType:s"},
    "TypeMeta": {1: "apiVersion:s", 2: "kind:s"},
    "ObjectMeta": {
        1: "name:s",
        2: "generateName:s",
        3: "namespace:s",
        4: "selfLink:s",
        5: "uid:s",
        6: "resourceVersion:s",
        7: "generation:i",
        8: "creationTimestamp:time",
        9: "deletionTimestamp:time",
        10: "deletionGracePeriodSeconds:*i",
        11: "labels:{}s",
        12: "annotations:{}s",
        13: "ownerReferences:[]OwnerReference",
        14: "finalizers:[]s",
    },
    "OwnerReference": {
        1: "kind:s",
        3: "name:s",
        4: "uid:s",
        5: "apiVersion:s",
        6: "controller:*b",
        7: "blockOwnerDeletion:*b",
    },
    "ConfigMap": {1: "metadata:ObjectMeta", 2: "data:{}s", 3: "binaryData:{}bytes", 4: "immutable:*b"},
    "Secret": {
        1: "metadata:ObjectMeta",
        2: "data:{}bytes",
        3: "type:s",
        4: "stringData:{}s",
        5: "immutable:*b",
    },
    "Namespace": {1: "metadata:ObjectMeta", 2: "spec:NamespaceSpec", 3: "status:NamespaceStatus"},
    "NamespaceSpec": {1: "finalizers:[]s"},
    "NamespaceStatus": {1: "phase:s"},
    "Pod": {1: "metadata:ObjectMeta", 2: "spec:PodSpec", 3: "status:PodStatus"},
    "PodStatus": {1: "phase:s"},
    "PodSpec": {
        1: "volumes:[]Volume",
        2: "containers:[]Container",
        3: "restartPolicy:s",
        4: "terminationGracePeriodSeconds:*i",
        5: "activeDeadlineSeconds:*i",
        6: "dnsPolicy:s",
        7: "nodeSelector:{}s",
        8: "serviceAccountName:s",
        9: "serviceAccount:s",
        10: "nodeName:s",
        11: "hostNetwork:b",
        12: "hostPID:b",
        13: "hostIPC:b",
        14: "securityContext:PodSecurityContext",
        15: "imagePullSecrets:[]LocalObjectReference",
        16: "hostname:s",
        17: "subdomain:s",
        19: "schedulerName:s",
        20: "initContainers:[]Container",
        21: "automountServiceAccountToken:*b",
        24: "priorityClassName:s",
        25: "priority:*i",
        27: "shareProcessNamespace:*b",
        30: "enableServiceLinks:*b",
        31: "preemptionPolicy:*s",
    },
    "PodSecurityContext": {},  # only the empty one kubectl sends
    "LocalObjectReference": {1: "name:s"},
    "Container": {
        1: "name:s",
        2: "image:s",
        3: "command:[]s",
        4: "args:[]s",
        5: "workingDir:s",
        6: "ports:[]ContainerPort",
        7: "env:[]EnvVar",
        8: "resources:ResourceRequirements",
        9: "volumeMounts:[]VolumeMount",
        13: "terminationMessagePath:s",
        14: "imagePullPolicy:s",
        16: "stdin:b",
        17: "stdinOnce:b",
        18: "tty:b",
        20: "terminationMessagePolicy:s",
    },
    "ContainerPort": {1: "name:s", 2: "hostPort:i", 3: "containerPort:i", 4: "protocol:s", 5: "hostIP:s"},
    "EnvVar": {1: "name:s", 2: "value:s"},
    "ResourceRequirements": {1: "limits:{}quantity", 2: "requests:{}quantity"},
    "VolumeMount": {1: "name:s", 2: "readOnly:b", 3: "mountPath:s", 4: "subPath:s"},
    "Volume": {1: "name:s", 2: "~volumeSource:VolumeSource"},
    "VolumeSource": {
        2: "emptyDir:EmptyDirVolumeSource",
        6: "secret:SecretVolumeSource",
        19: "configMap:ConfigMapVolumeSource",
    },
    "EmptyDirVolumeSource": {1: "medium:s", 2: "sizeLimit:quantity"},
    "SecretVolumeSource": {1: "secretName:s", 3: "defaultMode:*i", 4: "optional:*b"},
    "ConfigMapVolumeSource": {
        1: "~localObjectReference:LocalObjectReference",
        3: "defaultMode:*i",
        4: "optional:*b",
    },
    "Deployment": {1: "metadata:ObjectMeta", 2: "spec:DeploymentSpec", 3: "status:DeploymentStatus"},
    "DeploymentSpec": {
        1: "replicas:*i",
        2: "selector:LabelSelector",
        3: "template:PodTemplateSpec",
        4: "strategy:DeploymentStrategy",
        5: "minReadySeconds:i",
        6: "revisionHistoryLimit:*i",
        7: "paused:b",
        9: "progressDeadlineSeconds:*i",
    },
    "DeploymentStatus": {
        1: "observedGeneration:i",
        2: "replicas:i",
        3: "updatedReplicas:i",
        4: "availableReplicas:i",
        5: "unavailableReplicas:i",
        6: "conditions:[]DeploymentCondition",
        7: "readyReplicas:i",
        8: "collisionCount:*i",
        9: "terminatingReplicas:*i",
    },
    "DeploymentCondition": {
        1: "type:s",
        2: "status:s",
        4: "reason:s",
        5: "message:s",
        6: "lastUpdateTime:time",
        7: "lastTransitionTime:time",
    },
    "LabelSelector": {1: "matchLabels:{}s", 2: "matchExpressions:[]LabelSelectorRequirement"},
    "LabelSelectorRequirement": {1: "key:s", 2: "operator:s", 3: "values:[]s"},
    "PodTemplateSpec": {1: "metadata:ObjectMeta", 2: "spec:PodSpec"},
    "DeploymentStrategy": {1: "type:s", 2: "rollingUpdate:RollingUpdateDeployment"},
    "RollingUpdateDeployment": {1: "maxUnavailable:intstr", 2: "maxSurge:intstr"},
    "ServiceAccount": {
        1: "metadata:ObjectMeta",
        2: "secrets:[]ObjectReference",
        3: "imagePullSecrets:[]LocalObjectReference",
        4: "automountServiceAccountToken:*b",
    },
    "ObjectReference": {
        1: "kind:s",
        2: "namespace:s",
        3: "name:s",
        4: "uid:s",
        5: "apiVersion:s",
        6: "resourceVersion:s",
        7: "fieldPath:s",
    },
    "Service": {1: "metadata:ObjectMeta", 2: "spec:ServiceSpec", 3: "status:ServiceStatus"},
    "ServiceSpec": {
        1: "ports:[]ServicePort",
        2: "selector:{}s",
        3: "clusterIP:s",
        4: "type:s",
        5: "externalIPs:[]s",
        7: "sessionAffinity:s",
        8: "loadBalancerIP:s",
        9: "loadBalancerSourceRanges:[]s",
        10: "externalName:s",
        11: "externalTrafficPolicy:s",
        12: "healthCheckNodePort:i",
        13: "publishNotReadyAddresses:b",
        14: "sessionAffinityConfig:SessionAffinityConfig",
        17: "ipFamilyPolicy:*s",
        18: "clusterIPs:[]s",
        19: "ipFamilies:[]s",
        20: "allocateLoadBalancerNodePorts:*b",
        21: "loadBalancerClass:*s",
        22: "internalTrafficPolicy:*s",
        23: "trafficDistribution:*s",
    },
    "ServicePort": {
        1: "name:s",
        2: "protocol:s",
        3: "port:i",
        4: "targetPort:intstr",
        5: "nodePort:i",
        6: "appProtocol:*s",
    },
    "SessionAffinityConfig": {1: "clientIP:ClientIPConfig"},
    "ClientIPConfig": {1: "timeoutSeconds:*i"},
    "ServiceStatus": {1: "loadBalancer:LoadBalancerStatus"},
    "LoadBalancerStatus": {1: "ingress:[]LoadBalancerIngress"},
    "LoadBalancerIngress": {1: "ip:s", 2: "hostname:s"},
    # rbac.authorization.k8s.io/v1 (k8s.io/api rbac/v1/generated.proto)
    "Role": {1: "metadata:ObjectMeta", 2: "rules:[]PolicyRule"},
    "ClusterRole": {1: "metadata:ObjectMeta", 2: "rules:[]PolicyRule", 3: "aggregationRule:AggregationRule"},
    "PolicyRule": {
        1: "verbs:[]s",
        2: "apiGroups:[]s",
        3: "resources:[]s",
        4: "resourceNames:[]s",
        5: "nonResourceURLs:[]s",
    },
    "AggregationRule": {1: "clusterRoleSelectors:[]LabelSelector"},
    "RoleBinding": {1: "metadata:ObjectMeta", 2: "subjects:[]Subject", 3: "roleRef:RoleRef"},
    "ClusterRoleBinding": {1: "metadata:ObjectMeta", 2: "subjects:[]Subject", 3: "roleRef:RoleRef"},
    "Subject": {1: "kind:s", 2: "apiGroup:s", 3: "name:s", 4: "namespace:s"},
    "RoleRef": {1: "apiGroup:s", 2: "kind:s", 3: "name:s"},
    "IntOrString": {1: "type:i", 2: "intVal:i", 3: "strVal:s"},
    # meta/v1 DeleteOptions: what typed clients (helm's release storage among them) send with a DELETE.
    "DeleteOptions": {
        1: "gracePeriodSeconds:*i",
        2: "preconditions:Preconditions",
        3: "orphanDependents:*b",
        4: "propagationPolicy:*s",
        5: "dryRun:[]s",
        6: "ignoreStoreReadErrorWithClusterBreakingPotential:*b",
    },
    "Preconditions": {1: "uid:*s", 2: "resourceVersion:*s"},
    "Time": {1: "seconds:i", 2: "nanos:i"},
    "Quantity": {1: "string:s"},
}
KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "Namespace"),
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("v1", "ServiceAccount"),
    ("v1", "Service"),
    *(
        ("rbac.authorization.k8s.io/v1", k)
        for k in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
    ),
    ("v1", "DeleteOptions"),
    ("meta.k8s.io/v1", "DeleteOptions"),
}


class DecodeError(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise DecodeError("truncated varint")
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def fields(data: bytes) -> list[tuple[int, int, Any]]:
    """The (number, wire type, value) triples of one message, in order."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise DecodeError("truncated length-delimited field")
            value, pos = data[pos : pos + size], pos + size
        elif wire == 1:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _scalar(kind: str, wire: int, value: Any, where: str) -> Any:
    if kind in ("s", "bytes", "time", "quantity", "intstr") or kind in SCHEMAS:
        if wire != 2:
            raise DecodeError(f"{where}: expected a length-delimited field")
        if kind == "s":
            return value.decode()
        if kind == "bytes":
            return base64.b64encode(value).decode()
        if kind == "quantity":
            return decode(value, "Quantity").get("string", "")
        if kind == "time":
            t = decode(value, "Time")
            if not t:
                return None
            when = dt.datetime.fromtimestamp(t.get("seconds", 0), dt.UTC)
            return when.strftime("%Y-%m-%dT%H:%M:%SZ")
        if kind == "intstr":
            v = decode(value, "IntOrString")
            return v.get("strVal", "") if v.get("type") == 1 else v.get("intVal", 0)
        return decode(value, kind, where)
    if wire != 0:
        raise DecodeError(f"{where}: expected a varint")
    return bool(value) if kind == "b" else _signed(value)


def _empty(value: Any) -> bool:
    return (
        value is None or value is False or value == "" or value == {} or (type(value) is int and value == 0)
    )


def decode(data: bytes, message: str, where: str = "") -> dict[str, Any]:
    schema = SCHEMAS[message]
    out: dict[str, Any] = {}
    for number, wire, value in fields(data):
        spec = schema.get(number)
        if spec is None:
            raise DecodeError(
                f"field {number} of {message} ({where or 'top level'}) is not known to the stand-in"
            )
        name, kind = spec.split(":", 1)
        path = f"{where}.{name.lstrip('~')}" if where else name.lstrip("~")
        pointer = kind.startswith("*")
        kind = kind.lstrip("*")
        if kind.startswith("[]"):
            out.setdefault(name, []).append(_scalar(kind[2:], wire, value, path))
        elif kind.startswith("{}"):
            entry = {n: v for n, _, v in fields(value)}
            key = entry.get(1, b"").decode()
            out.setdefault(name, {})[key] = _scalar(
                kind[2:], 2 if kind[2:] != "b" else 0, entry.get(2, b""), path
            )
        elif name.startswith("~"):
            out.update(_scalar(kind, wire, value, path))
        else:
            decoded = _scalar(kind, wire, value, path)
            if pointer or not _empty(decoded):
                out[name] = decoded
            else:
                out.pop(name, None)
    return out


def decode_body(body: bytes) -> dict[str, Any]:
    """A protobuf request body as the JSON object it stands for (400 if it cannot be read)."""
    if not body.startswith(MAGIC):
        raise errors.bad_request("the protobuf body does not start with the Kubernetes magic prefix")
    try:
        unknown: dict[int, Any] = {n: v for n, _, v in fields(body[len(MAGIC) :])}
        type_meta = decode(unknown.get(1, b""), "TypeMeta")
        api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
        if (api_version, kind) not in KINDS:
            raise errors.unsupported_media_type(f"{MEDIA} for {api_version}/{kind}")
        if unknown.get(3):
            raise DecodeError(f"content encoding {unknown[3]!r} is not supported")
        obj = decode(unknown.get(2, b""), kind)
    except DecodeError as exc:
        raise errors.bad_request(f"the protobuf body could not be decoded: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}
