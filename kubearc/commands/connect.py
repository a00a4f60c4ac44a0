"""`kubearc connect`: onboard the cluster of a kube context (flags to `kubearc.onboard.ConnectOptions`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kubearc.commands.output import subscription_or_fail


def connect(
    name: str = typer.Option(..., "--name", "-n", help="Name of the connected-cluster resource."),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    subscription: str = typer.Option(None, "--subscription", envvar="KUBEARC_SUBSCRIPTION"),
    location: str = typer.Option("local", "--location", "-l"),
    kube_config: Path = typer.Option(None, "--kube-config", help="kubeconfig file (default: $KUBECONFIG)."),
    kube_context: str = typer.Option(None, "--kube-context", help="Context (default: the current one)."),
    distribution: str = typer.Option("generic", "--distribution", help="e.g. k3s, aks, openshift, kind."),
    infrastructure: str = typer.Option("generic", "--infrastructure", help="e.g. vsphere, baremetal, aws."),
    enable_features: list[str] = typer.Option(
        [],
        "--enable-features",
        help="azure-rbac beside cluster-connect, which is always on at connect (repeatable).",
    ),
    authn_mode: str = typer.Option(
        "webhook", "--azure-rbac-mode", help="webhook (guard) or impersonation (kube-aad-proxy)."
    ),
    proxy_https: str = typer.Option(None, "--proxy-https", help="Egress proxy URL for the agents."),
    proxy_skip_range: str = typer.Option(None, "--proxy-skip-range", help="no_proxy for the agents."),
    proxy_cert: Path = typer.Option(None, "--proxy-cert", help="CA of a TLS-inspecting proxy (PEM)."),
    timeout: str = typer.Option("10m", "--timeout", help="How long to wait for Connected."),
    helm: str = typer.Option(None, "--helm", help="helm binary (default: on PATH)."),
    chart: str = typer.Option(None, "--chart", help="The agents' chart (default: the one of this kubearc)."),
    image: str = typer.Option(
        None, "--image", help="REPOSITORY[:TAG] the agents run (default: the chart's)."
    ),
    output: str = typer.Option("text", "--output", "-o", help="text or json (the resource at the end)."),
) -> None:
    """Onboard a cluster: the resource, the onboarding key Secret, the agents' chart, a wait for Connected."""
    from foundation.settings import parse_duration
    from kubearc.commands.cluster import cluster_side
    from kubearc.helm import CHART
    from kubearc.onboard import FEATURES, ConnectOptions, Onboarding
    from kubearc.session import hub_client

    for feature in enable_features:
        if feature not in FEATURES:
            raise typer.BadParameter(
                f"{feature!r}: choose from {', '.join(FEATURES)}", param_hint="--enable-features"
            )
    if authn_mode not in ("webhook", "impersonation"):
        raise typer.BadParameter("webhook or impersonation", param_hint="--azure-rbac-mode")
    if proxy_cert is not None and not proxy_cert.is_file():
        raise typer.BadParameter(f"{proxy_cert}: no such file", param_hint="--proxy-cert")
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--timeout") from None
    repository, _, tag = (image or "").partition(":")
    options = ConnectOptions(
        name=name,
        resource_group=resource_group,
        subscription=subscription_or_fail(subscription),
        location=location,
        distribution=distribution,
        infrastructure=infrastructure,
        features=list(dict.fromkeys(["cluster-connect", *enable_features])),
        authn_mode=authn_mode,
        proxy_https=proxy_https,
        proxy_skip_range=proxy_skip_range,
        proxy_cert=proxy_cert,
        timeout=seconds,
        chart=chart or CHART,
        image_repository=repository or None,
        image_tag=tag or None,
    )

    def say(line: str) -> None:  # progress goes to stderr; stdout holds only the result
        typer.echo(line, err=True)

    with cluster_side(kube_config, kube_context, helm) as (kube, binary), hub_client() as hub:
        resource = Onboarding(options, hub, kube, binary, say).run()
    if output == "json":
        typer.echo(json.dumps(resource, indent=2))
    else:
        typer.echo(f"connected {options.resource_id}")
