"""The wire contract between kubearc's parts: paths, audiences, token types, the discovery document.

The hub, the relay, the agents, guard and the command line are deployed apart and
talk only over HTTPS and websockets, so what one side writes the other must read
the same way. Every string they share is defined here once; no part spells one
itself. The hub's discovery document is a typed value that the hub renders
(`Discovery.to_json`) and every client parses (`Discovery.from_json`), so a key
renamed on one side fails the other's tests, not a user's cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Entra ID's public-cloud authority: the issuer host of tenant tokens and the sign-in endpoint.
ENTRA_AUTHORITY = "https://login.microsoftonline.com"
# The hub's discovery document: what `kubearc login`, the relay and the agents read first.
DISCOVERY_PATH = "/.well-known/kubearc-configuration"
# The agent API path that names the cluster an agent token belongs to (the relay asks it).
AGENT_WHOAMI_PATH = "/agent/v1/whoami"

# Relay websocket endpoints, below the relay's base URL (`Discovery.relay_url`).
RELAY_AGENT_PATH = "/relay/v1/agent"
RELAY_CLIENT_PATH = "/relay/v1/client"
# Where relay replicas register with the hub (PUT .../{id} to heartbeat, DELETE to leave).
RELAY_REPLICAS_PATH = "/relay/v1/replicas"

# Relay credentials (`listClusterUserCredential`): a JWT of the hub's issuer for the relay only.
RELAY_AUDIENCE = "kubearc-relay"
RELAY_TOKEN_TYPE = "kubearc-relay+jwt"
# The audience users' tokens for a cluster's apiserver carry by default (`kubearc get-token
# --server-id`, what `kubearc proxy` writes): guard's or kube-aad-proxy's `--audience`. Not the hub's
# audience, so a cluster that sees a user's token cannot use it at the hub.
CLUSTER_AUDIENCE = "api://kubearc-cluster"
# Agent tokens: signed with the cluster identity key, the certificate in `x5c`.
AGENT_TOKEN_TYPE = "kubearc-agent+jwt"


class WireError(ValueError):
    """A document from another part that does not follow this contract; the message names the key."""


@dataclass(frozen=True)
class Discovery:
    """The hub's `/.well-known/kubearc-configuration`.

    `issuer` and `tenant_id` are set when the hub runs its own Entra-shaped issuer;
    `entra_tenants` lists the Entra tenants whose users it also accepts.
    """

    hub_audience: str
    cli_client_id: str
    relay_url: str  # wss://host:port of the relay, no trailing slash
    relay_issuer: str  # who signs relay credentials
    issuer: str | None = None
    tenant_id: str | None = None
    entra_tenants: tuple[str, ...] = field(default=())

    @property
    def relay_agent_url(self) -> str:
        return self.relay_url.rstrip("/") + RELAY_AGENT_PATH

    @property
    def relay_client_url(self) -> str:
        return self.relay_url.rstrip("/") + RELAY_CLIENT_PATH

    def to_json(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "tenantId": self.tenant_id,
            "hubAudience": self.hub_audience,
            "cliClientId": self.cli_client_id,
            "entraTenants": list(self.entra_tenants),
            "relayUrl": self.relay_url,
            "relayIssuer": self.relay_issuer,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Discovery:
        if not isinstance(doc, dict):
            raise WireError("the discovery document is not a JSON object")

        def text(key: str, required: bool = True) -> str | None:
            value = doc.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or not value:
                raise WireError(f"the discovery document has no {key!r}")
            return value

        tenants = doc.get("entraTenants") or []
        if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
            raise WireError("the discovery document's 'entraTenants' is not a list of tenant ids")
        return cls(
            hub_audience=str(text("hubAudience")),
            cli_client_id=str(text("cliClientId")),
            relay_url=str(text("relayUrl")).rstrip("/"),
            relay_issuer=str(text("relayIssuer")),
            issuer=text("issuer", required=False),
            tenant_id=text("tenantId", required=False),
            entra_tenants=tuple(tenants),
        )


# A relay replica's id: what the hub's registry, HELLO and `--replica-id` accept (a pod name fits).
REPLICA_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass(frozen=True)
class RelayReplica:
    """One live relay replica: what the hub's registry lists, and what HELLO and REPLICAS carry.

    `url` is where agents reach this replica (wss://host:port, no path). Replicas behind
    one shared load-balanced URL all name that URL; agents then tell them apart by the
    replica id in each session's HELLO.
    """

    id: str
    url: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "url": self.url}

    @classmethod
    def from_json(cls, doc: Any) -> RelayReplica:
        if not isinstance(doc, dict):
            raise WireError("a relay replica is not a JSON object")
        rid, url = doc.get("id"), doc.get("url")
        if not isinstance(rid, str) or not REPLICA_ID.fullmatch(rid):
            raise WireError("a relay replica has no valid 'id'")
        if not isinstance(url, str) or not url.startswith(("wss://", "ws://")) or len(url) > 512:
            raise WireError(f"relay replica {rid!r} has no wss:// 'url'")
        return cls(rid, url.rstrip("/"))


def relay_replicas(doc: Any) -> tuple[RelayReplica, ...]:
    """The replica set of a `{"replicas": [...]}` document (the registry's answer, HELLO, REPLICAS)."""
    items = doc.get("replicas") if isinstance(doc, dict) else None
    if items is None:
        return ()
    if not isinstance(items, list) or len(items) > 64:
        raise WireError("'replicas' is not a list of at most 64 relay replicas")
    return tuple(RelayReplica.from_json(item) for item in items)
