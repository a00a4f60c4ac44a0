"""Connected-cluster resources: the user-facing ARM API (create, get, list, delete, credentials)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from foundation import pki
from hub import credentials
from hub.auth import current_user
from hub.context import Hub, hub_of
from hub.errors import ApiError, bad_request, read_model
from hub.rbac.access import require, scope_filter
from hub.resources import CC, CLUSTER_TYPE, arm_time, cluster_id, scope_key, validate_names
from hub.status import connectivity_status
from hub.store.models import Cluster
from hub.store.queries import cluster_at, find_cluster

READ = f"{CLUSTER_TYPE}/read"
WRITE = f"{CLUSTER_TYPE}/write"
DELETE = f"{CLUSTER_TYPE}/delete"
LIST_CREDENTIAL = f"{CLUSTER_TYPE}/listClusterUserCredential/action"


class ClusterProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")
    agentPublicKeyCertificate: str = Field(min_length=1, max_length=4096)
    distribution: str = Field("generic", max_length=64)
    infrastructure: str = Field("generic", max_length=64)
    totalCoreCount: int | None = Field(None, ge=0, le=10_000_000)


class ClusterBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    location: str = Field("local", max_length=64)
    tags: dict[str, str] = Field(default_factory=dict)
    properties: ClusterProperties


class ClusterPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: dict[str, str] | None = None
    properties: dict[str, bool] | None = None  # {"autoUpgrade": bool}


def to_arm(hub: Hub, c: Cluster) -> dict[str, Any]:
    status = connectivity_status(
        created_at=c.created_at,
        last_heartbeat=c.last_connectivity_time,
        identity_expires_at=c.identity_expires_at,
        now=hub.now(),
        thresholds=hub.config.status,
    )
    return {
        "id": cluster_id(c.subscription_id, c.resource_group, c.name),
        "name": c.name,
        "type": CLUSTER_TYPE,
        "location": c.location,
        "tags": c.tags or {},
        "identity": {"type": "SystemAssigned"},
        "properties": {
            "agentPublicKeyCertificate": c.agent_public_key,
            "kubernetesVersion": c.kubernetes_version,
            "totalNodeCount": c.total_node_count,
            "totalCoreCount": c.total_core_count,
            "agentVersion": c.agent_version,
            "distribution": c.distribution,
            "infrastructure": c.infrastructure,
            "provisioningState": c.provisioning_state,
            "connectivityStatus": status.value,
            "lastConnectivityTime": arm_time(c.last_connectivity_time),
            "managedIdentityCertificateExpirationTime": arm_time(c.identity_expires_at),
            "autoUpgrade": c.auto_upgrade,
            "clusterConnect": {
                "apiserverServerName": c.apiserver_server_name,
                "certificateAuthorityReported": c.cluster_ca is not None,
            },
        },
        "systemData": {"createdAt": arm_time(c.created_at), "createdBy": c.created_by},
    }


def _rid(request: Request) -> str:
    p = request.path_params
    validate_names(p["sub"], p["rg"], p["name"])
    return cluster_id(p["sub"], p["rg"], p["name"])


async def cluster_item(request: Request) -> Response:
    hub, principal, rid = hub_of(request), await current_user(request), _rid(request)
    method = request.method
    action = {"GET": READ, "PUT": WRITE, "PATCH": WRITE, "DELETE": DELETE}[method]
    await require(hub, principal, action, rid)
    if method == "GET":
        async with hub.sessions() as session:
            return JSONResponse(to_arm(hub, await find_cluster(session, rid)))
    if method == "DELETE":
        async with hub.sessions() as session:
            result = await session.execute(delete(Cluster).where(Cluster.resource_key == scope_key(rid)))
            await session.commit()
        # Certificates cascade with the row: the agents' identity is revoked with it, and the
        # cluster's tunnel sessions end now, not when their credentials next renew.
        if result.rowcount:  # type: ignore[attr-defined]
            hub.cluster_deleted(rid)
        return Response(status_code=200 if result.rowcount else 204)  # type: ignore[attr-defined]
    if method == "PATCH":
        return await _patch(request, hub, rid)
    return await _put(request, hub, rid, principal.object_id)


async def _put(request: Request, hub: Hub, rid: str, creator: str) -> Response:
    body = await read_model(request, ClusterBody)
    props = body.properties
    try:
        pki.load_public_key_b64(props.agentPublicKeyCertificate)
    except ValueError as exc:
        raise bad_request(f"properties.agentPublicKeyCertificate: {exc}") from None
    p = request.path_params
    async with hub.sessions() as session:
        existing = await cluster_at(session, rid)
        if existing is not None and existing.agent_public_key != props.agentPublicKeyCertificate:
            raise ApiError(
                409,
                "ResourceAlreadyExists",
                f"connected cluster '{rid}' already exists with a different agentPublicKeyCertificate; "
                "delete it before connecting the cluster again",
            )
        cluster = existing or Cluster(
            resource_key=scope_key(rid),
            subscription_id=p["sub"],
            resource_group=p["rg"],
            name=p["name"],
            agent_public_key=props.agentPublicKeyCertificate,
            created_at=hub.now(),
            created_by=creator,
            auto_upgrade=True,
        )
        cluster.location = body.location
        cluster.tags = body.tags
        cluster.distribution = props.distribution
        cluster.infrastructure = props.infrastructure
        if props.totalCoreCount is not None:
            cluster.total_core_count = props.totalCoreCount
        session.add(cluster)
        await session.commit()
        return JSONResponse(to_arm(hub, cluster), status_code=200 if existing else 201)


async def _patch(request: Request, hub: Hub, rid: str) -> Response:
    body = await read_model(request, ClusterPatch)
    unknown = set(body.properties or {}) - {"autoUpgrade"}
    if unknown:
        raise bad_request(f"properties {sorted(unknown)} cannot be patched (only autoUpgrade)")
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        if body.tags is not None:
            cluster.tags = body.tags
        if body.properties and "autoUpgrade" in body.properties:
            cluster.auto_upgrade = body.properties["autoUpgrade"]
        await session.commit()
        return JSONResponse(to_arm(hub, cluster))


async def list_clusters(request: Request) -> Response:
    hub, principal = hub_of(request), await current_user(request)
    sub, rg = request.path_params["sub"], request.path_params.get("rg")
    allowed = await scope_filter(hub, principal, READ)
    top = _page_size(request.query_params.get("$top"))
    query = select(Cluster).where(Cluster.subscription_id == sub)
    if rg is not None:
        query = query.where(Cluster.resource_group == rg)
    if token := request.query_params.get("$skipToken"):
        if not token.isdigit():
            raise bad_request("$skipToken: not one this API handed out")
        query = query.where(Cluster.id > int(token))
    async with hub.sessions() as session:  # an index range (ix_clusters_listing), never a table scan
        rows = (await session.execute(query.order_by(Cluster.id).limit(top + 1))).scalars().all()
    page, more = rows[:top], len(rows) > top
    value = [to_arm(hub, c) for c in page if allowed(cluster_id(c.subscription_id, c.resource_group, c.name))]
    body: dict[str, Any] = {"value": value}
    if more:  # ARM's paging: the client follows nextLink until a page comes without one
        params = dict(request.query_params) | {"$skipToken": str(page[-1].id)}
        body["nextLink"] = f"{request.url.replace(query='')}?{urlencode(params)}"
    return JSONResponse(body)


LIST_PAGE = 1000  # clusters per page of a list, and the most `$top` may ask for


def _page_size(value: str | None) -> int:
    if value is None:
        return LIST_PAGE
    if not value.isdigit() or not 1 <= int(value) <= LIST_PAGE:
        raise bad_request(f"$top: a whole number from 1 to {LIST_PAGE}, not {value!r}")
    return int(value)


async def list_user_credential(request: Request) -> Response:
    hub, principal, rid = hub_of(request), await current_user(request), _rid(request)
    await require(hub, principal, LIST_CREDENTIAL, rid)
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
    return JSONResponse(credentials.cluster_user_credential(hub, principal, cluster, rid))


routes = [
    Route(f"/subscriptions/{{sub}}/providers/{CLUSTER_TYPE}", list_clusters, methods=["GET"]),
    Route(CC, list_clusters, methods=["GET"]),
    Route(CC + "/{name}", cluster_item, methods=["GET", "PUT", "PATCH", "DELETE"]),
    Route(CC + "/{name}/listClusterUserCredential", list_user_credential, methods=["POST"]),
]
