"""Structured logging shared by every kubearc process.

One JSON object per line on stderr (or key=value text for humans). Callers pass
context with `extra={"cluster": ..., "stream": ...}`; those keys become fields.
Never log tokens, keys or passwords: log ids and hashes instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import orjson

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# Lines are compact UTF-8 JSON, as orjson writes them; the stdlib encoder, in the same layout, is
# only the fallback for values orjson refuses.
_encode = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":")).encode


class _Clock:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ`, the date and time to the second formatted once per second: guard
    writes an audit line per review, thousands a second, and strftime was a tenth of each line's cost."""

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"


_clock = _Clock()


def json_line(created: float, level: str, logger: str, msg: str, fields: dict[str, object]) -> str:
    """One log line as `JsonFormatter` writes it (also used by writers that bypass `logging`)."""
    doc: dict[str, object] = {"ts": _clock.stamp(created), "level": level, "logger": logger, "msg": msg}
    doc.update(fields)
    try:
        return orjson.dumps(doc, default=str).decode()
    except TypeError:  # what orjson refuses outright (an int past 64 bits): the stdlib's encoder
        return _encode(doc)


def text_line(level: str, logger: str, msg: str, fields: dict[str, object]) -> str:
    """One log line as `TextFormatter` writes it."""
    line = f"{level:5} {logger}: {msg}"
    if fields:
        line += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
    return line


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and k[:1] != "_"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json_line(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = text_line(record.levelname.lower(), record.name, record.getMessage(), _fields(record))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted, not when logging was set up:
    a command run in-process (typer's CliRunner, a test) swaps stderr and closes its copy after."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs handshake headers (bearer tokens) at debug level: keep it above that.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "aiosqlite", "asyncio", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
