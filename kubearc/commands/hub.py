"""`kubearc hub`: run the control plane (and, once it exists, the relay mounted in it)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from foundation import aio
from foundation.logs import setup_logging
from foundation.settings import default_state_dir, parse_duration
from kubearc.commands.tunnelopts import DrainOpt, MaxWindowOpt, drain_seconds, tunnel_settings

if TYPE_CHECKING:
    from hub.context import Hub
    from hub.server import TlsFiles
    from proxy.protocol.session import Settings
    from proxy.relay_server import RelayServer


def _duration(value: str, flag: str) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=parse_duration(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


def hub(
    state_dir: Path = typer.Option(
        None, envvar="KUBEARC_STATE_DIR", help="State directory (default: user state dir)."
    ),
    host: str = typer.Option("127.0.0.1", envvar="KUBEARC_HUB_HOST", help="Address to listen on."),
    port: int = typer.Option(8443, envvar="KUBEARC_HUB_PORT", help="HTTPS port."),
    public_url: str = typer.Option(
        None, envvar="KUBEARC_HUB_URL", help="URL agents and users reach the hub at."
    ),
    database_url: str = typer.Option(
        None, envvar="KUBEARC_DATABASE_URL", help="postgresql://... (default: SQLite in the state dir)."
    ),
    tls_cert: Path = typer.Option(None, envvar="KUBEARC_HUB_TLS_CERT", help="Serving certificate (PEM)."),
    tls_key: Path = typer.Option(None, envvar="KUBEARC_HUB_TLS_KEY", help="Serving key (PEM)."),
    audience: list[str] = typer.Option(
        ["api://kubearc-hub"], envvar="KUBEARC_HUB_AUDIENCE", help="Accepted token audience (repeatable)."
    ),
    entra_tenant: list[str] = typer.Option(
        [], envvar="KUBEARC_ENTRA_TENANT", help="Entra tenant id whose tokens are accepted (repeatable)."
    ),
    local_issuer: bool = typer.Option(
        True, envvar="KUBEARC_LOCAL_ISSUER", help="Serve and trust the local issuer."
    ),
    offline_after: str = typer.Option("15m", envvar="KUBEARC_OFFLINE_AFTER", help="Silence before Offline."),
    agent_install_timeout: str = typer.Option(
        "1h", envvar="KUBEARC_AGENT_INSTALL_TIMEOUT", help="Time before AgentNotInstalled."
    ),
    identity_validity: str = typer.Option(
        "90d", envvar="KUBEARC_IDENTITY_VALIDITY", help="Identity cert validity."
    ),
    renewal_after: str = typer.Option(
        "45d", envvar="KUBEARC_RENEWAL_AFTER", help="Certificate age when renewal opens."
    ),
    relay_credential_ttl: str = typer.Option(
        "15m", envvar="KUBEARC_RELAY_CREDENTIAL_TTL", help="Lifetime of cluster-connect credentials."
    ),
    relay: bool = typer.Option(
        True, envvar="KUBEARC_RELAY", help="Run the cluster-connect relay in this process."
    ),
    relay_port: int = typer.Option(
        8444, envvar="KUBEARC_RELAY_PORT", help="Port of the in-process relay (wss)."
    ),
    relay_url: str = typer.Option(
        None, envvar="KUBEARC_RELAY_URL", help="wss:// URL clients and agents reach the relay at."
    ),
    max_window: str = MaxWindowOpt,
    drain: str = DrainOpt,
    latest_agent_version: str = typer.Option(
        None,
        envvar="KUBEARC_LATEST_AGENT_VERSION",
        help="Agent version offered for upgrade (default: this one).",
    ),
    log_level: str = typer.Option("info", envvar="KUBEARC_LOG_LEVEL"),
    log_format: str = typer.Option("text", envvar="KUBEARC_LOG_FORMAT", help="text or json."),
) -> None:
    """Run the hub: cluster resources, identity, status, RBAC and checkAccess, and the local issuer."""
    from hub.config import HubConfig, StatusThresholds
    from hub.server import serve

    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    setup_logging(log_level, log_format)
    tunnel, grace = tunnel_settings(max_window), drain_seconds(drain)
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
        relay_port=relay_port,
        relay_url=relay_url,
    )
    if latest_agent_version:
        config.latest_agent_version = latest_agent_version

    started = asyncio.Event()
    serving: dict[str, TlsFiles] = {}

    def ready(h: Hub, tls: TlsFiles) -> None:
        serving["tls"] = tls
        typer.echo(f"kubearc hub listening on {config.url} (state: {config.state_dir})", err=True)
        if tls.ca:
            typer.echo(f"  clients trust the hub with CA file: {tls.ca}", err=True)
        typer.echo(f"  local issuer: {h.issuer}", err=True)
        started.set()

    async def main(stop: asyncio.Event) -> None:
        """SIGTERM: the relay drains first, while the API still verifies renewals; then the hub."""
        hub_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(serve(config, on_ready=ready, stop=hub_stop))
            if relay:
                await started.wait()
                server = _relay_server(config.host, relay_port, serving["tls"], config.url, tunnel, grace)
                typer.echo(f"  cluster-connect relay: {config.relay}", err=True)
                await server.serve(stop)
            else:
                await stop.wait()
            hub_stop.set()

    try:
        aio.run_until_signalled(main)
    except ExceptionGroup as group:
        failed = group.subgroup(OSError)
        if failed is None:
            raise
        typer.echo(f"error: cannot start the hub: {failed.exceptions[0]}", err=True)
        raise typer.Exit(1) from None


def _relay_server(
    host: str, port: int, tls: TlsFiles, hub_url: str, settings: Settings, drain: float
) -> RelayServer:
    """The relay in the hub's process: same certificate, verifying credentials with this hub."""
    import ssl

    from proxy.relay import Relay
    from proxy.relay_auth import HubAuth
    from proxy.relay_server import RelayServer

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    auth = HubAuth(hub_url, str(tls.ca) if tls.ca else None)
    return RelayServer(Relay(settings), auth, host, port, context, drain=drain)
