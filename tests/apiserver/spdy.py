"""SPDY/3.1 framing, sans I/O: what kubectl's port-forward speaks inside its websocket.

kubectl (client-go's tunneling dialer) opens a websocket with subprotocol
`SPDY/3.1+portforward.k8s.io` and runs a SPDY client (moby/spdystream) over it,
treating the websocket's binary messages as one byte stream. This module turns
that stream into frames and builds the frames a server sends back.

Frames: control frames have the high bit set, version 3, a type, flags and a
24-bit length; data frames carry a 31-bit stream id, flags (FIN) and a length.
Header blocks are zlib streams primed with the SPDY/3 dictionary, one
compression context per direction for the whole connection.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_INVALID_STREAM, RST_REFUSED_STREAM, RST_CANCEL = 1, 2, 3, 5
MAX_DATA = (1 << 24) - 1

# The SPDY/3 header-compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): the
# length-prefixed words of common headers and values, then a run of common text.
_WORD_TEXT = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date "
    "etag expect expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
    "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
    "user-agent vary via warning www-authenticate method get status"
)
_WORDS = [
    *_WORD_TEXT.split(),
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


@dataclass
class Frame:
    type: int  # a control frame type, or 0 for DATA
    flags: int = 0
    stream_id: int = 0
    headers: dict[str, list[str]] = field(default_factory=dict)
    data: bytes = b""
    value: int = 0  # RST status, PING id, GOAWAY status, WINDOW_UPDATE delta

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)

    def header(self, name: str) -> str:
        return (self.headers.get(name.lower()) or [""])[0]


class ProtocolError(Exception):
    pass


class Connection:
    """Parses what the peer sends (`feed`) and serializes what we send (the frame builders)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    # -- parsing ---------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while len(self._buf) >= 8:
            length = int.from_bytes(self._buf[5:8], "big")
            if len(self._buf) < 8 + length:
                break
            head, body = bytes(self._buf[:8]), bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            frames.append(self._parse(head, body))
        return frames

    def _headers(self, block: bytes) -> dict[str, list[str]]:
        raw = self._inflate.decompress(block)
        (count,) = struct.unpack_from(">I", raw, 0)
        pos, out = 4, {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4 : pos + 4 + n].decode()
            pos += 4 + n
            (n,) = struct.unpack_from(">I", raw, pos)
            out[name.lower()] = raw[pos + 4 : pos + 4 + n].decode().split("\x00")
            pos += 4 + n
        return out

    def _parse(self, head: bytes, body: bytes) -> Frame:
        flags = head[4]
        if not head[0] & 0x80:
            return Frame(0, flags, int.from_bytes(head[:4], "big") & 0x7FFFFFFF, data=body)
        version, kind = struct.unpack(">HH", head[:4])
        if version & 0x7FFF != VERSION:
            raise ProtocolError(f"SPDY version {version & 0x7FFF} is not 3")
        if kind == SYN_STREAM:
            sid = int.from_bytes(body[:4], "big") & 0x7FFFFFFF
            return Frame(kind, flags, sid, headers=self._headers(body[10:]))
        if kind in (SYN_REPLY, HEADERS):
            sid = int.from_bytes(body[:4], "big") & 0x7FFFFFFF
            return Frame(kind, flags, sid, headers=self._headers(body[4:]))
        if kind in (RST_STREAM, WINDOW_UPDATE):
            sid, value = struct.unpack(">II", body[:8])
            return Frame(kind, flags, sid & 0x7FFFFFFF, value=value & 0x7FFFFFFF)
        if kind == PING:
            return Frame(kind, flags, value=struct.unpack(">I", body[:4])[0])
        if kind == GOAWAY:
            last, status = struct.unpack(">II", body[:8])
            return Frame(kind, flags, last & 0x7FFFFFFF, value=status)
        return Frame(kind, flags)  # SETTINGS and anything newer: nothing to act on

    # -- building --------------------------------------------------------------------------------------

    @staticmethod
    def _control(kind: int, flags: int, body: bytes) -> bytes:
        return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body)) + body

    def _header_block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers))
        for name, value in headers.items():
            raw += struct.pack(">I", len(name)) + name.lower().encode()
            raw += struct.pack(">I", len(value.encode())) + value.encode()
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_reply(self, stream_id: int, headers: dict[str, str] | None = None, fin: bool = False) -> bytes:
        body = struct.pack(">I", stream_id) + self._header_block(headers or {})
        return self._control(SYN_REPLY, FLAG_FIN if fin else 0, body)

    @staticmethod
    def data(stream_id: int, payload: bytes, fin: bool = False) -> bytes:
        if len(payload) > MAX_DATA:
            raise ValueError("a SPDY data frame carries at most 16 MiB")
        head = struct.pack(">II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(payload))
        return head + payload

    def rst_stream(self, stream_id: int, status: int) -> bytes:
        return self._control(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def ping(self, ping_id: int) -> bytes:
        return self._control(PING, 0, struct.pack(">I", ping_id))

    def goaway(self, last_stream_id: int, status: int = 0) -> bytes:
        return self._control(GOAWAY, 0, struct.pack(">II", last_stream_id, status))
