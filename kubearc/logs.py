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

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# One encoder for every line: `json.dumps(..., default=str)` builds a new one per call.
_encode = json.JSONEncoder(default=str).encode


class JsonFormatter(logging.Formatter):
    # The date and time to the second, formatted once per second: guard writes an audit line per
    # review, thousands a second, and strftime was a tenth of each line's cost.
    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        doc: dict[str, object] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key[:1] != "_":
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encode(doc)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{k}={v}" for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")
        )
        line = f"{record.levelname.lower():5} {record.name}: {record.getMessage()}"
        if fields:
            line += f" [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs handshake headers (bearer tokens) at debug level: keep it above that.
    for noisy in ("uvicorn.access", "httpx", "httpcore", "aiosqlite", "asyncio", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
