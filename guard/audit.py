"""guard's audit trail: one line per decision, with a request id and never the token.

Two sinks behind one method. `LoggingAudit` hands each decision to the `logging`
module (any handler, pytest's caplog); it is the default. `StreamAudit` is what
`kubearc guard serve` uses: it formats the same line itself and writes every line
decided in one event-loop turn with a single `write`. Through `logging`, the record,
the handler lock and a write syscall per review were a third of a cached review's
cost. The batch is written in the same loop turn as the answers it describes
(microseconds after them), and whatever is pending is written on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol, TextIO

from foundation.logs import json_line, text_line

LOGGER = "kubearc.guard.audit"


class AuditSink(Protocol):
    def decision(self, kind: str, fields: dict[str, Any]) -> None:
        """Record one decision (`kind` is tokenreview or subjectaccessreview)."""

    def flush(self) -> None:
        """Write out anything pending (on shutdown)."""


class LoggingAudit:
    """Each decision is a `logging` record of `kubearc.guard.audit` at INFO, fields as `extra`."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(LOGGER)

    def decision(self, kind: str, fields: dict[str, Any]) -> None:
        logger = self._logger
        if logger.isEnabledFor(logging.INFO):
            # `makeRecord` + `handle` is `info(kind, extra=fields)` without `findCaller`'s stack walk.
            record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, kind, (), None, extra=fields)
            logger.handle(record)

    def flush(self) -> None:
        pass


class StreamAudit:
    """Decision lines in the process's log format, written to `stream` once per loop turn."""

    def __init__(self, stream: TextIO, fmt: str = "json") -> None:
        self.stream = stream
        self.json = fmt == "json"
        # Off when the log level hides INFO, as the logging sink would be.
        self.enabled = logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
        self._pending: list[str] = []

    def decision(self, kind: str, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.json:
            line = json_line(time.time(), "info", LOGGER, kind, fields)
        else:
            line = text_line("info", LOGGER, kind, fields)
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a direct call): write now
                self._pending.append(line)
                self.flush()
                return
        self._pending.append(line)

    def flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stderr must not fail reviews
            logging.getLogger("kubearc.guard").warning(
                "audit lines could not be written", extra={"lines": len(lines), "error": str(exc)}
            )
