"""A PostgreSQL server of the test's own, so a test may stop and restart it.

The machine's shared PostgreSQL serves every other test in parallel; a fault test
that restarts the database needs one nobody else uses. This runs Debian's
`initdb` and `pg_ctl` (as the `postgres` user when the tests run as root, as
PostgreSQL refuses to run as root) on a free loopback port with a socket
directory of its own, and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tunnel_stack import free_port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


@dataclass
class PrivatePostgres:
    data: Path
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        pg_ctl = _binary("pg_ctl")
        assert pg_ctl
        done = subprocess.run(
            [*self.as_user, pg_ctl, "-D", str(self.data), "-l", str(self.data / "server.log"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._ctl("-w", "-o", options, "start")

    def stop(self, mode: str = "immediate") -> None:
        """Stop it: `immediate` (the default) is a crash, every connection cut at once and the
        next start a crash recovery from the WAL; `fast` is an orderly shutdown."""
        self._ctl("-w", "-m", mode, "stop")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    initdb = _binary("initdb")
    if initdb is None or _binary("pg_ctl") is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    root = Path(tempfile.mkdtemp(prefix="kubearc-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    try:
        done = subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        server = PrivatePostgres(data, free_port(), as_user)
        server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(AssertionError):
                server.stop("fast")
    finally:
        shutil.rmtree(root, ignore_errors=True)
