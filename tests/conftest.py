"""Shared fixtures: a real hub over real HTTPS on SQLite and on PostgreSQL.

`hub` starts `kubearc`'s hub in a background thread (its own event loop, a real
TLS listener on 127.0.0.1) with an injectable clock. PostgreSQL tests get a
fresh database per hub and drop it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import ssl
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from foundation import pki
from foundation.logs import StderrHandler
from hub.config import HubConfig
from hub.issuer.tokens import issue_access_token
from hub.rbac.assignments import create_assignment
from hub.server import HubThread

T = TypeVar("T")
PG_ADMIN = os.environ.get("KUBEARC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


class FakeClock:
    """The hub's clock in tests: starts at the real time, moves only when told."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


class MovingClock(FakeClock):
    """Real time plus what the test advanced it by: for clients that poll on their own (msal's
    device flow waits real seconds between polls, and the hub rate-limits by its clock)."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += dt.timedelta(**delta)


def _pg(sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextlib.contextmanager
def database(kind: str, directory: Path) -> Iterator[str]:
    """A database URL for one hub: a SQLite file, or a PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'hub.db'}"
        return
    name = f"kubearc_test_{uuid.uuid4().hex[:12]}"
    _pg(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _logging_set_up_by_a_command_ends_with_its_test() -> Iterator[None]:
    """A command run in-process (typer's CliRunner) sets the root logger up as a process would;
    the next test must not get its handler (it would write into that test's captured stderr)."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path) as url:
        yield url


class RunningHub:
    """A hub process-in-a-thread plus what a test needs to talk to it."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.thread = HubThread(config).start()

    @property
    def url(self) -> str:
        return self.thread.url

    @property
    def ca(self) -> str:
        assert self.thread.tls and self.thread.tls.ca
        return str(self.thread.tls.ca)

    @property
    def hub(self) -> Any:
        return self.thread.hub

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url, verify=ssl.create_default_context(cafile=self.ca), headers=headers, timeout=30
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the hub's event loop (test setup through the store)."""
        loop = self.thread._loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    def token(
        self,
        oid: str | None = None,
        *,
        groups: list[str] | None = None,
        kind: str = "user",
        upn: str | None = None,
        audience: str = "api://kubearc-hub",
    ) -> str:
        """A token from the hub's local issuer (the same signer its token endpoint uses)."""
        oid = oid or str(uuid.uuid4())
        token, _ = issue_access_token(
            self.hub,
            oid=oid,
            audience=audience,
            kind=kind,  # type: ignore[arg-type]
            client_id="kubearc-tests",
            upn=upn or (f"{oid[:8]}@kubearc.test" if kind == "user" else None),
            groups=groups,
        )
        return token

    def assign(self, principal_id: str, role: str, scope: str, principal_type: str = "User") -> None:
        async def go() -> None:
            async with self.hub.sessions() as session:
                await create_assignment(session, scope, role, principal_id, principal_type)

        self.run(go())

    def restart(self) -> None:
        self.thread.stop()
        self.thread = HubThread(self.config).start()

    def stop(self) -> None:
        self.thread.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start_hub(tmp_path: Path, database_url: str, clock: FakeClock) -> Iterator[Callable[..., RunningHub]]:
    started: list[RunningHub] = []

    def start(**overrides: Any) -> RunningHub:
        settings: dict[str, Any] = {"port": 0, "database_url": database_url, "clock": clock, **overrides}
        config = HubConfig(state_dir=tmp_path / "state", **settings)
        running = RunningHub(config)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def hub(start_hub: Callable[..., RunningHub]) -> RunningHub:
    return start_hub()


@pytest.fixture(scope="module", params=BACKENDS)
def shared_hub(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHub]:
    """One hub per backend for a whole module, for tests that isolate themselves by ids."""
    directory = tmp_path_factory.mktemp("shared-hub")
    with database(request.param, directory) as url:
        running = RunningHub(
            HubConfig(state_dir=directory / "state", port=0, database_url=url, clock=FakeClock())
        )
        try:
            yield running
        finally:
            running.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`sqlite_only` tests exercise agents or the tunnel, not the store: one backend is enough."""
    dropped = [
        item
        for item in items
        if item.get_closest_marker("sqlite_only")
        and hasattr(item, "callspec")
        and "postgres" in item.callspec.params.values()
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A relay's serving context for 127.0.0.1, and the CA file its clients trust."""
    ca, cert, key = pki.ensure_serving_pair(tmp_path / "tls", ["127.0.0.1"], "test relay CA")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return ca, context
