"""The hub's settings: every flag of `kubearc hub` lands here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from foundation import __version__
from foundation.gate import Limits


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class StatusThresholds:
    """When a cluster counts as Offline or as never having installed its agents."""

    offline_after: dt.timedelta = dt.timedelta(minutes=15)
    agent_install_timeout: dt.timedelta = dt.timedelta(hours=1)


@dataclass
class HubConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    # How clients and agents reach this hub; the issuer URL and token audiences derive from it.
    public_url: str | None = None
    database_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Audiences the hub's own API accepts in user tokens.
    audiences: list[str] = field(default_factory=lambda: ["api://kubearc-hub"])
    # Entra tenants whose v1 and v2 tokens are accepted besides the local issuer.
    entra_tenants: list[str] = field(default_factory=list)
    local_issuer: bool = True
    status: StatusThresholds = field(default_factory=StatusThresholds)
    identity_validity: dt.timedelta = dt.timedelta(days=90)
    # Renewal is accepted from this age of the certificate on (Arc: day 46 of 90).
    renewal_after: dt.timedelta = dt.timedelta(days=45)
    relay_credential_ttl: dt.timedelta = dt.timedelta(minutes=15)
    access_token_ttl: dt.timedelta = dt.timedelta(hours=1)
    # Device authorization grant (RFC 8628): how long a user code lives, how often clients may poll.
    device_code_ttl: dt.timedelta = dt.timedelta(minutes=15)
    device_code_interval: dt.timedelta = dt.timedelta(seconds=5)
    # Authorization codes (sign-in page with PKCE): redeemable once, within this time.
    authorization_code_ttl: dt.timedelta = dt.timedelta(minutes=10)
    # Where clients and agents reach the relay; default: the hub's host on `relay_port`.
    relay_url: str | None = None
    relay_port: int = 8444
    # Relay replicas heartbeat every few seconds; one silent this long has left the set.
    relay_replica_ttl: dt.timedelta = dt.timedelta(seconds=15)
    # The key relay replicas register with (a file every hub and relay reads); None: one made
    # once in the database and written to <state-dir>/relay-registration.key.
    relay_registration_key_file: Path | None = None
    latest_agent_version: str = __version__
    # How long agents' log lines and usage samples are kept.
    telemetry_retention: dt.timedelta = dt.timedelta(days=7)
    # What unauthenticated peers may hold on the API port and on the in-process relay's port.
    limits: Limits = field(default_factory=Limits)
    relay_limits: Limits = field(default_factory=Limits)
    clock: Callable[[], dt.datetime] = utcnow

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "localhost" if self.host in ("127.0.0.1", "0.0.0.0", "::") else self.host
        return f"https://{host}:{self.port}"

    @property
    def relay(self) -> str:
        if self.relay_url:
            return self.relay_url.rstrip("/")
        host = self.url.split("://", 1)[1].rsplit(":", 1)[0]
        return f"wss://{host}:{self.relay_port}"

    @property
    def agent_audience(self) -> str:
        """`aud` of agent tokens and onboarding assertions: the hub's URL."""
        return self.url

    @property
    def database(self) -> str:
        from hub.store.db import sqlite_url

        return self.database_url or sqlite_url(self.state_dir)
