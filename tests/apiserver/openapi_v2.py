"""`/openapi/v2`: the Swagger 2.0 document, in JSON or in gnostic's protobuf (what client-go asks for).

Clients still read it where OpenAPI v3 has no answer. kubectl's (and helm's) manifest
validation does, for a kind whose group-version the v3 index does not list: it looks
the kind up here, finds no definition and leaves the object to the apiserver, so a
chart with a kind the server does not serve fails on "no matches for kind", as on a
real cluster, instead of on a 404 for this document. Like the v3 documents it is thin:
each kind's PATCH operation with its query parameters and group-version-kind, and a
definition per kind that accepts any value. The protobuf encoding follows gnostic's
`openapiv2/OpenAPIv2.proto` field numbers for the messages used here.
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.apiserver.openapi import WRITE_PARAMS, gv_path, schema_name
from tests.apiserver.resources import Registry, ResourceType

MEDIA_PROTOBUF = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"  # what clients ask for
RETURNED_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"  # kube-openapi answers this


def _gvk(rt: ResourceType) -> dict[str, str]:
    return {"group": rt.group, "kind": rt.kind, "version": rt.version}


def _operation(rt: ResourceType, action: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "operationId": f"{action}{rt.kind}",
        "consumes": ["*/*"],
        "parameters": [
            {
                "uniqueItems": True,
                "type": p["schema"]["type"],
                "description": p["description"],
                "name": p["name"],
                "in": "query",
            }
            for p in params
        ],
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(rt),
    }


def document(registry: Registry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    definitions: dict[str, Any] = {}
    force = {"name": "force", "description": "Force an apply.", "schema": {"type": "boolean"}}
    for rt in registry:
        base = "/" + gv_path(rt.group, rt.version) + ("/namespaces/{namespace}" if rt.namespaced else "")
        paths[f"{base}/{rt.plural}/{{name}}"] = {
            "get": _operation(rt, "get", []),
            "put": _operation(rt, "put", WRITE_PARAMS),
            "patch": _operation(rt, "patch", [*WRITE_PARAMS, force]),
            "delete": _operation(rt, "delete", []),
        }
        definitions[schema_name(rt)] = {
            "description": f"{rt.kind} (apiserver stand-in: fields are checked server-side)",
            "x-kubernetes-group-version-kind": [_gvk(rt)],
        }
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "definitions": definitions,
    }


# -- gnostic protobuf -----------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str | bool) -> bytes:
    if isinstance(payload, bool):
        return _varint(number << 3) + _varint(int(payload))
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _extensions(number: int, node: dict[str, Any]) -> bytes:
    """`x-...` keys as NamedAny {1: name, 2: Any {2: yaml}}."""
    return b"".join(
        _field(number, _field(1, k) + _field(2, _field(2, yaml.safe_dump(v, sort_keys=True))))
        for k, v in node.items()
        if k.startswith("x-")
    )


def _parameter(p: dict[str, Any]) -> bytes:
    query = (
        _field(2, p["in"])
        + _field(3, p["description"])
        + _field(4, p["name"])
        + _field(6, p["type"])
        + _field(20, p["uniqueItems"])
    )
    # ParametersItem {1: Parameter {2: NonBodyParameter {3: QueryParameterSubSchema}}}
    return _field(1, _field(2, _field(3, query)))


def _operation_pb(op: dict[str, Any]) -> bytes:
    responses = b"".join(
        _field(1, _field(1, code) + _field(2, _field(1, _field(1, r["description"]))))
        for code, r in op["responses"].items()
    )
    return (
        _field(5, op["operationId"])
        + b"".join(_field(7, c) for c in op["consumes"])
        + b"".join(_field(8, _parameter(p)) for p in op["parameters"])
        + _field(9, responses)
        + _extensions(13, op)
    )


PATH_ITEM_FIELDS = {"get": 2, "put": 3, "post": 4, "delete": 5, "patch": 8}


def encode(doc: dict[str, Any]) -> bytes:
    """The document as an `openapi.v2.Document` message."""
    info = _field(1, doc["info"]["title"]) + _field(2, doc["info"]["version"])
    paths = b"".join(
        _field(
            2,
            _field(1, path)
            + _field(2, b"".join(_field(PATH_ITEM_FIELDS[m], _operation_pb(op)) for m, op in item.items())),
        )
        for path, item in doc["paths"].items()
    )
    definitions = b"".join(
        _field(1, _field(1, name) + _field(2, _field(4, schema["description"]) + _extensions(31, schema)))
        for name, schema in doc["definitions"].items()
    )
    return _field(1, doc["swagger"]) + _field(2, info) + _field(8, paths) + _field(9, definitions)
