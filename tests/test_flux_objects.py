"""agents.flux: a flux configuration becomes the Flux objects Arc's agent makes, and their
conditions become the compliance the hub shows (no cluster needed)."""

from __future__ import annotations

import base64
from typing import Any

from agents import flux

KEY = base64.b64encode(b"PRIVATE KEY").decode()


def config(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "fleet",
        "generation": 3,
        "scope": "cluster",
        "namespace": "flux-system",
        "sourceKind": "GitRepository",
        "suspend": False,
        "gitRepository": {
            "url": "ssh://git@github.com/example/fleet.git",
            "repositoryRef": {"branch": "main"},
            "syncIntervalInSeconds": 300,
            "timeoutInSeconds": 120,
            "sshKnownHosts": base64.b64encode(b"github.com ssh-ed25519 AAAA").decode(),
        },
        "kustomizations": {
            "infra": {"path": "./infrastructure", "prune": True, "dependsOn": [], "wait": True},
            "apps": {"path": "./apps", "dependsOn": ["infra"], "syncIntervalInSeconds": 60},
        },
        "configurationProtectedSettings": {"sshPrivateKey": KEY},
    }
    base.update(extra)
    return base


def test_a_git_configuration_becomes_a_source_its_kustomizations_and_an_auth_secret() -> None:
    desired = flux.manifests(config())
    source, apps, infra = desired.objects
    assert (source["apiVersion"], source["kind"]) == ("source.toolkit.fluxcd.io/v1", "GitRepository")
    assert source["metadata"]["name"] == "fleet" and source["metadata"]["namespace"] == "flux-system"
    assert source["spec"] == {
        "url": "ssh://git@github.com/example/fleet.git",
        "ref": {"branch": "main"},
        "interval": "300s",
        "timeout": "120s",
        "secretRef": {"name": "fleet-auth"},
        "suspend": False,
    }
    assert apps["metadata"]["name"] == "fleet-apps" and apps["kind"] == "Kustomization"
    assert apps["spec"]["dependsOn"] == [{"name": "fleet-infra"}]
    assert apps["spec"]["sourceRef"] == {"kind": "GitRepository", "name": "fleet"}
    assert apps["spec"]["interval"] == "60s" and "targetNamespace" not in apps["spec"]
    assert infra["spec"]["prune"] is True and infra["spec"]["path"] == "./infrastructure"
    assert desired.secret is not None
    assert desired.secret["data"] == {
        "identity": KEY,
        "known_hosts": config()["gitRepository"]["sshKnownHosts"],
    }
    for obj in [*desired.objects, desired.secret]:
        labels = obj["metadata"]["labels"]
        assert labels[flux.OWNER] == "fleet" and labels[flux.OWNER_NAMESPACE] == "flux-system"


def test_https_credentials_a_local_auth_ref_and_namespace_scope() -> None:
    https = config(
        gitRepository={
            "url": "https://github.com/example/fleet.git",
            "repositoryRef": {"tag": "v1.0.0"},
            "httpsUser": "flux",
        },
        configurationProtectedSettings={"httpsKey": base64.b64encode(b"token").decode()},
        scope="namespace",
    )
    desired = flux.manifests(https)
    assert desired.secret is not None
    assert base64.b64decode(desired.secret["data"]["username"]) == b"flux"
    assert base64.b64decode(desired.secret["data"]["password"]) == b"token"
    assert all(k["spec"]["targetNamespace"] == "flux-system" for k in desired.objects[1:])
    local = flux.manifests(
        config(
            gitRepository={
                "url": "https://x/y.git",
                "repositoryRef": {"branch": "a"},
                "localAuthRef": "mine",
            },
            configurationProtectedSettings={},
        )
    )
    assert local.secret is None and local.objects[0]["spec"]["secretRef"] == {"name": "mine"}


def test_oci_and_bucket_sources_use_their_flux_kinds() -> None:
    oci = flux.manifests(
        config(
            sourceKind="OCIRepository",
            gitRepository=None,
            ociRepository={"url": "oci://ghcr.io/example/manifests", "repositoryRef": {"tag": "latest"}},
            configurationProtectedSettings={},
        )
    )
    assert oci.objects[0]["apiVersion"] == "source.toolkit.fluxcd.io/v1beta2"
    assert oci.objects[0]["spec"]["ref"] == {"tag": "latest"}
    bucket = flux.manifests(
        config(
            sourceKind="Bucket",
            gitRepository=None,
            bucket={"url": "http://minio.local:9000", "bucketName": "fleet", "accessKey": "AK"},
            configurationProtectedSettings={"secretKey": base64.b64encode(b"SK").decode()},
        )
    )
    spec = bucket.objects[0]["spec"]
    assert bucket.objects[0]["kind"] == "Bucket"
    assert (spec["endpoint"], spec["bucketName"], spec["insecure"]) == ("minio.local:9000", "fleet", True)
    assert bucket.secret is not None and set(bucket.secret["data"]) == {"accesskey", "secretkey"}


def ready(status: str, reason: str, message: str = "", generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": status, "reason": reason, "message": message}],
        },
    }


def test_compliance_follows_the_ready_conditions_of_the_current_generation() -> None:
    desired = flux.manifests(config())
    good = ready("True", "Succeeded", "stored artifact")
    good["status"]["artifact"] = {"revision": "main@sha1:0123abcd", "lastUpdateTime": "2026-12-03T10:00:00Z"}
    report = flux.compliance(desired, [good, ready("True", "ReconciliationSucceeded"), ready("True", "Ok")])
    assert report["complianceState"] == "Compliant" and report["observedGeneration"] == 3
    assert report["sourceSyncedCommitId"] == "main@sha1:0123abcd"
    assert [s["complianceState"] for s in report["statuses"]] == ["Compliant"] * 3
    assert report["statuses"][1]["name"] == "fleet-apps" and report["errorMessage"] is None

    failing = ready("False", "BuildFailed", "kustomize build failed: accumulating resources")
    report = flux.compliance(desired, [good, failing, ready("True", "Ok")])
    assert report["complianceState"] == "Non-Compliant"
    assert (
        report["errorMessage"] == "Kustomization fleet-apps: kustomize build failed: accumulating resources"
    )

    # Not yet seen by Flux, or its condition speaks of an older spec: Pending, not Compliant.
    stale = ready("True", "Ok", generation=1)
    stale["metadata"]["generation"] = 2
    assert flux.compliance(desired, [good, None, ready("True", "Ok")])["complianceState"] == "Pending"
    assert flux.compliance(desired, [good, stale, ready("True", "Ok")])["complianceState"] == "Pending"
    progressing = ready("False", "DependencyNotReady", "dependency 'fleet-infra' is not ready")
    assert flux.compliance(desired, [good, progressing, ready("True", "Ok")])["complianceState"] == "Pending"

    suspended = flux.manifests(config(suspend=True))
    assert suspended.objects[0]["spec"]["suspend"] is True
    assert flux.compliance(suspended, [good, good, good])["complianceState"] == "Suspended"


def test_missing_flux_crds_are_reported_with_what_to_install() -> None:
    report = flux.not_installed(flux.manifests(config()), ["gitrepositories.source.toolkit.fluxcd.io/v1"])
    assert report["complianceState"] == "Non-Compliant" and report["provisioningState"] == "Failed"
    assert "flux extension is not installed" in report["errorMessage"]
    assert "gitrepositories.source.toolkit.fluxcd.io/v1" in report["errorMessage"]
