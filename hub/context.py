"""The hub's shared state: configuration, database, keys. Built once per process."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request

from foundation import pki
from hub import secrets
from hub.config import HubConfig
from hub.store import db

log = logging.getLogger("kubearc.hub")


@dataclass
class Hub:
    config: HubConfig
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    box: secrets.SecretBox
    cluster_ca: pki.KeyPair
    issuer_key: rsa.RSAPrivateKey
    issuer_kid: str
    tenant_id: str
    relay_key: bytes  # what relay replicas register with (`hub.relays`)
    # Called with a cluster's resource id once its deletion is committed: whoever holds live
    # connections of that cluster (the relay in this process) ends them at once.
    on_cluster_deleted: list[Callable[[str], object]] = field(default_factory=list)

    def cluster_deleted(self, resource_id: str) -> None:
        for listener in self.on_cluster_deleted:
            try:
                listener(resource_id)
            except Exception:  # a listener's failure must not fail the delete that already happened
                log.exception("a cluster-deleted listener failed", extra={"cluster": resource_id})

    @property
    def issuer(self) -> str:
        """The local issuer's Entra-shaped issuer URL."""
        return f"{self.config.url}/{self.tenant_id}/v2.0"

    def now(self) -> dt.datetime:
        return self.config.clock()

    def issuer_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.issuer_key.public_key(), as_dict=True)
        jwk.update(kid=self.issuer_kid, use="sig", alg="RS256")
        return jwk

    async def close(self) -> None:
        await self.engine.dispose()


def _kid(key: rsa.RSAPrivateKey) -> str:
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:18]).decode().rstrip("=")


async def open_hub(config: HubConfig) -> Hub:
    """Create the state directory, migrate the database and load the hub-wide keys."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    engine = db.create_engine(config.database)
    try:
        await db.migrate(engine)
        sessions = db.sessionmaker(engine)
        box = secrets.SecretBox.from_state_dir(config.state_dir)
        ca = await secrets.load_cluster_ca(sessions, box)
        key = await secrets.load_issuer_key(sessions, box)
        tenant = await secrets.load_tenant_id(sessions, box)
        relay_key = await secrets.load_relay_registration_key(
            sessions, box, config.relay_registration_key_file, config.state_dir
        )
    except BaseException:  # a failed or cancelled start (Ctrl-C) leaves no pool behind
        await engine.dispose()
        raise
    return Hub(config, engine, sessions, box, ca, key, _kid(key), tenant, relay_key)


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub
