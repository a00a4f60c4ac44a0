"""Ending a connection with a reset: the one place that sets `SO_LINGER` 0.

A FIN says "this is the end of the data"; a broken tunnel stream or a connection
refused by a gate must never look like that. RST tells the peer at once, and
leaves no TIME_WAIT behind on our side.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


def reset_transport(transport: asyncio.BaseTransport) -> None:
    """Close `transport` (plain or TLS) with RST, not FIN, discarding what is still buffered."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]
