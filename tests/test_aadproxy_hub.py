"""The hub's side of impersonation mode: kube-aad-proxy serving certificates and the credential switch."""

from __future__ import annotations

import base64
import datetime as dt
import uuid

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from foundation import pki, tokens
from hub.aadproxy import NAME_SUFFIX, SERVICE_NAME
from tests.clusters import ConnectedCluster, connected, onboarder
from tests.conftest import FakeClock, RunningHub


def _serving(cluster: ConnectedCluster) -> tuple[int, dict, pki.PrivateKey]:
    key = pki.new_key()
    with cluster.agent_client() as c:
        r = c.post("/agent/v1/aad-proxy/certificate", json={"csr": pki.make_csr(key, "x").decode()})
    return r.status_code, r.json(), key


def _credential(hub: RunningHub, cluster: ConnectedCluster, user: str) -> dict:
    with hub.client(hub.token(user)) as c:
        r = c.post(f"{cluster.resource_id}/listClusterUserCredential")
    assert r.status_code == 200, r.text
    return r.json()["clusterConnect"]


def test_serving_certificate_switches_the_credential_to_the_proxy(hub: RunningHub) -> None:
    owner = onboarder(hub)
    cluster = connected(hub, "aad-mode", owner)
    apiserver_ca = pki.create_ca("apiserver CA")
    with cluster.agent_client() as c:
        metadata = {
            "clusterCertificateAuthority": apiserver_ca.cert_pem.decode(),
            "apiserverServerName": "kubernetes.default.svc",
        }
        assert c.put("/agent/v1/metadata", json=metadata).status_code == 200
    user = str(uuid.uuid4())
    hub.assign(user, "Azure Arc Enabled Kubernetes Cluster User Role", cluster.resource_id)
    assert _credential(hub, cluster, user)["mode"] == "passthrough"

    status, doc, key = _serving(cluster)
    assert status == 200, doc
    cert = pki.load_cert(doc["certificate"].encode())
    assert cert.public_key() == key.public_key()
    assert pki.is_issued_by(cert, hub.hub.cluster_ca.cert)
    assert doc["caCertificate"] == hub.hub.cluster_ca.cert_pem.decode()
    name = doc["serverName"]
    assert name.endswith(NAME_SUFFIX)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [name, SERVICE_NAME]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cluster.identity is not None
    assert cert.not_valid_after_utc <= cluster.identity.cert.not_valid_after_utc
    assert dt.datetime.fromisoformat(doc["renewAfter"]) < cert.not_valid_after_utc

    # The credential now names the hub's cluster CA and the proxy, not the apiserver.
    connect = _credential(hub, cluster, user)
    assert connect["mode"] == "impersonation" and connect["tlsServerName"] == name
    assert base64.b64decode(connect["certificateAuthorityData"]) == hub.hub.cluster_ca.cert_pem

    # Renewal keeps the name (written kubeconfigs stay valid); another cluster gets its own.
    status, again, _ = _serving(cluster)
    assert status == 200 and again["serverName"] == name
    other = connected(hub, "aad-mode-2", owner)
    assert _serving(other)[1]["serverName"] not in (name, SERVICE_NAME)

    # The serving certificate never authenticates as the cluster's agent.
    impostor = pki.KeyPair(key, cert)
    with hub.client(tokens.make_agent_token(impostor, hub.url)) as c:
        r = c.get("/agent/v1/whoami")
    assert r.status_code == 401

    # Back to passthrough: the apiserver's CA and name again.
    with cluster.agent_client() as c:
        assert c.delete("/agent/v1/aad-proxy").json() == {"mode": "passthrough"}
    connect = _credential(hub, cluster, user)
    assert connect["mode"] == "passthrough" and connect["tlsServerName"] == "kubernetes.default.svc"
    assert base64.b64decode(connect["certificateAuthorityData"]) == apiserver_ca.cert_pem


def test_impersonation_mode_needs_no_apiserver_metadata_and_ends_with_its_certificate(
    hub: RunningHub, clock: FakeClock
) -> None:
    cluster = connected(hub, "aad-only")
    user = str(uuid.uuid4())
    hub.assign(user, "Azure Arc Enabled Kubernetes Cluster User Role", cluster.resource_id)
    status, doc, _ = _serving(cluster)
    assert status == 200
    assert _credential(hub, cluster, user)["tlsServerName"] == doc["serverName"]
    token = hub.token(user)  # minted now: token lifetimes are checked on the real clock
    clock.advance(days=91)  # past the serving certificate (and the identity it was bounded by)
    with hub.client(token) as c:
        r = c.post(f"{cluster.resource_id}/listClusterUserCredential")
    assert r.status_code == 409 and r.json()["error"]["code"] == "ClusterNotReady"


def test_only_agents_with_a_valid_csr_get_serving_certificates(hub: RunningHub) -> None:
    cluster = connected(hub, "aad-refusals")
    with hub.client(hub.token(str(uuid.uuid4()))) as c:
        r = c.post("/agent/v1/aad-proxy/certificate", json={"csr": "x"})
    assert r.status_code == 403 and "cluster agents" in r.json()["error"]["message"]
    with hub.client() as c:
        assert c.post("/agent/v1/aad-proxy/certificate", json={"csr": "x"}).status_code == 401
    with cluster.agent_client() as c:
        r = c.post("/agent/v1/aad-proxy/certificate", json={"csr": "not a csr"})
        assert r.status_code == 400 and "csr" in r.json()["error"]["message"]
        assert c.post("/agent/v1/aad-proxy/certificate", json={}).status_code == 400
