"""`kubearc agent NAME`: the in-cluster agents (a Deployment each).

Exit codes: 0 done (or stopped by SIGTERM), 1 a permanent error (the hub or the
apiserver refused, bad configuration), 3 the hub or apiserver stayed unreachable
for the whole retry budget.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from foundation import aio
from foundation.logs import setup_logging
from foundation.wire import RELAY_AGENT_PATH
from kubearc.commands.tunnelopts import (
    MaxWindowOpt,
    PingIntervalOpt,
    PingTimeoutOpt,
    liveness,
    tunnel_settings,
)

app = typer.Typer(no_args_is_help=True, help="In-cluster agents.")
log = logging.getLogger("kubearc.agent")
DEFAULT_IDENTITY = "secret:azure-arc/azure-identity-certificate"  # the chart's identity Secret

HubOpt = typer.Option(..., "--hub", envvar="KUBEARC_HUB_URL", help="Hub URL, e.g. https://hub.example:8443.")
HubCaOpt = typer.Option(
    None, "--hub-ca", envvar="KUBEARC_HUB_CA", help="PEM CA bundle to verify the hub (default: system CAs)."
)
KubeconfigOpt = typer.Option(
    None, "--kubeconfig", help="kubeconfig file (default: in-cluster service account, else $KUBECONFIG)."
)
IdentityOpt = typer.Option(
    DEFAULT_IDENTITY,
    "--identity",
    envvar="KUBEARC_IDENTITY_STORE",
    help="Where the identity agent keeps the certificate: secret:NAMESPACE/NAME or file:DIR.",
)
OnceOpt = typer.Option(False, "--once", help="Do one pass and exit (0 only if it fully succeeded).")
RetryDeadlineOpt = typer.Option(
    300.0,
    "--retry-deadline",
    min=0,
    help="Seconds to keep retrying an unreachable hub or apiserver per step.",
)
RetryMaxDelayOpt = typer.Option(
    30.0, "--retry-max-delay", min=0.01, help="Longest pause between retries (s)."
)
LogLevelOpt = typer.Option("info", "--log-level", envvar="KUBEARC_LOG_LEVEL")
LogFormatOpt = typer.Option("json", "--log-format", envvar="KUBEARC_LOG_FORMAT", help="json or text.")


ProbesOpt = typer.Option(
    None,
    "--probes-listen",
    envvar="KUBEARC_PROBES_LISTEN",
    help="HOST:PORT for /healthz, /readyz and /metrics in plain HTTP (the chart's probes; off by default).",
)


def _probes_address(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint="--probes-listen")
    return host or "0.0.0.0", int(port)


@dataclass(frozen=True)
class Shipping:
    """Where an agent's own log lines go: the hub, signed for with the cluster's identity."""

    agent: str  # the name they carry (Arc's: clusteridentityoperator, config-agent, ...)
    hub: str
    hub_ca: Path | None
    identity: str
    kubeconfig: Path | None


def _execute(
    agent: str,
    main: Coroutine[Any, Any, None],
    probes: tuple[str, int] | None = None,
    shipping: Shipping | None = None,
) -> None:
    """Run an agent until done or SIGTERM; turn its errors into a message and an exit code.

    With `probes`, the agent's process also answers /healthz, /readyz and /metrics there
    for as long as the agent runs; with `shipping`, its log lines go to the hub meanwhile.
    """
    from agents.errors import AgentError
    from foundation.helm import HelmError
    from foundation.identitystore import StoreConflict, StoreError
    from foundation.kube import KubeError
    from foundation.metrics import serve_probes
    from foundation.retry import RetriesExhausted

    async def with_probes() -> None:
        # The helpers are owned here and cancelled (and awaited) when the agent ends; not a
        # TaskGroup, so the agent's own error reaches the exit-code mapping below unwrapped.
        from prometheus_client import REGISTRY

        from agents.runtime import ship_logs

        helpers = []
        if probes is not None:
            helpers.append(asyncio.create_task(serve_probes(probes[0], probes[1], REGISTRY, lambda: None)))
        if shipping is not None:
            s = shipping
            helpers.append(asyncio.create_task(ship_logs(s.agent, s.hub, s.hub_ca, s.identity, s.kubeconfig)))
        try:
            await main
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def supervised() -> None:
        task = asyncio.ensure_future(with_probes())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            log.info("%s agent stopped", agent)

    try:
        aio.run(supervised())
    except RetriesExhausted as exc:
        typer.echo(f"error: {agent}: gave up: {exc}", err=True)
        raise typer.Exit(3) from None
    except (AgentError, KubeError, StoreError, StoreConflict, HelmError) as exc:
        typer.echo(f"error: {agent}: {exc}", err=True)
        raise typer.Exit(1) from None


def _retry(deadline: float, max_delay: float) -> Any:
    from foundation.retry import RetryPolicy

    return RetryPolicy(base=min(0.5, max_delay), cap=max_delay, deadline=deadline)


@app.command("identity")
def identity(
    hub: str = HubOpt,
    hub_ca: Path = HubCaOpt,
    resource_id: str = typer.Option(
        ..., "--resource-id", envvar="KUBEARC_RESOURCE_ID", help="ARM id of the connected-cluster resource."
    ),
    onboarding_key: str = typer.Option(
        ...,
        "--onboarding-key",
        envvar="KUBEARC_ONBOARDING_KEY",
        help="Onboarding private key: a PEM file, or secret:NAMESPACE/NAME with the PEM under data key "
        "'privateKey' (or 'tls.key').",
    ),
    store: str = typer.Option(
        DEFAULT_IDENTITY,
        "--store",
        envvar="KUBEARC_IDENTITY_STORE",
        help="Where to keep the identity certificate: secret:NAMESPACE/NAME or file:DIR.",
    ),
    kubeconfig: Path = KubeconfigOpt,
    once: bool = OnceOpt,
    interval: float = typer.Option(3600.0, "--interval", min=1, help="Seconds between checks."),
    retry_deadline: float = RetryDeadlineOpt,
    retry_max_delay: float = RetryMaxDelayOpt,
    now_offset_seconds: float = typer.Option(0.0, "--now-offset-seconds", hidden=True),
    probes_listen: str | None = ProbesOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """clusteridentityoperator: obtain the cluster's identity certificate and keep it renewed."""
    from agents import identity as agent

    setup_logging(log_level, log_format)
    settings = agent.IdentitySettings(
        hub_url=hub,
        hub_ca=hub_ca,
        resource_id=resource_id,
        onboarding_key=onboarding_key,
        store=store,
        kubeconfig=kubeconfig,
        once=once,
        interval=interval,
        now_offset=now_offset_seconds,
        retry=_retry(retry_deadline, retry_max_delay),
    )
    shipping = Shipping("clusteridentityoperator", hub, hub_ca, store, kubeconfig)
    _execute("identity", agent.run(settings), _probes_address(probes_listen), shipping)


@app.command("metadata")
def metadata(
    hub: str = HubOpt,
    hub_ca: Path = HubCaOpt,
    identity: str = IdentityOpt,
    kubeconfig: Path = KubeconfigOpt,
    once: bool = OnceOpt,
    interval: float = typer.Option(60.0, "--interval", min=1, help="Seconds between heartbeats."),
    retry_deadline: float = RetryDeadlineOpt,
    retry_max_delay: float = RetryMaxDelayOpt,
    probes_listen: str | None = ProbesOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """cluster-metadata-operator: push version, nodes, vCPUs and the apiserver CA; heartbeat."""
    from agents import metadata as agent

    setup_logging(log_level, log_format)
    settings = agent.MetadataSettings(
        hub_url=hub,
        hub_ca=hub_ca,
        identity=identity,
        kubeconfig=kubeconfig,
        once=once,
        interval=interval,
        retry=_retry(retry_deadline, retry_max_delay),
    )
    shipping = Shipping("cluster-metadata-operator", hub, hub_ca, identity, kubeconfig)
    _execute("metadata", agent.run(settings), _probes_address(probes_listen), shipping)


@app.command("config")
def config(
    hub: str = HubOpt,
    hub_ca: Path = HubCaOpt,
    identity: str = IdentityOpt,
    kubeconfig: Path = KubeconfigOpt,
    once: bool = OnceOpt,
    sync_interval: float = typer.Option(
        30.0, "--sync-interval", min=0.1, help="Seconds between pulls of the desired configurations."
    ),
    status_interval: float = typer.Option(
        5.0, "--status-interval", min=0.1, help="Seconds between reads of the Flux objects' conditions."
    ),
    retry_deadline: float = RetryDeadlineOpt,
    retry_max_delay: float = RetryMaxDelayOpt,
    probes_listen: str | None = ProbesOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """config-agent: turn the cluster's flux configurations into Flux objects; report compliance."""
    from agents import config as agent

    setup_logging(log_level, log_format)
    settings = agent.ConfigSettings(
        hub_url=hub,
        hub_ca=hub_ca,
        identity=identity,
        kubeconfig=kubeconfig,
        once=once,
        sync_interval=sync_interval,
        status_interval=status_interval,
        retry=_retry(retry_deadline, retry_max_delay),
    )
    shipping = Shipping(agent.AGENT_NAME, hub, hub_ca, identity, kubeconfig)
    _execute("config", agent.run(settings), _probes_address(probes_listen), shipping)


@app.command("extensions")
def extensions(
    hub: str = HubOpt,
    hub_ca: Path = HubCaOpt,
    identity: str = IdentityOpt,
    kubeconfig: Path = KubeconfigOpt,
    helm: str = typer.Option(None, "--helm", envvar="KUBEARC_HELM", help="helm binary (default: on PATH)."),
    once: bool = OnceOpt,
    interval: float = typer.Option(
        30.0, "--interval", min=0.1, help="Seconds between pulls of the extensions."
    ),
    step_timeout: float = typer.Option(
        600.0,
        "--step-timeout",
        min=1,
        help="Seconds one helm install, upgrade, rollback or uninstall may take.",
    ),
    retry_deadline: float = RetryDeadlineOpt,
    retry_max_delay: float = RetryMaxDelayOpt,
    probes_listen: str | None = ProbesOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """extension-manager: install, upgrade, roll back and remove the cluster's extensions with helm."""
    from agents import extensions as agent

    setup_logging(log_level, log_format)
    settings = agent.ExtensionSettings(
        hub_url=hub,
        hub_ca=hub_ca,
        identity=identity,
        kubeconfig=kubeconfig,
        helm=helm,
        once=once,
        interval=interval,
        step_timeout=step_timeout,
        retry=_retry(retry_deadline, retry_max_delay),
    )
    shipping = Shipping(agent.AGENT_NAME, hub, hub_ca, identity, kubeconfig)
    _execute("extensions", agent.run(settings), _probes_address(probes_listen), shipping)


@app.command("metrics")
def metrics(
    hub: str = HubOpt,
    hub_ca: Path = HubCaOpt,
    identity: str = IdentityOpt,
    kubeconfig: Path = KubeconfigOpt,
    namespace: str = typer.Option("azure-arc", "--namespace", help="Where the agents run."),
    once: bool = OnceOpt,
    interval: float = typer.Option(60.0, "--interval", min=0.1, help="Seconds between readings."),
    retry_deadline: float = RetryDeadlineOpt,
    retry_max_delay: float = RetryMaxDelayOpt,
    probes_listen: str | None = ProbesOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """metrics-agent: CPU and memory of every agent, pushed to the hub per agent."""
    from agents import metrics as agent

    setup_logging(log_level, log_format)
    settings = agent.MetricsSettings(
        hub_url=hub,
        hub_ca=hub_ca,
        namespace=namespace,
        identity=identity,
        kubeconfig=kubeconfig,
        once=once,
        interval=interval,
        retry=_retry(retry_deadline, retry_max_delay),
    )
    shipping = Shipping(agent.AGENT_NAME, hub, hub_ca, identity, kubeconfig)
    _execute("metrics", agent.run(settings), _probes_address(probes_listen), shipping)


@app.command("flux-logs")
def flux_logs(
    hub: str = HubOpt,
    hub_ca: Path = HubCaOpt,
    identity: str = IdentityOpt,
    kubeconfig: Path = KubeconfigOpt,
    flux_namespace: str = typer.Option(
        "flux-system", "--flux-namespace", help="Where Flux's controllers run."
    ),
    once: bool = OnceOpt,
    interval: float = typer.Option(5.0, "--interval", min=0.1, help="Seconds between reads of their logs."),
    retry_deadline: float = RetryDeadlineOpt,
    retry_max_delay: float = RetryMaxDelayOpt,
    probes_listen: str | None = ProbesOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """flux-logs-agent: follow the Flux controllers' logs and push them to the hub."""
    from agents import fluxlogs as agent

    setup_logging(log_level, log_format)
    settings = agent.FluxLogsSettings(
        hub_url=hub,
        hub_ca=hub_ca,
        flux_namespace=flux_namespace,
        identity=identity,
        kubeconfig=kubeconfig,
        once=once,
        interval=interval,
        retry=_retry(retry_deadline, retry_max_delay),
    )
    shipping = Shipping(agent.AGENT_NAME, hub, hub_ca, identity, kubeconfig)
    _execute("flux-logs", agent.run(settings), _probes_address(probes_listen), shipping)


@app.command("controller")
def controller(
    hub: str = HubOpt,
    hub_ca: Path = HubCaOpt,
    identity: str = IdentityOpt,
    kubeconfig: Path = KubeconfigOpt,
    chart: Path = typer.Option(
        Path("/usr/share/kubearc/charts/kubearc-agents"),
        "--chart",
        help="The agents' chart (the image carries it).",
    ),
    release: str = typer.Option("kubearc", "--release", help="The agents' helm release."),
    namespace: str = typer.Option("azure-arc", "--namespace", help="Its namespace."),
    helm: str = typer.Option(None, "--helm", envvar="KUBEARC_HELM", help="helm binary (default: on PATH)."),
    once: bool = OnceOpt,
    interval: float = typer.Option(300.0, "--interval", min=0.1, help="Seconds between passes."),
    health_timeout: float = typer.Option(
        300.0,
        "--health-timeout",
        min=1,
        help="Seconds upgraded agents have to become ready before a rollback.",
    ),
    retry_deadline: float = RetryDeadlineOpt,
    retry_max_delay: float = RetryMaxDelayOpt,
    probes_listen: str | None = ProbesOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """controller-manager: keep the agents' release whole; roll out offered versions, roll back failures."""
    from agents import controller as agent

    setup_logging(log_level, log_format)
    settings = agent.ControllerSettings(
        hub_url=hub,
        hub_ca=hub_ca,
        chart=chart,
        release=release,
        namespace=namespace,
        identity=identity,
        kubeconfig=kubeconfig,
        helm=helm,
        once=once,
        interval=interval,
        health_timeout=health_timeout,
        retry=_retry(retry_deadline, retry_max_delay),
    )
    shipping = Shipping(agent.AGENT_NAME, hub, hub_ca, identity, kubeconfig)
    _execute("controller", agent.run(settings), _probes_address(probes_listen), shipping)


@app.command("connect")
def connect(
    hub: str = HubOpt,
    hub_ca: Path = HubCaOpt,
    identity_store: str = IdentityOpt,
    relay: str = typer.Option(
        None, "--relay", envvar="KUBEARC_RELAY_URL", help="wss://... (default: ask the hub)."
    ),
    relay_ca: Path = typer.Option(
        None, "--relay-ca", envvar="KUBEARC_RELAY_CA", help="CA of the relay (default: --hub-ca)."
    ),
    apiserver: str = typer.Option(
        None,
        "--apiserver",
        envvar="KUBEARC_APISERVER",
        help="HOST:PORT (default: from the kubeconfig or in-cluster).",
    ),
    kubeconfig: Path = KubeconfigOpt,
    max_window: str = MaxWindowOpt,
    ping_interval: str = PingIntervalOpt,
    ping_timeout: str = PingTimeoutOpt,
    probes_listen: str | None = ProbesOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """clusterconnect-agent: dial out to the relay and carry kubectl streams to the apiserver."""
    from urllib.parse import urlsplit

    from foundation.agenttoken import AgentTokens
    from foundation.identitystore import open_store
    from foundation.kube import Kube
    from proxy.agent import ConnectAgent

    setup_logging(log_level, log_format)
    settings = tunnel_settings(max_window)
    every, within = liveness(ping_interval, ping_timeout)
    hub = hub.rstrip("/")
    kube = Kube(kubeconfig) if identity_store.startswith("secret:") or not apiserver else None
    store = open_store(identity_store, kube)
    if apiserver:
        host, _, port = apiserver.rpartition(":")
    else:
        assert kube is not None
        parts = urlsplit(kube.apiserver_info().server)
        host, port = parts.hostname or "", str(parts.port or 443)
    if not host or not port.isdigit():
        raise typer.BadParameter(f"expected HOST:PORT, got {apiserver!r}", param_hint="--apiserver")

    agent = ConnectAgent(
        relay.rstrip("/") + RELAY_AGENT_PATH if relay else None,
        AgentTokens(store, hub),
        (host, int(port)),
        str(relay_ca or hub_ca) if (relay_ca or hub_ca) else None,
        settings=settings,
        ping_interval=every,
        ping_timeout=within,
        hub_url=hub,
        hub_ca=str(hub_ca) if hub_ca else None,
    )
    shipping = Shipping("clusterconnect-agent", hub, hub_ca, identity_store, kubeconfig)
    _execute("connect", agent.run(), _probes_address(probes_listen), shipping)


@app.command("diagnose")
def diagnose(hub: str = HubOpt, hub_ca: Path = HubCaOpt) -> None:
    """Check DNS, TCP and TLS to the hub and the relay from here (what `cluster troubleshoot` runs in
    an agent's pod); one JSON object a line, exit 1 when a check fails."""
    import json

    from agents.diagnose import diagnose as run

    checks = aio.run(run(hub, hub_ca))
    for check in checks:
        typer.echo(json.dumps(check.to_json()))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
