"""`kubearc relay`: the cluster-connect relay on its own (it also runs inside `kubearc hub`).

SIGTERM (or Ctrl+C) drains: GOAWAY to every session, no new streams, open streams
finish for up to `--drain`, then the process exits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from foundation import aio
from foundation.logs import setup_logging
from foundation.settings import default_state_dir
from kubearc.commands import listenopts
from kubearc.commands.tunnelopts import (
    DrainOpt,
    MaxWindowOpt,
    advertise_url,
    drain_seconds,
    replica_id,
    tunnel_settings,
)


def relay(
    hub: str = typer.Option(..., "--hub", envvar="KUBEARC_HUB_URL", help="Hub that verifies credentials."),
    hub_ca: Path = typer.Option(None, "--hub-ca", envvar="KUBEARC_HUB_CA", help="CA of the hub."),
    host: str = typer.Option("127.0.0.1", "--host", envvar="KUBEARC_RELAY_HOST"),
    port: int = typer.Option(8444, "--port", envvar="KUBEARC_RELAY_PORT"),
    tls_cert: Path = typer.Option(None, "--tls-cert", envvar="KUBEARC_RELAY_TLS_CERT"),
    tls_key: Path = typer.Option(None, "--tls-key", envvar="KUBEARC_RELAY_TLS_KEY"),
    state_dir: Path = typer.Option(
        None, "--state-dir", envvar="KUBEARC_STATE_DIR", help="Where a self-made serving certificate is kept."
    ),
    replica: str = typer.Option(
        None,
        "--replica-id",
        envvar="KUBEARC_RELAY_REPLICA",
        help="This replica's id in the replica set (default: HOSTNAME-PORT).",
    ),
    advertise: str = typer.Option(
        None,
        "--advertise-url",
        envvar="KUBEARC_RELAY_ADVERTISE_URL",
        help="wss://HOST:PORT agents reach this replica at (default: this host and port); replicas "
        "behind one load-balanced URL may all give it.",
    ),
    registration_key_file: Path = typer.Option(
        None,
        "--registration-key-file",
        envvar="KUBEARC_RELAY_REGISTRATION_KEY_FILE",
        help="File with the hub's relay registration key: join the hub's replica set (the hub "
        "writes it to <state-dir>/relay-registration.key). Without it, this relay runs alone.",
    ),
    max_window: str = MaxWindowOpt,
    drain: str = DrainOpt,
    reuse_port: bool = typer.Option(
        False,
        "--reuse-port",
        envvar="KUBEARC_RELAY_REUSE_PORT",
        help="Let a new relay process listen on the same port while this one drains (SO_REUSEPORT; "
        "both must run as the same user).",
    ),
    max_connections: int | None = listenopts.max_connections_option("three quarters"),
    max_pending: int = listenopts.MaxPendingPortOpt,
    max_pending_per_address: int = listenopts.MaxPendingOpt,
    handshake_timeout: str = listenopts.HandshakeTimeoutOpt,
    header_timeout: str = listenopts.HeaderTimeoutOpt,
    idle_timeout: str = listenopts.IdleTimeoutOpt,
    log_level: str = typer.Option("info", "--log-level", envvar="KUBEARC_LOG_LEVEL"),
    log_format: str = typer.Option("text", "--log-format", envvar="KUBEARC_LOG_FORMAT"),
) -> None:
    """Run the relay: agents dial in, `kubearc proxy` dials in, streams are switched between them."""
    from foundation import pki
    from foundation.gate import serving_context
    from proxy.registry import HubRegistry, Registration
    from proxy.relay import Relay
    from proxy.relay_auth import HubAuth
    from proxy.relay_server import RelayServer

    setup_logging(log_level, log_format)
    rid = replica_id(replica, port, "--replica-id")
    public = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    url = advertise_url(advertise, f"wss://{public}:{port}", "--advertise-url")
    key = _registration_key(registration_key_file)
    settings = tunnel_settings(max_window)
    grace = drain_seconds(drain)
    caps = listenopts.limits(
        max_connections,
        0.75,
        max_pending_per_address,
        handshake_timeout,
        header_timeout,
        idle_timeout,
        max_pending=max_pending,
    )
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    if tls_cert is None:
        ca, tls_cert, tls_key = pki.ensure_serving_pair(
            (state_dir or default_state_dir()) / "relay-tls",
            ["localhost", "127.0.0.1", host],
            "kubearc relay CA",
        )
        typer.echo(f"relay CA file (clients and agents trust it): {ca}", err=True)
    context = serving_context(tls_cert, tls_key)
    relay_ = Relay(settings, replica_id=rid)
    ca_file = str(hub_ca) if hub_ca else None
    server = RelayServer(
        relay_,
        HubAuth(hub.rstrip("/"), ca_file),
        host,
        port,
        context,
        drain=grace,
        reuse_port=reuse_port,
        limits=caps,
        registration=Registration(relay_, HubRegistry(hub, key, ca_file), url) if key else None,
    )

    async def main(stop: asyncio.Event) -> None:
        listening = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(server.serve(stop, listening))
            await listening.wait()
            typer.echo(f"kubearc relay listening on wss://{host}:{port}", err=True)
            if key:
                typer.echo(f"  replica {rid} of the hub's replica set, reached at {url}", err=True)

    aio.run_until_signalled(main)


def _registration_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--registration-key-file") from None
    if len(key) < 16:
        raise typer.BadParameter(f"{path} holds no registration key", param_hint="--registration-key-file")
    return key
