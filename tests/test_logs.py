"""foundation.logs: the process's one log handler follows `sys.stderr` as it is when a record is written."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from foundation.logs import setup_logging


def test_logging_set_up_under_a_swapped_stderr_keeps_working_after_that_stream_closes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What typer's CliRunner does around a command that sets logging up: stderr is a buffer,
    # closed once the command returns; the process (a test session, the demo) logs on afterwards.
    real, swapped = sys.stderr, io.StringIO()
    sys.stderr = swapped
    try:
        setup_logging("info", "text")
        logging.getLogger("kubearc.test").info("during the command")
    finally:
        sys.stderr = real
        swapped_text = swapped.getvalue()
        swapped.close()
    logging.getLogger("kubearc.test").info("after the command")
    assert "during the command" in swapped_text
    err = capsys.readouterr().err
    assert "after the command" in err
    assert "Logging error" not in err
