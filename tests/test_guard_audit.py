"""guard's audit sinks: the stream sink writes the logging format's lines, one write per loop turn."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from guard.audit import LOGGER, LoggingAudit, StreamAudit

pytestmark = pytest.mark.sqlite_only


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture(autouse=True)
def audit_level() -> object:
    logger = logging.getLogger(LOGGER)
    before = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(before)


async def test_decisions_of_one_loop_turn_are_one_write_of_json_lines() -> None:
    stream = CountingStream()
    sink = StreamAudit(stream, "json")
    for n in range(5):
        sink.decision("tokenreview", {"request_id": f"r{n}", "authenticated": n % 2 == 0, "reason": None})
    assert stream.writes == 0  # nothing written inside the turn that decided
    await asyncio.sleep(0)
    assert stream.writes == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == [f"r{n}" for n in range(5)]
    assert {line["logger"] for line in lines} == {LOGGER} and {line["msg"] for line in lines} == {
        "tokenreview"
    }
    assert lines[1]["authenticated"] is False and lines[0]["level"] == "info"
    assert lines[0]["ts"].endswith("Z") and len(lines[0]["ts"]) == len("2026-01-01T00:00:00.000Z")
    sink.decision("subjectaccessreview", {"request_id": "last"})
    sink.flush()  # what the server does on shutdown: nothing pending is lost
    assert stream.writes == 2 and json.loads(stream.getvalue().splitlines()[-1])["request_id"] == "last"


async def test_text_format_and_level_are_honoured() -> None:
    stream = io.StringIO()
    StreamAudit(stream, "text").decision("subjectaccessreview", {"user": "alice", "decision": "allowed"})
    await asyncio.sleep(0)
    assert (
        stream.getvalue() == "info  kubearc.guard.audit: subjectaccessreview [user=alice decision=allowed]\n"
    )
    logging.getLogger(LOGGER).setLevel(logging.WARNING)
    quiet = io.StringIO()
    StreamAudit(quiet, "json").decision("tokenreview", {"request_id": "x"})
    await asyncio.sleep(0)
    assert quiet.getvalue() == ""


async def test_a_closed_stream_loses_the_lines_but_not_the_review(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    sink = StreamAudit(stream, "json")
    stream.close()
    sink.decision("tokenreview", {"request_id": "x"})
    await asyncio.sleep(0)  # the flush runs and fails quietly
    assert any(r.message == "audit lines could not be written" for r in caplog.records)
    sink.decision("tokenreview", {"request_id": "y"})  # still accepts decisions afterwards
    await asyncio.sleep(0)


def test_logging_sink_makes_one_record_per_decision(caplog: pytest.LogCaptureFixture) -> None:
    LoggingAudit().decision("tokenreview", {"request_id": "abc", "cached": True})
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.getMessage() == "tokenreview" and record.request_id == "abc" and record.cached is True  # type: ignore[attr-defined]
