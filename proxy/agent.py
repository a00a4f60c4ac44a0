"""The clusterconnect-agent: dials out to the relay and joins each stream to the apiserver.

Passthrough mode: every stream becomes one TCP connection to the apiserver and
bytes flow untouched, so TLS runs end to end from kubectl to the apiserver.

The agent keeps a session to every relay replica (`proxy/replicas.py`), each
through the shared `Dialler` (`proxy/dialler.py`): backoff with full jitter and a
cap, PING liveness, a fresh session as soon as the relay says GOAWAY (old streams
drain on the old one), and in-band renewal of its agent token so open streams
never notice it expiring.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import jwt

from foundation.retry import RetryPolicy
from foundation.wire import DISCOVERY_PATH, Discovery
from proxy.dialler import CredentialSource, Dialler, RelayCredential
from proxy.mux import Mux
from proxy.pipe import SocketPipe
from proxy.protocol.frames import ErrorCode
from proxy.protocol.session import Settings
from proxy.replicas import ReplicaDiallers
from proxy.stream import Stream

log = logging.getLogger("kubearc.connect")

TokenSource = Callable[[], Awaitable[str]]


def token_expiry(token: str) -> float | None:
    """The `exp` of a JWT we minted ourselves (no verification: the relay verifies it)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.InvalidTokenError:
        return None
    return float(exp) if isinstance(exp, int | float) else None


async def discover_relay(hub_url: str, ca_file: str | None) -> str:
    """The relay's agent endpoint, from the hub's discovery document."""
    verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
    async with httpx.AsyncClient(verify=verify, timeout=10.0) as client:
        response = await client.get(f"{hub_url.rstrip('/')}{DISCOVERY_PATH}")
        response.raise_for_status()
    return Discovery.from_json(response.json()).relay_agent_url


@dataclass
class ConnectAgent:
    relay_url: str | None  # wss://relay/relay/v1/agent; None: ask the hub (`hub_url`)
    token: TokenSource  # a fresh agent token (signed with the identity key)
    apiserver: tuple[str, int]
    ca_file: str | None = None  # trust for the relay's certificate
    settings: Settings = field(default_factory=Settings)
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    renew_interval: float = 120.0
    connect_timeout: float = 10.0
    backoff: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=0.5, cap=30.0, deadline=None))
    hub_url: str | None = None  # where to discover the relay when `relay_url` is None
    hub_ca: str | None = None

    def __post_init__(self) -> None:
        if self.relay_url is None and self.hub_url is None:
            raise ValueError("a connect agent needs a relay URL or a hub to ask for one")
        self.replicas = ReplicaDiallers(self._credential, self._dialler)

    def _dialler(self, credentials: CredentialSource) -> Dialler:
        return Dialler(
            credentials,
            ca_file=self.ca_file,
            settings=self.settings,
            handler=self._open_apiserver,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            renew_interval=self.renew_interval,
            renew_margin=None,  # every renew_interval: agent tokens are short and cheap to mint
            connect_timeout=self.connect_timeout,
            backoff=self.backoff,
            name="connect agent",
        )

    # Introspection, as the tests and benchmarks read it.
    @property
    def sessions_started(self) -> int:
        return self.replicas.sessions_started

    @property
    def live(self) -> int:
        return self.replicas.live

    @property
    def muxes(self) -> set[Mux]:
        return self.replicas.muxes

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Keep a session to every relay replica until `stop` is set (or forever)."""
        await self.replicas.run(stop)

    async def _credential(self) -> RelayCredential:
        """A fresh agent token for each dial and renewal; the relay's URL found once (retried
        with the dialler's backoff while the hub cannot be reached)."""
        if self.relay_url is None:
            assert self.hub_url is not None
            self.relay_url = await discover_relay(self.hub_url, self.hub_ca)
            log.info("relay found through the hub", extra={"relay": self.relay_url})
        token = await self.token()
        return RelayCredential(self.relay_url, token, token_expiry(token))

    async def _open_apiserver(self, stream: Stream) -> None:
        host, port = self.apiserver
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, pipe = await loop.create_connection(SocketPipe, host, port)
        except (OSError, TimeoutError) as exc:
            stream.refuse(ErrorCode.CONNECT_FAILED, f"apiserver {host}:{port}: {exc}")
            return
        stream.accept()
        pipe.attach(stream)
