"""The connection limits every TLS-serving command takes (`foundation.gate.Limits`).

`limits()` also lifts the process's file-descriptor soft limit to its hard limit
first, so the default caps, fractions of that limit, are sized below what the
process may really open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from foundation.settings import parse_duration

if TYPE_CHECKING:
    from foundation.gate import Limits


def max_connections_option(
    share: str, flag: str = "--max-connections", envvar: str = "KUBEARC_MAX_CONNECTIONS"
) -> Any:
    return typer.Option(
        None,
        flag,
        envvar=envvar,
        help=f"Open connections the port holds; above it new ones are reset at once "
        f"(default: {share} of the file-descriptor limit).",
    )


MaxPendingPortOpt: Any = typer.Option(
    512,
    "--max-pending",
    envvar="KUBEARC_MAX_PENDING",
    help="Connections on the port, from all addresses, that have not yet sent a request (the relay: "
    "not yet authenticated); above it new ones are reset, so a reconnect storm backs off instead "
    "of timing out.",
)
MaxPendingOpt: Any = typer.Option(
    256,
    "--max-pending-per-address",
    envvar="KUBEARC_MAX_PENDING_PER_ADDRESS",
    help="Connections from one address that have not yet sent a request; above it new ones are reset.",
)
HandshakeTimeoutOpt: Any = typer.Option(
    "5s", "--handshake-timeout", envvar="KUBEARC_HANDSHAKE_TIMEOUT", help="Time for a TLS handshake."
)
HeaderTimeoutOpt: Any = typer.Option(
    "10s",
    "--header-timeout",
    envvar="KUBEARC_HEADER_TIMEOUT",
    help="Time from a connection's accept to its first request's complete head.",
)
IdleTimeoutOpt: Any = typer.Option(
    "30s",
    "--idle-timeout",
    envvar="KUBEARC_IDLE_TIMEOUT",
    help="How long a kept-alive connection may wait for its next request.",
)


def _seconds(value: str, flag: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None
    if seconds <= 0:
        raise typer.BadParameter("must be more than 0 seconds", param_hint=flag)
    return seconds


def limits(
    max_connections: int | None,
    share: float,
    max_pending_per_address: int,
    handshake_timeout: str,
    header_timeout: str,
    idle_timeout: str,
    flag: str = "--max-connections",
    max_pending: int = 512,
) -> Limits:
    """The flags as `Limits` (a bad value is a usage error); the fd limit is raised first."""
    from foundation.gate import Limits, default_max_connections, raise_fd_limit

    raise_fd_limit()
    if max_connections is not None and max_connections < 1:
        raise typer.BadParameter("must be at least 1", param_hint=flag)
    if max_pending < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--max-pending")
    if max_pending_per_address < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--max-pending-per-address")
    return Limits(
        max_connections=max_connections or default_max_connections(share),
        max_pending=max_pending,
        max_pending_per_address=max_pending_per_address,
        handshake_timeout=_seconds(handshake_timeout, "--handshake-timeout"),
        header_timeout=_seconds(header_timeout, "--header-timeout"),
        idle_timeout=_seconds(idle_timeout, "--idle-timeout"),
    )
