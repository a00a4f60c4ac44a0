"""`kubearc proxy`: open cluster connect to a cluster and point kubectl at it.

Like `az connectedk8s proxy`: a loopback listener (default port 47011) and a
kubeconfig context whose cluster entry carries the apiserver's CA and TLS server
name, so kubectl verifies the real apiserver through the tunnel.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from foundation import aio
from foundation.logs import setup_logging
from foundation.wire import CLUSTER_AUDIENCE
from kubearc.commands.output import fail, request_json, subscription_or_fail
from kubearc.commands.tunnelopts import (
    MaxWindowOpt,
    PingIntervalOpt,
    PingTimeoutOpt,
    liveness,
    tunnel_settings,
)

if TYPE_CHECKING:
    from proxy.client import Credential

CC = "providers/Microsoft.Kubernetes/connectedClusters"


def _kubeconfig_path(value: str | None) -> Path | None:
    if value == "-":
        return None
    if value:
        return Path(value).expanduser()
    env = os.environ.get("KUBECONFIG")
    return Path(env.split(os.pathsep)[0]) if env else Path.home() / ".kube" / "config"


def proxy(
    name: str = typer.Option(..., "--name", "-n", help="Connected cluster name."),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    subscription: str = typer.Option(None, "--subscription", envvar="KUBEARC_SUBSCRIPTION"),
    port: int = typer.Option(47011, "--port", help="Loopback port kubectl connects to."),
    file: str = typer.Option(None, "--file", "-f", help="kubeconfig to write or merge into; '-' prints it."),
    token: str = typer.Option(
        None, "--token", envvar="KUBEARC_PROXY_TOKEN", help="Service-account token for the apiserver."
    ),
    server_id: str = typer.Option(
        CLUSTER_AUDIENCE,
        "--server-id",
        envvar="KUBEARC_SERVER_ID",
        help="Audience of the user's tokens (guard's --audience) that `kubearc get-token` gets for kubectl.",
    ),
    relay_ca: Path = typer.Option(None, "--relay-ca", help="CA of the relay (default: the hub's CA)."),
    max_window: str = MaxWindowOpt,
    ping_interval: str = PingIntervalOpt,
    ping_timeout: str = PingTimeoutOpt,
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Open cluster connect: kubectl reaches the cluster through 127.0.0.1:PORT until Ctrl+C."""
    from foundation.settings import load_client_config
    from proxy.client import ClientProxy, Credential

    setup_logging(log_level, "text")
    settings = tunnel_settings(max_window)
    every, within = liveness(ping_interval, ping_timeout)
    rid = f"/subscriptions/{subscription_or_fail(subscription)}/resourceGroups/{resource_group}/{CC}/{name}"

    def fetch() -> Credential:
        return Credential.from_arm(request_json("POST", f"{rid}/listClusterUserCredential"))

    first = fetch()  # fails here, with the hub's message, if the user may not connect

    async def credentials() -> Credential:
        return await asyncio.to_thread(fetch)

    ca = relay_ca or load_client_config().get("ca_file")
    client = ClientProxy(
        credentials,
        port=port,
        relay_ca_file=str(ca) if ca else None,
        settings=settings,
        ping_interval=every,
        ping_timeout=within,
    )

    def ready(bound: int) -> None:
        _write_kubeconfig(name, bound, first, token, server_id, _kubeconfig_path(file))
        typer.echo(f"Proxy is listening on 127.0.0.1:{bound}. Press Ctrl+C to stop.", err=True)

    try:
        aio.run_until_signalled(lambda stop: client.run(ready, stop))
    except OSError as exc:
        if exc.errno == 98:  # EADDRINUSE
            fail(f"port {port} is in use (is another kubearc proxy running? pick one with --port)")
        fail(str(exc))


def _write_kubeconfig(
    name: str, port: int, credential: Credential, token: str | None, server_id: str, target: Path | None
) -> None:
    """A context for the cluster that verifies its real apiserver: merged into `target`, or printed.
    Its user is the service-account `token`, or else `kubearc get-token` for the signed-in user."""
    from foundation import kubeconfig
    from kubearc.commands.gettoken import login_exec_user

    user = {"token": token} if token else login_exec_user(server_id)
    doc = kubeconfig.context_config(
        name, f"https://127.0.0.1:{port}", credential.ca_pem, credential.tls_server_name, user
    )
    if target is None:
        sys.stdout.write(kubeconfig.dump(doc))
        sys.stdout.flush()
        return
    try:
        kubeconfig.write_merged(target, doc)
    except kubeconfig.KubeconfigError as exc:  # the file is left as it was; YAML's messages span lines
        fail(f"{' '.join(str(exc).split())}: fix it, or name another file with -f FILE (-f - prints it)")
    typer.echo(f"Context '{name}' written to {target}.", err=True)
