"""`kubearc agent flux-logs`: Flux's controller logs reach the hub under each controller's name, with
their level, and a restarted agent sends no line twice."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_site import AgentSite, until
from tests.apiserver import ApiServer
from tests.conftest import RunningHub

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def site(hub: RunningHub, tmp_path: Path) -> Iterator[AgentSite]:
    with ApiServer() as api:
        s = AgentSite(hub, api, tmp_path, "fluxlogs")
        try:
            yield s
        finally:
            s.close()


def flux_line(level: str, msg: str) -> str:
    return json.dumps({"level": level, "ts": "2026-12-03T10:00:00.000Z", "logger": "controller", "msg": msg})


def shipped(site: AgentSite, controller: str) -> list[dict[str, Any]]:
    r = site.user.get(
        f"{site.cluster.resource_id}/agentLogs", params={"agent": controller, "since": "1h", "$top": "1000"}
    )
    return list(r.json()["value"])


def test_flux_controller_logs_reach_the_hub_once_each_across_a_restart(site: AgentSite) -> None:
    api = site.api
    site.core.create_namespace({"metadata": {"name": "flux-system"}})
    api.add_pod(
        "source-controller-6d8f9-x1",
        "flux-system",
        containers=["manager"],
        labels={"app": "source-controller"},
    )
    api.add_pod(
        "kustomize-controller-7c9-z2",
        "flux-system",
        containers=["manager"],
        labels={"app": "kustomize-controller"},
    )
    api.append_log(
        "flux-system", "source-controller-6d8f9-x1", flux_line("info", "stored artifact for commit 5f3c9e1")
    )
    api.append_log("flux-system", "kustomize-controller-7c9-z2", flux_line("error", "kustomize build failed"))
    site.start("flux-logs", "--interval", "0.3")

    source = until("source-controller's line", lambda: shipped(site, "source-controller"))
    assert [json.loads(e["message"])["msg"] for e in source] == ["stored artifact for commit 5f3c9e1"]
    kustomize = until("kustomize-controller's line", lambda: shipped(site, "kustomize-controller"))
    assert kustomize[0]["level"] == "error"

    # Lines keep coming while it runs; then it restarts and more come: each line reaches the hub once.
    for n in range(3):
        api.append_log("flux-system", "source-controller-6d8f9-x1", flux_line("info", f"reconciled {n}"))
    until("three more lines", lambda: len(shipped(site, "source-controller")) == 4)
    site.stop()
    api.append_log("flux-system", "source-controller-6d8f9-x1", flux_line("info", "while the agent was away"))
    site.start("flux-logs")
    until("the line written meanwhile", lambda: len(shipped(site, "source-controller")) == 5)
    time.sleep(1.5)  # several more passes of the restarted agent
    messages = [json.loads(e["message"])["msg"] for e in shipped(site, "source-controller")]
    assert messages == [
        "stored artifact for commit 5f3c9e1",
        "reconciled 0",
        "reconciled 1",
        "reconciled 2",
        "while the agent was away",
    ]
    assert len(shipped(site, "kustomize-controller")) == 1
    site.stop()
    assert "Traceback" not in site.log()
