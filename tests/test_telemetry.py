"""Agents' log lines and usage read back by users: filters, paging, retention, and who may read."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import httpx
import pytest

from kubearc.cli import app
from tests.clusters import connected, onboarder, signed_in_cli
from tests.conftest import FakeClock, RunningHub


def iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def reader(hub: RunningHub, scope: str) -> httpx.Client:
    oid = str(uuid.uuid4())
    hub.assign(oid, "Reader", scope)
    return hub.client(hub.token(oid))


def test_log_lines_are_filtered_paged_oldest_first_and_kept_for_the_retention(
    hub: RunningHub, clock: FakeClock
) -> None:
    token = onboarder(hub)
    cluster, other = connected(hub, "logs-a", token), connected(hub, "logs-b", token)
    t0 = clock.now - dt.timedelta(hours=2)
    lines = [
        ("config-agent", "info", "applied flux configuration fleet", 0),
        ("config-agent", "WARNING", "Flux's CRDs are not installed", 10),
        ("cluster-metadata-operator", "info", "pushed cluster metadata", 20),
        ("config-agent", "error", "kustomize build failed", 30),
        ("cluster-metadata-operator", "warn", "hub reports the cluster Offline", 40),
    ]
    entries = [
        {"agent": a, "level": lv, "message": m, "timestamp": iso(t0 + dt.timedelta(minutes=n))}
        for a, lv, m, n in lines
    ]
    # A line older than the retention (7 days) is dropped when the cluster pushes.
    ancient = {
        "agent": "config-agent",
        "message": "last week",
        "timestamp": iso(clock.now - dt.timedelta(days=8)),
    }
    with cluster.agent_client() as agent:
        assert agent.post("/agent/v1/logs", json={"entries": [ancient]}).status_code == 200
        assert agent.post("/agent/v1/logs", json={"entries": entries}).status_code == 200
    with other.agent_client() as agent:
        agent.post(
            "/agent/v1/logs", json={"entries": [{"agent": "config-agent", "message": "other cluster"}]}
        )

    url = f"{cluster.resource_id}/agentLogs"
    with reader(hub, cluster.resource_id) as c:
        every = c.get(url).json()["value"]
        assert [e["message"] for e in every] == [m for _, _, m, _ in lines]
        assert [e["level"] for e in every] == ["info", "warning", "info", "error", "warning"]
        only = c.get(url, params={"agent": "config-agent", "level": "warning"}).json()["value"]
        assert [e["message"] for e in only] == ["Flux's CRDs are not installed", "kustomize build failed"]
        window = {"since": iso(t0 + dt.timedelta(minutes=15)), "until": iso(t0 + dt.timedelta(minutes=35))}
        assert [e["message"] for e in c.get(url, params=window).json()["value"]] == [
            "pushed cluster metadata",
            "kustomize build failed",
        ]
        assert len(c.get(url, params={"since": "105m"}).json()["value"]) == 3  # an age: the last 105 minutes

        # Pages of two, each nextLink followed as given, add up to every line once.
        seen, page = [], c.get(url, params={"$top": "2"}).json()
        while True:
            seen += [e["message"] for e in page["value"]]
            if "nextLink" not in page:
                break
            page = c.get(page["nextLink"]).json()
        assert seen == [m for _, _, m, _ in lines]

        for bad, named in (
            ({"level": "loud"}, "level"),
            ({"$top": "0"}, "$top"),
            ({"since": "yesterday"}, "since"),
        ):
            r = c.get(url, params=bad)
            assert r.status_code == 400 and named in r.json()["error"]["message"], r.text

    viewer = str(uuid.uuid4())
    hub.assign(viewer, "Azure Arc Kubernetes Viewer", cluster.resource_id)
    with hub.client(hub.token(viewer)) as c:
        assert c.get(url).status_code == 403
    with reader(hub, other.resource_id) as c:
        assert c.get(url).status_code == 403


def test_usage_has_each_agents_latest_reading_and_its_time_series(hub: RunningHub, clock: FakeClock) -> None:
    cluster = connected(hub, "usage-a", onboarder(hub))
    with cluster.agent_client() as agent:
        for cpu, memory in ((12, 50_000_000), (30, 61_000_000)):
            usage = [
                {"name": "config-agent", "cpuMillicores": cpu, "memoryBytes": memory},
                {"name": "cluster-metadata-operator", "cpuMillicores": 3, "memoryBytes": 40_000_000},
            ]
            assert agent.put("/agent/v1/usage", json={"agents": usage}).status_code == 200
    with reader(hub, cluster.resource_id) as c:
        latest = {u["agent"]: u for u in c.get(f"{cluster.resource_id}/agentUsage").json()["value"]}
        assert set(latest) == {"config-agent", "cluster-metadata-operator"}
        assert (latest["config-agent"]["cpuMillicores"], latest["config-agent"]["memoryBytes"]) == (
            30,
            61_000_000,
        )
        series = c.get(f"{cluster.resource_id}/agentUsage/config-agent").json()["value"]
        assert [(p["cpuMillicores"], p["memoryBytes"]) for p in series] == [
            (12, 50_000_000),
            (30, 61_000_000),
        ]
        later = {"since": iso(clock.now + dt.timedelta(minutes=1))}
        assert c.get(f"{cluster.resource_id}/agentUsage/config-agent", params=later).json()["value"] == []


@pytest.mark.sqlite_only
def test_cluster_logs_and_usage_on_the_command_line(
    hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = connected(hub, "cli-logs", onboarder(hub))
    now = hub.config.clock()
    entries = [
        {
            "agent": "config-agent",
            "level": lv,
            "message": f"line {n}",
            "timestamp": iso(now - dt.timedelta(seconds=60 - n)),
        }
        for n, lv in enumerate(["info", "error"] * 700)
    ]
    with cluster.agent_client() as agent:
        assert agent.post("/agent/v1/logs", json={"entries": entries[:1000]}).status_code == 200
        assert agent.post("/agent/v1/logs", json={"entries": entries[1000:]}).status_code == 200
        usage = [{"name": "config-agent", "cpuMillicores": 25, "memoryBytes": 64 << 20}]
        assert agent.put("/agent/v1/usage", json={"agents": usage}).status_code == 200
    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "config"))
    cli = signed_in_cli(hub, tmp_path / "config", "ida@kubearc.test", "Reader", cluster.resource_id)
    where = ["-n", "cli-logs", "-g", "rg1"]
    # More lines than one page: the command follows the pages up to --limit.
    every = cli.invoke(app, ["cluster", "logs", *where, "--limit", "1400"])
    assert every.exit_code == 0, every.output
    printed = every.stdout.splitlines()
    assert len(printed) == 1400 and printed[0].endswith("config-agent INFO line 0")
    assert printed[-1].endswith("config-agent ERROR line 1399")
    errors = cli.invoke(app, ["cluster", "logs", *where, "--level", "error", "--limit", "5", "-o", "json"])
    assert [e["message"] for e in json.loads(errors.stdout)] == [f"line {n}" for n in (1, 3, 5, 7, 9)]
    table = cli.invoke(app, ["cluster", "usage", *where])
    assert table.exit_code == 0 and "config-agent" in table.stdout and "25m" in table.stdout, table.output
    assert "64.0Mi" in table.stdout
    bad = cli.invoke(app, ["cluster", "logs", *where, "--level", "loud"])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "level" in bad.output
