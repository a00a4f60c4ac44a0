"""Flux v2's CustomResourceDefinitions as the flux extension installs them (names, versions,
status subresource, printer columns as in Flux 2.4), their schemas open (no controller validates
here), and `mark`: what Flux's controllers write into an object's status, for tests that play them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

Obj = dict[str, Any]

READY_COLUMNS = [
    {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"},
    {"jsonPath": '.status.conditions[?(@.type=="Ready")].status', "name": "Ready", "type": "string"},
    {"jsonPath": '.status.conditions[?(@.type=="Ready")].message', "name": "Status", "type": "string"},
]


def _crd(group: str, kind: str, plural: str, versions: list[str], short: list[str], extra: list[Obj]) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"app.kubernetes.io/part-of": "flux"}},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": v == versions[-1],
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [*extra, *READY_COLUMNS],
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
                for v in versions
            ],
        },
    }


def flux_crds() -> list[Obj]:
    source, kustomize = "source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"
    url = [{"jsonPath": ".spec.url", "name": "URL", "type": "string"}]
    return [
        _crd(source, "GitRepository", "gitrepositories", ["v1"], ["gitrepo"], url),
        _crd(source, "OCIRepository", "ocirepositories", ["v1beta2"], ["ocirepo"], url),
        _crd(
            source,
            "Bucket",
            "buckets",
            ["v1beta2"],
            [],
            [{"jsonPath": ".spec.endpoint", "name": "Endpoint", "type": "string"}],
        ),
        _crd(kustomize, "Kustomization", "kustomizations", ["v1"], ["ks"], []),
    ]


def mark(obj: Obj, ready: bool, reason: str, message: str, revision: str | None = None) -> Obj:
    """The status Flux's controller writes after reconciling `obj`'s current generation."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status: Obj = {
        "observedGeneration": obj["metadata"].get("generation", 1),
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
                "observedGeneration": obj["metadata"].get("generation", 1),
            }
        ],
    }
    if revision:
        status["artifact"] = {"revision": revision, "lastUpdateTime": now, "path": "gitrepository/x.tar.gz"}
        status["lastAppliedRevision"] = revision
    return {**obj, "status": status}
