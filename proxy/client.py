"""The client proxy (`kubearc proxy`): a loopback listener whose connections become tunnel streams.

kubectl connects to 127.0.0.1:PORT; each accepted connection is one stream
through the relay to the cluster's agent and on to the apiserver. The proxy never
reads the bytes: kubectl's TLS ends at the real apiserver. Its relay sessions are
kept by the shared `Dialler` (`proxy/dialler.py`), exactly as the agent's are:
backoff, PING liveness (a wedged relay connection on a laptop is noticed and
replaced), a new session on GOAWAY while old streams finish, and in-band renewal
of the relay credential before it expires so open watches and exec sessions survive.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from foundation.retry import RetryPolicy
from proxy.dialler import Dialler, RelayCredential
from proxy.errors import TunnelError
from proxy.mux import Mux
from proxy.pipe import SocketPipe
from proxy.protocol.session import Settings

log = logging.getLogger("kubearc.proxy")


@dataclass(frozen=True)
class Credential(RelayCredential):
    """`listClusterUserCredential`'s answer: the relay credential and what kubectl must verify."""

    expires_at: float  # always known: the hub says when the relay credential expires
    ca_pem: bytes = b""  # the cluster's apiserver CA (or its kube-aad-proxy's), for the kubeconfig
    tls_server_name: str = ""

    @classmethod
    def from_arm(cls, doc: dict[str, Any]) -> Credential:
        """From the body `listClusterUserCredential` answers (`hub/credentials.py` renders it)."""
        relay, connect = doc["hybridConnectionConfig"], doc["clusterConnect"]
        return cls(
            relay["relay"],
            relay["token"],
            float(relay["expirationTime"]),
            base64.b64decode(connect["certificateAuthorityData"]),
            connect["tlsServerName"],
        )


CredentialSource = Callable[[], Awaitable[Credential]]


@dataclass
class ClientProxy:
    credentials: CredentialSource
    port: int = 47011
    host: str = "127.0.0.1"
    relay_ca_file: str | None = None
    settings: Settings = field(default_factory=Settings)
    renew_margin: float = 0.25  # renew when this fraction of the credential's life is left
    backoff: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=0.3, cap=15.0, deadline=None))
    open_wait: float = 15.0
    ping_interval: float = 10.0
    ping_timeout: float = 20.0

    def __post_init__(self) -> None:
        self.dialler = Dialler(
            self.credentials,
            ca_file=self.relay_ca_file,
            settings=self.settings,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            renew_margin=self.renew_margin,
            backoff=self.backoff,
            name="client proxy",
        )

    @property
    def mux(self) -> Mux | None:
        """The relay session new streams go to, if any (introspection)."""
        return self.dialler.current

    @property
    def renewals(self) -> int:
        return self.dialler.renewals

    @property
    def credential(self) -> Credential | None:
        """The relay credential in use (the dialler holds it; `credentials` made it)."""
        return cast(Credential | None, self.dialler.credential)

    async def run(
        self, ready: Callable[[int], None] | None = None, stop: asyncio.Event | None = None
    ) -> None:
        """Listen on loopback and keep a relay session until `stop`.

        What stops it is raised as itself, not in an `ExceptionGroup`: the port in use
        (`OSError`), or whatever `ready` raised (the kubeconfig could not be written).
        """
        try:
            await self._run(ready, stop or asyncio.Event())
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            raise group.exceptions[0] from None

    async def _run(self, ready: Callable[[int], None] | None, stop: asyncio.Event) -> None:
        self.dialler.credential = await self.credentials()  # fails early: the kubeconfig needs it
        loop = asyncio.get_running_loop()
        openers: set[asyncio.Task[None]] = set()
        async with asyncio.TaskGroup() as tasks:

            def accepted() -> SocketPipe:
                # Opening the stream is the only step that waits (for the relay's answer); the
                # pipe itself runs on callbacks.
                pipe = SocketPipe()
                task = tasks.create_task(self._open_for(pipe))
                openers.add(task)
                task.add_done_callback(openers.discard)
                return pipe

            server = await loop.create_server(accepted, self.host, self.port, backlog=1024)
            self.port = server.sockets[0].getsockname()[1]
            async with server:
                keeper = tasks.create_task(self.dialler.run(stop))
                if ready:
                    ready(self.port)
                await stop.wait()
                server.close()
                for task in [keeper, *openers]:
                    task.cancel()

    async def _open_for(self, pipe: SocketPipe) -> None:
        """Open the tunnel stream for one accepted connection and join the two."""
        try:
            stream = await self.dialler.open({"kind": "apiserver"}, self.open_wait)
        except TunnelError as exc:
            log.warning("cannot open a tunnel stream", extra={"error": str(exc) or type(exc).__name__})
            if pipe.transport is not None:
                pipe.transport.close()
            return
        pipe.attach(stream)
