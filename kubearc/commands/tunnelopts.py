"""The tunnel options the relay, the agent and the client proxy share."""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING

import typer

from foundation.settings import parse_duration, parse_size
from foundation.wire import REPLICA_ID

if TYPE_CHECKING:
    from proxy.protocol.session import Settings

MaxWindowOpt = typer.Option(
    "16Mi",
    "--max-window",
    envvar="KUBEARC_TUNNEL_MAX_WINDOW",
    help="Largest receive window a stream grows to (512Ki at first). Raise it for paths whose "
    "bandwidth x round trip exceeds it; it bounds memory per stream.",
)


DrainOpt = typer.Option(
    "30s",
    "--drain",
    envvar="KUBEARC_RELAY_DRAIN",
    help="On SIGTERM, how long open streams may take to finish after every session is told GOAWAY.",
)


PingIntervalOpt = typer.Option(
    "10s",
    "--ping-interval",
    envvar="KUBEARC_TUNNEL_PING_INTERVAL",
    help="How often each relay session is PINGed: a relay that stops answering (wedged, or its "
    "host gone without a reset) is dropped and dialled again.",
)
PingTimeoutOpt = typer.Option(
    "20s",
    "--ping-timeout",
    envvar="KUBEARC_TUNNEL_PING_TIMEOUT",
    help="How long a PING may go unanswered before the session is dropped.",
)


def liveness(interval: str, timeout: str) -> tuple[float, float]:
    """`--ping-interval` and `--ping-timeout` in seconds (a bad value is a usage error)."""
    values = []
    for value, flag in ((interval, "--ping-interval"), (timeout, "--ping-timeout")):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=flag) from None
        if seconds <= 0:
            raise typer.BadParameter("must be more than 0s", param_hint=flag)
        values.append(seconds)
    return values[0], values[1]


def replica_id(given: str | None, port: int, flag: str) -> str:
    """A relay replica's id: the given one, or `<hostname>-<port>` (a pod's name in Kubernetes)."""
    rid = given or re.sub(r"[^A-Za-z0-9_.-]", "-", f"{socket.gethostname()}-{port}")[:128]
    if not REPLICA_ID.fullmatch(rid):
        raise typer.BadParameter("1-128 letters, digits, '-', '_' or '.'", param_hint=flag)
    return rid


def advertise_url(given: str | None, default: str, flag: str) -> str:
    """Where agents reach this relay replica: wss://host:port, no path."""
    url = (given or default).rstrip("/")
    if not re.fullmatch(r"wss?://[^/\s]+", url):
        raise typer.BadParameter(f"{url!r} is not wss://HOST:PORT (no path)", param_hint=flag)
    return url


def drain_seconds(value: str) -> float:
    """`--drain` in seconds (a bad value is a usage error)."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--drain") from None


def tunnel_settings(max_window: str) -> Settings:
    """Session settings with `--max-window` applied (a bad value is a usage error)."""
    from proxy.protocol import frames
    from proxy.protocol.session import Settings

    try:
        size = parse_size(max_window)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-window") from None
    defaults = Settings()
    if not defaults.initial_window <= size <= frames.MAX_WINDOW:
        raise typer.BadParameter(
            f"must be between {defaults.initial_window} (the starting window) and {frames.MAX_WINDOW} bytes",
            param_hint="--max-window",
        )
    # A stream's window grows to at most half the connection window (proxy.protocol.session), so a
    # larger --max-window brings a larger connection window with it.
    return Settings(
        max_window=size,
        connection_window=min(max(defaults.connection_window, 2 * size), frames.MAX_WINDOW),
    )
