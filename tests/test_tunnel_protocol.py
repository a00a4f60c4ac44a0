"""The sans-I/O tunnel protocol: codec round trips, a decoder fuzz, and a two-session model.

The model drives two sessions wired back to back with random actions (open,
send, consume, half-close, reset, ping, frame reordering is not allowed: the
transport is a websocket) and checks the invariants the tunnel relies on.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from proxy.protocol import events as ev
from proxy.protocol import frames as fr
from proxy.protocol.frames import ErrorCode, FrameError, FrameType
from proxy.protocol.session import Role, Session, Settings

START = Settings().initial_window  # where a stream's window starts by default

frame_types = st.sampled_from(list(FrameType))


@given(st.binary(max_size=200))
@settings(max_examples=3000)
def test_decoder_never_raises_anything_but_frame_error(blob: bytes) -> None:
    try:
        frame = fr.decode(blob)
    except FrameError as exc:
        assert exc.reason and isinstance(exc.code, ErrorCode)
    else:
        assert frame.encode() == blob  # anything accepted re-encodes to the same bytes


@given(frame_types, st.integers(0, 2**32 - 1), st.integers(0, 255), st.binary(max_size=100))
@settings(max_examples=3000)
def test_decoder_on_structured_garbage(ftype: FrameType, sid: int, flags: int, payload: bytes) -> None:
    blob = struct.pack("!BBI", ftype, flags, sid) + payload
    try:
        frame = fr.decode(blob)
    except FrameError:
        return
    assert frame.type is ftype and frame.stream_id == sid


@given(st.integers(1, fr.MAX_STREAM_ID), st.binary(max_size=2048), st.booleans())
def test_data_round_trip(sid: int, payload: bytes, fin: bool) -> None:
    frame = fr.decode(fr.data(sid, payload, fin).encode())
    assert (frame.stream_id, frame.payload, bool(frame.flags & fr.FLAG_FIN)) == (sid, payload, fin)


def test_oversized_data_is_refused_with_a_reason() -> None:
    with __import__("pytest").raises(FrameError, match="exceeds"):
        fr.decode(fr.data(1, b"x" * 70_000).encode())


def _pair(a_settings: Settings | None = None, b_settings: Settings | None = None) -> tuple[Session, Session]:
    a = Session(Role.DIALLER, a_settings or Settings())
    b = Session(Role.LISTENER, b_settings or Settings())
    _pump(a, b)
    return a, b


def _pump(a: Session, b: Session) -> tuple[list[ev.Event], list[ev.Event]]:
    """Deliver queued frames both ways until both are quiet; return (a's events, b's events)."""
    got_a: list[ev.Event] = []
    got_b: list[ev.Event] = []
    while True:
        to_b, to_a = a.frames_to_send(), b.frames_to_send()
        if not to_b and not to_a:
            return got_a, got_b
        for m in to_b:
            got_b.extend(b.receive(m))
        for m in to_a:
            got_a.extend(a.receive(m))


def test_hello_negotiates_and_settings_apply() -> None:
    a, b = _pair(Settings(initial_window=1000), Settings(initial_window=5000, max_data=2048))
    assert a.peer is not None and b.peer is not None
    assert a.peer.version == 1 and a.peer.settings["initialWindow"] == 5000
    sid = a.open_stream({"target": "apiserver"})
    _, got_b = _pump(a, b)
    assert got_b == [ev.StreamOpened(sid, {"target": "apiserver"})]
    b.accept(sid)
    got_a, _ = _pump(a, b)
    assert got_a == [ev.StreamAccepted(sid)]
    assert a.send_capacity(sid) == 5000  # b granted 5000
    assert a.send(sid, b"x" * 9000) == 5000
    assert all(len(m) - 6 <= 2048 for m in a.frames_to_send())  # b's maxData respected


def test_version_mismatch_fails_cleanly() -> None:
    a = Session(Role.DIALLER)
    hello = fr.json_frame(FrameType.HELLO, 0, {"versions": [99]}).encode()
    (event,) = a.receive(hello)
    assert isinstance(event, ev.ConnectionFailed) and event.code is ErrorCode.VERSION_MISMATCH
    assert a.receive(hello) == []
    assert any(fr.decode(m).type is FrameType.GOAWAY for m in a.frames_to_send())


def test_frames_before_hello_and_bad_hello() -> None:
    a = Session(Role.DIALLER)
    (event,) = a.receive(fr.data(2, b"x").encode())
    assert isinstance(event, ev.ConnectionFailed) and "before HELLO" in event.reason
    b = Session(Role.DIALLER)
    bad = fr.json_frame(FrameType.HELLO, 0, {"versions": [1], "initialWindow": -5}).encode()
    (event,) = b.receive(bad)
    assert isinstance(event, ev.ConnectionFailed) and "initialWindow" in event.reason


def test_stalled_stream_does_not_block_another() -> None:
    a, b = _pair(Settings(), Settings(initial_window=64 * 1024, connection_window=1024 * 1024))
    slow, fast = a.open_stream({}), a.open_stream({})
    _pump(a, b)
    b.accept(slow)
    b.accept(fast)
    _pump(a, b)
    # b never consumes `slow`: a may only put 64 KiB in flight on it ...
    assert a.send(slow, b"s" * 1_000_000) == 64 * 1024
    assert a.send_capacity(slow) == 0
    # ... while `fast` keeps flowing as b consumes it.
    moved = 0
    for _ in range(50):
        n = a.send(fast, b"f" * 100_000)
        _, got = _pump(a, b)
        for e in got:
            if isinstance(e, ev.DataReceived) and e.stream_id == fast:
                moved += len(e.data)
                b.consumed(fast, len(e.data))
            elif isinstance(e, ev.DataReceived):
                assert e.stream_id == slow
        _pump(a, b)
        assert n > 0
    assert moved > 1_000_000


def test_flow_control_violation_resets_only_that_stream() -> None:
    a, b = _pair(Settings(), Settings(initial_window=1024))
    sid = a.open_stream({})
    other = a.open_stream({})
    _pump(a, b)
    b.accept(sid)
    b.accept(other)
    _pump(a, b)
    # A peer that ignores credit: bypass a's accounting with raw frames.
    events = b.receive(fr.data(sid, b"x" * 2000).encode())
    assert events == [
        ev.StreamReset(sid, ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded", by_peer=False)
    ]
    assert b.closed is None and b.open_streams == 1


def test_half_close_each_way_then_closed() -> None:
    a, b = _pair()
    sid = a.open_stream({})
    _pump(a, b)
    b.accept(sid)
    _pump(a, b)
    a.send(sid, b"stdin", fin=True)  # kubectl exec: stdin EOF
    _, got_b = _pump(a, b)
    assert got_b == [ev.DataReceived(sid, b"stdin"), ev.StreamEnded(sid)]
    b.send(sid, b"stdout")  # the other direction still flows
    got_a, _ = _pump(a, b)
    assert got_a == [ev.DataReceived(sid, b"stdout")]
    b.send_fin(sid)
    got_a, _ = _pump(a, b)
    assert got_a == [ev.StreamEnded(sid)]
    assert a.open_streams == 0 and b.open_streams == 0


def test_fin_queued_behind_data_stays_behind_it() -> None:
    a, b = _pair()
    sid = a.open_stream({})
    _pump(a, b)
    b.accept(sid)
    _pump(a, b)
    a.send(sid, b"last words")  # no delivery in between: both frames sit in a's queue
    a.send_fin(sid)
    a.ping(b"p")  # control frames may overtake data, but never a stream's FIN
    _, got_b = _pump(a, b)
    assert got_b == [ev.DataReceived(sid, b"last words"), ev.StreamEnded(sid)]


def _open_accepted(a: Session, b: Session) -> int:
    sid = a.open_stream({})
    _pump(a, b)
    b.accept(sid)
    _pump(a, b)
    return sid


def test_streams_take_turns_so_a_small_reply_does_not_wait_behind_bulk() -> None:
    a, b = _pair(b_settings=Settings(initial_window=4 * 1024 * 1024, max_data=64 * 1024))
    bulk, small = _open_accepted(a, b), _open_accepted(a, b)
    assert a.send(bulk, bytes(2 * 1024 * 1024)) == 2 * 1024 * 1024  # 32 frames of 64 KiB queued
    a.send(small, b"pong")
    batch = a.frames_to_send(256 * 1024)
    # The small stream's frame goes out in the first bounded batch, right after one bulk frame.
    events = [e for m in batch for e in b.receive(m)]
    assert ev.DataReceived(small, b"pong") in events[:2]
    assert sum(len(e.data) for e in events if isinstance(e, ev.DataReceived)) < 400 * 1024
    assert a.has_frames  # the rest of the bulk waits for the next turns


def test_bulk_data_travels_in_frames_of_a_quarter_mebibyte_by_default() -> None:
    # Fewer, larger frames: on loopback the relay spent 18 % less CPU per MB than with 64 KiB ones
    # (bench_tunnel, alternating runs), with round trips beside bulk unchanged.
    a, b = _pair(b_settings=Settings(initial_window=4 * 1024 * 1024))
    bulk = _open_accepted(a, b)
    assert a.send(bulk, bytes(1024 * 1024)) == 1024 * 1024
    sizes = [
        len(e.data)
        for m in a.frames_to_send(4 * 1024 * 1024)
        for e in b.receive(m)
        if isinstance(e, ev.DataReceived)
    ]
    assert sizes == [256 * 1024] * 4


def test_a_new_stream_has_two_full_frames_in_flight_before_any_credit_returns() -> None:
    # With one frame per window a stream goes stop-and-wait through the relay: each hop holds
    # the whole frame while the next waits for credit. Two let every hop work at once.
    a, b = _pair()
    bulk = _open_accepted(a, b)
    assert a.send(bulk, bytes(1024 * 1024)) == 2 * Settings().max_data
    sizes = [len(e.data) for m in a.frames_to_send() for e in b.receive(m) if isinstance(e, ev.DataReceived)]
    assert sizes == [Settings().max_data] * 2


def test_reset_drops_unsent_data_and_takes_its_credit_back() -> None:
    a, b = _pair(b_settings=Settings(connection_window=1024 * 1024, initial_window=1024 * 1024))
    doomed, other = _open_accepted(a, b), _open_accepted(a, b)
    assert a.send(doomed, bytes(1024 * 1024)) == 1024 * 1024  # the whole connection window
    assert a.send_capacity(other) == 0
    a.reset(doomed, ErrorCode.CANCEL, "client went away")
    assert a.send_capacity(other) == 1024 * 1024  # nothing of it was sent: all credit returns
    _, got_b = _pump(a, b)
    assert not any(isinstance(e, ev.DataReceived) for e in got_b)
    assert any(isinstance(e, ev.StreamReset) and e.stream_id == doomed for e in got_b)


def test_goaway_refuses_new_streams_but_keeps_old_ones() -> None:
    a, b = _pair()
    old = a.open_stream({})
    _pump(a, b)
    b.accept(old)
    b.goaway(ErrorCode.GOING_AWAY, "restart")
    got_a, _ = _pump(a, b)
    assert ev.GoAwayReceived(old, ErrorCode.GOING_AWAY, "restart") in got_a
    try:
        a.open_stream({})
    except Exception as exc:
        assert "going away" in str(exc)
    else:
        raise AssertionError("open_stream after GOAWAY must fail")
    a.send(old, b"still here")
    _, got_b = _pump(a, b)
    assert got_b == [ev.DataReceived(old, b"still here")]


def test_ping_pong_and_renewal_events() -> None:
    a, b = _pair()
    a.ping(b"12345678")
    got_a, _ = _pump(a, b)
    assert got_a == [ev.PongReceived(b"12345678")]
    a.renew({"token": "t2"})
    _, got_b = _pump(a, b)
    assert got_b == [ev.RenewRequested({"token": "t2"})]
    b.renew_err(ErrorCode.UNAUTHORIZED, "expired")
    got_a, _ = _pump(a, b)
    assert got_a == [ev.RenewRejected(ErrorCode.UNAUTHORIZED, "expired")]


@given(st.lists(st.binary(max_size=40), max_size=60))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_session_survives_random_messages(messages: list[bytes]) -> None:
    s = Session(Role.LISTENER, Settings(max_streams=8))
    s.receive(fr.json_frame(FrameType.HELLO, 0, {"versions": [1], **Settings().to_hello()}).encode())
    for m in messages:
        for e in s.receive(m):
            assert not isinstance(e, Exception)
    assert s.open_streams <= 8
    s.frames_to_send()


class TwoSessions(RuleBasedStateMachine):
    """Random traffic between two sessions: data arrives intact, in order, within credit."""

    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _pair(
            Settings(initial_window=4096, connection_window=16384, max_data=1024),
            Settings(initial_window=2048, connection_window=8192, max_data=512),
        )
        self.sent: dict[int, bytearray] = {}
        self.received: dict[int, bytearray] = {}
        self.unconsumed: dict[int, int] = {}
        self.ended: set[int] = set()
        self.fin_sent: set[int] = set()
        self.reset: set[int] = set()

    def _deliver(self) -> None:
        got_a, got_b = _pump(self.a, self.b)
        for e in got_b:
            if isinstance(e, ev.StreamOpened):
                self.b.accept(e.stream_id)
            elif isinstance(e, ev.DataReceived):
                self.received.setdefault(e.stream_id, bytearray()).extend(e.data)
                self.unconsumed[e.stream_id] = self.unconsumed.get(e.stream_id, 0) + len(e.data)
            elif isinstance(e, ev.StreamEnded):
                self.ended.add(e.stream_id)
            elif isinstance(e, ev.StreamReset):
                self.reset.add(e.stream_id)
        for e in got_a:
            assert not isinstance(e, ev.ConnectionFailed), e
        _pump(self.a, self.b)

    @rule(target=streams)
    def open(self) -> int:
        sid = self.a.open_stream({"n": 1})
        self._deliver()
        self.sent[sid] = bytearray()
        return sid

    @rule(sid=streams, size=st.integers(0, 5000))
    def send(self, sid: int, size: int) -> None:
        if sid in self.fin_sent or sid in self.reset:
            return
        payload = bytes((sid + i) % 251 for i in range(size))
        taken = self.a.send(sid, payload)
        assert 0 <= taken <= size
        self.sent[sid].extend(payload[:taken])
        self._deliver()

    @rule(sid=streams, fraction=st.floats(0, 1))
    def consume(self, sid: int, fraction: float) -> None:
        n = int(self.unconsumed.get(sid, 0) * fraction)
        if n:
            self.unconsumed[sid] -= n
            self.b.consumed(sid, n)
            self._deliver()

    @rule(sid=streams)
    def fin(self, sid: int) -> None:
        if sid not in self.fin_sent and sid not in self.reset:
            self.a.send_fin(sid)
            self.fin_sent.add(sid)
            self._deliver()

    @rule(sid=streams)
    def rst(self, sid: int) -> None:
        if sid not in self.reset:
            self.a.reset(sid, ErrorCode.CANCEL, "bye")
            self.reset.add(sid)
            self._deliver()

    @invariant()
    def data_intact_and_bounded(self) -> None:
        for sid, data in self.received.items():
            assert data == self.sent[sid][: len(data)], f"stream {sid} corrupted"
            assert self.unconsumed.get(sid, 0) <= 2048  # never more than b's window buffered
        assert sum(self.unconsumed.values()) <= 8192
        for sid in self.fin_sent - self.reset:
            assert sid in self.ended and self.received.get(sid, bytearray()) == self.sent[sid]
        assert self.a.closed is None and self.b.closed is None


TestTwoSessions = TwoSessions.TestCase
TestTwoSessions.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _consume_all(a: Session, b: Session, sid: int, clock: FakeClock, seconds_per_byte: float) -> int:
    """Send what credit allows on `sid`, let b consume it at the given pace; return bytes moved."""
    moved = 0
    while size := a.send_capacity(sid):
        a.send(sid, bytes(size))
        for message in a.frames_to_send():
            for event in b.receive(message):
                if isinstance(event, ev.DataReceived):
                    clock.now += len(event.data) * seconds_per_byte
                    b.consumed(sid, len(event.data))
                    moved += len(event.data)
        for message in b.frames_to_send():
            a.receive(message)
        if moved > 256 * 1024 * 1024:
            break
    return moved


def _measured_rtt(a: Session, b: Session, clock: FakeClock, rtt: float) -> None:
    """b PINGs a; the PONG comes back `rtt` seconds later."""
    b.ping(b"probe")
    for message in b.frames_to_send():
        a.receive(message)
    clock.now += rtt
    for message in a.frames_to_send():
        b.receive(message)
    assert b.rtt == pytest.approx(rtt)


def test_a_window_grows_on_a_long_path_and_stays_small_on_a_short_one() -> None:
    # Long path: 50 ms round trip, the receiver consumes 100 MB/s. A 512 KiB window allows only
    # 10 MB/s there, so it doubles, up to max_window, and no further.
    clock = FakeClock()
    a = Session(Role.DIALLER, Settings())
    b = Session(Role.LISTENER, Settings(max_window=4 * 1024 * 1024), clock=clock)
    _pump(a, b)
    sid = _open_accepted(a, b)
    assert b.window(sid) == START and b.rtt == 0
    _consume_all(a, b, sid, clock, 1e-8)
    assert b.window(sid) == START  # no round trip measured yet: no growth
    _measured_rtt(a, b, clock, 0.050)
    _consume_all(a, b, sid, clock, 1e-8)
    assert b.window(sid) == 4 * 1024 * 1024
    assert a.send_capacity(sid) <= 4 * 1024 * 1024  # the sender never has more than the window

    # Short path: 0.1 ms round trip at the same rate. The initial window already covers it.
    clock2 = FakeClock()
    c = Session(Role.DIALLER, Settings())
    d = Session(Role.LISTENER, Settings(), clock=clock2)
    _pump(c, d)
    sid2 = _open_accepted(c, d)
    _measured_rtt(c, d, clock2, 0.0001)
    _consume_all(c, d, sid2, clock2, 1e-8)
    assert d.window(sid2) == START


def _long_path() -> tuple[FakeClock, Session, Session, int]:
    """a sends to b over a 50 ms round trip (measured); b's windows may grow to 4 MiB."""
    clock = FakeClock()
    a = Session(Role.DIALLER, Settings())
    b = Session(Role.LISTENER, Settings(max_window=4 * 1024 * 1024), clock=clock)
    _pump(a, b)
    sid = _open_accepted(a, b)
    _measured_rtt(a, b, clock, 0.050)
    return clock, a, b, sid


def test_a_window_limited_stream_doubles_once_per_round_trip_like_slow_start() -> None:
    # 50 ms round trip, the receiver consumes 100 MB/s: from 512 KiB to 4 MiB is three doublings,
    # one per round trip (TCP's slow start), not one per several round trips.
    clock, a, b, sid = _long_path()
    start = clock.now
    while b.window(sid) < 4 * 1024 * 1024:
        size = min(a.send_capacity(sid), 64 * 1024)
        a.send(sid, bytes(size))
        for message in a.frames_to_send():
            for event in b.receive(message):
                if isinstance(event, ev.DataReceived):
                    clock.now += len(event.data) * 1e-8
                    b.consumed(sid, len(event.data))
        for message in b.frames_to_send():
            a.receive(message)
        assert clock.now - start < 1.0, "the window did not reach 4 MiB within 20 round trips"
    assert b.windows_grown == 3
    assert clock.now - start <= 4 * 0.050


def test_a_new_stream_starts_at_half_the_window_the_session_learned() -> None:
    # A long path taught the session a 4 MiB window; the next stream (a `kubectl cp`) starts at
    # 2 MiB of credit at once, announced by a WINDOW frame right after its OPEN.
    clock, a, b, first = _long_path()
    _consume_all(a, b, first, clock, 1e-8)
    assert b.window(first) == 4 * 1024 * 1024
    # The peer opens the next stream: b grants it 2 MiB before it has consumed a byte.
    second = _open_accepted(a, b)
    assert b.window(second) == 2 * 1024 * 1024
    assert a.send_capacity(second) == 2 * 1024 * 1024
    # b opens one itself: OPEN first, then its WINDOW (a WINDOW for an unknown stream is an error).
    third = b.open_stream({})
    frames = [fr.decode(m) for m in b.frames_to_send()]
    assert [(f.type, f.stream_id) for f in frames] == [(FrameType.OPEN, third), (FrameType.WINDOW, third)]
    for message in (f.encode() for f in frames):
        a.receive(message)
    a.accept(third)
    _pump(a, b)
    assert b.send_capacity(third) == START  # a learned nothing: it grants its initial window
    assert a.closed is None and b.closed is None


def test_a_window_never_grows_past_half_the_connection_window() -> None:
    """A stalled stream holds its whole window; the other streams must keep credit to move."""
    clock = FakeClock()
    a = Session(Role.DIALLER, Settings())
    b = Session(Role.LISTENER, Settings(connection_window=2 * 1024 * 1024), clock=clock)
    _pump(a, b)
    sid = _open_accepted(a, b)
    _measured_rtt(a, b, clock, 0.050)  # a long, fast path: the 16 MiB max_window would be the target
    _consume_all(a, b, sid, clock, 1e-8)
    assert b.window(sid) == 1024 * 1024
    # The stream fills its window and stalls (nothing consumed): another stream still gets half.
    stalled = a.send(sid, b"x" * a.send_capacity(sid))
    for message in a.frames_to_send():
        b.receive(message)
    assert stalled == 1024 * 1024
    other = _open_accepted(a, b)
    assert a.send_capacity(other) >= START


def test_the_round_trip_is_the_lowest_recent_ping() -> None:
    clock = FakeClock()
    a, b = Session(Role.DIALLER), Session(Role.LISTENER, clock=clock)
    _pump(a, b)
    for rtt in (0.004, 0.001, 0.009):  # queueing delay inflates some samples; the minimum is the path
        _measured_rtt_any(a, b, clock, rtt)
    assert b.rtt == pytest.approx(0.001)
    b.receive(fr.Frame(FrameType.PONG, 0, b"unasked!").encode())  # an unsolicited PONG is ignored
    assert b.rtt == pytest.approx(0.001)


def _measured_rtt_any(a: Session, b: Session, clock: FakeClock, rtt: float) -> None:
    b.ping(clock.now.hex().encode()[-8:])
    for message in b.frames_to_send():
        a.receive(message)
    clock.now += rtt
    for message in a.frames_to_send():
        b.receive(message)


def test_a_peer_that_asks_and_never_reads_the_answers_is_cut_off() -> None:
    _, b = _pair()
    ping = fr.Frame(FrameType.PING, 0, b"flood!!!").encode()
    events: list[ev.Event] = []
    for _ in range(Session.MAX_CONTROL_BACKLOG + 1):  # b never calls frames_to_send: PONGs pile up
        events += b.receive(ping)
    (failed,) = [e for e in events if isinstance(e, ev.ConnectionFailed)]
    assert "faster than it reads" in failed.reason and b.closed is not None
    assert b.receive(ping) == []  # and nothing more is taken
