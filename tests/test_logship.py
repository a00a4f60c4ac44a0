"""foundation.logship: an agent's log lines reach the hub in order, bounded while it is away."""

from __future__ import annotations

import asyncio
import logging

import pytest

from foundation.logship import LogShipper


def lines(shipper: LogShipper, n: int, start: int = 0) -> None:
    log = logging.getLogger("kubearc.test.logship")
    log.propagate = False
    log.handlers = [shipper]
    log.setLevel(logging.INFO)
    for i in range(start, start + n):
        log.info("line %d", i)


async def test_lines_wait_while_the_hub_is_away_and_the_oldest_are_dropped_counted() -> None:
    shipper = LogShipper("config-agent", capacity=5, batch=2)
    sent: list[list[dict[str, str]]] = []
    up = False

    async def post(entries: list[dict[str, str]]) -> None:
        if not up:
            raise ConnectionError("hub unreachable")
        sent.append(entries)

    lines(shipper, 3)
    assert await shipper.flush_once(post) is False  # away: nothing lost yet
    assert [e["message"] for e in shipper.buffer] == ["line 0", "line 1", "line 2"]
    lines(shipper, 4, start=3)  # 7 lines into a buffer of 5: the two oldest go
    assert shipper.dropped == 2
    up = True
    assert await shipper.flush_once(post) is True
    messages = [e["message"] for batch in sent for e in batch]
    assert messages[0] == "2 log lines were dropped while the hub could not be reached"
    assert messages[1:] == [f"line {i}" for i in range(2, 7)]
    assert all(len(batch) <= 2 for batch in sent[1:])
    assert {e["agent"] for batch in sent for e in batch} == {"config-agent"}
    assert sent[1][0]["level"] == "info" and sent[1][0]["timestamp"].endswith("Z")
    assert shipper.dropped == 0 and shipper.dropped_total == 2 and shipper.shipped_total == 5


async def test_what_the_post_itself_logs_is_not_shipped_and_shutdown_flushes() -> None:
    shipper = LogShipper("metadata", interval=3600)
    sent: list[str] = []

    async def post(entries: list[dict[str, str]]) -> None:
        logging.getLogger("kubearc.agent").warning("retrying the hub")  # would feed itself
        lines(shipper, 1, start=99)
        sent.extend(e["message"] for e in entries)

    lines(shipper, 2)
    task = asyncio.create_task(shipper.run(post))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == ["line 0", "line 1"]  # the final flush, and nothing logged during the post
    assert not shipper.buffer
