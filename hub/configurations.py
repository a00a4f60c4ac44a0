"""GitOps source-control configurations of a cluster (the user-facing ARM API).

Protected settings (SSH private key, HTTPS user and token) are encrypted at rest
and never returned here: users see which keys are set, not their values. Only
the cluster's own agents read them (`GET /agent/v1/configurations`).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.auth import current_user
from hub.context import Hub, hub_of
from hub.errors import bad_request, not_found, read_model
from hub.rbac.access import require
from hub.resources import CC, cluster_child
from hub.store.models import Configuration
from hub.store.queries import configuration_named, configurations_of, find_cluster

KIND = "Microsoft.KubernetesConfiguration/sourceControlConfigurations"
PROTECTED_KEYS = {"sshPrivateKey", "httpsUser", "httpsKey"}


class ConfigurationProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")
    repositoryUrl: str = Field(min_length=1, max_length=2048, pattern=r"^(https?|ssh|git)://|^git@")
    operatorNamespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    operatorInstanceName: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    operatorType: str = Field("Flux", pattern="^Flux$")
    operatorScope: str = Field("cluster", pattern="^(cluster|namespace)$")
    operatorParams: str = Field("", max_length=4096)
    sshKnownHostsContents: str | None = Field(None, max_length=65_536)
    configurationProtectedSettings: dict[str, str] = Field(default_factory=dict)


class ConfigurationBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    properties: ConfigurationProperties


def to_arm(hub: Hub, rid: str, c: Configuration) -> dict[str, Any]:
    keys = sorted(json.loads(hub.box.open(c.protected_settings))) if c.protected_settings else []
    return {
        "id": f"{rid}/providers/{KIND}/{c.name}",
        "name": c.name,
        "type": KIND,
        "properties": {
            "repositoryUrl": c.repository_url,
            "operatorNamespace": c.operator_namespace,
            "operatorInstanceName": c.operator_instance_name,
            "operatorType": c.operator_type,
            "operatorScope": c.operator_scope,
            "operatorParams": c.operator_params,
            "sshKnownHostsContents": c.ssh_known_hosts,
            # Azure's shape: the keys that are set, never their values.
            "configurationProtectedSettings": {k: None for k in keys},
            "provisioningState": "Succeeded",
            "complianceStatus": {
                "complianceState": c.compliance_state,
                "message": c.compliance_message,
                "lastConfigApplied": c.updated_at.isoformat(),
            },
        },
    }


def _ids(request: Request) -> tuple[str, str]:
    return cluster_child(request.path_params, "config")


async def configuration_item(request: Request) -> Response:
    hub, principal = hub_of(request), await current_user(request)
    rid, name = _ids(request)
    verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}[request.method]
    await require(hub, principal, f"{KIND}/{verb}", rid)
    if request.method == "PUT":
        body = (await read_model(request, ConfigurationBody)).properties
        return await _put(hub, rid, name, body)
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        if request.method == "DELETE":
            result = await session.execute(
                delete(Configuration).where(
                    Configuration.cluster_id == cluster.id, Configuration.name == name
                )
            )
            await session.commit()
            return Response(status_code=200 if result.rowcount else 204)  # type: ignore[attr-defined]
        row = await configuration_named(session, cluster.id, name)
        if row is None:
            raise not_found(f"configuration '{name}'")
        return JSONResponse(to_arm(hub, rid, row))


async def _put(hub: Hub, rid: str, name: str, body: ConfigurationProperties) -> Response:
    if not 1 <= len(name) <= 63 or not name.replace("-", "").isalnum() or name != name.lower():
        raise bad_request(f"invalid configuration name {name!r}: lowercase letters, digits and '-'")
    unknown = set(body.configurationProtectedSettings) - PROTECTED_KEYS
    if unknown:
        raise bad_request(
            f"configurationProtectedSettings: unknown keys {sorted(unknown)}; "
            f"allowed: {sorted(PROTECTED_KEYS)}"
        )
    now = hub.now()
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        row = await configuration_named(session, cluster.id, name)
        created = row is None
        if row is None:
            row = Configuration(cluster_id=cluster.id, name=name, created_at=now)
            session.add(row)
        row.repository_url = body.repositoryUrl
        row.operator_namespace = body.operatorNamespace
        row.operator_instance_name = body.operatorInstanceName or name
        row.operator_type = body.operatorType
        row.operator_scope = body.operatorScope
        row.operator_params = body.operatorParams
        row.ssh_known_hosts = body.sshKnownHostsContents
        settings = body.configurationProtectedSettings
        row.protected_settings = hub.box.seal_json(settings)
        row.compliance_state = "Pending"
        row.compliance_message = None
        row.updated_at = now
        await session.commit()
        return JSONResponse(to_arm(hub, rid, row), status_code=201 if created else 200)


async def list_configurations(request: Request) -> Response:
    hub, principal = hub_of(request), await current_user(request)
    rid, _ = _ids(request)
    await require(hub, principal, f"{KIND}/read", rid)
    async with hub.sessions() as session:
        cluster = await find_cluster(session, rid)
        rows = await configurations_of(session, cluster.id)
    return JSONResponse({"value": [to_arm(hub, rid, r) for r in rows]})


routes = [
    Route(CC + "/{name}/providers/" + KIND, list_configurations, methods=["GET"]),
    Route(
        CC + "/{name}/providers/" + KIND + "/{config}", configuration_item, methods=["GET", "PUT", "DELETE"]
    ),
]
