"""Test helper: many idle TLS connections from one address, opened the cheap way (blocking `ssl` sockets).

A hostile client finishes the TLS handshake and then sends nothing; these helpers
play that client against a real listening port and report what the server did.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field


@dataclass
class Flood:
    held: list[ssl.SSLSocket] = field(default_factory=list)  # handshake done, the server kept them
    refused: int = 0  # reset, or closed before the handshake ended

    def close(self) -> None:
        for conn in self.held:
            conn.close()


def client_context(ca: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def flood(port: int, n: int, ctx: ssl.SSLContext, source: str = "127.0.0.1", settle: float = 0.0) -> Flood:
    """`n` connections to 127.0.0.1:`port` from `source`, each left idle after its handshake.

    `settle`: seconds to wait on each for a late refusal (TLS 1.3 reports a refused client
    certificate only after the client's side of the handshake has ended).
    """
    result = Flood()
    for _ in range(n):
        raw = None
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
            conn = ctx.wrap_socket(raw, server_hostname="localhost")
            if settle:
                conn.settimeout(settle)
                try:
                    if conn.recv(1) == b"":
                        raise ConnectionResetError("closed after the handshake")
                except (TimeoutError, ssl.SSLWantReadError):
                    pass
            result.held.append(conn)
        except (OSError, ssl.SSLError):
            if raw is not None:
                raw.close()
            result.refused += 1
    return result


def open_by_peer(conns: list[ssl.SSLSocket]) -> int:
    """How many of `conns` the server has not closed (a read would block)."""
    still = 0
    for conn in conns:
        conn.setblocking(False)
        try:
            if conn.recv(1) != b"":
                still += 1  # the server sent something (it never should)
        except (ssl.SSLWantReadError, BlockingIOError):
            still += 1
        except (OSError, ssl.SSLError):
            pass
    return still


def wait_closed_by_peer(conns: list[ssl.SSLSocket], within: float) -> int:
    """Wait until the server closed every one of `conns`; how many it left open."""
    deadline = time.monotonic() + within
    while (still := open_by_peer(conns)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return still
