"""`kubearc proxy`: open cluster connect to a cluster and point kubectl at it.

Like `az connectedk8s proxy`: a loopback listener (default port 47011) and a
kubeconfig context whose cluster entry carries the apiserver's CA and TLS server
name, so kubectl verifies the real apiserver through the tunnel.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
from pathlib import Path

import typer

from foundation import aio
from foundation.logs import setup_logging
from kubearc.commands.output import fail, request_json, subscription_or_fail
from kubearc.commands.tunnelopts import MaxWindowOpt, tunnel_settings

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
    relay_ca: Path = typer.Option(None, "--relay-ca", help="CA of the relay (default: the hub's CA)."),
    max_window: str = MaxWindowOpt,
    log_level: str = typer.Option("warning", "--log-level"),
) -> None:
    """Open cluster connect: kubectl reaches the cluster through 127.0.0.1:PORT until Ctrl+C."""
    from foundation import kubeconfig
    from foundation.settings import load_client_config
    from proxy.client import ClientProxy, Credential

    setup_logging(log_level, "text")
    settings = tunnel_settings(max_window)
    sub = subscription_or_fail(subscription)
    rid = f"/subscriptions/{sub}/resourceGroups/{resource_group}/{CC}/{name}"

    def fetch() -> Credential:
        doc = request_json("POST", f"{rid}/listClusterUserCredential")
        relay = doc["hybridConnectionConfig"]
        connect = doc["clusterConnect"]
        return Credential(
            relay["relay"],
            relay["token"],
            float(relay["expirationTime"]),
            base64.b64decode(connect["certificateAuthorityData"]),
            connect["tlsServerName"],
        )

    first = fetch()  # fails here, with the hub's message, if the user may not connect

    async def credentials() -> Credential:
        return await asyncio.to_thread(fetch)

    ca = relay_ca or load_client_config().get("ca_file")
    client = ClientProxy(credentials, port=port, relay_ca_file=str(ca) if ca else None, settings=settings)

    def ready(bound: int) -> None:
        user = {"token": token} if token else {}
        doc = kubeconfig.context_config(
            name, f"https://127.0.0.1:{bound}", first.ca_pem, first.tls_server_name, user
        )
        target = _kubeconfig_path(file)
        if target is None:
            sys.stdout.write(kubeconfig.dump(doc))
            sys.stdout.flush()
        else:
            try:
                kubeconfig.write_merged(target, doc)
            except kubeconfig.KubeconfigError as exc:
                fail(str(exc))
            typer.echo(f"Context '{name}' written to {target}.", err=True)
        typer.echo(f"Proxy is listening on 127.0.0.1:{bound}. Press Ctrl+C to stop.", err=True)
        if not token:
            typer.echo("note: no --token given: the kubeconfig user has no credentials yet.", err=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await client.run(ready, stop)

    try:
        aio.run(main())
    except OSError as exc:
        if exc.errno == 98:  # EADDRINUSE
            fail(f"port {port} is in use (is another kubearc proxy running? pick one with --port)")
        fail(str(exc))
