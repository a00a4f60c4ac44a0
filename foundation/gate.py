"""Admission for the TLS ports we face the network with: what a peer that has sent no request may hold.

A connection that finishes its TLS handshake and then sends nothing used to be
held for ever (uvicorn has no timeout for a connection's first request), so idle
connections from one client exhausted the hub's file descriptors. Every server
of ours that faces the network (the hub's API, the relay, guard's webhook, the
aad-proxy) therefore listens in plain TCP and starts TLS through a `Gate`, which
sees each connection the moment it is accepted, before any TLS work:

- at most `max_connections` open on the port; at most `max_pending` on the port,
  and `max_pending_per_address` from one client address, that have not yet sent a
  complete request head (the relay: not yet authenticated). Above any of them the
  connection is reset at once (RST: no handshake is spent on it and the client's
  retry starts now). A connection that has sent its first request no longer counts
  as pending, so agents behind one NAT, each with its established session, are
  never refused for sharing an address;
- `max_pending` is what keeps a reconnect storm from collapsing: thousands of TLS
  handshakes started at once all progress together and all outlive their timeouts,
  so the work is thrown away and every client dials again. Bounded, the admitted
  ones finish in time and the rest are told at once, for the price of a reset, to
  back off;
- the TLS handshake must end within `handshake_timeout`, and the first request's
  head must be complete within `header_timeout` of the accept; else the
  connection is closed;
- an idle kept-alive connection is closed by the server itself after
  `idle_timeout` (uvicorn's `timeout_keep_alive`, the aad-proxy's idle timeout);
  a relay session has the tunnel's own PING.

`GatedProtocol` is the way in: a mixin for the servers' asyncio protocols
(uvicorn's, websockets', asyncio's stream protocol for the aad-proxy). Its
`connection_made` admits, puts TLS on the connection and only then hands the TLS
transport to the server's own `connection_made`; the server calls
`request_seen()` when a request head is complete. TLS is asyncio's own protocol
with a read buffer that grows only under load: an idle connection holds 16 KiB
where asyncio allots 256 KiB.

`raise_fd_limit` lifts the process's file-descriptor soft limit to its hard limit
at start; `default_max_connections` sizes a port's cap below it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import ssl
from asyncio import sslproto
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foundation.memory import give_back
from foundation.transports import reset_transport

log = logging.getLogger("kubearc.gate")

SMALL_READ = 4 * 1024  # a ClientHello, a request head; doubled each time a read fills it
LARGE_READ = sslproto.SSLProtocol.max_size  # asyncio's read size, 256 KiB
TRIM_AFTER = 500  # connections gone since the peak before freed memory is given back
FD_RESERVE = 256  # descriptors left for files, database pools and outgoing connections


def raise_fd_limit() -> int:
    """Lift RLIMIT_NOFILE's soft limit to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(soft if soft != resource.RLIM_INFINITY else hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return int(soft)
    return int(hard)


def default_max_connections(share: float) -> int:
    """`share` of the descriptors this process may open (after `raise_fd_limit`), less a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(64, int((soft - FD_RESERVE) * share))


def serving_context(
    cert: str | os.PathLike[str], key: str | os.PathLike[str], client_ca: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """A server context: TLS 1.2+, ALPN http/1.1, client certificates required when `client_ca` is given.

    Call `load_cert_chain` on it again to swap in a renewed certificate: new handshakes use it.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass(frozen=True)
class Limits:
    """What one listening port lets unauthenticated peers hold (README: "Connection limits")."""

    max_connections: int = 4096  # open connections on the port
    max_pending: int = 512  # on the port, not yet past their first request head
    max_pending_per_address: int = 256  # from one address, not yet past their first request head
    handshake_timeout: float = 5.0  # seconds for the TLS handshake
    header_timeout: float = 10.0  # seconds from the accept to the first request's complete head
    idle_timeout: float = 30.0  # seconds a kept-alive connection may wait for its next request

    def validate(self) -> None:
        """Raise ValueError naming the limit that makes no sense."""
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if self.max_pending_per_address < 1:
            raise ValueError("max_pending_per_address must be at least 1")
        for name in ("handshake_timeout", "header_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0 seconds")


class Ticket:
    """One admitted connection: counted on its port until `release`, pending until `request_seen`.

    Until then a timer closes `transport` when the first request's head is not complete
    `header_timeout` after the accept; whoever upgrades the connection to TLS points
    `transport` at the TLS transport.
    """

    __slots__ = ("_deadline", "address", "gate", "pending", "released", "transport")

    def __init__(self, gate: Gate, address: str, transport: asyncio.BaseTransport) -> None:
        self.gate, self.address, self.transport = gate, address, transport
        self.pending, self.released = True, False
        loop = asyncio.get_running_loop()
        self._deadline: asyncio.TimerHandle | None = loop.call_later(gate.limits.header_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.pending and not self.released:
            self.gate.refused["header_timeout"] += 1
            reset_transport(self.transport)

    def _stop_timer(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def request_seen(self) -> None:
        """The first request head is complete: no longer pending, no longer counted against its address."""
        if self.pending:
            self._stop_timer()
            self.pending = False
            self.gate._settle(self.address)

    def release(self) -> None:
        """The connection is gone (idempotent)."""
        if not self.released:
            self._stop_timer()
            self.released = True
            self.gate._release(self)


class Gate:
    """The admission state of one listening port: counts, limits, the TLS context, refusals by reason."""

    def __init__(self, limits: Limits, tls: ssl.SSLContext | None, name: str = "listener") -> None:
        limits.validate()
        self.limits, self.tls, self.name = limits, tls, name
        self.open = 0
        self.peak = 0  # the most open since memory was last given back
        self._trim: asyncio.TimerHandle | None = None
        self.pending: Counter[str] = Counter()  # address -> connections before their first request
        self.pending_total = 0  # the sum of `pending`
        self.refused: Counter[str] = Counter()  # reason -> connections refused or closed by the gate

    def admit(self, transport: asyncio.BaseTransport) -> Ticket | None:
        """A ticket for a freshly accepted connection, or None (the connection is reset)."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if self.open >= self.limits.max_connections:
            reason = "max_connections"
        elif self.pending_total >= self.limits.max_pending:
            reason = "max_pending"
        elif self.pending[address] >= self.limits.max_pending_per_address:
            reason = "max_pending_per_address"
        else:
            self.open += 1
            self.peak = max(self.peak, self.open)
            self.pending[address] += 1
            self.pending_total += 1
            return Ticket(self, address, transport)
        self.refused[reason] += 1
        if self.refused[reason] in (1, 100, 10_000) or self.refused[reason] % 100_000 == 0:
            log.warning(
                "connections refused",
                extra={
                    "listener": self.name,
                    "reason": reason,
                    "address": address,
                    "total": self.refused[reason],
                },
            )
        reset_transport(transport)
        return None

    def _settle(self, address: str) -> None:
        self.pending_total -= 1
        self.pending[address] -= 1
        if self.pending[address] <= 0:
            del self.pending[address]

    def _release(self, ticket: Ticket) -> None:
        self.open -= 1
        if ticket.pending:
            ticket.pending = False
            self._settle(ticket.address)
        if self.peak - self.open >= TRIM_AFTER and self.open <= self.peak // 2:
            # A burst is over: its connections' memory goes back to the OS, a moment later so
            # that what the servers free after `connection_lost` (handler tasks) goes too.
            self.peak = self.open
            if self._trim is None:
                self._trim = asyncio.get_running_loop().call_later(1.0, self._give_back)

    def _give_back(self) -> None:
        self._trim = None
        give_back()

    def handshake_failed(self, exc: BaseException) -> None:
        self.refused["handshake"] += 1
        log.debug("TLS handshake failed: %r", exc, extra={"listener": self.name})


class GateCollector(Collector):
    """A gate's counts for Prometheus, read at scrape time: `<prefix>_connections_open`,
    `<prefix>_connections_pending` and `<prefix>_connections_refused_total{reason}`."""

    def __init__(self, gate: Gate, prefix: str) -> None:
        self.gate, self.prefix = gate, prefix

    def collect(self) -> Iterator[Metric]:
        p, gate = self.prefix, self.gate
        yield GaugeMetricFamily(f"{p}_connections_open", "Connections open on the port.", value=gate.open)
        yield GaugeMetricFamily(
            f"{p}_connections_pending",
            "Connections that have not yet sent a complete request head.",
            value=gate.pending_total,
        )
        refused = CounterMetricFamily(
            f"{p}_connections_refused",
            "Connections reset or closed by the gate, by reason.",
            labels=["reason"],
        )
        reasons = ("max_connections", "max_pending", "max_pending_per_address", "handshake", "header_timeout")
        for reason in reasons:
            refused.add_metric([reason], gate.refused[reason])
        yield refused


class _TlsLayer(sslproto.SSLProtocol):
    """asyncio's TLS protocol, with a read buffer that starts small and grows only under load.

    asyncio gives every TLS connection a 256 KiB read buffer up front; an idle connection
    needs a few KiB. This one starts at `SMALL_READ` and doubles (to asyncio's size) each
    time a read fills it, so bulk transfers get large reads and idle peers cost little.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.max_size = SMALL_READ  # type: ignore[misc]  # read by asyncio's __init__ to size the buffer
        super().__init__(*args, **kwargs)

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes >= self.max_size and self.max_size < LARGE_READ:
            self.max_size = min(2 * self.max_size, LARGE_READ)  # type: ignore[misc]  # get_buffer grows it
        super().buffer_updated(nbytes)


class GatedProtocol(asyncio.Protocol):
    """Mixin, first among the bases of a server's protocol class: admission, TLS, the header deadline.

    The subclass sets `gate` before connections arrive and calls `request_seen()` when a
    request head is complete. `connection_made` runs twice: with the accepted TCP
    transport (admission; TLS is put on it at once, before any byte is read, so no
    event loop can read the ClientHello past it), then from the TLS layer when the
    handshake is done, with the TLS transport: that call is the server's own
    `connection_made`. A connection whose handshake fails never reaches the server.
    """

    gate: Gate
    _ticket: Ticket | None = None
    _handed_over = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._ticket is not None:  # the TLS layer: the handshake is done
            self._hand_over(transport)
            return
        ticket = self._ticket = self.gate.admit(transport)
        if ticket is None:
            return
        if self.gate.tls is None:
            self._hand_over(transport)
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiter.add_done_callback(self._handshake_done)
        tls = _TlsLayer(
            loop,
            self,
            self.gate.tls,
            waiter,
            server_side=True,
            ssl_handshake_timeout=self.gate.limits.handshake_timeout,
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        exc = None if waiter.cancelled() else waiter.exception()
        if exc is not None and not self._handed_over and self._ticket is not None:
            self.gate.handshake_failed(exc)
            self._ticket.release()

    def _hand_over(self, transport: asyncio.BaseTransport) -> None:
        self._handed_over = True
        super().connection_made(transport)

    def request_seen(self) -> None:
        if self._ticket is not None:
            self._ticket.request_seen()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticket is not None:
            self._ticket.release()
        if self._handed_over:
            super().connection_lost(exc)
