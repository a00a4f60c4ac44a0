"""The hub's Helm chart (hub and relay replicas), rendered by the real helm: lint, schemas, secrets, drain.

The cloud side must deploy as replicas that fail one at a time: probes, disruption
budgets, a rolling update that adds before it removes, the relay's drain inside its
grace period, and no secret in values or on a command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import foundation
from tests.test_chart import by_kind, run_helm

CHART = Path(__file__).resolve().parents[1] / "charts" / "kubearc-hub"
REQUIRED = [
    "--set",
    "publicUrl=https://hub.example.com",
    "--set",
    "relayUrl=wss://relay.example.com",
    "--set",
    "database.existingSecret=kubearc-db",
    "--set",
    "keys.existingSecret=kubearc-keys",
    "--set",
    "tls.existingSecret=kubearc-tls",
]


def render(*values: str) -> list[dict[str, Any]]:
    done = run_helm("template", "kubearc", str(CHART), "--namespace", "kubearc", *REQUIRED, *values)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: d["spec"]["template"]["spec"] for name, d in by_kind(docs, "Deployment").items()}


def test_the_hub_chart_lints_strictly_and_every_manifest_is_valid_kubernetes() -> None:
    linted = run_helm("lint", "--strict", str(CHART), *REQUIRED)
    assert linted.returncode == 0 and "0 chart(s) failed" in linted.stdout, linted.stdout + linted.stderr
    docs = render("--set", "hub.replicas=3", "--set", "relay.replicas=4")
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)
    deployments = by_kind(docs, "Deployment")
    assert {n: d["spec"]["replicas"] for n, d in deployments.items()} == {
        "kubearc-hub": 3,
        "kubearc-relay": 4,
    }
    assert set(by_kind(docs, "Service")) == set(by_kind(docs, "PodDisruptionBudget")) == set(deployments)
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == foundation.__version__


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--set", "publicUrl=http://hub.example.com", "/publicUrl"),
        ("--set", "relayUrl=wss://relay.example.com/relay/v1", "/relayUrl"),
        ("--set", "relay.replicas=0", "/relay/replicas"),
        ("--set", "relay.drainSeconds=-1", "/relay/drainSeconds"),
        ("--set", "logLevel=loud", "/logLevel"),
        ("--set", "databaseUrl=postgresql://u:p@db/hub", "databaseUrl"),
    ],
)
def test_a_wrong_value_fails_at_install_naming_the_value(flag: str, value: str, named: str) -> None:
    done = run_helm(
        "install", "kubearc", str(CHART), "--dry-run=client", "--namespace", "kubearc", *REQUIRED, flag, value
    )
    assert done.returncode != 0
    assert named in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        ("publicUrl", "publicUrl is required"),
        ("relayUrl", "relayUrl is required"),
        ("database.existingSecret", "database.existingSecret is required"),
        ("keys.existingSecret", "keys.existingSecret is required"),
        ("tls.existingSecret", "tls.existingSecret is required"),
    ],
)
def test_a_missing_value_says_which(missing: str, says: str) -> None:
    given = [REQUIRED[i + 1] for i in range(0, len(REQUIRED), 2) if not REQUIRED[i + 1].startswith(missing)]
    done = run_helm("template", "kubearc", str(CHART), *[a for v in given for a in ("--set", v)])
    assert done.returncode != 0 and says in done.stderr, done.stderr


def test_no_secret_is_rendered_or_passed_on_a_command_line() -> None:
    docs = render()
    assert not by_kind(docs, "Secret")
    for name, pod in pods(docs).items():
        (container,) = pod["containers"]
        assert not any("postgresql://" in arg or "PASSWORD" in arg for arg in container["args"])
        secret_env = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        }
        if name == "kubearc-hub":
            assert secret_env == {
                "KUBEARC_DATABASE_URL": {"name": "kubearc-db", "key": "url"},
                "KUBEARC_HUB_ENCRYPTION_KEY": {"name": "kubearc-keys", "key": "encryption-key"},
            }
        else:
            assert secret_env == {}  # the relay holds no database URL and no data key
        args = container["args"]
        key_flag = "--relay-registration-key-file" if name == "kubearc-hub" else "--registration-key-file"
        assert args[args.index(key_flag) + 1] == "/etc/kubearc/keys/relay-registration-key"
        keys = next(v for v in pod["volumes"] if v["name"] == "keys")["secret"]
        assert keys["items"] == [{"key": "relay-registration-key", "path": "relay-registration-key"}]


def test_every_pod_runs_least_privileged_with_probes_requests_and_a_budget() -> None:
    docs = render()
    for name, pod in pods(docs).items():
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert not [d for d in docs if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    for budget in by_kind(docs, "PodDisruptionBudget").values():
        assert budget["spec"]["maxUnavailable"] == 1
    for deployment in by_kind(docs, "Deployment").values():
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


@pytest.mark.parametrize("drain", [30, 120])
def test_the_relay_drains_inside_its_grace_period_as_its_own_replica(drain: int) -> None:
    relay = pods(render("--set", f"relay.drainSeconds={drain}"))["kubearc-relay"]
    args = relay["containers"][0]["args"]
    assert args[args.index("--drain") + 1] == f"{drain}s"
    assert relay["terminationGracePeriodSeconds"] == drain + 15
    assert args[args.index("--replica-id") + 1] == "$(POD_NAME)"  # each pod its own id in the set
    assert args[args.index("--advertise-url") + 1] == "wss://relay.example.com"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in relay[
        "containers"
    ][0]["env"]
    services = by_kind(render(), "Service")
    assert services["kubearc-relay"]["spec"]["ports"][0]["targetPort"] == "wss"
    assert services["kubearc-hub"]["spec"]["ports"][0]["targetPort"] == "https"


def test_every_container_runs_a_command_the_cli_accepts() -> None:
    for pod in pods(render("--set", "hub.extraArgs={--entra-tenant,t1}")).values():
        container = pod["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        done = subprocess.run(
            [sys.executable, "-m", "kubearc.cli", *container["args"], "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert done.returncode == 0, f"{container['args']}: {done.stderr}"
