"""`kubearc cluster logs` and `kubearc cluster usage`: what a cluster's agents pushed to the hub."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import typer

from kubearc.commands.output import request_json, subscription_or_fail

CC = "providers/Microsoft.Kubernetes/connectedClusters"
SubscriptionOpt = typer.Option(None, "--subscription", envvar="KUBEARC_SUBSCRIPTION", help="Subscription id.")


def _cluster(subscription: str | None, group: str, name: str) -> str:
    return f"/subscriptions/{subscription_or_fail(subscription)}/resourceGroups/{group}/{CC}/{name}"


def logs(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    subscription: str = SubscriptionOpt,
    agent: str = typer.Option(None, "--agent", help="One agent (e.g. config-agent)."),
    level: str = typer.Option("debug", "--level", help="Least level: debug, info, warning, error."),
    since: str = typer.Option("1h", "--since", help="An age (15m, 2h, 7d) or a time (2026-12-01T10:00:00Z)."),
    until: str = typer.Option(None, "--until"),
    limit: int = typer.Option(1000, "--limit", min=1, help="At most this many lines."),
    output: str = typer.Option("text", "--output", "-o", help="text or json"),
) -> None:
    """The cluster's agents' log lines, oldest first."""
    params = {k: v for k, v in {"agent": agent, "level": level, "since": since, "until": until}.items() if v}
    path = f"{_cluster(subscription, resource_group, name)}/agentLogs"
    lines: list[dict[str, str]] = []
    page = request_json("GET", path, params={**params, "$top": str(min(limit, 1000))})
    while True:
        lines += page["value"]
        if len(lines) >= limit or "nextLink" not in page:
            break
        token = parse_qs(urlsplit(page["nextLink"]).query)["$skipToken"][0]
        page = request_json("GET", path, params={**params, "$top": "1000", "$skipToken": token})
    lines = lines[:limit]
    if output == "json":
        typer.echo(json.dumps(lines, indent=2))
        return
    for line in lines:
        typer.echo(f"{line['timestamp']} {line['agent']} {line['level'].upper()} {line['message']}")


def usage(
    name: str = typer.Option(..., "--name", "-n"),
    resource_group: str = typer.Option(..., "--resource-group", "-g"),
    subscription: str = SubscriptionOpt,
    agent: str = typer.Option(
        None, "--agent", help="One agent's time series instead of every agent's latest."
    ),
    since: str = typer.Option("1d", "--since", help="With --agent: from when (an age or a time)."),
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """CPU and memory of the cluster's agents (latest), or one agent's over time."""
    path = f"{_cluster(subscription, resource_group, name)}/agentUsage"
    if agent:
        points = request_json("GET", f"{path}/{agent}", params={"since": since})["value"]
        rows = [[p["timestamp"], f"{p['cpuMillicores']}m", _mib(p["memoryBytes"])] for p in points]
        header = ["TIME", "CPU", "MEMORY"]
        data: object = points
    else:
        latest = request_json("GET", path)["value"]
        rows = [
            [u["agent"], f"{u['cpuMillicores']}m", _mib(u["memoryBytes"]), u["reportedAt"]] for u in latest
        ]
        header = ["AGENT", "CPU", "MEMORY", "REPORTED"]
        data = latest
    if output == "json":
        typer.echo(json.dumps(data, indent=2))
        return
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f}Mi"
