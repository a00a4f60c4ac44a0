"""The impersonating proxy (Arc's kube-aad-proxy): TLS in, Entra user out as `Impersonate-*` headers.

Each accepted TLS connection is parsed with h11 and may carry many requests
(keep-alive). Per request: refuse user-sent `Impersonate-*` headers (403),
authenticate the bearer token (401), optionally authorize the request's
Kubernetes attributes (403 unless Allowed), then forward it to the apiserver on
a verified TLS connection of the proxy's own, with the proxy's credential and
the user's identity as impersonation headers. Request and response bodies stream
through as they arrive (watch, `logs -f`), bounded by the socket buffers; a
`101 Switching Protocols` (exec, attach, port-forward over websockets or SPDY)
turns both connections into a raw byte splice.

The proxy asks its authenticator and authorizer only what `guard/interfaces.py`
declares, fast path first, as the webhook does. Logs name the user, verb, path
and status, never a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
from prometheus_client import Histogram

from foundation.gate import Gate, GatedProtocol, Limits
from guard.errors import AuthenticationError, BearerTokenError, GuardError, UpstreamError
from guard.impersonation import headers as hdr
from guard.impersonation.requestinfo import RequestInfoError, request_info
from guard.impersonation.streams import READ_SIZE, UpstreamConnection, has_body, next_event, splice, stop
from guard.impersonation.upstream import Upstream
from guard.interfaces import Authenticator, Authorizer
from guard.reviews import Decision, UserInfo

log = logging.getLogger("kubearc.guard.impersonation")


@dataclass(frozen=True)
class ProxySettings:
    """Limits and timeouts: every wait on a client or the apiserver is bounded, except a response
    body that is still open (watches and followed logs may be quiet for minutes)."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024 * 1024
    # Admission, the TLS handshake, the first request's head and the idle wait between requests
    # on a kept-alive connection (foundation.gate).
    limits: Limits = field(default_factory=Limits)
    body_timeout: float = 60.0  # between pieces of a request body
    connect_timeout: float = 10.0
    response_timeout: float = 120.0  # for the apiserver's response head (never its body: watches idle)
    authn_timeout: float = 10.0
    authz_timeout: float = 5.0
    splice_grace: float = 5.0  # after one side of an upgraded connection ends, for the other to finish


class Refused(GuardError):
    """Answer the client with a Status (and close the connection)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


class _ClientGone(GuardError):
    """The client hung up: nothing left to answer."""


@dataclass
class ImpersonatingProxy:
    """Shared by every connection: where to forward, who may come in, and counters for tests and logs."""

    upstream: Upstream
    authenticator: Authenticator
    authorizer: Authorizer | None = None
    settings: ProxySettings = field(default_factory=ProxySettings)
    stats: Counter[str] = field(default_factory=Counter)  # events by name (`guard.impersonation.metrics`)
    connections: int = 0  # client connections open now
    head_latency: Histogram | None = None  # seconds from a request to the apiserver's response head

    async def start(self, host: str, port: int, tls: ssl.SSLContext) -> asyncio.Server:
        """Listen on host:port behind a gate; the returned server's sockets tell the bound port."""
        gate = Gate(self.settings.limits, tls, name="aad-proxy")

        def connection() -> _GatedStreams:
            reader = asyncio.StreamReader(limit=256 * 1024)
            protocol: _GatedStreams = _GatedStreams(
                gate, reader, lambda r, w: self._accept(r, w, protocol.request_seen)
            )
            return protocol

        return await asyncio.get_running_loop().create_server(connection, host, port)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request_seen: Callable[[], None]
    ) -> None:
        connection = _Connection(self, reader, writer, request_seen)
        self.connections += 1
        try:
            await connection.run()
        except (ConnectionError, ssl.SSLError, TimeoutError, _ClientGone, UpstreamError):
            pass
        except Exception:
            log.exception("impersonating proxy connection failed")
        finally:
            self.connections -= 1
            connection.close()


class _GatedStreams(GatedProtocol, asyncio.StreamReaderProtocol):
    """asyncio's stream protocol behind the gate: the connection's coroutine starts once TLS is up."""

    def __init__(self, gate: Gate, reader: asyncio.StreamReader, connected: Any) -> None:
        self.gate = gate
        super().__init__(reader, connected)


class _Connection:
    """One client connection: requests one after another, each forwarded upstream."""

    def __init__(
        self,
        proxy: ImpersonatingProxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request_seen: Callable[[], None],
    ):
        self.proxy, self.settings = proxy, proxy.settings
        self.request_seen = request_seen
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=proxy.settings.max_header_bytes)
        self.upstream: UpstreamConnection | None = None
        self.client_eof = False
        self.user = ""  # the authenticated user of the current request, for logs
        self.status = 0  # the apiserver's answer to it
        self.started = 0.0  # when the current request arrived

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        self.writer.close()

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def run(self) -> None:
        while True:
            try:
                event = await next_event(self.conn, self.reader, self.settings.limits.idle_timeout)
            except h11.RemoteProtocolError as exc:
                reason = "BadRequest" if exc.error_status_hint == 400 else "RequestHeaderFieldsTooLarge"
                await self._refuse(Refused(exc.error_status_hint, reason, f"malformed HTTP request: {exc}"))
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed
            self.request_seen()  # the gate's header deadline is met
            self.user = ""
            try:
                keep = await self._exchange(event)
            except Refused as refusal:
                self.proxy.stats[refusal.reason] += 1
                log.info(
                    "request refused",
                    extra={
                        "user": self.user,
                        "method": event.method.decode(),
                        "path": event.target.decode("latin-1").split("?", 1)[0][:300],
                        "status": refusal.code,
                        "reason": refusal.message[:300],
                    },
                )
                await self._refuse(refusal)
                return
            if not keep or self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()

    async def _refuse(self, refusal: Refused) -> None:
        """Answer with a Status and Connection: close, if no response has started yet."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = hdr.status_body(refusal.code, refusal.reason, refusal.message)
        response = h11.Response(
            status_code=refusal.code,
            headers=[
                (b"Content-Type", b"application/json"),
                (b"Content-Length", str(len(body)).encode()),
                (b"Connection", b"close"),
            ],
        )
        with contextlib.suppress(h11.LocalProtocolError, ConnectionError, ssl.SSLError):
            await self._send(response)
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())

    def _check_size(self, request: h11.Request) -> None:
        """Refuse oversized heads (h11 bounds only heads that arrive in pieces) and declared bodies."""
        head = len(request.target) + sum(len(n) + len(v) + 4 for n, v in request.headers)
        if head > self.settings.max_header_bytes:
            raise Refused(
                431,
                "RequestHeaderFieldsTooLarge",
                f"request head exceeds {self.settings.max_header_bytes} bytes",
            )
        length = next((v for n, v in request.headers if n == b"content-length"), b"0")
        if int(length) > self.settings.max_body_bytes:  # h11 has checked it is a number
            raise Refused(
                413, "RequestEntityTooLarge", f"request body exceeds {self.settings.max_body_bytes} bytes"
            )

    async def _identify(self, request: h11.Request) -> UserInfo:
        refused = hdr.refused_header(request.headers.raw_items())
        if refused is not None:
            raise Refused(
                403,
                "Forbidden",
                f"impersonation is not allowed through the Azure AD proxy: the request carries {refused} "
                "(kubectl --as/--as-group send it); the proxy impersonates the signed-in user itself",
            )
        try:
            token = hdr.bearer_token(request.headers)
        except BearerTokenError as exc:
            raise Refused(401, "Unauthorized", f"Unauthorized: {exc}") from None
        authenticator = self.proxy.authenticator
        try:
            result = authenticator.cached(token)
            if result is None:
                async with asyncio.timeout(self.settings.authn_timeout):
                    result = await authenticator.review(token, [])
            return result.user
        except AuthenticationError as exc:
            raise Refused(401, "Unauthorized", f"Unauthorized: {exc.reason}") from None
        except TimeoutError:
            raise Refused(401, "Unauthorized", "Unauthorized: token verification timed out") from None
        except Exception as exc:  # the issuer unreachable, a bug: the token is not accepted
            log.warning("token verification failed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            raise Refused(401, "Unauthorized", "Unauthorized: the token could not be verified now") from None

    async def _authorize(self, request: h11.Request, user: UserInfo) -> None:
        authorizer = self.proxy.authorizer
        if authorizer is None:
            return
        try:
            info = request_info(request.method.decode(), request.target.decode("latin-1"))
        except RequestInfoError as exc:
            raise Refused(400, "BadRequest", str(exc)) from None
        deadline = time.monotonic() + self.settings.authz_timeout
        review = hdr.access_review(info, user)
        try:
            decision = authorizer.decide_now(review)
            if decision is None:
                decision = await authorizer.authorize(review, deadline)
        except Exception as exc:  # last resort, a bug: fail closed
            log.warning("authorization failed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            decision = Decision.deny("authorization could not be checked")
        if not decision.allowed:
            reason = decision.reason or "Azure RBAC did not allow the request"
            raise Refused(403, "Forbidden", hdr.forbidden_message(info, user.username, reason))

    async def _exchange(self, request: h11.Request) -> bool:
        """Check and forward one request; returns whether the client connection stays open."""
        started = self.started = time.monotonic()
        self._check_size(request)
        user = await self._identify(request)
        self.user = user.username
        await self._authorize(request, user)
        upgrade = hdr.upgrade_of(request.headers)
        upstream_headers = hdr.upstream_request_headers(
            request.headers,
            user,
            host=self.proxy.upstream.authority,
            credential=self.proxy.upstream.credential(),
            upgrade=upgrade,
        )
        forwarded = h11.Request(method=request.method, target=request.target, headers=upstream_headers)
        up = await self._send_head(forwarded, has_body=has_body(request))
        self.proxy.stats["forwarded"] += 1
        keep = await self._relay(up)
        log.info(
            "request",
            extra={
                "user": user.username,
                "method": request.method.decode(),
                "path": request.target.decode("latin-1").split("?", 1)[0][:300],
                "upgrade": upgrade.decode("latin-1") if upgrade else None,
                "status": self.status,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return keep

    async def _send_head(self, request: h11.Request, has_body: bool) -> UpstreamConnection:
        """Send the head on the kept-alive upstream connection, or a new one if that one is gone."""
        for attempt in (0, 1):
            up = self.upstream
            if up is None or not up.reusable:
                if up is not None:
                    up.close()
                try:
                    up = UpstreamConnection(
                        *await self.proxy.upstream.connect(within=self.settings.connect_timeout)
                    )
                except ssl.SSLCertVerificationError as exc:
                    raise Refused(
                        502, "BadGateway", f"the apiserver's certificate did not verify: {exc}"
                    ) from None
                except (OSError, TimeoutError) as exc:
                    reason = str(exc) or type(exc).__name__
                    raise Refused(
                        503, "ServiceUnavailable", f"cannot reach the apiserver: {reason}"
                    ) from None
                self.upstream = up
                self.proxy.stats["upstream connections"] += 1
            try:
                await up.send(request)
                return up
            except (ConnectionError, ssl.SSLError) as exc:
                up.close()
                self.upstream = None
                if attempt or has_body:
                    raise Refused(
                        503, "ServiceUnavailable", f"the apiserver connection failed: {exc}"
                    ) from None
        raise AssertionError("unreachable")

    async def _relay(self, up: UpstreamConnection) -> bool:
        pump = asyncio.create_task(self._pump_body(up))
        try:
            try:
                async with asyncio.timeout(self.settings.response_timeout):
                    head = await self._response_head(up, pump)
            except TimeoutError:
                raise Refused(504, "Timeout", "the apiserver did not answer in time") from None
            self.status = head.status_code
            if self.proxy.head_latency is not None:
                self.proxy.head_latency.observe(time.monotonic() - self.started)
            if isinstance(head, h11.InformationalResponse):  # 101: the request had no body to wait for
                await pump
                await self._switch(up, head)
                return False
            await self._send(
                h11.Response(
                    status_code=head.status_code,
                    headers=hdr.downstream_response_headers(head.headers.raw_items()),
                    reason=head.reason,
                )
            )
            watcher = asyncio.create_task(self._watch_client(up, pump))
            try:
                await self._stream_body(up)
            finally:
                await stop(watcher)  # it may be reading from the client: wait until it no longer is
            if not pump.done():  # the apiserver answered before reading the whole body
                return False
            await pump
            if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
                up.conn.start_next_cycle()
            return True
        finally:
            await stop(pump)
            if self.upstream is not None and self.upstream.conn.our_state is not h11.IDLE:
                self.upstream.close()
                self.upstream = None

    async def _response_head(
        self, up: UpstreamConnection, pump: asyncio.Task[None]
    ) -> h11.Response | h11.InformationalResponse:
        while True:
            read = asyncio.ensure_future(next_event(up.conn, up.reader, None))
            try:
                done, _ = await asyncio.wait({read, pump}, return_when=asyncio.FIRST_COMPLETED)
                if pump in done and not pump.cancelled() and pump.exception() and read not in done:
                    pump.result()  # raises: body too large, client gone
                event = await read
            except h11.RemoteProtocolError as exc:
                raise Refused(502, "BadGateway", f"the apiserver sent malformed HTTP: {exc}") from None
            except (ConnectionError, ssl.SSLError) as exc:
                raise Refused(503, "ServiceUnavailable", f"the apiserver connection failed: {exc}") from None
            finally:
                await stop(read)
            if isinstance(event, h11.ConnectionClosed):
                raise Refused(503, "ServiceUnavailable", "the apiserver closed the connection")
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return event
                await self._send(event)  # 100 Continue and friends
                continue
            assert isinstance(event, h11.Response)
            return event

    async def _pump_body(self, up: UpstreamConnection) -> None:
        """Request body from the client to the apiserver, piece by piece, within the size limit."""
        total = 0
        while True:
            try:
                event = await next_event(self.conn, self.reader, self.settings.body_timeout)
            except TimeoutError:
                raise Refused(408, "Timeout", "the request body stalled") from None
            except h11.RemoteProtocolError as exc:
                raise Refused(400, "BadRequest", f"malformed request body: {exc}") from None
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > self.settings.max_body_bytes:
                    raise Refused(
                        413,
                        "RequestEntityTooLarge",
                        f"request body exceeds {self.settings.max_body_bytes} bytes",
                    )
                await self._forward(up, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self._forward(up, h11.EndOfMessage())
                return
            else:
                raise _ClientGone()

    @staticmethod
    async def _forward(up: UpstreamConnection, event: h11.Event) -> None:
        try:
            await up.send(event)
        except (ConnectionError, ssl.SSLError) as exc:
            raise Refused(503, "ServiceUnavailable", f"the apiserver connection failed: {exc}") from None

    async def _watch_client(self, up: UpstreamConnection, pump: asyncio.Task[None]) -> None:
        """While a response streams, notice the client hanging up and stop the apiserver's side."""
        await asyncio.wait({pump})  # never raises pump's error; our own cancellation still does
        if pump.cancelled() or pump.exception() is not None:
            return
        try:
            data = await self.reader.read(READ_SIZE)
        except (ConnectionError, ssl.SSLError):
            data = b""
        if data:
            self.conn.receive_data(data)  # a pipelined next request: h11 keeps it for the next cycle
            return
        self.client_eof = True
        up.close()

    async def _stream_body(self, up: UpstreamConnection) -> None:
        while True:
            try:
                event = await next_event(up.conn, up.reader, None)
            except (ConnectionError, ssl.SSLError, h11.RemoteProtocolError) as exc:
                if self.client_eof:
                    raise _ClientGone() from None
                raise UpstreamError(f"apiserver connection broke mid-response: {exc}") from None
            if isinstance(event, h11.Data):
                await self._send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self._send(h11.EndOfMessage())
                return
            else:
                if self.client_eof:
                    raise _ClientGone()
                raise UpstreamError("the apiserver closed the connection mid-response")

    async def _switch(self, up: UpstreamConnection, head: h11.InformationalResponse) -> None:
        """Answer 101 and splice raw bytes both ways until both sides are done."""
        await self._send(
            h11.InformationalResponse(status_code=101, headers=head.headers.raw_items(), reason=head.reason)
        )
        self.proxy.stats["upgraded"] += 1
        up_tail, _ = up.conn.trailing_data
        client_tail, _ = self.conn.trailing_data
        if up_tail:
            self.writer.write(up_tail)
        if client_tail:
            up.writer.write(client_tail)
        await splice((self.reader, self.writer), (up.reader, up.writer), self.settings.splice_grace)
