"""`kubearc agent metrics`: each agent's CPU and memory reach the hub, from the agent's own /metrics
and, once the cluster serves it, from the metrics API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_site import AgentSite, until
from tests.apiserver import ApiServer
from tests.conftest import RunningHub

pytestmark = pytest.mark.sqlite_only
NS = "azure-arc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def site(hub: RunningHub, tmp_path: Path) -> Iterator[AgentSite]:
    with ApiServer() as api:
        s = AgentSite(hub, api, tmp_path, "metrics")
        try:
            yield s
        finally:
            s.close()


def agent_pod(site: AgentSite, name: str, component: str, port: int) -> None:
    """A Pod of the chart's shape for an agent process that runs here, on 127.0.0.1."""
    if site.api.store.find("", "namespaces", "", NS) is None:
        site.core.create_namespace({"metadata": {"name": NS}})
    pod = {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app.kubernetes.io/part-of": "kubearc", "app.kubernetes.io/component": component},
        },
        "spec": {
            "containers": [
                {"name": "agent", "image": "kubearc", "ports": [{"name": "probes", "containerPort": port}]}
            ]
        },
    }
    site.core.create_namespaced_pod(NS, pod)
    status = {"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}
    site.core.patch_namespaced_pod_status(name, NS, status)


def usage(site: AgentSite) -> dict[str, dict[str, Any]]:
    r = site.user.get(f"{site.cluster.resource_id}/agentUsage")
    return {u["agent"]: u for u in r.json()["value"]}


def test_each_agents_cpu_and_memory_reach_the_hub_from_its_own_metrics_then_the_metrics_api(
    site: AgentSite,
) -> None:
    port = free_port()
    config = subprocess.Popen(  # a real agent answering /metrics on its probes port
        [
            *[
                sys.executable,
                "-m",
                "kubearc.cli",
                "agent",
                "config",
                "--hub",
                site.hub.url,
                "--hub-ca",
                site.hub.ca,
            ],
            *["--identity", f"file:{site.tmp / 'identity'}", "--kubeconfig", str(site.kubeconfig)],
            *["--probes-listen", f"127.0.0.1:{port}", "--log-format", "text"],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith(("KUBEARC_", "KUBECONFIG"))},
    )
    try:
        agent_pod(site, "kubearc-config-7d9f-abcde", "config", port)
        site.start("metrics", "--interval", "0.5", "--namespace", NS)
        seen = until("config-agent's own reading", lambda: usage(site).get("config-agent"))
        rss = int(Path(f"/proc/{config.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        assert 0.5 * rss < seen["memoryBytes"] < 2 * rss  # the process's own resident memory
        assert seen["cpuMillicores"] >= 0

        # metrics-server arrives (here the metrics API's PodMetrics, served through a CRD of its shape).
        site.ext.create_custom_resource_definition(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": "pods.metrics.k8s.io",
                    # a *.k8s.io group: the apiserver wants this (metrics-server serves it aggregated)
                    "annotations": {
                        "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/metrics-server"
                    },
                },
                "spec": {
                    "group": "metrics.k8s.io",
                    "names": {"kind": "PodMetrics", "plural": "pods", "singular": "podmetrics"},
                    "scope": "Namespaced",
                    "versions": [
                        {
                            "name": "v1beta1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    ],
                },
            }
        )
        metrics = {
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "PodMetrics",
            "metadata": {"name": "kubearc-config-7d9f-abcde", "namespace": NS},
            "timestamp": "2026-12-03T12:00:00Z",
            "window": "30s",
            "containers": [{"name": "agent", "usage": {"cpu": "250m", "memory": "64Mi"}}],
        }
        site.custom.create_namespaced_custom_object("metrics.k8s.io", "v1beta1", NS, "pods", metrics)
        measured = until(
            "the metrics API's reading",
            lambda: (u := usage(site).get("config-agent")) and u["cpuMillicores"] == 250 and u,
        )
        assert measured["memoryBytes"] == 64 * 1024 * 1024
        site.stop()
        assert "Traceback" not in site.log()
    finally:
        config.terminate()
        config.wait(30)
