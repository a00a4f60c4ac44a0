"""From a flux configuration to Flux v2 objects, and from their conditions to compliance: no I/O.

`manifests` turns one configuration the hub hands out (REFERENCE section 7) into
what Arc's fluxconfig-agent creates: one source object (`GitRepository`,
`OCIRepository` or `Bucket`) named like the configuration, one `Kustomization`
per entry named `<configuration>-<kustomization>`, and a Secret `<configuration>-auth`
with the protected settings under the keys Flux reads. Every object carries the
owner labels, so the agent deletes what a removed configuration owned and nothing
else. `compliance` reads the objects' `Ready` conditions back into the report the
hub stores. Kept apart from the loop so both are tested without a cluster.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

SOURCE_GROUP, KUSTOMIZE_GROUP = "source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"
# kind -> (group, version, plural): the Flux 2.x APIs this agent writes.
KINDS: dict[str, tuple[str, str, str]] = {
    "GitRepository": (SOURCE_GROUP, "v1", "gitrepositories"),
    "OCIRepository": (SOURCE_GROUP, "v1beta2", "ocirepositories"),
    "Bucket": (SOURCE_GROUP, "v1beta2", "buckets"),
    "Kustomization": (KUSTOMIZE_GROUP, "v1", "kustomizations"),
}
SOURCE_FIELD = {"GitRepository": "gitRepository", "OCIRepository": "ociRepository", "Bucket": "bucket"}
OWNER = "kubearc.io/flux-configuration"  # value: the configuration's name
OWNER_NAMESPACE = "kubearc.io/flux-configuration-namespace"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubearc-config-agent"}
# Protected setting (and plain field) -> the Secret key Flux reads it from.
SECRET_KEYS = {
    "sshPrivateKey": "identity",
    "httpsKey": "password",
    "secretKey": "secretkey",
    "tlsClientCertificate": "tls.crt",
    "tlsPrivateKey": "tls.key",
}


@dataclass(frozen=True)
class Desired:
    """What one configuration wants in the cluster: the objects, the Secret (if any), in order."""

    name: str
    namespace: str
    generation: int
    suspend: bool
    objects: list[Obj]  # the source first, then the kustomizations
    secret: Obj | None


def labels(name: str, namespace: str) -> dict[str, str]:
    return {**MANAGED_BY, OWNER: name, OWNER_NAMESPACE: namespace}


def _meta(name: str, config: Obj) -> Obj:
    return {
        "name": name,
        "namespace": config["namespace"],
        "labels": labels(config["name"], config["namespace"]),
    }


def _seconds(value: int | None) -> str | None:
    return f"{value}s" if value else None


def _clean(doc: Obj) -> Obj:
    return {k: v for k, v in doc.items() if v not in (None, {}, [])}


def _secret(config: Obj, source: Obj) -> Obj | None:
    data: dict[str, str] = {}
    for key, value in (config.get("configurationProtectedSettings") or {}).items():
        if key in SECRET_KEYS and value:
            data[SECRET_KEYS[key]] = value  # already base64, as Secret data is
    if source.get("sshKnownHosts"):
        data["known_hosts"] = source["sshKnownHosts"]
    if source.get("httpsCACert"):
        data["ca.crt"] = source["httpsCACert"]
    for field, key in (("httpsUser", "username"), ("accessKey", "accesskey")):
        if source.get(field):
            data[key] = base64.b64encode(source[field].encode()).decode()
    if not data:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(f"{config['name']}-auth", config),
        "data": data,
    }


def _source(config: Obj, kind: str, source: Obj, secret: Obj | None) -> Obj:
    group, version, _ = KINDS[kind]
    spec: Obj = {
        "url": source["url"],
        "interval": _seconds(source.get("syncIntervalInSeconds")),
        "timeout": _seconds(source.get("timeoutInSeconds")),
        "suspend": bool(config.get("suspend")),
    }
    auth = secret["metadata"]["name"] if secret else source.get("localAuthRef")
    if auth:
        spec["secretRef"] = {"name": auth}
    if kind == "GitRepository":
        spec["ref"] = dict(source["repositoryRef"])
    elif kind == "OCIRepository":
        spec["ref"] = dict(source["repositoryRef"])
        spec["insecure"] = bool(source.get("insecure"))
    else:
        spec["bucketName"] = source["bucketName"]
        spec["endpoint"] = source["url"].split("://", 1)[-1]
        spec["insecure"] = bool(source.get("insecure")) or source["url"].startswith("http://")
        del spec["url"]
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": _meta(config["name"], config),
        "spec": _clean(spec) | {"suspend": spec["suspend"]},
    }


def _kustomization(config: Obj, kind: str, name: str, k: Obj) -> Obj:
    group, version, _ = KINDS["Kustomization"]
    spec: Obj = {
        "sourceRef": {"kind": kind, "name": config["name"]},
        "path": k.get("path") or "./",
        "interval": _seconds(k.get("syncIntervalInSeconds")),
        "timeout": _seconds(k.get("timeoutInSeconds")),
        "retryInterval": _seconds(k.get("retryIntervalInSeconds")),
        "prune": bool(k.get("prune")),
        "force": bool(k.get("force")),
        "wait": bool(k.get("wait", True)),
        "suspend": bool(config.get("suspend")),
        "dependsOn": [{"name": f"{config['name']}-{d}"} for d in k.get("dependsOn") or []],
    }
    if config.get("scope") == "namespace":
        spec["targetNamespace"] = config["namespace"]
    post = k.get("postBuild") or {}
    if post.get("substitute") or post.get("substituteFrom"):
        spec["postBuild"] = _clean(
            {"substitute": post.get("substitute"), "substituteFrom": post.get("substituteFrom")}
        )
    keep = {"prune", "force", "wait", "suspend"}
    return {
        "apiVersion": f"{group}/{version}",
        "kind": "Kustomization",
        "metadata": _meta(f"{config['name']}-{name}", config),
        "spec": {k2: v for k2, v in spec.items() if k2 in keep or v not in (None, {}, [])},
    }


def manifests(config: Obj) -> Desired:
    """The Flux objects and the Secret one configuration (as the hub hands it out) stands for."""
    kind = config.get("sourceKind", "GitRepository")
    source = config[SOURCE_FIELD[kind]]
    secret = _secret(config, source)
    objects = [_source(config, kind, source, secret)]
    for name, k in sorted((config.get("kustomizations") or {}).items()):
        objects.append(_kustomization(config, kind, name, k))
    return Desired(
        config["name"],
        config["namespace"],
        int(config["generation"]),
        bool(config.get("suspend")),
        objects,
        secret,
    )


def _ready(obj: Obj) -> Obj | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition
    return None


def object_state(obj: Obj, suspended: bool) -> str:
    """One object's compliance: its Ready condition, if it speaks of the object's current spec."""
    if suspended:
        return "Suspended"
    ready = _ready(obj)
    status = obj.get("status") or {}
    current = status.get("observedGeneration", 0) >= (obj.get("metadata") or {}).get("generation", 1)
    if ready is None or not current:
        return "Pending"
    if ready.get("status") == "True":
        return "Compliant"
    if ready.get("status") == "False" and ready.get("reason") not in ("Progressing", "DependencyNotReady"):
        return "Non-Compliant"
    return "Pending"


def compliance(desired: Desired, live: list[Obj | None]) -> Obj:
    """The report for the hub from the live objects (`None` where one is missing), in `objects` order."""
    statuses, states, errors = [], [], []
    for want, have in zip(desired.objects, live, strict=True):
        obj = have or {"metadata": want["metadata"]}
        state = object_state(obj, desired.suspend) if have is not None else "Pending"
        states.append(state)
        conditions = [
            _clean({k: c.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")})
            for c in (obj.get("status") or {}).get("conditions") or []
        ]
        statuses.append(
            {
                "kind": want["kind"],
                "name": want["metadata"]["name"],
                "namespace": want["metadata"]["namespace"],
                "complianceState": state,
                "appliedBy": {"name": desired.name, "namespace": desired.namespace},
                "statusConditions": conditions,
            }
        )
        ready = _ready(obj)
        if state == "Non-Compliant" and ready is not None:
            errors.append(
                f"{want['kind']} {want['metadata']['name']}: {ready.get('message') or ready.get('reason')}"
            )
    if desired.suspend:
        overall = "Suspended"
    elif "Non-Compliant" in states:
        overall = "Non-Compliant"
    elif states and all(s == "Compliant" for s in states):
        overall = "Compliant"
    else:
        overall = "Pending"
    report: Obj = {
        "observedGeneration": desired.generation,
        "provisioningState": "Succeeded",
        "complianceState": overall,
        "statuses": statuses,
        "errorMessage": "; ".join(errors) or None,
    }
    artifact = ((live[0] or {}).get("status") or {}).get("artifact") or {}
    if artifact.get("revision"):
        report["sourceSyncedCommitId"] = artifact["revision"]
        report["sourceUpdatedAt"] = artifact.get("lastUpdateTime")
    return report


def not_installed(desired: Desired, missing: list[str]) -> Obj:
    """The report while Flux's CRDs are missing: Non-Compliant, saying what to install."""
    return {
        "observedGeneration": desired.generation,
        "provisioningState": "Failed",
        "complianceState": "Non-Compliant",
        "statuses": [],
        "errorMessage": (
            f"the flux extension is not installed on the cluster (missing {', '.join(missing)}): "
            "install it with `kubearc k8s-extension create --extension-type flux ...`; "
            "the configuration is applied once it is"
        ),
    }
