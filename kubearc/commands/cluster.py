"""`kubearc cluster list|show|delete|troubleshoot`: connected-cluster resources and their agents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from kubearc.commands.output import fail, request_json, subscription_or_fail

app = typer.Typer(no_args_is_help=True, help="Connected-cluster resources.")
CC = "providers/Microsoft.Kubernetes/connectedClusters"

SubscriptionOpt = typer.Option(None, "--subscription", envvar="KUBEARC_SUBSCRIPTION", help="Subscription id.")


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
    clusters = request_json("GET", path)["value"]
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
    kube_config: Path = typer.Option(
        None, "--kube-config", help="kubeconfig of the cluster (default: $KUBECONFIG)."
    ),
    kube_context: str = typer.Option(None, "--kube-context", help="Its context (default: the current one)."),
    helm: str = typer.Option(None, "--helm", help="helm binary (default: on PATH)."),
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
    from foundation.kube import Kube
    from kubearc.helm import Helm, HelmError, find_helm
    from kubearc.offboard import delete_cluster
    from kubearc.onboard import ConnectError
    from kubearc.session import hub_client

    sub = subscription_or_fail(subscription)
    resource_id = f"/subscriptions/{sub}/resourceGroups/{resource_group}/{CC}/{name}"
    if not yes:
        typer.confirm(f"Delete connected cluster {resource_group}/{name} and its agents?", abort=True)

    def say(line: str) -> None:
        typer.echo(line, err=True)

    try:
        binary = Helm(find_helm(helm), kube_config, kube_context)
        with hub_client() as hub:
            delete_cluster(resource_id, hub, Kube(kube_config, context=kube_context), binary, force, say)
    except (ConnectError, HelmError) as exc:
        fail(str(exc))
    except RuntimeError as exc:  # not signed in
        fail(str(exc))


@app.command("troubleshoot")
def troubleshoot(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    subscription: str = SubscriptionOpt,
    kube_config: Path = typer.Option(
        None, "--kube-config", help="kubeconfig of the cluster (default: $KUBECONFIG)."
    ),
    kube_context: str = typer.Option(None, "--kube-context", help="Its context (default: the current one)."),
    helm: str = typer.Option(None, "--helm", help="helm binary (default: on PATH)."),
    bundle: Path = typer.Option(
        Path("kubearc-troubleshoot.tar.gz"), "--bundle", help="Where to write the support bundle."
    ),
    output: str = typer.Option("text", "--output", "-o", help="text or json"),
) -> None:
    """Check a connected cluster's agents, identity, release, clock and proxy; write a support bundle.

    Exits 0 when every check passes, 1 when one names a problem.
    """
    from foundation.kube import Kube
    from kubearc.helm import Helm, HelmError, find_helm
    from kubearc.onboard import ConnectError
    from kubearc.session import hub_client
    from kubearc.troubleshoot import troubleshoot as run

    sub = subscription_or_fail(subscription)
    resource_id = f"/subscriptions/{sub}/resourceGroups/{resource_group}/{CC}/{name}"
    try:
        binary = Helm(find_helm(helm), kube_config, kube_context)
        with hub_client() as hub:
            report = run(resource_id, hub, Kube(kube_config, context=kube_context), binary)
    except (ConnectError, HelmError) as exc:
        fail(str(exc))
    except RuntimeError as exc:  # not signed in
        fail(str(exc))
    report.write(bundle)
    if output == "json":
        typer.echo(json.dumps([f.__dict__ for f in report.findings], indent=2))
    else:
        for finding in report.findings:
            typer.echo(finding.line())
    typer.echo(f"support bundle: {bundle}", err=True)
    if not report.healthy:
        raise typer.Exit(1)
