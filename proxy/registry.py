"""A relay replica's place in the replica set: heartbeat to the hub's registry, leave on shutdown.

Every few seconds (as often as the hub asks) the replica tells the hub (`hub/relays.py`) it is live at its URL
and is answered with the whole live set, which it hands to its `Relay`: new
sessions get it in their HELLO, live ones a REPLICAS frame when it changes, so an
agent learns of every replica and keeps a session to each. A hub that cannot be
reached leaves the last set in place (a replica never empties the set on its own);
the registry drops a replica that stops heartbeating after its TTL.

On shutdown the replica tells its sessions the set without itself, leaves the
registry, then drains (`RelayServer.serve`): agents stop redialling it before its
GOAWAY arrives.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field

import httpx

from foundation.wire import RELAY_REPLICAS_PATH, RelayReplica, WireError, relay_replicas
from proxy.errors import HubUnavailable
from proxy.relay import Relay
from proxy.relay_auth import hub_message

log = logging.getLogger("kubearc.relay")


@dataclass
class HubRegistry:
    """The hub's relay registry over HTTPS, authenticated with the relay registration key."""

    hub_url: str
    key: str = field(repr=False)
    ca_file: str | None = None
    timeout: float = 5.0

    def _client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        )
        return httpx.AsyncClient(
            verify=verify, timeout=self.timeout, headers={"Authorization": f"Bearer {self.key}"}
        )

    def _url(self, replica_id: str) -> str:
        return f"{self.hub_url.rstrip('/')}{RELAY_REPLICAS_PATH}/{replica_id}"

    async def heartbeat(self, me: RelayReplica) -> tuple[tuple[RelayReplica, ...], float | None]:
        """Say `me` is live; the live set (with `me`) and the heartbeat interval the hub asks for."""
        try:
            async with self._client() as client:
                r = await client.put(self._url(me.id), json={"url": me.url})
        except httpx.HTTPError as exc:
            raise HubUnavailable(f"cannot reach the hub's relay registry: {exc}") from None
        if r.status_code != 200:
            raise HubUnavailable(
                f"the hub's relay registry answered {r.status_code}: {hub_message(r, r.text[:200])}"
            )
        try:
            doc = r.json()
            interval = doc.get("heartbeatSeconds")
            every = (
                float(interval) if isinstance(interval, int | float) and 0.05 <= interval <= 3600 else None
            )
            return relay_replicas(doc), every
        except (ValueError, WireError, AttributeError) as exc:
            raise HubUnavailable(f"the hub's relay registry answered a bad replica set: {exc}") from None

    async def leave(self, replica_id: str) -> None:
        try:
            async with self._client() as client:
                r = await client.delete(self._url(replica_id))
        except httpx.HTTPError as exc:
            raise HubUnavailable(f"cannot reach the hub's relay registry: {exc}") from None
        if r.status_code not in (200, 204, 404):
            raise HubUnavailable(
                f"the hub's relay registry answered {r.status_code}: {hub_message(r, r.text[:200])}"
            )


@dataclass
class Registration:
    """Keeps `relay` in the registry as `url` and its replica set current (see the module docstring)."""

    relay: Relay
    registry: HubRegistry
    url: str  # wss://host:port agents reach this replica at (a shared load-balanced URL is fine)
    interval: float = 5.0  # until the hub's answer says otherwise

    @property
    def me(self) -> RelayReplica:
        return RelayReplica(self.relay.replica_id, self.url.rstrip("/"))

    async def run(self) -> None:
        """Heartbeat until cancelled; the first failure of a run of them is logged once."""
        failing = False
        while True:
            try:
                replicas, every = await self.registry.heartbeat(self.me)
            except HubUnavailable as exc:
                if not failing:
                    log.warning(
                        "relay registry unreachable; keeping the last replica set", extra={"error": str(exc)}
                    )
                failing = True
            else:
                if failing:
                    log.info("relay registry reachable again")
                failing = False
                self.relay.set_replicas(replicas)
                self.interval = every or self.interval
            await asyncio.sleep(self.interval)

    async def leave(self, within: float = 5.0) -> None:
        """Out of the set (at the hub, then for this replica's sessions); a hub that cannot be
        reached drops this replica by its TTL instead."""
        self.relay.set_replicas(tuple(r for r in self.relay.replicas if r.id != self.relay.replica_id))
        try:
            async with asyncio.timeout(within):
                await self.registry.leave(self.relay.replica_id)
        except (HubUnavailable, TimeoutError) as exc:
            log.warning(
                "could not leave the relay registry; the hub drops this replica by its TTL",
                extra={"error": str(exc) or "timed out"},
            )
