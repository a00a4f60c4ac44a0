"""Cluster identity certificates: onboarding with a proof of the onboarding key, and renewal.

The agent proves possession of the onboarding private key (whose public half the
cluster resource holds) with a short-lived assertion, and sends a CSR for a fresh
key. The certificate chains to the hub's cluster CA and names the cluster in a
SPIFFE-style URI SAN. Renewal needs a current certificate and is accepted only in
the renewal window (Arc: from day 46 of 90).
"""

from __future__ import annotations

import datetime as dt

import jwt
from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from foundation import pki, tokens
from hub.auth import current_agent
from hub.context import Hub, hub_of
from hub.errors import ApiError, bad_request, not_found, read_model, unauthorized
from hub.resources import scope_key
from hub.store.models import Cluster, IdentityCertificate, UsedAssertion

ASSERTION_MAX_TTL = 600


class OnboardRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    resourceId: str = Field(min_length=1, max_length=600)
    assertion: str = Field(min_length=1, max_length=16_384)
    csr: str = Field(min_length=1, max_length=16_384)


class RenewRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    csr: str = Field(min_length=1, max_length=16_384)


def spiffe_id(resource_key: str) -> str:
    return "spiffe://kubearc" + resource_key


def _public_key(csr_pem: str) -> pki.PublicKey:
    try:
        key = pki.load_csr(csr_pem).public_key()
    except ValueError as exc:
        raise bad_request(f"csr: {exc}") from None
    if not isinstance(key, pki.PublicKey):  # type: ignore[misc, arg-type]
        raise bad_request("csr: only EC and RSA keys are accepted")
    return key  # type: ignore[return-value]


def issue_certificate(hub: Hub, name: str, resource_key: str, public_key: pki.PublicKey) -> x509.Certificate:
    """A cluster's identity certificate (also what `loadtest/bench_hub.py` seeds its fleet with)."""
    return pki.issue_cert(
        hub.cluster_ca,
        public_key,
        name,
        sans=[spiffe_id(resource_key)],
        client=True,
        not_before=hub.now() - dt.timedelta(minutes=1),
        validity=hub.config.identity_validity + dt.timedelta(minutes=1),
    )


def _response(hub: Hub, cert: x509.Certificate) -> JSONResponse:
    renew_after = cert.not_valid_before_utc + hub.config.renewal_after
    return JSONResponse(
        {
            "certificate": pki.cert_to_pem(cert).decode(),
            "caCertificate": hub.cluster_ca.cert_pem.decode(),
            "notBefore": cert.not_valid_before_utc.isoformat(),
            "notAfter": cert.not_valid_after_utc.isoformat(),
            "renewAfter": renew_after.isoformat(),
        }
    )


async def _record(hub: Hub, cluster_id: int, cert: x509.Certificate) -> None:
    async with hub.sessions() as session:
        session.add(
            IdentityCertificate(
                serial=format(cert.serial_number, "x"),
                cluster_id=cluster_id,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
            )
        )
        cluster = await session.get(Cluster, cluster_id)
        if cluster is None:
            raise not_found("connected cluster")  # deleted while we signed
        if cluster.identity_expires_at is None or cluster.identity_expires_at < cert.not_valid_after_utc:
            cluster.identity_expires_at = cert.not_valid_after_utc
        await session.commit()


async def onboard(request: Request) -> Response:
    hub = hub_of(request)
    body = await read_model(request, OnboardRequest)
    public_key = _public_key(body.csr)  # before the assertion is spent: a bad CSR costs nothing
    key = scope_key(body.resourceId)
    async with hub.sessions() as session:
        cluster = (
            await session.execute(select(Cluster).where(Cluster.resource_key == key))
        ).scalar_one_or_none()
        if cluster is None:
            raise not_found(f"connected cluster '{body.resourceId}'")
        try:
            claims = tokens.verify_signed(
                body.assertion,
                pki.load_public_key_b64(cluster.agent_public_key),
                hub.config.agent_audience,
                ASSERTION_MAX_TTL,
            )
        except (jwt.InvalidTokenError, ValueError) as exc:
            raise unauthorized(f"onboarding assertion rejected: {exc}") from None
        if scope_key(str(claims.get("sub", ""))) != key:
            raise unauthorized("onboarding assertion rejected: its subject is not this cluster")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise unauthorized("onboarding assertion rejected: it has no jti")
        now = hub.now()
        await session.execute(delete(UsedAssertion).where(UsedAssertion.expires_at < now))
        session.add(
            UsedAssertion(
                jti=jti, expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC) + dt.timedelta(minutes=2)
            )
        )
        try:
            await session.commit()
        except IntegrityError:
            raise unauthorized("onboarding assertion rejected: it was already used") from None
    cert = issue_certificate(hub, cluster.name, cluster.resource_key, public_key)
    await _record(hub, cluster.id, cert)
    return _response(hub, cert)


async def renew(request: Request) -> Response:
    hub, agent = hub_of(request), await current_agent(request)
    body = await read_model(request, RenewRequest)
    async with hub.sessions() as session:
        current = await session.get(IdentityCertificate, agent.cert_serial)
        cluster = await session.get(Cluster, agent.cluster_id)
    if current is None or cluster is None:
        raise unauthorized("identity certificate has been revoked")
    opens = current.not_before + hub.config.renewal_after
    if hub.now() < opens:
        raise ApiError(
            409,
            "RenewalNotAllowed",
            f"identity certificate renewal opens at {opens.isoformat()} "
            f"(certificate valid until {current.not_after.isoformat()})",
        )
    cert = issue_certificate(hub, cluster.name, cluster.resource_key, _public_key(body.csr))
    await _record(hub, cluster.id, cert)
    return _response(hub, cert)


routes = [
    Route("/agent/v1/identity/certificate", onboard, methods=["POST"]),
    Route("/agent/v1/identity/renew", renew, methods=["POST"]),
]
