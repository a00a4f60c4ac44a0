"""The tunnel's asyncio layer (mux, stream, pipes) over an in-memory transport pair.

The claims of `proxy/mux.py` and `proxy/stream.py`: every call that queues frames
sends them (no caller wakes a writer), a stream leaves its session by itself when
both directions are done, accept and refuse belong to the stream being opened,
and the pipes carry bytes and half-closes across without telling the mux anything.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.mux import Mux
from proxy.pipe import SocketPipe, StreamPipe
from proxy.protocol import events as ev
from proxy.protocol.frames import ErrorCode
from proxy.stream import Stream, StreamError
from tests.test_tunnel_safety import until
from tests.tunnel_memory import MemoryTransport, mux_pair

pytestmark = pytest.mark.sqlite_only


async def read_all(stream: Stream) -> bytes:
    got = bytearray()
    while chunk := await asyncio.wait_for(stream.read(), 5):
        got += chunk
        stream.consumed(len(chunk))
    return bytes(got)


async def shouting(stream: Stream) -> None:
    """The far end: accept, read to the peer's FIN, answer in capitals, FIN."""
    stream.accept()
    await stream.write((await read_all(stream)).upper())
    await stream.write_eof()


def gone(*muxes: Mux) -> bool:
    return all(not m.streams and m.session.open_streams == 0 for m in muxes)


async def test_a_stream_carries_bytes_both_ways_and_leaves_both_sessions_by_itself() -> None:
    async with mux_pair(shouting) as (near, far):
        stream = await near.open({"kind": "test"})
        await stream.write(b"hello " * 50_000)  # past the first window: credit must come back
        await stream.write_eof()
        assert await read_all(stream) == b"HELLO " * 50_000
        await until(lambda: gone(near, far), "the stream to leave both sessions")
        assert stream.released and stream.error is None


async def test_every_call_that_queues_frames_sends_them() -> None:
    seen: list[ev.Event] = []
    async with mux_pair() as (near, far):
        near.on_event = seen.append
        far.on_event = seen.append
        near.ping(b"12345678")
        await until(lambda: any(isinstance(e, ev.PongReceived) for e in seen), "the PONG")
        near.renew({"token": "t"})
        await until(lambda: any(isinstance(e, ev.RenewRequested) for e in seen), "the RENEW at the peer")
        far.renew_ok({"expiresAt": 1})
        await until(lambda: any(isinstance(e, ev.RenewAccepted) for e in seen), "the RENEW_OK")
        far.goaway(ErrorCode.NO_ERROR, "bye")
        await until(lambda: near.peer_going_away, "the GOAWAY")
        assert not near.usable and not far.usable


async def test_a_refusal_reaches_the_opener_with_its_code_and_reason() -> None:
    async def refusing(stream: Stream) -> None:
        stream.refuse(ErrorCode.CONNECT_FAILED, "apiserver 10.0.0.1:443: connection refused")

    async with mux_pair(refusing) as (near, far):
        with pytest.raises(StreamError) as refused:
            await near.open({"kind": "apiserver"})
        assert refused.value.code == ErrorCode.CONNECT_FAILED
        assert "connection refused" in refused.value.reason
        await until(lambda: gone(near, far), "the refused stream to be forgotten on both sides")


async def test_an_open_nobody_answers_times_out_and_is_not_left_behind() -> None:
    async with mux_pair(shouting) as (near, far):
        transport = far.transport
        assert isinstance(transport, MemoryTransport)
        transport.hold()  # the peer stops reading
        with pytest.raises(StreamError) as timed_out:
            await near.open({"kind": "test"}, wait=0.2)
        assert timed_out.value.code == ErrorCode.TIMEOUT
        assert not near.streams


async def test_the_session_ending_fails_every_stream_and_waiter() -> None:
    async def silent(stream: Stream) -> None:
        stream.accept()
        await asyncio.sleep(60)

    async with mux_pair(silent) as (near, _far):
        stream = await near.open({"kind": "test"})
        reader = asyncio.create_task(stream.read())
        await asyncio.sleep(0.01)
        await near.close()
        with pytest.raises(StreamError) as ended:
            await asyncio.wait_for(reader, 5)
        assert ended.value.code == ErrorCode.CANCEL
        assert not near.streams


async def test_a_reset_gives_the_unread_bytes_back_to_the_connection() -> None:
    async def flooding(stream: Stream) -> None:
        stream.accept()
        await stream.write(b"x" * 200_000)
        await asyncio.sleep(60)

    async with mux_pair(flooding) as (near, far):
        stream = await near.open({"kind": "test"})
        await until(lambda: stream.buffered >= 200_000, "the unread bytes")
        stream.reset(ErrorCode.CANCEL, "not interested")
        assert near.buffered == 0 and not near.streams
        await until(lambda: not far.streams, "the reset at the far end")


# ---- pipes -------------------------------------------------------------------------------------


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()  # half-close: our answer is complete
        await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def test_socket_pipes_carry_bytes_and_half_closes_and_the_streams_leave_by_themselves() -> None:
    """Both ends as the agent and the client proxy join them: TCP on each side of the mux pair."""
    target = await echo_server()
    target_port = target.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()

    async def to_target(stream: Stream) -> None:  # the connect agent's apiserver side
        _, pipe = await loop.create_connection(SocketPipe, "127.0.0.1", target_port)
        stream.accept()
        pipe.attach(stream)

    async with target, mux_pair(to_target) as (near, far):
        openers: set[asyncio.Task[None]] = set()

        def accepted() -> SocketPipe:  # the client proxy's loopback side
            pipe = SocketPipe()

            async def join() -> None:
                pipe.attach(await near.open({"kind": "apiserver"}))

            openers.add(asyncio.create_task(join()))
            return pipe

        front = await loop.create_server(accepted, "127.0.0.1", 0)
        async with front:
            reader, writer = await asyncio.open_connection("127.0.0.1", front.sockets[0].getsockname()[1])
            payload = bytes(range(256)) * 4096  # 1 MiB: several windows
            writer.write(payload)
            writer.write_eof()  # TCP FIN -> tunnel FIN -> the target's EOF
            echoed = await asyncio.wait_for(reader.read(), 10)  # tunnel FIN -> TCP FIN ends read()
            assert echoed == payload
            writer.close()
            await until(lambda: gone(near, far), "both streams to leave their sessions")
        await asyncio.gather(*openers)


async def test_a_stream_pipe_passes_each_direction_and_its_fin_on_its_own() -> None:
    """The relay's switch: a client-side stream joined to an agent-side stream."""
    joined: list[StreamPipe] = []
    async with mux_pair(shouting) as (relay_out, agent):

        async def switch(stream: Stream) -> None:
            upstream = await relay_out.open(stream.target)
            stream.accept()
            pipe = StreamPipe(stream, upstream)
            joined.append(pipe)
            pipe.start()

        async with mux_pair(switch) as (client, relay_in):
            stream = await client.open({"kind": "apiserver"})
            await stream.write(b"through the relay")
            await asyncio.sleep(0.05)
            assert not stream.eof  # the far end answers only after our FIN has crossed
            await stream.write_eof()
            assert await read_all(stream) == b"THROUGH THE RELAY"
            await until(lambda: gone(client, relay_in, relay_out, agent), "all four streams to leave")
            assert joined and stream.error is None


async def test_a_reset_on_one_side_of_a_stream_pipe_resets_the_other() -> None:
    holding: list[Stream] = []

    async def hold(stream: Stream) -> None:
        stream.accept()
        holding.append(stream)
        await asyncio.sleep(60)

    async with mux_pair(hold) as (relay_out, agent):

        async def switch(stream: Stream) -> None:
            upstream = await relay_out.open(stream.target)
            stream.accept()
            StreamPipe(stream, upstream).start()

        async with mux_pair(switch) as (client, relay_in):
            stream = await client.open({"kind": "apiserver"})
            await until(lambda: bool(holding), "the agent's stream")
            holding[0].reset(ErrorCode.CONNECT_FAILED, "apiserver went away")
            with pytest.raises(StreamError) as reset:
                await asyncio.wait_for(stream.read(), 5)
            assert reset.value.code == ErrorCode.CONNECT_FAILED
            await until(lambda: gone(client, relay_in, relay_out, agent), "every stream to be forgotten")
