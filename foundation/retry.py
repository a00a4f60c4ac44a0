"""Retrying transient failures: exponential backoff with full jitter, a cap, and a budget.

Full jitter (a uniform pause between 0 and the exponential step) keeps thousands
of agents that lost the hub at the same moment from coming back in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("kubearc.agent")


class RetriesExhausted(Exception):
    """A transient failure outlived the retry budget; `last` is the final error."""

    def __init__(self, what: str, attempts: int, elapsed: float, last: BaseException) -> None:
        super().__init__(f"{what} failed {attempts} times over {elapsed:.0f}s; last error: {last}")
        self.last = last


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.5  # first step, seconds
    cap: float = 30.0  # longest single pause
    attempts: int | None = None  # None: bounded by the deadline only
    deadline: float | None = 300.0  # total seconds, None: bounded by attempts only

    def pause(self, failures: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(failures-1))]."""
        step = min(self.cap, self.base * 2 ** min(failures - 1, 62))
        return (rng or random).uniform(0, step)


# Decides whether an error is worth retrying: None means no, a number is the least pause
# the other side asked for (Retry-After), 0 when it did not say.
Classifier = Callable[[BaseException], float | None]


async def retrying(
    op: Callable[[], Awaitable[T]], policy: RetryPolicy, transient: Classifier, what: str
) -> T:
    start = time.monotonic()
    failures = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            least = transient(exc)
            if least is None:
                raise
            failures += 1
            elapsed = time.monotonic() - start
            pause = min(max(policy.pause(failures), least), policy.cap)
            out_of_attempts = policy.attempts is not None and failures >= policy.attempts
            if policy.deadline is not None:
                pause = min(pause, policy.deadline - elapsed)
            if out_of_attempts or pause < 0:
                raise RetriesExhausted(what, failures, elapsed, exc) from exc
            log.warning("%s failed, retrying in %.1fs: %s", what, pause, exc, extra={"attempt": failures})
            await asyncio.sleep(pause)
