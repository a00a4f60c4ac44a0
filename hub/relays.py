"""The registry of relay replicas: who is live, so agents can hold a session to every one.

Each relay replica heartbeats here (`PUT /relay/v1/replicas/{id}` with its URL) as
often as the answer says (a third of the TTL) and is answered with the live set;
one that stops heartbeating drops out of the set after `HubConfig.relay_replica_ttl`,
one that shuts down leaves at once (`DELETE`). The set lives in the hub's database,
so every hub replica answers the same. Relays pass it on to their sessions (HELLO,
then a REPLICAS frame when it changes); the hub itself never dials a relay.

Relays authenticate with the relay registration key, a hub-wide secret: the file
`--relay-registration-key-file` names (a Secret mounted in every hub and relay pod),
or else one made once in the database and written to
`<state-dir>/relay-registration.key` for relays on the hub's machine.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from foundation.wire import RELAY_REPLICAS_PATH, REPLICA_ID, RelayReplica
from hub.context import Hub, hub_of
from hub.errors import ApiError, bad_request, read_model, unauthorized
from hub.store.models import RelayReplica as ReplicaRow

# Rows this many TTLs past their last heartbeat are deleted (kept a while for `kubearc` views).
PURGE_AFTER_TTLS = 20


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=6, max_length=512, pattern=r"^wss?://[^/\s]+$")


def _authenticate(request: Request, hub: Hub) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = hashlib.sha256(token.strip().encode()).digest()
    wanted = hashlib.sha256(hub.relay_key).digest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, wanted):
        raise unauthorized("relay registration needs the relay registration key (Authorization: Bearer KEY)")


def _replica_id(request: Request) -> str:
    rid = str(request.path_params["replica"])
    if not REPLICA_ID.fullmatch(rid):
        raise bad_request(f"relay replica id {rid[:40]!r} must be 1-128 letters, digits, '-', '_' or '.'")
    return rid


async def live_replicas(hub: Hub, session: AsyncSession) -> list[RelayReplica]:
    cutoff = hub.now() - hub.config.relay_replica_ttl
    rows = await session.scalars(
        select(ReplicaRow).where(ReplicaRow.seen_at >= cutoff).order_by(ReplicaRow.id)
    )
    return [RelayReplica(row.id, row.url) for row in rows]


async def heartbeat(request: Request) -> Response:
    """Record that replica `{replica}` is live at `url`; answer the live set (it included)."""
    hub = hub_of(request)
    _authenticate(request, hub)
    rid = _replica_id(request)
    body = await read_model(request, Heartbeat)  # its pattern: wss://HOST[:PORT], no path
    now = hub.now()
    for _ in range(2):
        async with hub.sessions() as session:
            row = await session.get(ReplicaRow, rid)
            if row is None:
                session.add(ReplicaRow(id=rid, url=body.url, started_at=now, seen_at=now))
            else:
                row.url, row.seen_at = body.url, now
            stale = now - PURGE_AFTER_TTLS * hub.config.relay_replica_ttl
            await session.execute(delete(ReplicaRow).where(ReplicaRow.seen_at < stale))
            try:
                await session.commit()
            except IntegrityError:
                continue  # the same id registered concurrently: update the row it made
            replicas = await live_replicas(hub, session)
        return JSONResponse(_answer(hub, replicas))
    raise ApiError(409, "Conflict", f"relay replica {rid} is being registered concurrently; try again")


async def leave(request: Request) -> Response:
    """Replica `{replica}` is shutting down: out of the set at once (idempotent)."""
    hub = hub_of(request)
    _authenticate(request, hub)
    rid = _replica_id(request)
    async with hub.sessions() as session:
        await session.execute(delete(ReplicaRow).where(ReplicaRow.id == rid))
        await session.commit()
    return Response(status_code=204)


async def listing(request: Request) -> Response:
    """The live set, as relays get it (for operators and tests)."""
    hub = hub_of(request)
    _authenticate(request, hub)
    async with hub.sessions() as session:
        replicas = await live_replicas(hub, session)
    return JSONResponse(_answer(hub, replicas))


def _answer(hub: Hub, replicas: list[RelayReplica]) -> dict[str, object]:
    """The live set, and how often to heartbeat: three times per TTL, so one lost beat is no exit."""
    ttl = hub.config.relay_replica_ttl.total_seconds()
    return {"replicas": [r.to_json() for r in replicas], "heartbeatSeconds": round(ttl / 3, 3)}


routes = [
    Route(RELAY_REPLICAS_PATH, listing, methods=["GET"]),
    Route(RELAY_REPLICAS_PATH + "/{replica}", heartbeat, methods=["PUT"]),
    Route(RELAY_REPLICAS_PATH + "/{replica}", leave, methods=["DELETE"]),
]
