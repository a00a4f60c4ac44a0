"""clusteridentityoperator: get the cluster's identity certificate, keep it renewed and stored.

The first certificate comes from proving possession of the onboarding key (an
assertion signed with it) together with a CSR for a fresh key. Later ones come
from renewing with the current certificate once the hub's renewAfter passes
(Arc: day 46 of 90). The new certificate replaces the old one in one atomic
store write, only after the hub has issued it, so other agents always find a
working pair. If the hub stops accepting the stored certificate (revoked,
expired, another CA), the agent onboards again with the onboarding key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from agents.errors import HubRefused
from agents.hubclient import HubClient, IssuedCertificate
from foundation import pki
from foundation.identitystore import (
    IdentityStore,
    StoreConflict,
    StoredIdentity,
    StoreError,
    load_onboarding_key,
    open_store,
)
from foundation.kube import Kube
from foundation.retry import RetriesExhausted, RetryPolicy

log = logging.getLogger("kubearc.agent.identity")
RETRY_AFTER_FAILURE = 60.0
CONFLICT_RETRIES = 3


@dataclass(frozen=True)
class IdentitySettings:
    hub_url: str
    hub_ca: Path | None
    resource_id: str
    onboarding_key: str  # PEM file path, or secret:NAMESPACE/NAME
    store: str = "secret:azure-arc/azure-identity-certificate"
    kubeconfig: Path | None = None
    once: bool = False
    interval: float = 3600.0
    now_offset: float = 0.0  # tests shift the agent's clock to reach the renewal window
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.now_offset)


def _common_name(resource_id: str) -> str:
    return resource_id.rstrip("/").rsplit("/", 1)[-1] or "cluster"


def _stored(key: pki.PrivateKey, issued: IssuedCertificate, resource_id: str) -> StoredIdentity:
    return StoredIdentity(pki.KeyPair(key, issued.certificate), issued.ca, issued.renew_after, resource_id)


def why_onboard(stored: StoredIdentity | None, resource_id: str, now: dt.datetime) -> str | None:
    """Why the stored certificate cannot be renewed and a new one must be requested (None: it can)."""
    if stored is None:
        return "no identity certificate is stored yet"
    if stored.resource_id and stored.resource_id.lower() != resource_id.lower():
        return f"the stored certificate belongs to {stored.resource_id}"
    if stored.not_after <= now:
        return f"the stored certificate expired at {stored.not_after.isoformat()}"
    if not pki.is_issued_by(stored.pair.cert, stored.ca):
        return "the stored certificate is not issued by the stored CA"
    return None


class IdentityAgent:
    def __init__(self, settings: IdentitySettings, hub: HubClient, store: IdentityStore, kube: Kube) -> None:
        self.settings, self.hub, self.store, self.kube = settings, hub, store, kube

    async def _onboard(self, reason: str) -> StoredIdentity:
        log.info("requesting an identity certificate with the onboarding key", extra={"reason": reason})
        onboarding_key = await load_onboarding_key(self.settings.onboarding_key, self.kube)
        key = pki.new_key()
        issued = await self.hub.onboard(self.settings.resource_id, onboarding_key, key)
        return _stored(key, issued, self.settings.resource_id)

    async def _renew(self, current: StoredIdentity) -> StoredIdentity:
        log.info("renewing the identity certificate", extra={"renew_after": current.renew_after.isoformat()})
        key = pki.new_key()
        issued = await self.hub.renew(key, _common_name(self.settings.resource_id))
        return _stored(key, issued, self.settings.resource_id)

    async def _check_accepted(self) -> None:
        """Ask the hub whether it still accepts the stored certificate (raises HubRefused 401 if not)."""
        try:
            await self.hub.whoami()
        except HubRefused as exc:
            if exc.status != 404:  # a hub without whoami cannot tell; renewal will
                raise

    async def _load(self) -> StoredIdentity | None:
        try:
            return await self.store.load()
        except StoreError as exc:
            log.warning("ignoring the stored identity: %s", exc)
            return None

    async def reconcile(self) -> StoredIdentity:
        """One pass: make sure a valid, accepted, not-yet-due certificate is stored; return it."""
        now = self.settings.now()
        stored = await self._load()
        reason = why_onboard(stored, self.settings.resource_id, now)
        fresh: StoredIdentity | None = None
        if stored is not None and reason is None:
            self.hub.set_identity(stored.pair)
            try:
                if now >= stored.renew_after:
                    fresh = await self._renew(stored)
                else:
                    await self._check_accepted()
            except HubRefused as exc:
                if exc.code == "RenewalNotAllowed":
                    log.info("the hub has not opened renewal yet: %s", exc.message)
                    return stored
                if exc.status != 401:
                    raise
                reason = f"the hub no longer accepts the stored certificate: {exc.message}"
        if reason is not None:
            fresh = await self._onboard(reason)
        if fresh is None:
            assert stored is not None
            return stored
        await self.store.save(fresh)
        log.info(
            "stored the identity certificate",
            extra={
                "store": self.store.description,
                "serial": format(fresh.pair.cert.serial_number, "x"),
                "not_after": fresh.not_after.isoformat(),
                "renew_after": fresh.renew_after.isoformat(),
            },
        )
        return fresh

    def next_check(self, identity: StoredIdentity) -> float:
        """Wake at the renewal time if it comes before the next regular check."""
        until = (identity.renew_after - self.settings.now()).total_seconds()
        if until <= 0:  # due, but the hub said not yet: ask again later
            return min(self.settings.interval, 600.0)
        return max(min(self.settings.interval, until), 1.0)

    async def run(self) -> None:
        conflicts = 0
        while True:
            try:
                identity = await self.reconcile()
            except StoreConflict as exc:
                conflicts += 1
                if self.settings.once and conflicts > CONFLICT_RETRIES:
                    raise
                log.info("%s; reading it again", exc)
                continue
            except RetriesExhausted as exc:
                if self.settings.once:
                    raise
                log.warning("identity pass failed, next try in %.0fs: %s", RETRY_AFTER_FAILURE, exc)
                await asyncio.sleep(min(self.settings.interval, RETRY_AFTER_FAILURE))
                continue
            conflicts = 0
            if self.settings.once:
                return
            delay = self.next_check(identity)
            log.debug("next identity check in %.0fs", delay)
            await asyncio.sleep(delay)


async def run(settings: IdentitySettings) -> None:
    kube = Kube(settings.kubeconfig, settings.retry)
    try:
        store = open_store(settings.store, kube)
        async with HubClient(settings.hub_url, settings.hub_ca, retry=settings.retry) as hub:
            await IdentityAgent(settings, hub, store, kube).run()
    finally:
        kube.close()
