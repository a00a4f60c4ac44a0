"""`kubearc demo`: the whole cluster-connect path on this machine, in one command.

It starts the hub with its relay, an apiserver stand-in (a SANDBOX: no real
cluster is involved), the identity, metadata and connect agents, and a client
proxy, each as its own process on loopback; then runs a few real kubectl
commands through the tunnel and leaves everything up until Ctrl-C.

The stand-in lives in the repository's tests/ folder, so the demo runs from a
clone (the README's quickstart), not from an installed wheel.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import typer


def _repository_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "apiserver").is_dir():
        typer.echo(
            "error: kubearc demo needs a clone of the repository (tests/apiserver is missing)", err=True
        )
        raise typer.Exit(1)
    return root


def demo(
    keep: bool = typer.Option(
        True, "--keep/--no-keep", help="Stay up until Ctrl-C (else stop after the run)."
    ),
) -> None:
    """Run hub + relay, a SANDBOX apiserver, agents and a proxy; show kubectl through the tunnel."""
    root = _repository_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.apiserver import ApiServer
    from tests.apiserver.kubectl import kubectl
    from tests.clusters import SUB
    from tests.tunnel_stack import TunnelStack, free_port

    work = Path(tempfile.mkdtemp(prefix="kubearc-demo-"))
    typer.echo(f"kubearc demo: working in {work} (removed on exit)")
    typer.echo("SANDBOX: the cluster is an apiserver stand-in running in this process, not a real cluster.")
    stopped = threading.Event()
    try:
        with ApiServer(directory=work / "apiserver") as apiserver:
            apiserver.add_pod("hello", "default", containers=["app"])
            # The sandbox pod writes a line every second: `kubectl logs -f hello` follows them.
            writer = threading.Thread(target=_write_logs, args=(apiserver, stopped), daemon=True)
            writer.start()
            stack = TunnelStack(work, apiserver, name="sandbox", group="demo", keep_heartbeating=True)
            try:
                typer.echo(
                    "starting the hub and its relay, onboarding the sandbox cluster, starting its agents ..."
                )
                stack.up()
                config = work / "kubeconfig"
                port = free_port()
                stack.start_proxy(port, config, apiserver.token)
                typer.echo(f"client proxy on 127.0.0.1:{port}; kubectl verifies the apiserver end to end\n")
                for args in (
                    ("version",),
                    ("get", "nodes"),
                    ("get", "pods", "-A"),
                    ("get", "pods", "hello", "-o", "wide"),
                ):
                    done = kubectl(config, *args)
                    typer.echo(f"$ kubectl {' '.join(args)}\n{done.stdout or done.stderr}")
                typer.echo(
                    "Keep using it:\n"
                    f"  export KUBECONFIG={config}\n"
                    "  kubectl logs -f hello            # the sandbox pod's log, followed\n"
                    "  kubectl exec -it hello -- sh     # a shell in the sandbox (Ctrl-D ends it)\n"
                    f"The hub: {stack.hub_url} (CA file {stack.hub_ca}); as its signed-in owner:\n"
                    f"  KUBEARC_CONFIG_DIR={work / 'user'} kubearc cluster list --subscription {SUB}\n"
                    f"Logs of every process: {work}/*.log"
                )
                if keep:
                    typer.echo("Press Ctrl-C to stop.")
                    signal.signal(signal.SIGINT, lambda *_: stopped.set())
                    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
                    stopped.wait()
            finally:
                stopped.set()
                typer.echo("stopping ...")
                stack.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_logs(apiserver: Any, stopped: threading.Event) -> None:  # a tests.apiserver.ApiServer
    n = 0
    while not stopped.wait(1.0):
        n += 1
        apiserver.append_log(
            "default", "hello", f"{time.strftime('%H:%M:%S')} hello from the sandbox, line {n}\n"
        )
