"""OpenAPI v3 documents, as much as kubectl reads from them.

`kubectl apply`/`create -f` with validation on (the default) first asks
`/openapi/v3` whether the PATCH operation of the object's group-version-kind
takes the `fieldValidation` query parameter; if it does, kubectl leaves
validation to the server (`fields.py`) instead of validating client-side. So
each group-version document lists every resource's paths and operations with
their `x-kubernetes-group-version-kind` and query parameters, and a schema per
kind. The PATCH request bodies do not offer strategic merge patch, so kubectl
computes its apply patch from its compiled-in types (the same patch it would
send to a real cluster) rather than from these deliberately thin schemas.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.apiserver.resources import Registry, ResourceType

PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")


def _param(name: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": kind, "uniqueItems": True},
    }


WRITE_PARAMS = [
    _param("dryRun", "When present, indicates that modifications should not be persisted."),
    _param(
        "fieldManager", "fieldManager is a name associated with the actor or entity making these changes."
    ),
    _param(
        "fieldValidation", "Ignore, Warn (the default) or Strict handling of unknown or duplicate fields."
    ),
]


def gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def schema_name(rt: ResourceType) -> str:
    if rt.custom:  # a CRD's kinds are named by their reversed group, as the apiserver publishes them
        return f"{'.'.join(reversed(rt.group.split('.')))}.{rt.version}.{rt.kind}"
    package = f"core.{rt.version}" if not rt.group else f"{rt.group.split('.')[0]}.{rt.version}"
    return f"io.k8s.api.{package}.{rt.kind}"


def _operation(
    rt: ResourceType, action: str, params: list[dict[str, Any]], body: tuple[str, ...] = ()
) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema_name(rt)}"}
    op: dict[str, Any] = {
        "operationId": f"{action}{rt.kind}",
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    }
    if body:
        op["requestBody"] = {"content": {t: {"schema": ref} for t in body}, "required": True}
    return op


def gv_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in types:
        base = "/" + gv_path(group, version) + ("/namespaces/{namespace}" if rt.namespaced else "")
        collection, item = f"{base}/{rt.plural}", f"{base}/{rt.plural}/{{name}}"
        paths[collection] = {
            "get": _operation(rt, "list", []),
            "post": _operation(rt, "post", WRITE_PARAMS, ("application/json", "application/yaml")),
        }
        paths[item] = {
            "get": _operation(rt, "get", []),
            "put": _operation(rt, "put", WRITE_PARAMS, ("application/json", "application/yaml")),
            "patch": _operation(
                rt, "patch", [*WRITE_PARAMS, _param("force", "Force an apply.", "boolean")], PATCH_TYPES
            ),
            "delete": _operation(rt, "delete", [_param("dryRun", "Do not persist.")]),
        }
        schemas[schema_name(rt)] = {
            "type": "object",
            "description": f"{rt.kind} (apiserver stand-in: fields are checked server-side)",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": [{"group": rt.group, "version": rt.version, "kind": rt.kind}],
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _hash(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


def index(registry: Registry) -> dict[str, Any]:
    """`/openapi/v3`: each group-version's document by its server-relative URL (with a content hash)."""
    out: dict[str, Any] = {}
    versions = [("", "v1"), *((g, v) for g, vs in registry.groups().items() for v in vs)]
    for group, version in versions:
        doc = gv_document(registry, group, version)
        if doc is not None:
            path = gv_path(group, version)
            out[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(doc)}"}
    return {"paths": out}
