"""uvicorn the way our servers run it: behind a `foundation.gate.Gate`, and without its signal handlers.

The hub's API and guard's webhook are ASGI apps served by uvicorn; uvicorn
accepts and starts TLS itself and has no timeout for a connection's first
request. Here uvicorn is given plain TCP and our protocol class: httptools'
protocol with `GatedProtocol` in front, so the gate admits each connection, does
the handshake with its timeout, and learns when the first request head is
complete (`on_headers_complete`). uvicorn's `timeout_keep_alive` is the gate's
idle timeout.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from foundation.gate import Gate, GatedProtocol


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside a process that owns its signals: no handlers of its own. uvicorn re-raises a
    caught signal when `serve()` returns, which would kill the process before the caller's cleanup."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GatedHttp(GatedProtocol, HttpToolsProtocol):
    def __init__(self, gate: Gate, **kwargs: Any) -> None:
        self.gate = gate
        super().__init__(**kwargs)

    def on_headers_complete(self) -> None:
        self.request_seen()
        super().on_headers_complete()


def gated_config(app: Any, gate: Gate, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn config serving `app` through `gate` (TLS from the gate's context, never uvicorn's)."""
    return uvicorn.Config(
        app,
        http=functools.partial(GatedHttp, gate),  # type: ignore[arg-type]  # uvicorn calls it with keywords
        timeout_keep_alive=max(1, round(gate.limits.idle_timeout)),
        log_config=None,
        access_log=False,
        lifespan="off",
        **kwargs,
    )


def gated_server(app: Any, gate: Gate, embedded: bool = True, **kwargs: Any) -> uvicorn.Server:
    """`gated_config` served; `embedded`: leave the process's signals to the caller."""
    config = gated_config(app, gate, **kwargs)
    return EmbeddedUvicorn(config) if embedded else uvicorn.Server(config)
