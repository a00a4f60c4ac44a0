"""Database engine, sessions and migrations (SQLite by default, PostgreSQL at scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg.exceptions
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from hub.errors import HubError

MIGRATIONS = Path(__file__).with_name("migrations")
# The advisory lock hub replicas on one PostgreSQL take around migrations ("kubearc1").
MIGRATION_LOCK = 0x6B75_6265_6172_6331


# The database cannot be reached: down, shutting down or starting up, refusing connections,
# a connection cut, or the pool exhausted. SQLAlchemy wraps what the driver raises during a
# statement; what asyncpg raises while connecting comes through as itself.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    OSError,
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # 57P01-03: shutting down, starting up
    asyncpg.exceptions.InterfaceError,  # "connection is closed"
)


def database_down(exc: BaseException) -> bool:
    """Is `exc` (or what it wraps) the database being unreachable? SQLAlchemy wraps some driver
    errors in a bare `DBAPIError` ("the database system is starting up" during crash recovery)."""
    seen: BaseException | None = exc
    for _ in range(4):  # the error, the DBAPI error it wraps, the driver's error under that
        if seen is None:
            return False
        if isinstance(seen, DATABASE_DOWN) or (isinstance(seen, DBAPIError) and seen.connection_invalidated):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def sqlite_url(state_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{state_dir / 'hub.db'}"


class UnsupportedDatabase(HubError):
    """A database URL of a kind the hub does not store on (only PostgreSQL and SQLite)."""


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` and `sqlite://` URLs and pick the async drivers.

    Any other kind is an `UnsupportedDatabase` naming only the URL's scheme: the rest may
    hold a password, and the message lands in logs.
    """
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return url
    scheme = url.split("://", 1)[0] if "://" in url else "(no scheme)"
    raise UnsupportedDatabase(
        f"database URL of kind {scheme!r}: the hub stores on PostgreSQL (postgresql://USER@HOST/DB) "
        "or SQLite (sqlite:///PATH)"
    )


def create_engine(url: str) -> AsyncEngine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across crashes of the process
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # No pre-ping: it costs three round trips per checkout; a dead connection fails its
    # statement, is discarded by the pool, and the agent's retry lands on a fresh one.
    # A database that does not answer fails a new connection within seconds (a 503), never minutes.
    return create_async_engine(url, pool_size=20, max_overflow=20, connect_args={"timeout": 5})


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent, safe on every start).

    On PostgreSQL the replicas starting together serialise on a transaction-scoped advisory
    lock: the first one migrates, the others wait and then find the schema at head. Without
    it two replicas both create the tables on an empty database and one fails to start.
    """

    def upgrade(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await conn.run_sync(upgrade)
