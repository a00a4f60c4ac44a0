"""What a tunnel session tells its I/O layer. Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.protocol.frames import ErrorCode


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    settings: dict[str, int]
    info: dict[str, Any]  # the whole HELLO document (replica id, replica set, ...)


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream_id: int
    target: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamRejected:
    stream_id: int
    code: ErrorCode | int
    reason: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes | memoryview  # a view of the received message: copied only where it is kept


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed: no more data will arrive on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    code: ErrorCode | int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class WindowOpened:
    """Send credit grew for a stream (0: the connection); blocked writers may resume."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    last_stream_id: int
    code: ErrorCode | int
    reason: str


@dataclass(frozen=True, slots=True)
class RenewRequested:
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RenewAccepted:
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RenewRejected:
    code: ErrorCode | int
    reason: str


@dataclass(frozen=True, slots=True)
class ReplicasChanged:
    """The relay's replica set, as its REPLICAS frame lists it (the same shape as in HELLO)."""

    doc: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The session is dead (a GOAWAY saying why is queued); close the websocket."""

    code: ErrorCode
    reason: str


Event = (
    Hello
    | StreamOpened
    | StreamAccepted
    | StreamRejected
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowOpened
    | PongReceived
    | GoAwayReceived
    | RenewRequested
    | RenewAccepted
    | RenewRejected
    | ReplicasChanged
    | ConnectionFailed
)
