"""The hub's tables. Schema changes go through a migration in `migrations/versions/`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class HubSecret(Base):
    """Hub-wide keys shared by every replica (CA keys, issuer signing keys), encrypted."""

    __tablename__ = "hub_secrets"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class RelayReplica(Base):
    """A live relay replica, as it registered itself (`hub.relays`); rows past their TTL are stale."""

    __tablename__ = "relay_replicas"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    seen_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)


class Cluster(Base):
    """A connected-cluster resource (`Microsoft.Kubernetes/connectedClusters`)."""

    __tablename__ = "clusters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # ARM ids compare case-insensitively: `resource_key` is the lowercased id.
    resource_key: Mapped[str] = mapped_column(String(512), unique=True)
    subscription_id: Mapped[str] = mapped_column(String(64))
    resource_group: Mapped[str] = mapped_column(String(90))
    name: Mapped[str] = mapped_column(String(63))
    location: Mapped[str] = mapped_column(String(64), default="local")
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    agent_public_key: Mapped[str] = mapped_column(Text)
    distribution: Mapped[str] = mapped_column(String(64), default="generic")
    infrastructure: Mapped[str] = mapped_column(String(64), default="generic")
    total_core_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kubernetes_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    total_node_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cluster_ca: Mapped[str | None] = mapped_column(Text, nullable=True)
    apiserver_server_name: Mapped[str | None] = mapped_column(String(253), nullable=True)
    auto_upgrade: Mapped[bool] = mapped_column(Boolean, default=True)
    provisioning_state: Mapped[str] = mapped_column(String(32), default="Succeeded")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_connectivity_time: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    metadata_updated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Expiry of the newest identity certificate issued; None until the agent onboards.
    identity_expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Impersonation mode (hub/aadproxy.py): the TLS name of the cluster's kube-aad-proxy, kept for
    # the life of the resource, and the expiry of its newest serving certificate (None: passthrough).
    aad_proxy_server_name: Mapped[str | None] = mapped_column(String(253), nullable=True)
    aad_proxy_expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)

    # Lists page through a subscription (or a group) in id order: an index range, not a scan.
    __table_args__ = (
        Index("ix_clusters_listing", "subscription_id", "id"),
        Index("ix_clusters_group_listing", "subscription_id", "resource_group", "id"),
    )


class IdentityCertificate(Base):
    """Every identity certificate issued; deleting the cluster revokes them all."""

    __tablename__ = "identity_certificates"
    serial: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    not_before: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)


class UsedAssertion(Base):
    """Onboarding assertion ids already spent (replay protection) until they expire."""

    __tablename__ = "used_assertions"
    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)


class AgentUsage(Base):
    """The latest CPU and memory each agent of a cluster reported."""

    __tablename__ = "agent_usage"
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True)
    agent: Mapped[str] = mapped_column(String(63), primary_key=True)
    cpu_millicores: Mapped[int] = mapped_column(Integer)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    reported_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class AgentUsageSample(Base):
    """Every usage report of one agent: the time series behind `AgentUsage`'s latest value."""

    __tablename__ = "agent_usage_samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    agent: Mapped[str] = mapped_column(String(63))
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    cpu_millicores: Mapped[int] = mapped_column(Integer)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    __table_args__ = (Index("ix_agent_usage_samples_cluster_agent_ts", "cluster_id", "agent", "ts"),)


class AgentLog(Base):
    __tablename__ = "agent_logs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    agent: Mapped[str] = mapped_column(String(63))
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    __table_args__ = (Index("ix_agent_logs_cluster_ts", "cluster_id", "ts"),)


class Configuration(Base):
    """A GitOps source-control configuration of one cluster."""

    __tablename__ = "configurations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    repository_url: Mapped[str] = mapped_column(Text)
    operator_namespace: Mapped[str] = mapped_column(String(63), default="default")
    operator_instance_name: Mapped[str] = mapped_column(String(63))
    operator_type: Mapped[str] = mapped_column(String(16), default="Flux")
    operator_scope: Mapped[str] = mapped_column(String(16), default="cluster")
    operator_params: Mapped[str] = mapped_column(Text, default="")
    ssh_known_hosts: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Fernet-encrypted JSON of configurationProtectedSettings; only agents read it.
    protected_settings: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    compliance_state: Mapped[str] = mapped_column(String(32), default="Pending")
    compliance_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (UniqueConstraint("cluster_id", "name"),)


class FluxConfiguration(Base):
    """A Flux v2 configuration of one cluster: the user's spec, and what its config-agent reported."""

    __tablename__ = "flux_configurations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # hub.fluxspec.FluxSpec.desired()
    # Fernet-encrypted JSON of configurationProtectedSettings; only the cluster's agents read it.
    protected_settings: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)  # +1 on every PUT
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)  # the agent's last applied
    provisioning_state: Mapped[str] = mapped_column(String(32), default="Creating")
    compliance_state: Mapped[str] = mapped_column(String(32), default="Pending")
    statuses: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    source_synced_commit_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    source_updated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    status_updated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (UniqueConstraint("cluster_id", "name"),)


class ExtensionType(Base):
    """One entry of the extension catalogue admins keep: where its Helm chart is, its versions."""

    __tablename__ = "extension_types"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # e.g. microsoft.flux (lowercase)
    repository: Mapped[str] = mapped_column(Text)  # https:// Helm repository, or oci://registry/path
    chart: Mapped[str] = mapped_column(String(253))
    # [{"version": "2.4.0", "releaseTrain": "stable"}, ...]
    versions: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    default_values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    release_namespace: Mapped[str] = mapped_column(String(63))  # the default for cluster scope
    ca_cert: Mapped[str | None] = mapped_column(Text, nullable=True)  # PEM, for a private repository
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Extension(Base):
    """An extension of one cluster: what the user asked for, and what the extension-manager reported."""

    __tablename__ = "extensions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(253))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # hub.extensionspec.ExtensionSpec.desired()
    protected_settings: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # Fernet JSON
    target_version: Mapped[str] = mapped_column(String(64))  # what the agent is told to install
    generation: Mapped[int] = mapped_column(Integer, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)
    deleting: Mapped[bool] = mapped_column(Boolean, default=False)
    provisioning_state: Mapped[str] = mapped_column(String(32), default="Creating")
    installed_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    statuses: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (UniqueConstraint("cluster_id", "name"),)


class DirectoryObject(Base):
    """A user, group or service principal of the local issuer's directory."""

    __tablename__ = "directory_objects"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # object id (GUID)
    kind: Mapped[str] = mapped_column(String(20), index=True)  # user | group | servicePrincipal
    display_name: Mapped[str] = mapped_column(String(256))
    # Users: userPrincipalName (lowercase). Service principals: appId (client id).
    login: Mapped[str | None] = mapped_column(String(256), unique=True, nullable=True)
    credential_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class GroupMember(Base):
    __tablename__ = "group_members"
    group_id: Mapped[str] = mapped_column(
        ForeignKey("directory_objects.id", ondelete="CASCADE"), primary_key=True
    )
    member_id: Mapped[str] = mapped_column(
        ForeignKey("directory_objects.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class AuthorizationGrant(Base):
    """A sign-in on its way to the token endpoint: a device code (RFC 8628) waiting for its user,
    or an authorization code (RFC 6749 with PKCE) waiting to be redeemed. The key is the SHA-256
    of the code the client holds, so the table holds nothing a client could redeem."""

    __tablename__ = "authorization_grants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # device | code
    user_code: Mapped[str | None] = mapped_column(String(16), unique=True, nullable=True)  # device only
    client_id: Mapped[str] = mapped_column(String(256))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending | approved | denied | redeemed
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("directory_objects.id", ondelete="CASCADE"), nullable=True
    )
    credential: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the user's, when approved
    interval: Mapped[int] = mapped_column(Integer, default=0)  # device: seconds between polls
    last_poll_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    redirect_uri: Mapped[str | None] = mapped_column(Text, nullable=True)  # code only
    code_challenge: Mapped[str | None] = mapped_column(String(128), nullable=True)
    nonce: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)


class RoleDefinition(Base):
    """A custom role (built-in roles live in code, `hub/rbac/roles.py`)."""

    __tablename__ = "role_definitions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # {"actions": [...], "notActions": [...], "dataActions": [...], "notDataActions": [...]}
    permissions: Mapped[dict[str, list[str]]] = mapped_column(JSON)
    assignable_scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class RoleAssignment(Base):
    __tablename__ = "role_assignments"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    scope: Mapped[str] = mapped_column(String(600))
    scope_key: Mapped[str] = mapped_column(String(600), index=True)  # lowercased, no trailing /
    role_definition_id: Mapped[str] = mapped_column(String(36))
    principal_id: Mapped[str] = mapped_column(String(36), index=True)
    principal_type: Mapped[str] = mapped_column(String(20))  # User | Group | ServicePrincipal
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    __table_args__ = (UniqueConstraint("scope_key", "role_definition_id", "principal_id"),)
