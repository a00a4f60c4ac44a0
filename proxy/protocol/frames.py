"""The tunnel's frame codec: bytes in, frames out, and back. Pure code, no I/O.

One websocket binary message carries exactly one frame:

    +--------+--------+--------------------------------+------------------+
    | type u8| flags u8|        stream id u32          |  payload ...     |
    +--------+--------+--------------------------------+------------------+

Control frames use stream 0 except WINDOW (0 = the connection window), RST,
FIN, OPEN, OPEN_OK, OPEN_ERR and DATA, which always name a stream. Every
payload has a fixed or bounded size, so a decoder never allocates more than one
message's worth: malformed input raises `FrameError` with a code and a reason.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from proxy.errors import TunnelError

HEADER = struct.Struct("!BBI")
U32 = struct.Struct("!I")
U16 = struct.Struct("!H")
GOAWAY_HEAD = struct.Struct("!IH")
MAX_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**31 - 1
MAX_CONTROL_PAYLOAD = 8192  # HELLO, OPEN, errors, RENEW and REPLICAS
DEFAULT_MAX_DATA = 64 * 1024


class FrameType(IntEnum):
    HELLO = 1
    OPEN = 2
    OPEN_OK = 3
    OPEN_ERR = 4
    DATA = 5
    WINDOW = 6
    FIN = 7
    RST = 8
    PING = 9
    PONG = 10
    GOAWAY = 11
    RENEW = 12
    RENEW_OK = 13
    RENEW_ERR = 14
    REPLICAS = 15  # the relay's replica set changed (JSON, as in HELLO)


class ErrorCode(IntEnum):
    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    FLOW_CONTROL_ERROR = 2
    STREAM_CLOSED = 3
    FRAME_SIZE_ERROR = 4
    REFUSED_STREAM = 5
    CANCEL = 6
    CONNECT_FAILED = 7
    UNAUTHORIZED = 8
    INTERNAL_ERROR = 9
    GOING_AWAY = 10
    TIMEOUT = 11
    VERSION_MISMATCH = 12
    # This relay replica holds no session to the stream's cluster; another replica may.
    NO_ROUTE = 13


FLAG_FIN = 0x01  # on DATA: the sender's direction ends after this payload

_STREAM_FRAMES = {
    FrameType.OPEN,
    FrameType.OPEN_OK,
    FrameType.OPEN_ERR,
    FrameType.DATA,
    FrameType.FIN,
    FrameType.RST,
}
_CONNECTION_FRAMES = {
    FrameType.HELLO,
    FrameType.PING,
    FrameType.PONG,
    FrameType.GOAWAY,
    FrameType.RENEW,
    FrameType.RENEW_OK,
    FrameType.RENEW_ERR,
    FrameType.REPLICAS,
}


class FrameError(TunnelError):
    """Input that is not a valid frame; `code` says how the session should answer."""

    def __init__(self, code: ErrorCode, reason: str, stream_id: int = 0) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.stream_id = stream_id


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    stream_id: int = 0
    payload: bytes = b""  # a memoryview for received DATA (see `decode`)
    flags: int = 0

    def encode(self) -> bytes:
        return HEADER.pack(self.type, self.flags, self.stream_id) + self.payload


def decode(message: bytes, max_data: int = DEFAULT_MAX_DATA) -> Frame:
    """Parse one websocket message into a frame, checking every size and id rule."""
    if len(message) < HEADER.size:
        raise FrameError(
            ErrorCode.FRAME_SIZE_ERROR, f"frame of {len(message)} bytes is shorter than its header"
        )
    raw_type, flags, stream_id = HEADER.unpack_from(message)
    try:
        ftype = FrameType(raw_type)
    except ValueError:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"unknown frame type {raw_type}") from None
    if stream_id > MAX_STREAM_ID:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"stream id {stream_id} out of range")
    size = len(message) - HEADER.size
    if ftype in _STREAM_FRAMES and stream_id == 0:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"{ftype.name} frame on stream 0")
    if ftype in _CONNECTION_FRAMES and stream_id != 0:
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"{ftype.name} frame on stream {stream_id}", stream_id)
    if flags & ~FLAG_FIN or (flags and ftype is not FrameType.DATA):
        raise FrameError(ErrorCode.PROTOCOL_ERROR, f"unknown flags {flags:#x} on {ftype.name}", stream_id)
    if ftype is FrameType.DATA:
        if size > max_data:
            raise FrameError(
                ErrorCode.FRAME_SIZE_ERROR, f"DATA of {size} bytes exceeds {max_data}", stream_id
            )
    elif ftype is FrameType.WINDOW:
        if size != 4:
            raise FrameError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW payload must be 4 bytes", stream_id)
        (increment,) = U32.unpack_from(message, HEADER.size)
        if not 0 < increment <= MAX_WINDOW:
            raise FrameError(
                ErrorCode.PROTOCOL_ERROR, f"WINDOW increment {increment} out of range", stream_id
            )
    elif ftype in (FrameType.PING, FrameType.PONG):
        if size != 8:
            raise FrameError(ErrorCode.FRAME_SIZE_ERROR, f"{ftype.name} payload must be 8 bytes")
    elif ftype in (FrameType.FIN, FrameType.OPEN_OK):
        if size:
            raise FrameError(ErrorCode.FRAME_SIZE_ERROR, f"{ftype.name} carries no payload", stream_id)
    elif ftype in (FrameType.RST, FrameType.OPEN_ERR):
        if not 2 <= size <= MAX_CONTROL_PAYLOAD:
            raise FrameError(ErrorCode.FRAME_SIZE_ERROR, f"{ftype.name} payload size {size}", stream_id)
    elif ftype is FrameType.GOAWAY:
        if not GOAWAY_HEAD.size <= size <= MAX_CONTROL_PAYLOAD:
            raise FrameError(ErrorCode.FRAME_SIZE_ERROR, f"GOAWAY payload size {size}")
    elif size > MAX_CONTROL_PAYLOAD:
        raise FrameError(ErrorCode.FRAME_SIZE_ERROR, f"{ftype.name} payload of {size} bytes is too large")
    # DATA payloads stay a view of the message: the relay hands them on with one copy, not two.
    body = memoryview(message)[HEADER.size :] if ftype is FrameType.DATA else message[HEADER.size :]
    return Frame(ftype, stream_id, body, flags)  # type: ignore[arg-type]


# Constructors and payload readers, so no other module packs bytes by hand.


def data(stream_id: int, payload: bytes, fin: bool = False) -> Frame:
    return Frame(FrameType.DATA, stream_id, payload, FLAG_FIN if fin else 0)


def window(stream_id: int, increment: int) -> Frame:
    return Frame(FrameType.WINDOW, stream_id, U32.pack(increment))


def window_increment(frame: Frame) -> int:
    return int(U32.unpack(frame.payload)[0])


def coded(ftype: FrameType, stream_id: int, code: ErrorCode, reason: str = "") -> Frame:
    """RST, OPEN_ERR and RENEW_ERR: a code and a short UTF-8 reason."""
    text = reason.encode()[: MAX_CONTROL_PAYLOAD - 2]
    return Frame(ftype, stream_id, U16.pack(code) + text)


def read_coded(frame: Frame) -> tuple[ErrorCode | int, str]:
    (raw,) = U16.unpack_from(frame.payload)
    try:
        code: ErrorCode | int = ErrorCode(raw)
    except ValueError:
        code = raw  # codes from newer peers pass through as numbers
    return code, frame.payload[2:].decode("utf-8", "replace")


def goaway(last_stream_id: int, code: ErrorCode, reason: str = "") -> Frame:
    text = reason.encode()[: MAX_CONTROL_PAYLOAD - GOAWAY_HEAD.size]
    return Frame(FrameType.GOAWAY, 0, GOAWAY_HEAD.pack(last_stream_id, code) + text)


def read_goaway(frame: Frame) -> tuple[int, int, str]:
    last, code = GOAWAY_HEAD.unpack_from(frame.payload)
    return last, code, frame.payload[GOAWAY_HEAD.size :].decode("utf-8", "replace")


def json_frame(ftype: FrameType, stream_id: int, doc: dict[str, Any]) -> Frame:
    payload = json.dumps(doc, separators=(",", ":")).encode()
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError(f"{ftype.name} document exceeds {MAX_CONTROL_PAYLOAD} bytes")
    return Frame(ftype, stream_id, payload)


def read_json(frame: Frame) -> dict[str, Any]:
    try:
        doc = json.loads(frame.payload)
    except (ValueError, RecursionError) as exc:  # also too deep nesting, too long integers
        raise FrameError(
            ErrorCode.PROTOCOL_ERROR, f"{frame.type.name} payload is not JSON: {exc}", frame.stream_id
        ) from None
    if not isinstance(doc, dict):
        raise FrameError(
            ErrorCode.PROTOCOL_ERROR, f"{frame.type.name} payload must be a JSON object", frame.stream_id
        )
    return doc
