"""`kubearc hub`: run the control plane, with the cluster-connect relay mounted in its process.

The command maps flags to `HubConfig` (README: "Configuration reference") and wires
the relay in; SIGTERM drains the relay first, while the API still verifies the
renewals of the streams that are finishing, and then stops the hub.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from foundation import aio
from foundation.logs import setup_logging
from foundation.settings import default_state_dir, parse_duration
from kubearc.commands import listenopts
from kubearc.commands.tunnelopts import (
    DrainOpt,
    MaxWindowOpt,
    advertise_url,
    drain_seconds,
    replica_id,
    tunnel_settings,
)

if TYPE_CHECKING:
    from hub.config import HubConfig
    from hub.context import Hub
    from hub.server import TlsFiles
    from proxy.protocol.session import Settings
    from proxy.relay_server import RelayServer


def _opt(envvar: str, help: str) -> typer.models.OptionInfo:
    return typer.Option(envvar=envvar, help=help)


StateDir = Annotated[Path | None, _opt("KUBEARC_STATE_DIR", "State directory (default: user state dir).")]
Host = Annotated[str, _opt("KUBEARC_HUB_HOST", "Address to listen on.")]
Port = Annotated[int, _opt("KUBEARC_HUB_PORT", "HTTPS port.")]
PublicUrl = Annotated[str | None, _opt("KUBEARC_HUB_URL", "URL agents and users reach the hub at.")]
DatabaseUrl = Annotated[
    str | None, _opt("KUBEARC_DATABASE_URL", "postgresql://... (default: SQLite in the state dir).")
]
TlsCert = Annotated[Path | None, _opt("KUBEARC_HUB_TLS_CERT", "Serving certificate (PEM).")]
TlsKey = Annotated[Path | None, _opt("KUBEARC_HUB_TLS_KEY", "Serving key (PEM).")]
Audience = Annotated[list[str], _opt("KUBEARC_HUB_AUDIENCE", "Accepted token audience (repeatable).")]
EntraTenant = Annotated[
    list[str], _opt("KUBEARC_ENTRA_TENANT", "Entra tenant id whose tokens are accepted (repeatable).")
]
LocalIssuer = Annotated[bool, _opt("KUBEARC_LOCAL_ISSUER", "Serve and trust the local issuer.")]
OfflineAfter = Annotated[str, _opt("KUBEARC_OFFLINE_AFTER", "Silence before Offline.")]
InstallTimeout = Annotated[str, _opt("KUBEARC_AGENT_INSTALL_TIMEOUT", "Time before AgentNotInstalled.")]
IdentityValidity = Annotated[str, _opt("KUBEARC_IDENTITY_VALIDITY", "Identity cert validity.")]
RenewalAfter = Annotated[str, _opt("KUBEARC_RENEWAL_AFTER", "Certificate age when renewal opens.")]
CredentialTtl = Annotated[
    str, _opt("KUBEARC_RELAY_CREDENTIAL_TTL", "Lifetime of cluster-connect credentials.")
]
RelayOn = Annotated[bool, _opt("KUBEARC_RELAY", "Run the cluster-connect relay in this process.")]
RelayPort = Annotated[int, _opt("KUBEARC_RELAY_PORT", "Port of the in-process relay (wss).")]
RelayUrl = Annotated[
    str | None, _opt("KUBEARC_RELAY_URL", "wss:// URL clients and agents reach the relay at.")
]
RelayReplica = Annotated[
    str | None, _opt("KUBEARC_RELAY_REPLICA", "The in-process relay's replica id (default: HOSTNAME-PORT).")
]
RelayAdvertise = Annotated[
    str | None,
    _opt(
        "KUBEARC_RELAY_ADVERTISE_URL",
        "wss://HOST:PORT agents reach this replica at (default: the relay URL).",
    ),
]
ReplicaTtl = Annotated[
    str, _opt("KUBEARC_RELAY_REPLICA_TTL", "Silence after which a relay replica leaves the replica set.")
]
RegistrationKey = Annotated[
    Path | None,
    _opt(
        "KUBEARC_RELAY_REGISTRATION_KEY_FILE",
        "File with the key relay replicas register with (default: made once, in the database).",
    ),
]
LatestAgent = Annotated[
    str | None, _opt("KUBEARC_LATEST_AGENT_VERSION", "Agent version offered for upgrade (default: this one).")
]
Retention = Annotated[str, _opt("KUBEARC_LOG_RETENTION", "How long agents' logs and usage are kept.")]
LogLevel = Annotated[str, typer.Option(envvar="KUBEARC_LOG_LEVEL")]
LogFormat = Annotated[str, _opt("KUBEARC_LOG_FORMAT", "text or json.")]


def _duration(value: str, flag: str) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=parse_duration(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


def hub(
    state_dir: StateDir = None,
    host: Host = "127.0.0.1",
    port: Port = 8443,
    public_url: PublicUrl = None,
    database_url: DatabaseUrl = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    audience: Audience = ["api://kubearc-hub"],  # noqa: B006 - typer reads the default, never mutates it
    entra_tenant: EntraTenant = [],  # noqa: B006
    local_issuer: LocalIssuer = True,
    offline_after: OfflineAfter = "15m",
    agent_install_timeout: InstallTimeout = "1h",
    identity_validity: IdentityValidity = "90d",
    renewal_after: RenewalAfter = "45d",
    relay_credential_ttl: CredentialTtl = "15m",
    relay: RelayOn = True,
    relay_port: RelayPort = 8444,
    relay_url: RelayUrl = None,
    relay_replica_id: RelayReplica = None,
    relay_advertise_url: RelayAdvertise = None,
    relay_registration_key_file: RegistrationKey = None,
    relay_replica_ttl: ReplicaTtl = "15s",
    max_window: str = MaxWindowOpt,
    drain: str = DrainOpt,
    max_connections: int | None = listenopts.max_connections_option("a quarter"),
    relay_max_connections: int | None = listenopts.max_connections_option(
        "half", "--relay-max-connections", "KUBEARC_RELAY_MAX_CONNECTIONS"
    ),
    max_pending: int = listenopts.MaxPendingPortOpt,
    max_pending_per_address: int = listenopts.MaxPendingOpt,
    handshake_timeout: str = listenopts.HandshakeTimeoutOpt,
    header_timeout: str = listenopts.HeaderTimeoutOpt,
    idle_timeout: str = listenopts.IdleTimeoutOpt,
    latest_agent_version: LatestAgent = None,
    log_retention: Retention = "7d",
    log_level: LogLevel = "info",
    log_format: LogFormat = "text",
) -> None:
    """Run the hub: cluster resources, identity, status, RBAC and checkAccess, and the local issuer."""
    from hub.config import HubConfig, StatusThresholds

    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    setup_logging(log_level, log_format)
    tunnel, grace = tunnel_settings(max_window), drain_seconds(drain)
    timeouts = (max_pending_per_address, handshake_timeout, header_timeout, idle_timeout)
    api_limits = listenopts.limits(max_connections, 0.25, *timeouts, max_pending=max_pending)
    relay_limits = listenopts.limits(
        relay_max_connections, 0.5, *timeouts, flag="--relay-max-connections", max_pending=max_pending
    )
    config = HubConfig(
        state_dir=state_dir or default_state_dir(),
        host=host,
        port=port,
        public_url=public_url,
        database_url=database_url,
        tls_cert=tls_cert,
        tls_key=tls_key,
        audiences=audience,
        entra_tenants=entra_tenant,
        local_issuer=local_issuer,
        status=StatusThresholds(
            offline_after=_duration(offline_after, "--offline-after"),
            agent_install_timeout=_duration(agent_install_timeout, "--agent-install-timeout"),
        ),
        identity_validity=_duration(identity_validity, "--identity-validity"),
        renewal_after=_duration(renewal_after, "--renewal-after"),
        relay_credential_ttl=_duration(relay_credential_ttl, "--relay-credential-ttl"),
        telemetry_retention=_duration(log_retention, "--log-retention"),
        relay_port=relay_port,
        relay_url=relay_url,
        relay_registration_key_file=relay_registration_key_file,
        relay_replica_ttl=_duration(relay_replica_ttl, "--relay-replica-ttl"),
        limits=api_limits,
        relay_limits=relay_limits,
    )
    if latest_agent_version:
        config.latest_agent_version = latest_agent_version
    replica = InProcessRelay(
        replica_id(relay_replica_id, relay_port, "--relay-replica-id"),
        advertise_url(relay_advertise_url, config.relay, "--relay-advertise-url"),
        tunnel,
        grace,
    )
    try:
        aio.run_until_signalled(lambda stop: _run(config, replica if relay else None, stop))
    except ExceptionGroup as group:
        from hub.errors import HubError

        failed = group.subgroup((OSError, HubError))
        if failed is None:
            raise
        first = failed.exceptions[0]
        typer.echo(f"error: cannot start the hub: {str(first) or type(first).__name__}", err=True)
        raise typer.Exit(1) from None


@dataclass(frozen=True)
class InProcessRelay:
    """The relay replica `kubearc hub` runs beside the API."""

    replica_id: str
    advertise_url: str
    settings: Settings
    drain: float


async def _run(config: HubConfig, relay: InProcessRelay | None, stop: asyncio.Event) -> None:
    """The hub, and (unless `relay` is None) its relay; on `stop` the relay drains first."""
    from hub.server import serve

    started: asyncio.Future[tuple[Hub, TlsFiles]] = asyncio.get_running_loop().create_future()

    def ready(h: Hub, tls: TlsFiles) -> None:
        typer.echo(f"kubearc hub listening on {config.url} (state: {config.state_dir})", err=True)
        if tls.ca:
            typer.echo(f"  clients trust the hub with CA file: {tls.ca}", err=True)
        typer.echo(f"  local issuer: {h.issuer}", err=True)
        started.set_result((h, tls))

    hub_stop = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        serving = tasks.create_task(serve(config, on_ready=ready, stop=hub_stop))
        # Ctrl-C or SIGTERM while the hub starts (a database that does not answer keeps it there for a
        # minute) stops it at once: the start-up is cancelled and what it opened is closed.
        stopped = tasks.create_task(stop.wait())
        either: list[asyncio.Future[Any]] = [started, stopped]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            serving.cancel()
            return
        stopped.cancel()
        if relay is not None:
            running, tls = started.result()
            server = _relay_server(config, running, tls, relay)
            running.on_cluster_deleted.append(server.relay.drop_cluster)  # its streams end at once
            typer.echo(f"  cluster-connect relay: {config.relay}", err=True)
            await server.serve(stop)
        else:
            await stop.wait()
        hub_stop.set()


def _relay_server(config: HubConfig, running: Hub, tls: TlsFiles, relay: InProcessRelay) -> RelayServer:
    """The relay in the hub's process: same certificate, verifying credentials with this hub and
    registered in its replica set (through the API, as every relay replica is)."""
    from foundation.gate import serving_context
    from proxy.registry import HubRegistry, Registration
    from proxy.relay import Relay
    from proxy.relay_auth import HubAuth
    from proxy.relay_server import RelayServer

    context = serving_context(tls.cert, tls.key)
    ca_file = str(tls.ca) if tls.ca else None
    switch = Relay(relay.settings, replica_id=relay.replica_id)
    registry = HubRegistry(config.url, running.relay_key.decode(), ca_file)
    return RelayServer(
        switch,
        HubAuth(config.url, ca_file),
        config.host,
        config.relay_port,
        context,
        drain=relay.drain,
        limits=config.relay_limits,
        registration=Registration(switch, registry, relay.advertise_url),
    )
