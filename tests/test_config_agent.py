"""`kubearc agent config` against a real hub and the stand-in apiserver: flux configurations become
Flux objects, the conditions Flux writes (this test plays Flux's controllers) become compliance on
the hub, and what a configuration owned goes when it goes, nothing else."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_site import AgentSite, exists, until
from tests.apiserver import ApiServer
from tests.conftest import RunningHub
from tests.flux_crds import flux_crds, mark

pytestmark = pytest.mark.sqlite_only
KIND = "providers/Microsoft.KubernetesConfiguration/fluxConfigurations"
SOURCE, KUSTOMIZE = ("source.toolkit.fluxcd.io", "v1"), ("kustomize.toolkit.fluxcd.io", "v1")
SSH_KEY = base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY-----\nagent-test\n").decode()


class Setup(AgentSite):
    def __init__(self, hub: RunningHub, api: ApiServer, tmp_path: Path) -> None:
        super().__init__(hub, api, tmp_path, "gitops")

    def start_agent(self) -> None:
        self.start("config", "--sync-interval", "0.5", "--status-interval", "0.2")

    def stop_agent(self) -> None:
        self.stop()

    def url(self, name: str = "fleet") -> str:
        return f"{self.cluster.resource_id}/{KIND}/{name}"

    def props(self, name: str = "fleet") -> dict[str, Any]:
        return self.user.get(self.url(name)).json()["properties"]

    def get(self, gv: tuple[str, str], plural: str, name: str, ns: str = "flux-system") -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(gv[0], gv[1], ns, plural, name)  # type: ignore[no-any-return]

    def flux_plays(self, gv: tuple[str, str], plural: str, name: str, **status: Any) -> None:
        obj = self.get(gv, plural, name)
        body = mark(obj, **status)
        self.custom.patch_namespaced_custom_object_status(gv[0], gv[1], "flux-system", plural, name, body)


@pytest.fixture
def setup(hub: RunningHub, tmp_path: Path) -> Iterator[Setup]:
    with ApiServer() as api:
        s = Setup(hub, api, tmp_path)
        try:
            yield s
        finally:
            s.close()


def body(**changes: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "scope": "cluster",
        "namespace": "flux-system",
        "sourceKind": "GitRepository",
        "gitRepository": {
            "url": "ssh://git@github.com/example/fleet.git",
            "repositoryRef": {"branch": "main"},
        },
        "kustomizations": {
            "infra": {"path": "./infrastructure", "prune": True},
            "apps": {"path": "./apps", "dependsOn": ["infra"]},
        },
        "configurationProtectedSettings": {"sshPrivateKey": SSH_KEY},
    }
    props.update(changes)
    return {"properties": props}


def test_a_flux_configuration_becomes_flux_objects_and_their_conditions_its_compliance(setup: Setup) -> None:
    s = setup
    assert s.user.put(s.url(), json=body()).status_code == 201
    s.start_agent()

    # No Flux yet: the hub says so, and what to install.
    props = until("the missing-Flux report", lambda: (p := s.props())["errorMessage"] and p)
    assert props["complianceState"] == "Non-Compliant" and props["provisioningState"] == "Failed"
    assert "flux extension is not installed" in props["errorMessage"]

    # The flux extension's CRDs arrive: the agent creates the objects on its own, without a restart.
    for crd in flux_crds():
        s.ext.create_custom_resource_definition(crd)
    repo = until("the GitRepository", lambda: s.get(SOURCE, "gitrepositories", "fleet"))
    assert repo["spec"]["url"] == "ssh://git@github.com/example/fleet.git"
    assert repo["spec"]["ref"] == {"branch": "main"} and repo["spec"]["secretRef"] == {"name": "fleet-auth"}
    apps = until("the apps Kustomization", lambda: s.get(KUSTOMIZE, "kustomizations", "fleet-apps"))
    assert apps["spec"]["dependsOn"] == [{"name": "fleet-infra"}] and apps["spec"]["path"] == "./apps"
    secret = s.core.read_namespaced_secret("fleet-auth", "flux-system")
    assert secret.data["identity"] == SSH_KEY
    props = until("Pending once applied", lambda: (p := s.props())["provisioningState"] == "Succeeded" and p)
    assert props["complianceState"] == "Pending"

    # Flux reconciles: Ready with a revision, and the hub shows Compliant with that commit.
    s.flux_plays(
        SOURCE,
        "gitrepositories",
        "fleet",
        ready=True,
        reason="Succeeded",
        message="stored",
        revision="main@sha1:5f3c9e1",
    )
    for name in ("fleet-infra", "fleet-apps"):
        s.flux_plays(
            KUSTOMIZE, "kustomizations", name, ready=True, reason="ReconciliationSucceeded", message="Applied"
        )
    props = until("Compliant", lambda: (p := s.props())["complianceState"] == "Compliant" and p)
    assert props["sourceSyncedCommitId"] == "main@sha1:5f3c9e1"
    assert {st["name"]: st["complianceState"] for st in props["statuses"]} == {
        "fleet": "Compliant",
        "fleet-apps": "Compliant",
        "fleet-infra": "Compliant",
    }

    # A failing Kustomization: Non-Compliant with Flux's message.
    failure = "kustomize build failed: accumulating resources from 'apps': no such file"
    s.flux_plays(
        KUSTOMIZE, "kustomizations", "fleet-apps", ready=False, reason="BuildFailed", message=failure
    )
    props = until("Non-Compliant", lambda: (p := s.props())["complianceState"] == "Non-Compliant" and p)
    assert props["errorMessage"] == f"Kustomization fleet-apps: {failure}"

    # An object of the same kind that is not the configuration's stays whatever happens.
    foreign = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "someone-elses", "namespace": "flux-system"},
        "spec": {"url": "https://example.com/x.git", "interval": "1m"},
    }
    s.custom.create_namespaced_custom_object(*SOURCE, "flux-system", "gitrepositories", foreign)

    # A restarted agent finds everything in place and writes nothing.
    s.stop_agent()
    before = {
        n: s.get(KUSTOMIZE, "kustomizations", n)["metadata"]["resourceVersion"]
        for n in ("fleet-infra", "fleet-apps")
    }
    s.start_agent()
    time.sleep(2)
    after = {
        n: s.get(KUSTOMIZE, "kustomizations", n)["metadata"]["resourceVersion"]
        for n in ("fleet-infra", "fleet-apps")
    }
    assert after == before

    # A kustomization removed from the configuration goes; the new spec is applied.
    assert s.user.put(s.url(), json=body(kustomizations={"infra": {"path": "./infra-v2"}})).status_code == 200
    until("fleet-apps deleted", lambda: not exists(lambda: s.get(KUSTOMIZE, "kustomizations", "fleet-apps")))
    until(
        "the new path",
        lambda: s.get(KUSTOMIZE, "kustomizations", "fleet-infra")["spec"]["path"] == "./infra-v2",
    )

    # Deleting the configuration removes exactly what it created.
    assert s.user.delete(s.url()).status_code == 200
    until("the source deleted", lambda: not exists(lambda: s.get(SOURCE, "gitrepositories", "fleet")))
    until(
        "fleet-infra deleted", lambda: not exists(lambda: s.get(KUSTOMIZE, "kustomizations", "fleet-infra"))
    )
    until(
        "the Secret deleted",
        lambda: not exists(lambda: s.core.read_namespaced_secret("fleet-auth", "flux-system")),
    )
    assert s.get(SOURCE, "gitrepositories", "someone-elses")["spec"]["url"] == "https://example.com/x.git"
    s.stop_agent()
    assert "Traceback" not in s.log()


def test_a_configuration_whose_objects_belong_to_someone_else_says_so_and_takes_nothing(setup: Setup) -> None:
    s = setup
    for crd in flux_crds():
        s.ext.create_custom_resource_definition(crd)
    s.core.create_namespace({"metadata": {"name": "flux-system"}})
    taken = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "fleet", "namespace": "flux-system"},
        "spec": {"url": "https://example.com/theirs.git", "interval": "1m"},
    }
    s.custom.create_namespaced_custom_object(*SOURCE, "flux-system", "gitrepositories", taken)
    assert s.user.put(s.url(), json=body()).status_code == 201
    s.start_agent()
    props = until("the refusal", lambda: (p := s.props())["errorMessage"] and p)
    assert "GitRepository flux-system/fleet exists and is not this configuration's" in props["errorMessage"]
    assert s.get(SOURCE, "gitrepositories", "fleet")["spec"]["url"] == "https://example.com/theirs.git"
    s.stop_agent()
