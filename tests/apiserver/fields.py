"""Server-side field validation (`?fieldValidation=Strict|Warn|Ignore`) against the known fields.

The apiserver drops fields its types do not have; with `Strict` (what kubectl
sends by default) it refuses them with a BadRequest, with `Warn` (the default)
it answers with a `Warning` header per field. The stand-in knows the complete
field list of the levels described in `SHAPES` and checks only those; a level
given as ANY (pod specs, statuses, label maps) is accepted as sent.
"""

from __future__ import annotations

from typing import Any

ANY = None
Shape = dict[str, Any] | list[Any] | None  # a list: a list of objects of the one shape it holds

_META_FIELDS = (
    "name generateName namespace selfLink uid resourceVersion generation creationTimestamp "
    "deletionTimestamp deletionGracePeriodSeconds labels annotations ownerReferences finalizers managedFields"
)
_SERVICE_SPEC_FIELDS = (
    "ports selector clusterIP clusterIPs type externalIPs sessionAffinity loadBalancerIP "
    "loadBalancerSourceRanges externalName externalTrafficPolicy healthCheckNodePort "
    "publishNotReadyAddresses sessionAffinityConfig ipFamilies ipFamilyPolicy allocateLoadBalancerNodePorts "
    "loadBalancerClass "
    "internalTrafficPolicy trafficDistribution"
)
_SERVICE_PORT = dict.fromkeys(["name", "protocol", "appProtocol", "port", "targetPort", "nodePort"], ANY)
_RULE = dict.fromkeys(["verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"], ANY)
_SUBJECT = dict.fromkeys(["kind", "apiGroup", "name", "namespace"], ANY)
_ROLE_REF = dict.fromkeys(["apiGroup", "kind", "name"], ANY)
_DEPLOYMENT_SPEC_FIELDS = (
    "replicas selector strategy minReadySeconds revisionHistoryLimit paused progressDeadlineSeconds"
)
OBJECT_META: dict[str, Any] = dict.fromkeys(_META_FIELDS.split(), ANY)


def _top(**fields: Shape) -> dict[str, Any]:
    return {"apiVersion": ANY, "kind": ANY, "metadata": OBJECT_META, **fields}


SHAPES: dict[str, dict[str, Any]] = {
    "ConfigMap": _top(data=ANY, binaryData=ANY, immutable=ANY),
    "Secret": _top(data=ANY, stringData=ANY, type=ANY, immutable=ANY),
    "Namespace": _top(spec=ANY, status=ANY),
    "Node": _top(spec=ANY, status=ANY),
    "Pod": _top(spec=ANY, status=ANY),
    "ServiceAccount": _top(secrets=ANY, imagePullSecrets=ANY, automountServiceAccountToken=ANY),
    "Service": _top(
        spec=dict.fromkeys(_SERVICE_SPEC_FIELDS.split(), ANY) | {"ports": [_SERVICE_PORT]}, status=ANY
    ),
    "Role": _top(rules=[_RULE]),
    "ClusterRole": _top(rules=[_RULE], aggregationRule=ANY),
    "RoleBinding": _top(subjects=[_SUBJECT], roleRef=_ROLE_REF),
    "ClusterRoleBinding": _top(subjects=[_SUBJECT], roleRef=_ROLE_REF),
    "Deployment": _top(
        spec=dict.fromkeys(_DEPLOYMENT_SPEC_FIELDS.split(), ANY)
        | {"template": {"metadata": OBJECT_META, "spec": ANY}},
        status=ANY,
    ),
}


def unknown_fields(kind: str, obj: Any) -> list[str]:
    """Dotted paths of the fields `obj` has that its type does not (directive keys `$...` excepted)."""
    found: list[str] = []

    def walk(node: Any, shape: Shape, path: str) -> None:
        if isinstance(shape, list):  # a list of objects: each item has the one shape
            for i, item in enumerate(node if isinstance(node, list) else []):
                walk(item, shape[0], f"{path}[{i}]")
            return
        if shape is ANY or not isinstance(node, dict):
            return
        for key, value in node.items():
            if key.startswith("$"):
                continue
            where = f"{path}.{key}" if path else key
            if key not in shape:
                found.append(where)
            else:
                walk(value, shape[key], where)

    walk(obj, SHAPES.get(kind), "")
    return found


def prune(obj: Any, paths: list[str]) -> None:
    for path in paths:
        *parents, last = path.split(".")
        node = obj
        for part in parents:
            name, _, index = part.partition("[")
            node = node.get(name, {}) if isinstance(node, dict) else {}
            if index:  # "ports[0]"
                items = node if isinstance(node, list) else []
                node = items[int(index[:-1])] if int(index[:-1]) < len(items) else {}
        if isinstance(node, dict):
            node.pop(last, None)
