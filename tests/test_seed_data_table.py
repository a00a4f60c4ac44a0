"""The seed's data table (REFERENCE section 7), row by row: each value reaches the hub from the agent
or the command line that owns it, run for real against a hub and the stand-in apiserver.

Policy assignments and compliance, the table's last rows, belong to a later issue.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.hubclient import HubClient
from foundation.kube import Kube
from kubearc.helm import Helm, find_helm
from kubearc.onboard import ConnectOptions, Onboarding
from tests.agent_site import AgentSite
from tests.apiserver import ApiServer, NodeSpec
from tests.clusters import SUB
from tests.conftest import RunningHub
from tests.flux_crds import flux_crds

pytestmark = pytest.mark.sqlite_only
FLUX = "providers/Microsoft.KubernetesConfiguration/fluxConfigurations"


@pytest.fixture
def site(hub: RunningHub, tmp_path: Path) -> Iterator[AgentSite]:
    nodes = [NodeSpec("node-1", cpu="4"), NodeSpec("node-2", cpu="2500m")]
    with ApiServer(nodes=nodes, version="v1.36.1") as api:
        s = AgentSite(hub, api, tmp_path, "seed")
        try:
            yield s
        finally:
            s.close()


def once(site: AgentSite, agent: str, *args: str) -> None:
    done = subprocess.run(
        [
            *[
                sys.executable,
                "-m",
                "kubearc.cli",
                "agent",
                agent,
                "--hub",
                site.hub.url,
                "--hub-ca",
                site.hub.ca,
            ],
            *["--identity", f"file:{site.tmp / 'identity'}", "--kubeconfig", str(site.kubeconfig), "--once"],
            *["--log-format", "text", *args],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("KUBEARC_", "KUBECONFIG"))},
    )
    assert done.returncode == 0, done.stderr


def cluster(site: AgentSite) -> dict[str, Any]:
    return dict(
        site.user.get(site.cluster.resource_id, params={"api-version": "2024-01-01"}).json()["properties"]
    )


def test_kubernetes_version_node_count_and_agent_version_come_from_the_metadata_agent(
    site: AgentSite,
) -> None:
    once(site, "metadata")
    props = cluster(site)
    assert (props["kubernetesVersion"], props["totalNodeCount"]) == ("v1.36.1", 2)
    assert props["agentVersion"]


def test_distribution_infrastructure_and_vcpus_come_from_the_cli_at_connect(
    hub: RunningHub, tmp_path: Path
) -> None:
    with ApiServer(nodes=[NodeSpec("n1", cpu="4"), NodeSpec("n2", cpu="2500m")]) as api:
        options = ConnectOptions("seed-connect", "rg1", SUB, distribution="k3s", infrastructure="vsphere")
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        oid = "5eed0000-0000-0000-0000-000000000001"
        hub.assign(oid, "Kubernetes Cluster - Azure Arc Onboarding", f"/subscriptions/{SUB}")
        with hub.client(hub.token(oid)) as user:
            step = Onboarding(options, user, Kube(kubeconfig), Helm(find_helm(), kubeconfig), lambda _: None)
            step.create_resource(step._vcpus())  # what `kubearc connect` does after its checks
            props = user.get(options.resource_id, params={"api-version": "2024-01-01"}).json()["properties"]
    assert (props["distribution"], props["infrastructure"], props["totalCoreCount"]) == ("k3s", "vsphere", 7)


def test_the_heartbeat_comes_from_the_metadata_agent(site: AgentSite) -> None:
    assert cluster(site)["connectivityStatus"] == "Connecting"
    once(site, "metadata")
    props = cluster(site)
    assert props["connectivityStatus"] == "Connected" and props["lastConnectivityTime"]


def test_per_agent_cpu_and_memory_come_from_the_agents(site: AgentSite) -> None:
    once(site, "metadata")  # it reports its own; the metrics-agent reports every agent's (its own test)
    [usage] = site.user.get(f"{site.cluster.resource_id}/agentUsage").json()["value"]
    assert usage["agent"] == "cluster-metadata-operator" and usage["memoryBytes"] > 10_000_000


def test_agent_container_logs_come_from_every_agent(site: AgentSite) -> None:
    once(site, "metadata")
    lines = site.user.get(f"{site.cluster.resource_id}/agentLogs", params={"since": "1h"}).json()["value"]
    assert any(
        e["agent"] == "cluster-metadata-operator" and "pushed cluster metadata" in e["message"] for e in lines
    )


async def test_agent_upgrade_availability_is_pulled_by_the_agents(site: AgentSite) -> None:
    site.hub.config.latest_agent_version = "9.0.0"
    async with HubClient(site.hub.url, Path(site.hub.ca), identity=site.cluster.identity) as agent:
        offer = await agent.get_upgrade()  # what the controller-manager asks every pass
    assert offer["latestVersion"] == "9.0.0" and offer["upgradeAvailable"] is True


def test_desired_configuration_and_its_secrets_are_pulled_by_the_config_agent(site: AgentSite) -> None:
    for crd in flux_crds():
        site.ext.create_custom_resource_definition(crd)
    token = base64.b64encode(b"ghp_seed-token").decode()
    body = {
        "properties": {
            "namespace": "flux-system",
            "gitRepository": {
                "url": "https://github.com/example/fleet.git",
                "repositoryRef": {"branch": "main"},
                "httpsUser": "flux-bot",
                "syncIntervalInSeconds": 120,
            },
            "kustomizations": {"apps": {"path": "./apps"}},
            "configurationProtectedSettings": {"httpsKey": token},
        }
    }
    assert site.user.put(f"{site.cluster.resource_id}/{FLUX}/fleet", json=body).status_code == 201
    once(site, "config")
    repo = site.custom.get_namespaced_custom_object(
        "source.toolkit.fluxcd.io", "v1", "flux-system", "gitrepositories", "fleet"
    )
    assert (repo["spec"]["url"], repo["spec"]["interval"]) == ("https://github.com/example/fleet.git", "120s")
    secret = site.core.read_namespaced_secret("fleet-auth", "flux-system").data
    assert base64.b64decode(secret["username"]) == b"flux-bot" and secret["password"] == token


def test_flux_install_status_comes_from_the_config_agent(site: AgentSite) -> None:
    body = {
        "properties": {
            "gitRepository": {
                "url": "https://github.com/example/fleet.git",
                "repositoryRef": {"branch": "main"},
            }
        }
    }
    assert site.user.put(f"{site.cluster.resource_id}/{FLUX}/fleet", json=body).status_code == 201
    once(site, "config")  # no Flux installed on this cluster
    props = site.user.get(f"{site.cluster.resource_id}/{FLUX}/fleet").json()["properties"]
    assert (
        props["complianceState"] == "Non-Compliant"
        and "flux extension is not installed" in props["errorMessage"]
    )
