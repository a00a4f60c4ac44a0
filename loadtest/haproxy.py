"""A real HAProxy in TCP mode in front of replicas: the load balancer of the benchmarks and tests.

TCP mode is how a deployment fronts the hub and the relay: TLS ends at each replica, so
clients verify the replicas' own certificates and the balancer sees only bytes. The
health check is `GET /healthz` over TLS every 200 ms (both the hub and the relay answer
it), so a killed replica, and a wedged one that still accepts TCP connections, leaves
the rotation within about a second, and `option redispatch` with retries sends a
connection that a dead replica refused to the next one.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from loadtest.procstat import free_port

HAPROXY = shutil.which("haproxy")


def _config(port: int, backends: list[int], healthz: bool) -> str:
    check = "check check-ssl verify none" if healthz else "check"
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{backend} {check} inter 200ms fall 2 rise 2"
        for i, backend in enumerate(backends)
    )
    http_check = (
        """    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
"""
        if healthz
        else ""
    )
    return f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    retries 3
    option redispatch

frontend front
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    timeout check 1s
{http_check}{servers}
"""


@contextlib.contextmanager
def haproxy(directory: Path, backends: list[int], healthz: bool = True) -> Iterator[int]:
    """HAProxy on a free loopback port, round-robin over `backends`; yields its port.

    `healthz=False`: backends that answer no `/healthz` (bare wss listeners) get a TCP check."""
    if HAPROXY is None:
        raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "haproxy.cfg"
    cfg.write_text(_config(port, backends, healthz))
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy refused its configuration: {check.stdout}{check.stderr}")
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "haproxy exited")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("haproxy did not listen")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
