"""An agent's own log lines, shipped to the hub's log API: batched, bounded, oldest dropped first.

`LogShipper` is a `logging.Handler`: every record the agent logs is kept in a
bounded buffer (`capacity` lines) as the hub's log entry. `run(post)` sends the
buffer in batches every `interval` seconds; when the hub cannot be reached the
lines stay (the oldest dropped, and counted, once the buffer is full) and go out
in order when it answers again, after a line saying how many were dropped. On
shutdown `run` makes one last attempt within `final_flush` seconds.

Records logged while a batch is being posted (the HTTP client's own lines) are not
shipped, so shipping never feeds itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Entry = dict[str, str]
Post = Callable[[list[Entry]], Awaitable[Any]]
_posting: contextvars.ContextVar[bool] = contextvars.ContextVar("kubearc_log_posting", default=False)
log = logging.getLogger("kubearc.logship")
DROPPED_NOTE = " were dropped while the hub could not be reached"


class LogShipper(logging.Handler):
    def __init__(
        self,
        agent: str,
        *,
        capacity: int = 10_000,
        batch: int = 500,
        interval: float = 5.0,
        final_flush: float = 5.0,
        level: int = logging.INFO,
    ) -> None:
        super().__init__(level)
        self.agent, self.batch, self.interval, self.final_flush = agent, batch, interval, final_flush
        self.buffer: deque[Entry] = deque(maxlen=capacity)
        self.dropped = 0  # lines lost to a full buffer since the last report
        self.dropped_total = 0
        self.shipped_total = 0
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if _posting.get() or record.name.startswith(("httpx", "httpcore", "kubearc.logship")):
            return
        try:
            message = self.format(record)
        except Exception:  # a bad format string must not break the agent
            message = str(record.msg)
        if len(self.buffer) == self.buffer.maxlen:
            self.dropped += 1
            self.dropped_total += 1
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat().replace("+00:00", "Z")
        self.buffer.append(
            {
                "agent": self.agent,
                "timestamp": stamp,
                "level": record.levelname.lower(),
                "message": message[:16_000],
            }
        )

    def _take(self) -> list[Entry]:
        lines: list[Entry] = []
        if self.dropped:
            now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
            note = f"{self.dropped} log lines{DROPPED_NOTE}"
            lines.append({"agent": self.agent, "timestamp": now, "level": "warning", "message": note})
        while self.buffer and len(lines) < self.batch:
            lines.append(self.buffer.popleft())
        return lines

    async def flush_once(self, post: Post) -> bool:
        """Send what is buffered, batch by batch; False (lines kept) when the hub refused or was away."""
        while self.buffer or self.dropped:
            lines = self._take()
            token = _posting.set(True)
            try:
                await post(lines)
            except Exception as exc:  # kept for the next try, oldest first
                self._put_back(lines)
                log.debug("log lines not shipped yet: %s", exc)
                return False
            finally:
                _posting.reset(token)
            self.dropped = 0
            self.shipped_total += sum(1 for e in lines if not e["message"].endswith(DROPPED_NOTE))
        return True

    def _put_back(self, lines: list[Entry]) -> None:
        original = [e for e in lines if not e["message"].endswith(DROPPED_NOTE)]
        room = (self.buffer.maxlen or 0) - len(self.buffer)
        lost = max(0, len(original) - room)
        self.buffer.extendleft(reversed(original[lost:]))
        self.dropped += lost
        self.dropped_total += lost

    async def run(self, post: Post) -> None:
        """Ship every `interval` until cancelled, then once more within `final_flush`."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.flush_once(post)
        finally:
            if self.buffer:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(self.flush_once(post), self.final_flush)
