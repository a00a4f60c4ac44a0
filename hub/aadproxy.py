"""Impersonation mode: serving certificates for a cluster's kube-aad-proxy, and the mode switch.

A cluster whose apiserver cannot call guard runs the impersonating proxy
(`kubearc guard proxy`), which terminates kubectl's TLS itself. It asks here, as
an authenticated cluster agent, for a serving certificate under the hub's
cluster CA; asking puts the cluster in impersonation mode, and
`listClusterUserCredential` then hands out the cluster CA and the proxy's server
name instead of the apiserver's, so kubectl verifies the proxy end to end.

The server name is chosen by the hub, random per cluster resource and kept for
its life (renewals keep it, so written kubeconfigs stay valid): a proxy
certificate of one cluster never verifies as another cluster's proxy, even
though one CA signs both. The certificate carries only serverAuth and is never
recorded as an identity certificate, so it cannot authenticate as an agent. It
lives no longer than the caller's identity certificate. `DELETE` returns the
cluster to passthrough mode.
"""

from __future__ import annotations

import datetime as dt
import secrets

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from foundation import pki
from hub.auth import current_agent, revoked
from hub.context import hub_of
from hub.errors import bad_request, read_model
from hub.store.models import Cluster, IdentityCertificate

SERVICE_NAME = "kube-aad-proxy.azure-arc.svc"  # the in-cluster Service name, also in the certificate
NAME_SUFFIX = ".kube-aad-proxy.kubearc.internal"


class ServingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    csr: str = Field(min_length=1, max_length=16_384)


def new_server_name() -> str:
    """A name no other cluster's proxy certificate carries (a DNS label of random hex + a suffix)."""
    return "c" + secrets.token_hex(12) + NAME_SUFFIX


async def serving_certificate(request: Request) -> Response:
    hub, agent = hub_of(request), await current_agent(request)
    body = await read_model(request, ServingRequest)
    try:
        public_key = pki.load_csr(body.csr).public_key()
    except ValueError as exc:
        raise bad_request(f"csr: {exc}") from None
    if not isinstance(public_key, pki.PublicKey):  # type: ignore[misc, arg-type]
        raise bad_request("csr: only EC and RSA keys are accepted")
    now = hub.now()
    async with hub.sessions() as session:
        identity = await session.get(IdentityCertificate, agent.cert_serial)
        cluster = await session.get(Cluster, agent.cluster_id)
        if identity is None or identity.revoked_at is not None or cluster is None:
            raise revoked()
        name = cluster.aad_proxy_server_name or new_server_name()
        not_after = min(identity.not_after, now + hub.config.identity_validity)
        cert = pki.issue_cert(
            hub.cluster_ca,
            public_key,  # type: ignore[arg-type]
            "kube-aad-proxy",
            sans=[name, SERVICE_NAME],
            server=True,
            not_before=now - dt.timedelta(minutes=1),
            validity=not_after - now + dt.timedelta(minutes=1),
        )
        cluster.aad_proxy_server_name = name
        cluster.aad_proxy_expires_at = cert.not_valid_after_utc
        await session.commit()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return JSONResponse(
        {
            "certificate": pki.cert_to_pem(cert).decode(),
            "caCertificate": hub.cluster_ca.cert_pem.decode(),
            "serverName": name,
            "notBefore": start.isoformat(),
            "notAfter": end.isoformat(),
            "renewAfter": (start + (end - start) / 2).isoformat(),
        }
    )


async def passthrough(request: Request) -> Response:
    """Leave impersonation mode: credentials name the apiserver's CA and server name again."""
    hub, agent = hub_of(request), await current_agent(request)
    async with hub.sessions() as session:
        cluster = await session.get(Cluster, agent.cluster_id)
        if cluster is None:
            raise revoked()
        cluster.aad_proxy_expires_at = None
        await session.commit()
    return JSONResponse({"mode": "passthrough"})


routes = [
    Route("/agent/v1/aad-proxy/certificate", serving_certificate, methods=["POST"]),
    Route("/agent/v1/aad-proxy", passthrough, methods=["DELETE"]),
]
