"""The guard webhook server: the review app over mutual TLS, probes in plain HTTP, one process.

`GuardServer` binds both listeners, loads keys and configuration until ready
(`/readyz` says what is missing meanwhile, each start-up step named by
`readiness`) and stops cleanly on SIGTERM; `serve_webhook` is `kubearc guard
serve` once its flags are options: it builds the authorizer on the serving loop,
serves, and closes what it was given. `GuardThread` runs a server in a background thread for
tests and demos. What each endpoint answers is `guard/app.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from foundation.gate import Gate, GateCollector, serving_context
from foundation.webserver import EmbeddedUvicorn, gated_server
from guard.app import GuardState, build_apps
from guard.audit import AuditSink
from guard.authn.chain import AuthnChain
from guard.authz.options import AuthzOptions
from guard.config import GuardConfig
from guard.errors import NotReady
from guard.interfaces import Authorizer, NoAuthorizer

log = logging.getLogger("kubearc.guard")

Step = tuple[str, Callable[[], Awaitable[object]]]


def readiness(*steps: Step) -> Callable[[], Awaitable[None]]:
    """One loader for `GuardServer`: every step in order, a failure `NotReady` naming its step."""

    async def load() -> None:
        for name, step in steps:
            try:
                await step()
            except Exception as exc:  # whatever a step raises (msal, JWKS, a store), /readyz names it
                raise NotReady(f"{name}: {exc}") from exc

    return load


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # IPPROTO_TCP: asyncio sets NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


class GuardServer:
    """Both listeners and the key loader, run together until `should_exit`."""

    def __init__(self, state: GuardState, ready: Any = None, *, freeze_gc: bool = False) -> None:
        cfg = state.config
        self.state = state
        self.review_sock = bind(cfg.host, cfg.port)
        self.health_sock = bind(cfg.health_host, cfg.health_port)
        reviews, health = build_apps(state)
        # Mutual TLS through the gate: a caller without a certificate of `client_ca` never
        # reaches the app, and idle or slow callers are bounded like on every port of ours.
        tls = serving_context(cfg.tls_cert, cfg.tls_key, client_ca=cfg.client_ca)
        self.gate = Gate(cfg.limits, tls, name="guard")
        state.registry.register(GateCollector(self.gate, "guard"))
        self.review_server = gated_server(reviews, self.gate, timeout_graceful_shutdown=5)
        common: dict[str, Any] = {"log_config": None, "access_log": False, "lifespan": "off"}
        self.health_server = EmbeddedUvicorn(uvicorn.Config(health, timeout_graceful_shutdown=1, **common))
        self._load = ready  # async callable loading keys (e.g. AuthnChain.ready)
        self.freeze_gc = freeze_gc  # the process is this server's alone (`kubearc guard serve`)

    @property
    def port(self) -> int:
        return int(self.review_sock.getsockname()[1])

    @property
    def health_port(self) -> int:
        return int(self.health_sock.getsockname()[1])

    @property
    def started(self) -> bool:
        return self.review_server.started and self.health_server.started

    async def _become_ready(self) -> None:
        delay = 0.5
        while self._load is not None:
            try:
                await self._load()
                break
            except Exception as exc:  # any failure of any loader: not ready yet, try again
                self.state.waiting_for = f"not ready: {str(exc)[:300]}"
                log.warning("guard not ready yet", extra={"error": str(exc)[:300], "retry_in": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.state.ready = True
        if self.freeze_gc:
            # Everything alive now (modules, keys, clients) lives as long as the process: move it
            # out of the collector's reach, so a full collection scans only what reviews made since.
            # Without this a gen-2 pass over the start-up objects stalled reviews for 20-30 ms.
            gc.freeze()
        log.info("guard ready", extra={"port": self.port, "health_port": self.health_port})

    async def serve(self) -> None:
        """Serve until `stop()`, or SIGTERM/SIGINT when run on the main thread (then return normally)."""
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self.stop)
                    handled.append(sig)
        try:
            async with asyncio.TaskGroup() as group:
                loader = group.create_task(self._become_ready())
                group.create_task(self.review_server.serve(sockets=[self.review_sock]))
                group.create_task(self.health_server.serve(sockets=[self.health_sock]))
                while not (self.review_server.should_exit or self.health_server.should_exit):  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                loader.cancel()
                self.stop()
        finally:
            self.state.audit.flush()
            for sig in handled:
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        self.review_server.should_exit = True
        self.health_server.should_exit = True

    def close(self) -> None:
        self.review_sock.close()
        self.health_sock.close()


class GuardThread:
    """A guard served from a background thread with its own loop (tests, demos)."""

    def __init__(self, make: Any) -> None:
        self._make = make  # () -> (GuardState, loader) built on the guard's loop
        self.server: GuardServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="guard", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        state, loader = await self._make()
        self.server = GuardServer(state, loader)
        try:
            task = asyncio.create_task(self.server.serve())
            while not self.server.started and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            self._started.set()
            await task
        finally:
            self.server.close()

    def start(self, timeout: float = 30) -> GuardThread:
        self._thread.start()
        if not self._started.wait(timeout) or self.server is None:
            raise TimeoutError(f"guard did not start: {self._error}")
        if self._error:
            raise RuntimeError(f"guard failed to start: {self._error}") from self._error
        return self

    def run(self, coro: Any, timeout: float = 30) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 15) -> None:
        if self.server is not None:
            self.server.stop()
        self._thread.join(timeout)


async def serve_webhook(
    config: GuardConfig,
    chain: AuthnChain,
    authz: AuthzOptions,
    audit: AuditSink,
    announce: Callable[[str], None],
) -> None:
    """`kubearc guard serve` with validated options: until SIGTERM, then every client closed."""
    steps: list[Step] = [("signing keys", chain.ready)]
    authorizer: Authorizer = NoAuthorizer()
    azure = authz.build() if authz.enabled else None  # on this loop: its connections belong to it
    if azure is not None:
        authorizer = azure
        steps.append(("checkAccess credential", azure.ready))
        log.info(
            "SubjectAccessReviews go to Azure RBAC",
            extra={
                "cluster": azure.config.cluster_resource_id,
                "checkaccess": authz.url,
                "credential": azure.credential_name,
            },
        )
    server = GuardServer(
        GuardState(config, chain, authorizer, audit=audit), readiness(*steps), freeze_gc=True
    )
    mode = "Azure RBAC" if azure is not None else "NoOpinion (no --cluster-resource-id)"
    announce(
        f"kubearc guard: reviews on https://{config.host}:{server.port}, probes on :{server.health_port}, "
        f"authorization: {mode}"
    )
    try:
        await server.serve()
    finally:
        server.close()
        if azure is not None:
            await azure.aclose()
        await chain.aclose()
