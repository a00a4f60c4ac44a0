"""`kubearc cluster ...`: connected-cluster resources, and the agents on the cluster of a kube context."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import typer

from kubearc.commands.output import fail, request_json, subscription_or_fail

app = typer.Typer(no_args_is_help=True, help="Connected-cluster resources.")
CC = "providers/Microsoft.Kubernetes/connectedClusters"

SubscriptionOpt = typer.Option(None, "--subscription", envvar="KUBEARC_SUBSCRIPTION", help="Subscription id.")
KubeConfigOpt = typer.Option(None, "--kube-config", help="kubeconfig of the cluster (default: $KUBECONFIG).")
KubeContextOpt = typer.Option(None, "--kube-context", help="Its context (default: the current one).")
HelmOpt = typer.Option(None, "--helm", help="helm binary (default: on PATH).")
ChartOpt = typer.Option(None, "--chart", help="The agents' chart (default: the one of this kubearc).")


@contextlib.contextmanager
def cluster_side(
    kube_config: Path | None, kube_context: str | None, helm: str | None
) -> Iterator[tuple[Any, Any]]:
    """The kube context and the helm a command acts on the cluster with; their failures are one line."""
    from foundation.kube import Kube
    from kubearc.clusterside import ConnectError
    from kubearc.helm import Helm, HelmError, find_helm

    try:
        yield Kube(kube_config, context=kube_context), Helm(find_helm(helm), kube_config, kube_context)
    except (ConnectError, HelmError) as exc:
        fail(str(exc))
    except RuntimeError as exc:  # not signed in to the hub
        fail(str(exc))


def _row(c: dict[str, Any]) -> list[str]:
    p = c.get("properties", {})
    rg = c["id"].split("/resourceGroups/", 1)[1].split("/", 1)[0]
    return [
        c["name"],
        rg,
        str(p.get("connectivityStatus")),
        str(p.get("kubernetesVersion") or "-"),
        str(p.get("totalNodeCount") if p.get("totalNodeCount") is not None else "-"),
        str(p.get("lastConnectivityTime") or "-"),
    ]


@app.command("list")
def list_clusters(
    subscription: str = SubscriptionOpt,
    resource_group: str = typer.Option(None, "--resource-group", "-g"),
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """List the clusters you may read."""
    sub = subscription_or_fail(subscription)
    path = (
        f"/subscriptions/{sub}" + (f"/resourceGroups/{resource_group}" if resource_group else "") + f"/{CC}"
    )
    page = request_json("GET", path)
    clusters = page["value"]
    while "nextLink" in page:  # a thousand per page
        token = parse_qs(urlsplit(page["nextLink"]).query)["$skipToken"][0]
        page = request_json("GET", path, params={"$skipToken": token})
        clusters += page["value"]
    if output == "json":
        typer.echo(json.dumps(clusters, indent=2))
        return
    rows = [["NAME", "RESOURCE GROUP", "STATUS", "VERSION", "NODES", "LAST CONNECTED"]]
    rows += [_row(c) for c in clusters]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@app.command("show")
def show(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    subscription: str = SubscriptionOpt,
) -> None:
    """Show one cluster (JSON)."""
    sub = subscription_or_fail(subscription)
    typer.echo(
        json.dumps(
            request_json("GET", f"/subscriptions/{sub}/resourceGroups/{resource_group}/{CC}/{name}"), indent=2
        )
    )


@app.command("delete")
def delete(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    subscription: str = SubscriptionOpt,
    kube_config: Path = KubeConfigOpt,
    kube_context: str = KubeContextOpt,
    helm: str = HelmOpt,
    force: bool = typer.Option(
        False,
        "--force",
        help="Remove what a failed install left; delete the resource even if the cluster is gone.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Uninstall the agents from the kube context's cluster, remove their Secrets, then delete the resource.

    The agents' identity certificates are revoked at once.
    """
    from kubearc.offboard import delete_cluster
    from kubearc.session import hub_client

    sub = subscription_or_fail(subscription)
    resource_id = f"/subscriptions/{sub}/resourceGroups/{resource_group}/{CC}/{name}"
    if not yes:
        typer.confirm(f"Delete connected cluster {resource_group}/{name} and its agents?", abort=True)

    def say(line: str) -> None:
        typer.echo(line, err=True)

    with cluster_side(kube_config, kube_context, helm) as (kube, binary), hub_client() as hub:
        delete_cluster(resource_id, hub, kube, binary, force, say)


@app.command("troubleshoot")
def troubleshoot(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    subscription: str = SubscriptionOpt,
    kube_config: Path = KubeConfigOpt,
    kube_context: str = KubeContextOpt,
    helm: str = HelmOpt,
    bundle: Path = typer.Option(
        Path("kubearc-troubleshoot.tar.gz"), "--bundle", help="Where to write the support bundle."
    ),
    output: str = typer.Option("text", "--output", "-o", help="text or json"),
) -> None:
    """Check a connected cluster's agents, identity, release, clock and proxy; write a support bundle.

    Exits 0 when every check passes, 1 when one names a problem.
    """
    from kubearc.session import hub_client
    from kubearc.troubleshoot import troubleshoot as run

    sub = subscription_or_fail(subscription)
    resource_id = f"/subscriptions/{sub}/resourceGroups/{resource_group}/{CC}/{name}"
    with cluster_side(kube_config, kube_context, helm) as (kube, binary), hub_client() as hub:
        report = run(resource_id, hub, kube, binary)
    report.write(bundle)
    if output == "json":
        typer.echo(json.dumps([f.__dict__ for f in report.findings], indent=2))
    else:
        for finding in report.findings:
            typer.echo(finding.line())
    typer.echo(f"support bundle: {bundle}", err=True)
    if not report.healthy:
        raise typer.Exit(1)


def _reconfigure(
    name: str,
    resource_group: str,
    subscription: str | None,
    kube_config: Path | None,
    kube_context: str | None,
    helm: str | None,
    chart: str | None,
    edit: Any,
    then: Any = None,
) -> None:
    """`edit` the release's values and upgrade it; `then(kube, helm, previous revision)` afterwards."""
    from kubearc.helm import CHART
    from kubearc.reconfigure import change

    sub = subscription_or_fail(subscription)
    resource_id = f"/subscriptions/{sub}/resourceGroups/{resource_group}/{CC}/{name}"
    with cluster_side(kube_config, kube_context, helm) as (kube, binary):
        release = binary.release() if then is not None else None
        done = change(resource_id, kube, binary, chart or CHART, edit)
        if then is not None and release is not None:
            then(kube, binary, int(release["revision"]))
    typer.echo(f"{resource_group}/{name}: {done}", err=True)


@app.command("enable-features")
def enable_features(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    features: list[str] = typer.Option(..., "--features", help="cluster-connect, azure-rbac (repeatable)."),
    azure_rbac_mode: str = typer.Option(None, "--azure-rbac-mode", help="webhook or impersonation."),
    subscription: str = SubscriptionOpt,
    kube_config: Path = KubeConfigOpt,
    kube_context: str = KubeContextOpt,
    helm: str = HelmOpt,
    chart: str = ChartOpt,
) -> None:
    """Turn agents' features on (helm upgrade of the release)."""
    from kubernetes import client

    from foundation.kube import Kube
    from kubearc import azurerbac
    from kubearc.reconfigure import features as edit
    from kubearc.session import hub_client

    _check_features(features, azure_rbac_mode)
    with contextlib.ExitStack() as stack:

        def azure_rbac(mode: str) -> dict[str, Any]:
            """Guard's TLS in webhook mode, and the hub's issuers for the chart's guard values."""
            if mode == "webhook":
                core = client.CoreV1Api(Kube(kube_config, context=kube_context).api)
                azurerbac.guard_secrets(core, lambda line: typer.echo(line, err=True))
            return azurerbac.guard_values(stack.enter_context(hub_client()))

        _reconfigure(
            name,
            resource_group,
            subscription,
            kube_config,
            kube_context,
            helm,
            chart,
            edit(features, [], azure_rbac_mode, azure_rbac),
        )


@app.command("disable-features")
def disable_features(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    features: list[str] = typer.Option(..., "--features", help="cluster-connect, azure-rbac (repeatable)."),
    subscription: str = SubscriptionOpt,
    kube_config: Path = KubeConfigOpt,
    kube_context: str = KubeContextOpt,
    helm: str = HelmOpt,
    chart: str = ChartOpt,
) -> None:
    """Turn agents' features off (helm upgrade of the release)."""
    from kubearc.reconfigure import features as edit

    _check_features(features, None)
    _reconfigure(
        name, resource_group, subscription, kube_config, kube_context, helm, chart, edit([], features, None)
    )


def _check_features(features: list[str], mode: str | None) -> None:
    from kubearc.onboard import FEATURES

    for feature in features:
        if feature not in FEATURES:
            raise typer.BadParameter(
                f"{feature!r}: choose from {', '.join(FEATURES)}", param_hint="--features"
            )
    if mode not in (None, "webhook", "impersonation"):
        raise typer.BadParameter("webhook or impersonation", param_hint="--azure-rbac-mode")


@app.command("upgrade")
def upgrade(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    agent_version: str = typer.Option(..., "--agent-version", help="The agents' image tag to run."),
    subscription: str = SubscriptionOpt,
    kube_config: Path = KubeConfigOpt,
    kube_context: str = KubeContextOpt,
    helm: str = HelmOpt,
    chart: str = ChartOpt,
    timeout: str = typer.Option(
        "5m", "--timeout", help="How long the agents have to be ready before a rollback."
    ),
) -> None:
    """Run another version of the agents (not while auto-upgrade is on); roll back if they are not ready."""
    from foundation.settings import parse_duration
    from kubearc.reconfigure import upgrade as edit
    from kubearc.reconfigure import wait_rolled_out

    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--timeout") from None
    _reconfigure(
        name,
        resource_group,
        subscription,
        kube_config,
        kube_context,
        helm,
        chart,
        edit(agent_version),
        then=lambda kube, binary, previous: wait_rolled_out(kube, binary, agent_version, previous, seconds),
    )


@app.command("update")
def update(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    proxy_https: str = typer.Option(None, "--proxy-https", help="Egress proxy URL ('' turns it off)."),
    proxy_skip_range: str = typer.Option(None, "--proxy-skip-range", help="no_proxy for the agents."),
    proxy_cert: Path = typer.Option(None, "--proxy-cert", help="CA of a TLS-inspecting proxy (PEM)."),
    auto_upgrade: bool = typer.Option(
        None, "--auto-upgrade/--no-auto-upgrade", help="Let the hub upgrade the agents."
    ),
    tags: list[str] = typer.Option(
        [], "--tags", help="KEY=VALUE on the resource (repeatable; replaces them)."
    ),
    subscription: str = SubscriptionOpt,
    kube_config: Path = KubeConfigOpt,
    kube_context: str = KubeContextOpt,
    helm: str = HelmOpt,
    chart: str = ChartOpt,
) -> None:
    """Change the agents' proxy and auto-upgrade settings (helm upgrade) and the resource's tags."""
    from kubearc.reconfigure import settings

    if proxy_cert is not None and not proxy_cert.is_file():
        raise typer.BadParameter(f"{proxy_cert}: no such file", param_hint="--proxy-cert")
    parsed = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {tag!r}", param_hint="--tags")
        parsed[key] = value
    if tags:
        sub = subscription_or_fail(subscription)
        request_json(
            "PATCH",
            f"/subscriptions/{sub}/resourceGroups/{resource_group}/{CC}/{name}",
            json={"tags": parsed},
        )
        typer.echo(f"{resource_group}/{name}: tags set", err=True)
    if any(v is not None for v in (proxy_https, proxy_skip_range, proxy_cert, auto_upgrade)):
        edit = settings(proxy_https, proxy_skip_range, proxy_cert, auto_upgrade)
        _reconfigure(name, resource_group, subscription, kube_config, kube_context, helm, chart, edit)
