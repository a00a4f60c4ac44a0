"""The tunnel's websocket connections: whole binary messages by callback, no task in between.

websockets' asyncio connections queue each incoming message for an awaiting
`recv()`, and take a lock and a drain per `send()`. Every tunnel frame crossed
both on every hop, and those task switches were the largest Python cost of a
round trip. These subclasses keep everything else of websockets (the opening and
closing handshakes, limits, masking, TLS, proxies) and replace the message path:

- `deliver_to(on_message, on_batch)`: `on_message` runs from `data_received`
  for each binary message, then `on_batch` once per chunk read (a place to flush
  replies with one write). Messages that arrived before it are delivered first.
- `write_messages(messages)`: frames and writes them at once, no await. The
  caller stops while `can_write` is false; `on_batch` runs again when the
  transport's buffer has drained (`resume_writing`).

The tunnel sends only single-frame messages; a fragmented one from the peer fails
the connection (close code 1003).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.protocol import State

from foundation.gate import Gate, GatedProtocol

log = logging.getLogger("kubearc.tunnel")

OnMessage = Callable[[bytes], None]
OnBatch = Callable[[], None]


class _Direct(Connection):
    """The callback message path, mixed into the client and server connection classes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message: OnMessage | None = None
        self._on_batch: OnBatch | None = None
        self._early: list[bytes] = []

    def deliver_to(self, on_message: OnMessage, on_batch: OnBatch) -> None:
        self._on_message, self._on_batch = on_message, on_batch
        early, self._early = self._early, []
        for message in early:
            on_message(message)
        if early:
            on_batch()

    @property
    def can_write(self) -> bool:
        """Open, and the transport's buffer under its high-water mark (`write_limit`)."""
        return not self.paused and self.protocol.state is State.OPEN

    def write_messages(self, messages: Iterable[bytes | memoryview]) -> None:
        protocol = self.protocol
        for message in messages:
            protocol.send_binary(message)
        self.send_data()

    def process_event(self, event: Any) -> None:
        if not isinstance(event, Frame) or event.opcode not in DATA_OPCODES:
            super().process_event(event)  # handshake, pongs
            return
        if event.opcode is Opcode.CONT or not event.fin:
            self.protocol.fail(CloseCode.UNSUPPORTED_DATA, "tunnel messages are single frames")
            self.send_data()
            return
        # A text message goes to the session as its bytes, which answers it as a malformed frame
        # (a GOAWAY naming the problem), as it answers any other bad frame.
        data = event.data if type(event.data) is bytes else bytes(event.data)
        if self._on_message is None:
            self._early.append(data)
            return
        try:
            self._on_message(data)
        except Exception:  # a bug in a handler: end this connection, not the process
            log.exception("tunnel message handler failed")
            self.protocol.fail(CloseCode.INTERNAL_ERROR, "tunnel failure")
            self.send_data()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._on_batch is not None:
            self._on_batch()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._on_batch is not None:
            self._on_batch()


class DirectClientConnection(_Direct, ClientConnection):
    """`connect(..., create_connection=DirectClientConnection)`."""


class DirectServerConnection(_Direct, ServerConnection):
    """`serve(..., create_connection=DirectServerConnection)`.

    `peer_identity` carries who the upgrade authenticated as (the relay sets it in
    `process_request`), so that state lives and dies with the connection.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer_identity: Any = None


class GatedServerConnection(GatedProtocol, DirectServerConnection):
    """The relay's connections: admitted and put on TLS by a `foundation.gate.Gate`.

    The upgrade request is the connection's first request. The relay calls
    `request_seen` once it has answered it (authenticated or refused), not when its
    head is parsed: checking an agent costs the hub a request, so a connection
    counts as pending until then, and a reconnect storm is bounded by `max_pending`
    all the way to the hub.
    """

    def __init__(self, gate: Gate, *args: Any, **kwargs: Any) -> None:
        self.gate = gate
        super().__init__(*args, **kwargs)
