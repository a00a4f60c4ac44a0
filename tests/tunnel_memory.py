"""Two `proxy.mux.Transport`s joined in memory: the mux, stream and pipe tested without a network.

Messages written on one end arrive at the other on the next loop turn, in order,
as one read batch (what a websocket connection delivers for one socket read). The
test can hold an end's deliveries (`hold`), as a wedged peer that stops reading
would, and close either end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from proxy.mux import Mux, StreamHandler
from proxy.protocol.session import Role, Session, Settings


class MemoryTransport:
    def __init__(self) -> None:
        self.peer: MemoryTransport | None = None
        self.held = False  # deliveries to this end wait while set
        self.written = 0  # messages this end wrote (a figure for tests)
        self._inbox: list[bytes] = []
        self._on_message: Callable[[bytes], None] | None = None
        self._on_batch: Callable[[], None] | None = None
        self._closed = asyncio.Event()
        self._scheduled = False

    @property
    def can_write(self) -> bool:
        return not self._closed.is_set()

    def deliver_to(self, on_message: Callable[[bytes], None], on_batch: Callable[[], None]) -> None:
        self._on_message, self._on_batch = on_message, on_batch
        self._schedule()

    def write_messages(self, messages: Iterable[bytes | memoryview]) -> None:
        assert self.peer is not None
        if self._closed.is_set() or self.peer._closed.is_set():
            return
        for message in messages:
            self.written += 1
            self.peer._inbox.append(bytes(message))
        self.peer._schedule()

    def hold(self, held: bool = True) -> None:
        self.held = held
        if not held:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        if self.held or self._on_message is None or self._closed.is_set():
            return
        batch, self._inbox = self._inbox, []
        for message in batch:
            self._on_message(message)
        if batch and self._on_batch is not None:
            self._on_batch()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        for end in (self, self.peer):
            if end is not None:
                end._closed.set()


def transport_pair() -> tuple[MemoryTransport, MemoryTransport]:
    a, b = MemoryTransport(), MemoryTransport()
    a.peer, b.peer = b, a
    return a, b


@asynccontextmanager
async def mux_pair(
    handler: StreamHandler | None = None, settings: Settings | None = None
) -> AsyncIterator[tuple[Mux, Mux]]:
    """A dialler mux (yielded first) and a listener mux whose peer-opened streams go to `handler`."""
    settings = settings or Settings()
    a, b = transport_pair()
    dialler = Mux(Session(Role.DIALLER, settings), a)
    listener = Mux(Session(Role.LISTENER, settings), b, handler)
    async with asyncio.TaskGroup() as tasks:
        runs = [tasks.create_task(dialler.run()), tasks.create_task(listener.run())]
        await asyncio.wait_for(asyncio.gather(dialler.hello, listener.hello), 5)
        try:
            yield dialler, listener
        finally:
            await a.close()
            await asyncio.wait_for(asyncio.gather(*runs), 5)
