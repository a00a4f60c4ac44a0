"""Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for.

kubectl sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...` and
prints whatever columns come back, so the columns live with each resource type.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.apiserver.resources import AGE, NAME, Obj, ResourceType

TABLE_MEDIA = "application/json;as=Table;v=v1;g=meta.k8s.io"


def wants_table(accept: str) -> bool:
    for option in accept.split(","):
        params = {p.strip() for p in option.split(";")[1:]}
        if {"as=Table", "g=meta.k8s.io", "v=v1"} <= params:
            return True
    return False


def _row_object(obj: Obj, include: str) -> Obj | None:
    """`includeObject`: None, Metadata (a PartialObjectMetadata, the default) or the whole Object."""
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(
    rt: ResourceType,
    items: list[Obj],
    list_meta: dict[str, Any],
    now: dt.datetime,
    include: str = "Metadata",
) -> dict[str, Any]:
    columns = rt.columns or (NAME, AGE)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {k: v for k, v in list_meta.items() if k in ("resourceVersion", "continue")},
        "columnDefinitions": [
            {
                "name": c.name,
                "type": c.type,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            }
            for c in columns
        ],
        "rows": [
            {
                "cells": [c.cell(obj, now) for c in columns],
                "object": _row_object(obj, include),
            }
            for obj in items
        ],
    }
