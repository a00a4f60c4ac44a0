"""The agents' Helm chart, rendered by the real helm: lint, Kubernetes schemas, values schema, RBAC, wiring.

What `kubearc connect` installs must be valid for every feature combination, give
each agent no more than it needs, never carry a secret in its values, and run
commands the `kubearc` CLI accepts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import foundation

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kubearc-agents"
SUB = "00000000-0000-0000-0000-000000000001"
RID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c1"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
REQUIRED = ["--set", "hub.url=https://hub.example:8443", "--set", f"resourceId={RID}"]
COMBINATIONS = {
    "defaults": [],
    "no-cluster-connect": ["--set", "features.clusterConnect=false"],
    "no-extensions": ["--set", "features.extensions=false"],
    "azure-rbac-webhook": ["--set", "features.azureRbac=true", "--set", "guard.entraTenants={t1}"],
    "azure-rbac-impersonation": [
        "--set",
        "features.azureRbac=true",
        "--set",
        "features.authnMode=impersonation",
        "--set-string",
        f"hub.caCert={PEM}",
        "--set",
        "proxy.https=http://proxy.corp:3128",
        "--set-string",
        f"proxy.caCert={PEM}",
    ],
}


def helm() -> str:
    found = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(found).exists():
        pytest.fail("helm is not installed: run `python3 .ci/install-helm.py .venv` (.ci/run does)")
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


def render(*values: str) -> list[dict[str, Any]]:
    done = run_helm("template", "kubearc", str(CHART), "--namespace", "azure-arc", *REQUIRED, *values)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_the_chart_lints_strictly_and_every_manifest_is_valid_kubernetes(combination: str) -> None:
    values = COMBINATIONS[combination]
    linted = run_helm("lint", "--strict", str(CHART), *REQUIRED, *values)
    assert linted.returncode == 0 and "0 chart(s) failed" in linted.stdout, linted.stdout + linted.stderr
    for doc in render(*values):
        kubernetes_validate.validate(doc, "1.32.0", strict=True)


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--set", "probesPort=ninety", "/probesPort"),
        ("--set", "features.azureRbac=yes-please", "/features/azureRbac"),
        ("--set", "resourceId=/not/an/arm/id", "/resourceId"),
        ("--set", "hub.url=http://plain.example", "/hub/url"),
        ("--set", "features.authnMode=sidecar", "/features/authnMode"),
        ("--set", "sekret=1", "sekret"),
    ],
)
def test_a_wrong_value_fails_at_install_naming_the_value(flag: str, value: str, named: str) -> None:
    done = run_helm(
        "install",
        "kubearc",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        "azure-arc",
        *REQUIRED,
        flag,
        value,
    )
    assert done.returncode != 0
    assert named in done.stderr, done.stderr


def test_a_missing_hub_url_or_resource_id_says_which() -> None:
    done = run_helm("template", "kubearc", str(CHART), "--set", f"resourceId={RID}")
    assert done.returncode != 0 and "hub.url is required" in done.stderr
    done = run_helm("template", "kubearc", str(CHART), "--set", "hub.url=https://hub.example")
    assert done.returncode != 0 and "resourceId is required" in done.stderr


def test_features_choose_the_agents() -> None:
    always = {
        "kubearc-identity",
        "kubearc-metadata",
        "kubearc-config",
        "kubearc-metrics",
        "kubearc-flux-logs",
        "kubearc-controller",
        "kubearc-extensions",
    }
    assert set(by_kind(render(), "Deployment")) == always | {"kubearc-connect"}
    off = by_kind(render(*COMBINATIONS["no-cluster-connect"]), "Deployment")
    assert set(off) == always
    without = by_kind(render(*COMBINATIONS["no-extensions"]), "Deployment")
    assert "kubearc-extensions" not in without and "kubearc-config" in without
    assert not [
        r for r in by_kind(render(*COMBINATIONS["no-extensions"]), "ClusterRole") if "extensions" in r
    ]
    webhook = by_kind(render(*COMBINATIONS["azure-rbac-webhook"]), "Deployment")
    assert "kubearc-guard" in webhook and "kubearc-aad-proxy" not in webhook
    impersonation = render(*COMBINATIONS["azure-rbac-impersonation"])
    deployments = by_kind(impersonation, "Deployment")
    assert "kubearc-aad-proxy" in deployments and "kubearc-guard" not in deployments
    connect_args = deployments["kubearc-connect"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert connect_args[connect_args.index("--apiserver") + 1] == "kubearc-aad-proxy.azure-arc.svc:8443"
    assert "kubearc-aad-proxy" in by_kind(impersonation, "Service")


def test_every_agent_gets_only_what_it_needs() -> None:
    for combination in COMBINATIONS.values():
        docs = render(*combination)
        roles = by_kind(docs, "ClusterRole")
        # The one exception, on purpose and off with features.extensions=false: extensions are charts that
        # may create anything, so the extension-manager holds every permission, as Arc's does.
        # The controller-manager too: it upgrades the release that holds that role.
        for everything in ("kubearc-extensions-azure-arc", "kubearc-controller-azure-arc"):
            if everything in roles:
                assert roles.pop(everything)["rules"] == [
                    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                    {"nonResourceURLs": ["*"], "verbs": ["*"]},
                ]
        cluster_rules = {
            name: [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]]
            for name, role in roles.items()
        }
        for name, rules in cluster_rules.items():
            if name.startswith("kubearc-metadata"):
                assert rules == [(("",), ("nodes",), ("get", "list"))]
            elif name.startswith("kubearc-guard"):
                assert rules == [(("authentication.k8s.io",), ("tokenreviews",), ("create",))]
            elif name.startswith("kubearc-config"):
                # Flux's objects and their Secrets, namespaces to put them in; nothing else, never "*".
                flux_kinds = {"gitrepositories", "ocirepositories", "buckets", "kustomizations"}
                assert {r for _, resources, _ in rules for r in resources} == flux_kinds | {
                    "secrets",
                    "namespaces",
                }
                assert all("*" not in verbs and "escalate" not in verbs for _, _, verbs in rules)
                assert dict((res, verbs) for _, res, verbs in rules)[("namespaces",)] == ("get", "create")
            elif name.startswith("kubearc-flux-logs"):  # pods and their logs, read only
                assert rules == [(("",), ("pods",), ("list",)), (("",), ("pods/log",), ("get",))]
            elif name.startswith("kubearc-aad-proxy"):
                assert all(verbs == ("impersonate",) for _, _, verbs in rules)
            else:
                raise AssertionError(f"unexpected ClusterRole {name}")
        for name, role in by_kind(docs, "Role").items():
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"]
                if name == "kubearc-metrics" and rule["resources"] == ["pods"]:
                    # the agents' pods (and their PodMetrics) in its own namespace, listed only
                    assert rule["verbs"] == ["list"] and rule["apiGroups"] in ([""], ["metrics.k8s.io"])
                    continue
                assert rule["resources"] == ["secrets"]
                if rule["verbs"] != ["create"]:  # create cannot be narrowed by name
                    assert rule["resourceNames"], name
        assert not by_kind(docs, "Secret"), "no secret is rendered from values"


def test_every_container_runs_as_non_root_read_only_with_probes_and_limits() -> None:
    for combination in COMBINATIONS.values():
        for name, deployment in by_kind(render(*combination), "Deployment").items():
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            assert pod["serviceAccountName"] == name
            for container in pod["containers"]:
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True
                assert security["allowPrivilegeEscalation"] is False
                assert security["capabilities"]["drop"] == ["ALL"]
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
                assert container["resources"]["limits"] and container["resources"]["requests"]


def test_the_image_defaults_to_this_version_and_the_proxy_settings_reach_every_agent() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == foundation.__version__
    docs = render(*COMBINATIONS["azure-rbac-impersonation"])
    trust = by_kind(docs, "ConfigMap")["kubearc-trust"]["data"]["ca.crt"]
    assert trust.count("BEGIN CERTIFICATE") == 2  # the hub's CA and the proxy's, one bundle
    for deployment in by_kind(docs, "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"ghcr.io/kubearc/kubearc:{foundation.__version__}"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HTTPS_PROXY"] == "http://proxy.corp:3128"
        assert "kubernetes.default.svc" in env["NO_PROXY"]
        assert env["KUBEARC_HUB_CA"] == "/etc/kubearc/trust/ca.crt"
    config = by_kind(docs, "ConfigMap")["azure-clusterconfig"]["data"]
    assert config["AZURE_RESOURCE_ID"] == RID and config["AZURE_ARC_AUTOUPDATE"] == "true"


@pytest.mark.parametrize("combination", ["defaults", "azure-rbac-webhook", "azure-rbac-impersonation"])
def test_every_container_runs_a_command_the_cli_accepts(combination: str) -> None:
    for deployment in by_kind(render(*COMBINATIONS[combination]), "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        # Unknown options and subcommands are reported before --help is honoured.
        done = subprocess.run(
            [sys.executable, "-m", "kubearc.cli", *container["args"], "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert done.returncode == 0, f"{container['args']}: {done.stderr}"


def test_guard_accepts_the_audience_kubectl_sign_in_asks_for() -> None:
    from foundation.wire import CLUSTER_AUDIENCE

    for combination in ("azure-rbac-webhook", "azure-rbac-impersonation"):
        deployments = by_kind(render(*COMBINATIONS[combination]), "Deployment")
        name = "kubearc-guard" if combination.endswith("webhook") else "kubearc-aad-proxy"
        args = deployments[name]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--audience") + 1] == CLUSTER_AUDIENCE
