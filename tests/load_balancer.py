"""The load balancer of the tests: `loadtest.haproxy`'s HAProxy, skipped where it is not installed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.haproxy import HAPROXY, haproxy


@contextlib.contextmanager
def load_balancer(directory: Path, backends: list[int], healthz: bool = True) -> Iterator[int]:
    """HAProxy on a free loopback port, round-robin over `backends` (see `loadtest.haproxy`)."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (.ci/run installs Debian's package)")
    with haproxy(directory, backends, healthz) as port:
        yield port
