"""The tunnel session: stream state machine and flow control, sans I/O.

A `Session` is fed whole websocket messages (`receive`) and returns events; the
caller's actions (`open_stream`, `send`, `consumed`, ...) queue frames that
`frames_to_send` hands out, control frames first. The I/O layer owns no
protocol state, exactly as with h11 and websockets.

Flow control is credit-based, per stream and per connection, as in HTTP/2: a
sender may only have as many unacknowledged bytes in flight as the receiver
granted; the receiver grants more as its application *consumes* data. Memory is
therefore bounded by the windows, whatever the peer's speed, and a stalled
stream never holds up another (its credit runs out; the others' does not).

Stream windows tune themselves (like QUIC's): each starts at `initial_window`, or
at half the window the session last grew to (a new stream on a long path need not
ramp up again), and doubles once per round trip, up to `max_window`, while it is
smaller than twice the stream's consumption rate times the round trip, i.e. while
the window, not the path, limits the stream.
A stream's window never grows past half the connection window: a stalled stream
holds its whole window unconsumed, and the rest of the connection's credit must
stay for the other streams. A window is a queue in front of whatever is slowest; a fixed large one kept
megabytes of a bulk download in the sockets in front of every small reply on a
fast link, while a fixed small one starves a long-distance link. The round trip
is the lowest recent PING time (`ping` timestamps its payloads), so queueing
delay does not inflate it; until one is measured, windows stay at their start.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from proxy.errors import TunnelError
from proxy.protocol import events as ev
from proxy.protocol import frames as fr
from proxy.protocol.frames import ErrorCode, Frame, FrameError, FrameType

PROTOCOL_VERSIONS = (1,)


@dataclass(frozen=True)
class Settings:
    """What this side grants its peer; sent in HELLO."""

    # Each stream's window at first (then tuned, see above): two of the largest DATA frames, so
    # every hop forwards one frame while the next arrives. At one frame (256 KiB) a stream moved
    # stop-and-wait through the relay: 175 MB/s on loopback against 247 MB/s at 512 KiB.
    initial_window: int = 512 * 1024
    connection_window: int = 32 * 1024 * 1024
    max_data: int = 256 * 1024  # the largest DATA frame it takes (64 KiB cost the relay 18 % more CPU per MB)
    max_streams: int = 65_536
    max_window: int = 16 * 1024 * 1024  # the most a stream's window grows to (not sent in HELLO)

    def to_hello(self) -> dict[str, int]:
        return {
            "initialWindow": self.initial_window,
            "connectionWindow": self.connection_window,
            "maxData": self.max_data,
            "maxStreams": self.max_streams,
        }


class Role(Enum):
    """Who dialled the websocket: the dialler opens odd streams, the listener even ones."""

    DIALLER = 1
    LISTENER = 2


@dataclass
class _Stream:
    sid: int
    send_window: int
    recv_credit: int
    accepted: bool = False
    local_closed: bool = False
    remote_closed: bool = False
    unacked: int = 0  # consumed bytes not yet returned as credit
    window: int = 0  # what we grant this stream now (`recv_credit` at most); tuned upwards
    epoch_start: float = 0.0  # window tuning: when the current measuring epoch began
    epoch_bytes: int = 0  # bytes consumed since then


class SessionClosed(TunnelError):
    """An action on a session that has failed or been told to go away."""


@dataclass
class Session:
    role: Role
    settings: Settings = field(default_factory=Settings)
    hello_info: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    RTT_SAMPLES = 8  # PING round trips kept; the lowest is the path's round trip
    MIN_EPOCH = 0.02  # seconds: the shortest span a consumption rate is measured over
    MAX_CONTROL_BACKLOG = 100_000  # unsent control frames (answers) before the peer is cut off

    def __post_init__(self) -> None:
        self._control: deque[bytes] = deque()
        # DATA and FIN wait per stream and leave in turns (`frames_to_send`), so a small reply is
        # never queued behind another stream's whole window.
        self._data: dict[int, deque[bytes]] = {}
        self._turns: deque[int] = deque()  # streams with queued data, next turn first
        self._streams: dict[int, _Stream] = {}
        self._next_sid = 1 if self.role is Role.DIALLER else 2
        self._highest_remote = 0
        self.peer: ev.Hello | None = None
        self._peer_settings = Settings()  # until the peer's HELLO arrives
        self._conn_send = self._peer_settings.connection_window
        self._conn_recv_credit = self.settings.connection_window
        self._conn_unacked = 0
        self.closed: ev.ConnectionFailed | None = None
        self.going_away = False  # we sent GOAWAY: refuse new streams
        self.peer_going_away = False
        self._pings: dict[bytes, float] = {}  # payload -> when sent, until its PONG
        self.windows_grown = 0  # times a stream window doubled (a metric)
        self._learned_window = 0  # the last window a stream grew to: where new streams start (half)
        self._rtts: deque[float] = deque(maxlen=self.RTT_SAMPLES)
        self._queue(
            fr.json_frame(
                FrameType.HELLO,
                0,
                {
                    "versions": list(PROTOCOL_VERSIONS),
                    **self.settings.to_hello(),
                    **self.hello_info,
                },
            )
        )

    # ---- introspection ------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def window_cap(self) -> int:
        """The most a stream's window grows to: `max_window`, and never over half the connection
        window, so a stalled stream (its window full, nothing consumed) always leaves the other
        streams at least half of the connection's credit."""
        return max(
            self.settings.initial_window, min(self.settings.max_window, self.settings.connection_window // 2)
        )

    @property
    def rtt(self) -> float:
        """The lowest of the recent PING round trips in seconds (0 until one is measured)."""
        return min(self._rtts, default=0.0)

    def window(self, sid: int) -> int:
        """The receive window we grant stream `sid` now (0 when unknown)."""
        stream = self._streams.get(sid)
        return stream.window if stream is not None else 0

    def send_capacity(self, sid: int) -> int:
        stream = self._streams.get(sid)
        if stream is None or stream.local_closed or not stream.accepted:
            return 0
        return max(0, min(stream.send_window, self._conn_send))

    @property
    def has_frames(self) -> bool:
        return bool(self._control or self._turns)

    def frames_to_send(self, budget: int | None = None) -> list[bytes]:
        """Queued frames: all control frames first (WINDOW and PONG never wait behind bulk), then
        data one frame per stream in turn, until about `budget` bytes (None: everything)."""
        out = list(self._control)
        self._control.clear()
        size = 0
        turns, data = self._turns, self._data
        while turns and (budget is None or size < budget):
            sid = turns.popleft()
            queue = data[sid]
            frame = queue.popleft()
            out.append(frame)
            size += len(frame)
            if queue:
                turns.append(sid)
            else:
                del data[sid]
        return out

    def _queue(self, frame: Frame) -> None:
        # FIN travels with the stream's data (it must follow it); everything else jumps ahead.
        if frame.type is FrameType.DATA or frame.type is FrameType.FIN:
            queue = self._data.get(frame.stream_id)
            if queue is None:
                queue = self._data[frame.stream_id] = deque()
                self._turns.append(frame.stream_id)
            queue.append(frame.encode())
        else:
            self._control.append(frame.encode())

    def _drop_queued(self, sid: int) -> None:
        """A reset stream's unsent data will never be read: drop it and take its credit back."""
        queue = self._data.pop(sid, None)
        if queue is None:
            return
        self._turns.remove(sid)
        self._conn_send += sum(len(f) - fr.HEADER.size for f in queue if f[0] == FrameType.DATA)

    def _check_open(self) -> None:
        if self.closed is not None:
            raise SessionClosed(f"session failed: {self.closed.reason}")

    # ---- actions ------------------------------------------------------------------------

    def open_stream(self, target: dict[str, Any]) -> int:
        self._check_open()
        if self.peer_going_away or self.going_away:
            raise SessionClosed("session is going away; open the stream on another session")
        if len(self._streams) >= self._peer_settings.max_streams:
            raise SessionClosed(f"peer allows at most {self._peer_settings.max_streams} streams")
        sid = self._next_sid
        if sid > fr.MAX_STREAM_ID:
            raise SessionClosed("stream ids exhausted; reconnect")
        frame = fr.json_frame(FrameType.OPEN, sid, target)  # may raise: then nothing is left behind
        self._next_sid += 2
        self._streams[sid] = stream = self._new_stream(sid, accepted=False)
        self._queue(frame)
        self._grant_start(stream)
        return sid

    def _new_stream(self, sid: int, accepted: bool) -> _Stream:
        """A stream's state; its window starts at half what the last grown window reached.

        The sender only knows `initial_window` from HELLO, so the difference goes out at once
        as a WINDOW frame (`_grant_start`): a `kubectl cp` on a session that has already learned
        a long path starts near its bandwidth-delay product instead of doubling up from the start.
        """
        window = max(self.settings.initial_window, min(self._learned_window // 2, self.window_cap))
        return _Stream(
            sid,
            self._peer_settings.initial_window,
            window,
            accepted,
            window=window,
            epoch_start=self.clock(),
        )

    def _grant_start(self, stream: _Stream) -> None:
        """Send the credit a stream starts with beyond `initial_window`; after its OPEN is queued."""
        if stream.window > self.settings.initial_window:
            self._queue(fr.window(stream.sid, stream.window - self.settings.initial_window))

    def accept(self, sid: int) -> None:
        stream = self._streams.get(sid)
        if stream is None or stream.accepted:
            return
        stream.accepted = True
        self._queue(Frame(FrameType.OPEN_OK, sid))

    def reject(self, sid: int, code: ErrorCode, reason: str) -> None:
        if self._streams.pop(sid, None) is not None:
            self._queue(fr.coded(FrameType.OPEN_ERR, sid, code, reason))

    def send(self, sid: int, payload: bytes | memoryview, fin: bool = False) -> int:
        """Queue as much of `payload` as credit allows; return how many bytes were taken.

        `fin` ends our direction once all of `payload` is taken (a partial send keeps it open).
        """
        self._check_open()
        stream = self._streams.get(sid)
        if stream is None or stream.local_closed:
            raise SessionClosed(f"stream {sid} is closed for sending")
        if not stream.accepted:
            raise SessionClosed(f"stream {sid} is not open yet")
        total = min(len(payload), stream.send_window, self._conn_send)
        view = memoryview(payload)
        step = self._peer_settings.max_data
        offset = 0
        queue = self._data.get(sid)
        while offset < total:
            end = min(offset + step, total)
            flags = fr.FLAG_FIN if fin and end == len(payload) else 0
            if queue is None:
                queue = self._data[sid] = deque()
                self._turns.append(sid)
            # Header and payload joined in one copy (the payload is never copied on its own).
            queue.append(fr.HEADER.pack(FrameType.DATA, flags, sid) + view[offset:end])
            offset = end
        stream.send_window -= total
        self._conn_send -= total
        if fin and total == len(payload):
            if total == 0:
                self._queue(Frame(FrameType.FIN, sid))
            self._local_close(stream)
        return total

    def send_fin(self, sid: int) -> None:
        stream = self._streams.get(sid)
        if stream is not None and not stream.local_closed:
            self._queue(Frame(FrameType.FIN, sid))
            self._local_close(stream)

    def reset(self, sid: int, code: ErrorCode, reason: str = "") -> None:
        if self._streams.pop(sid, None) is not None:
            self._drop_queued(sid)
            self._queue(fr.coded(FrameType.RST, sid, code, reason))

    def consumed(self, sid: int, size: int) -> None:
        """The application has taken `size` received bytes of `sid`: grant that much again."""
        self._conn_unacked += size
        if self._conn_unacked >= self.settings.connection_window // 4:
            self._queue(fr.window(0, self._conn_unacked))
            self._conn_recv_credit += self._conn_unacked
            self._conn_unacked = 0
        stream = self._streams.get(sid)
        if stream is None or stream.remote_closed:
            return
        stream.unacked += size
        if stream.unacked >= stream.window // 4:
            grant = stream.unacked + self._grow(stream)
            self._queue(fr.window(sid, grant))
            stream.recv_credit += grant
            stream.unacked = 0

    def _grow(self, stream: _Stream) -> int:
        """How much to enlarge `stream`'s window now (see the module docstring); 0 mostly.

        The consumption rate is averaged over an epoch of at least `MIN_EPOCH` and one round
        trip, so a window-limited stream doubles once per round trip, as TCP's slow start does;
        `MIN_EPOCH` keeps a burst (a descheduled process draining its backlog) from passing for
        the path's rate on a short path. The window doubles while it is under twice rate x RTT.
        """
        stream.epoch_bytes += stream.unacked
        rtt, cap = self.rtt, self.window_cap
        if rtt <= 0 or stream.window >= cap:
            return 0
        now = self.clock()
        elapsed = now - stream.epoch_start
        if elapsed < max(self.MIN_EPOCH, rtt):
            return 0
        rate = stream.epoch_bytes / elapsed
        stream.epoch_start, stream.epoch_bytes = now, 0
        if stream.window >= 2 * rate * rtt:
            return 0
        grown = min(2 * stream.window, cap)
        extra, stream.window = grown - stream.window, grown
        self.windows_grown += 1
        self._learned_window = grown
        return extra

    def ping(self, payload: bytes) -> None:
        """Queue a PING; its PONG gives a round-trip sample (and a `PongReceived` event)."""
        payload = payload.ljust(8, b"\0")[:8]
        if len(self._pings) < 64:  # a peer that never answers cannot grow this
            self._pings[payload] = self.clock()
        self._queue(Frame(FrameType.PING, 0, payload))

    def goaway(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Tell the peer to open no new streams here; existing ones finish normally."""
        if not self.going_away:
            self.going_away = True
            self._queue(fr.goaway(self._highest_remote, code, reason))

    def renew(self, doc: dict[str, Any]) -> None:
        self._queue(fr.json_frame(FrameType.RENEW, 0, doc))

    def renew_ok(self, doc: dict[str, Any]) -> None:
        self._queue(fr.json_frame(FrameType.RENEW_OK, 0, doc))

    def renew_err(self, code: ErrorCode, reason: str) -> None:
        self._queue(fr.coded(FrameType.RENEW_ERR, 0, code, reason))

    def replicas(self, doc: dict[str, Any]) -> None:
        """Tell the peer the relay's replica set changed (`{"replicas": [...]}`, as in HELLO)."""
        self._queue(fr.json_frame(FrameType.REPLICAS, 0, doc))

    def _local_close(self, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self._streams[stream.sid]

    # ---- input --------------------------------------------------------------------------

    def receive(self, message: bytes) -> list[ev.Event]:
        """Process one websocket message. Never raises on bad input: it becomes events."""
        if self.closed is not None:
            return []
        try:
            frame = fr.decode(message, self.settings.max_data)
            if self.peer is None and frame.type is not FrameType.HELLO:
                raise FrameError(ErrorCode.PROTOCOL_ERROR, f"{frame.type.name} before HELLO")
            if len(self._control) >= self.MAX_CONTROL_BACKLOG:
                # Every PING, OPEN or RENEW is answered; a peer that keeps asking and never reads
                # the answers would otherwise grow this queue without end.
                raise FrameError(
                    ErrorCode.PROTOCOL_ERROR,
                    f"{self.MAX_CONTROL_BACKLOG} control frames wait unsent: "
                    "the peer sends faster than it reads",
                )
            return self._handle(frame)
        except FrameError as exc:
            if exc.stream_id and exc.stream_id in self._streams:  # stream-scoped: reset only that stream
                self.reset(exc.stream_id, exc.code, exc.reason)
                return [ev.StreamReset(exc.stream_id, exc.code, exc.reason, by_peer=False)]
            return [self._fail(exc.code, exc.reason)]

    def _fail(self, code: ErrorCode, reason: str) -> ev.ConnectionFailed:
        self._queue(fr.goaway(self._highest_remote, code, reason))
        self.going_away = True
        self.closed = ev.ConnectionFailed(code, reason)
        self._streams.clear()
        return self.closed

    def _handle(self, frame: Frame) -> list[ev.Event]:
        t = frame.type
        if t is FrameType.DATA:
            return self._on_data(frame)
        if t is FrameType.WINDOW:
            return self._on_window(frame)
        if t is FrameType.HELLO:
            return self._on_hello(frame)
        if t is FrameType.OPEN:
            return self._on_open(frame)
        if t is FrameType.PING:
            self._queue(Frame(FrameType.PONG, 0, frame.payload))
            return []
        if t is FrameType.PONG:
            sent = self._pings.pop(bytes(frame.payload), None)
            if sent is not None:
                self._rtts.append(max(self.clock() - sent, 1e-6))
            return [ev.PongReceived(frame.payload)]
        if t is FrameType.GOAWAY:
            last, code, reason = fr.read_goaway(frame)
            self.peer_going_away = True
            return [ev.GoAwayReceived(last, code, reason)]
        if t is FrameType.RENEW:
            return [ev.RenewRequested(fr.read_json(frame))]
        if t is FrameType.RENEW_OK:
            return [ev.RenewAccepted(fr.read_json(frame))]
        if t is FrameType.RENEW_ERR:
            code, reason = fr.read_coded(frame)
            return [ev.RenewRejected(code, reason)]
        if t is FrameType.REPLICAS:
            return [ev.ReplicasChanged(fr.read_json(frame))]
        return self._on_stream_control(frame)

    def _on_hello(self, frame: Frame) -> list[ev.Event]:
        if self.peer is not None:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "second HELLO")
        doc = fr.read_json(frame)
        versions = doc.get("versions")
        if not isinstance(versions, list):
            raise FrameError(ErrorCode.PROTOCOL_ERROR, "HELLO without a versions list")
        common = set(PROTOCOL_VERSIONS) & {v for v in versions if isinstance(v, int)}
        if not common:
            raise FrameError(
                ErrorCode.VERSION_MISMATCH,
                f"no common protocol version: ours {list(PROTOCOL_VERSIONS)}, peer's {versions}",
            )
        try:
            peer = Settings(
                initial_window=_bounded(doc, "initialWindow", 1, fr.MAX_WINDOW),
                connection_window=_bounded(doc, "connectionWindow", 1, fr.MAX_WINDOW),
                max_data=_bounded(doc, "maxData", 256, 1024 * 1024),
                max_streams=_bounded(doc, "maxStreams", 1, 2**31),
            )
        except ValueError as exc:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, f"HELLO: {exc}") from None
        # Credit granted before HELLO used the defaults; move to the peer's numbers.
        self._conn_send += peer.connection_window - self._peer_settings.connection_window
        self._peer_settings = peer
        self.peer = ev.Hello(max(common), peer.to_hello(), doc)
        return [self.peer]

    def _on_open(self, frame: Frame) -> list[ev.Event]:
        sid = frame.stream_id
        if sid % 2 == self._next_sid % 2:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, f"peer opened stream {sid} with our parity")
        if sid <= self._highest_remote:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, f"stream id {sid} reused or out of order")
        self._highest_remote = sid
        target = fr.read_json(frame)
        if self.going_away:
            self._queue(fr.coded(FrameType.OPEN_ERR, sid, ErrorCode.REFUSED_STREAM, "session is going away"))
            return []
        if len(self._streams) >= self.settings.max_streams:
            self._queue(
                fr.coded(
                    FrameType.OPEN_ERR,
                    sid,
                    ErrorCode.REFUSED_STREAM,
                    f"at most {self.settings.max_streams} streams",
                )
            )
            return []
        self._streams[sid] = stream = self._new_stream(sid, accepted=False)
        self._grant_start(stream)
        return [ev.StreamOpened(sid, target)]

    def _on_data(self, frame: Frame) -> list[ev.Event]:
        size = len(frame.payload)
        if size > self._conn_recv_credit:
            raise FrameError(ErrorCode.FLOW_CONTROL_ERROR, "peer exceeded the connection window")
        self._conn_recv_credit -= size
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            self._known_or_fail(frame)
            self.consumed(frame.stream_id, size)  # late data of a closed stream: give the credit back
            return []
        if stream.remote_closed:
            raise FrameError(ErrorCode.STREAM_CLOSED, f"DATA after FIN on stream {stream.sid}", stream.sid)
        if size > stream.recv_credit:
            self.reset(stream.sid, ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded")
            self.consumed(stream.sid, size)
            return [
                ev.StreamReset(
                    stream.sid, ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded", by_peer=False
                )
            ]
        stream.recv_credit -= size
        out: list[ev.Event] = [ev.DataReceived(stream.sid, frame.payload)] if size else []
        if frame.flags & fr.FLAG_FIN:
            out.extend(self._remote_close(stream))
        return out

    def _on_window(self, frame: Frame) -> list[ev.Event]:
        increment = fr.window_increment(frame)
        if frame.stream_id == 0:
            if self._conn_send + increment > fr.MAX_WINDOW:
                raise FrameError(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            self._conn_send += increment
            return [ev.WindowOpened(0)]
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            self._known_or_fail(frame)
            return []
        if stream.send_window + increment > fr.MAX_WINDOW:
            raise FrameError(ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow", stream.sid)
        stream.send_window += increment
        return [ev.WindowOpened(stream.sid)]

    def _on_stream_control(self, frame: Frame) -> list[ev.Event]:
        sid = frame.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            self._known_or_fail(frame)
            return []
        t = frame.type
        if t is FrameType.FIN:
            if stream.remote_closed:
                raise FrameError(ErrorCode.STREAM_CLOSED, f"second FIN on stream {sid}", sid)
            return self._remote_close(stream)
        if t is FrameType.RST:
            code, reason = fr.read_coded(frame)
            del self._streams[sid]
            self._drop_queued(sid)
            return [ev.StreamReset(sid, code, reason, by_peer=True)]
        if sid % 2 != self._next_sid % 2 or stream.accepted:
            raise FrameError(ErrorCode.PROTOCOL_ERROR, f"unexpected {t.name} on stream {sid}", sid)
        if t is FrameType.OPEN_OK:
            stream.accepted = True
            return [ev.StreamAccepted(sid)]
        code, reason = fr.read_coded(frame)  # OPEN_ERR
        del self._streams[sid]
        return [ev.StreamRejected(sid, code, reason)]

    def _remote_close(self, stream: _Stream) -> list[ev.Event]:
        stream.remote_closed = True
        if stream.local_closed:
            del self._streams[stream.sid]
        return [ev.StreamEnded(stream.sid)]

    def _known_or_fail(self, frame: Frame) -> None:
        """Frames for streams we closed may still be in flight; ids never opened are an error."""
        sid = frame.stream_id
        ours = sid % 2 == self._next_sid % 2
        if (ours and sid >= self._next_sid) or (not ours and sid > self._highest_remote):
            raise FrameError(ErrorCode.PROTOCOL_ERROR, f"{frame.type.name} for stream {sid} never opened")


def _bounded(doc: dict[str, Any], key: str, low: int, high: int) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer in [{low}, {high}], got {value!r}")
    return value
