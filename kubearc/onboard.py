"""`kubearc connect`: onboard a kube context's cluster, in the order Arc's `az connectedk8s connect` uses.

1. Checks first, so a failure leaves nothing behind: the kube context answers,
   helm runs, the hub accepts our sign-in, and the cluster is not already
   connected under another name (its `azure-clusterconfig` says which resource
   it belongs to).
2. A fresh onboarding key pair; the cluster resource with the public key, the
   distribution, the infrastructure and the vCPUs read from the nodes.
3. Namespace `azure-arc` and the onboarding key Secret, before Helm.
4. `helm upgrade --install` of the agents' chart (values in a private file).
5. A wait with visible progress, step by step (the agents' Deployments ready,
   the identity certificate obtained, the first heartbeat, Connected), that
   names the step which did not happen when the timeout passes.

Running it again on a cluster connected with the same name is an upgrade of
the release: the resource and its key stay.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from foundation import pki
from foundation.kube import Kube, KubeError, describe
from foundation.settings import load_client_config
from kubearc import azurerbac
from kubearc.clusterside import ConnectError, connected_as, create_secret, kube_call
from kubearc.helm import NAMESPACE, Helm

CC = "providers/Microsoft.Kubernetes/connectedClusters"
API = {"api-version": "2024-01-01"}
ONBOARDING_SECRET = "azure-arc-onboarding-key"
IDENTITY_SECRET = "azure-identity-certificate"
FEATURES = ("cluster-connect", "azure-rbac")


@dataclass
class ConnectOptions:
    name: str
    resource_group: str
    subscription: str
    location: str = "local"
    distribution: str = "generic"
    infrastructure: str = "generic"
    features: list[str] = field(default_factory=lambda: ["cluster-connect"])
    authn_mode: str = "webhook"
    proxy_https: str | None = None
    proxy_skip_range: str | None = None
    proxy_cert: Path | None = None
    timeout: float = 600.0
    chart: Path | str = ""
    image_repository: str | None = None
    image_tag: str | None = None

    @property
    def resource_id(self) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/{CC}/{self.name}"


Say = Callable[[str], None]


class Onboarding:
    """The steps of one `kubearc connect`, against one kube context, one hub and one helm."""

    def __init__(self, options: ConnectOptions, hub: httpx.Client, kube: Kube, helm: Helm, say: Say) -> None:
        self.o, self.hub, self.helm, self.say = options, hub, helm, say
        try:
            self.core = client.CoreV1Api(kube.api)
            self.apps = client.AppsV1Api(kube.api)
            self.version = client.VersionApi(kube.api)
        except KubeError as exc:
            raise ConnectError(f"{exc}; check --kube-config and --kube-context") from None

    # ---- 1. checks ------------------------------------------------------------------------------

    def preflight(self) -> tuple[dict[str, Any] | None, int]:
        """The existing resource (None if new) and the cluster's vCPUs; raises before anything changes."""
        version = kube_call(
            "cannot reach the cluster's apiserver (check --kube-config / --kube-context)",
            lambda: self.version.get_code(),
        )
        self.say(f"cluster: Kubernetes {version.git_version}")
        self.say(f"helm: {self.helm.version()}")
        existing = self._hub_get(self.o.resource_id)
        belongs = self._connected_as()
        if belongs and belongs.lower() != self.o.resource_id.lower():
            raise ConnectError(
                f"this cluster is already connected as {belongs}; "
                "delete that connection first (kubearc cluster delete) or use its name"
            )
        if existing and not belongs and not self._holds_key_of(existing):
            raise ConnectError(
                f"{self.o.resource_id} already exists for another cluster; choose another --name"
            )
        return existing, self._vcpus()

    def _holds_key_of(self, resource: dict[str, Any]) -> bool:
        """This cluster holds the onboarding key of `resource` (an earlier connect stopped half-way)."""
        try:
            secret = self.core.read_namespaced_secret(ONBOARDING_SECRET, NAMESPACE)
            key = pki.load_private_key(base64.b64decode((secret.data or {})["privateKey"]))
        except (ApiException, KeyError, ValueError):
            return False
        wanted = (resource.get("properties") or {}).get("agentPublicKeyCertificate")
        return pki.public_key_der_b64(key.public_key()) == wanted

    def _hub_get(self, path: str) -> dict[str, Any] | None:
        response = self._hub("GET", path)
        return None if response.status_code == 404 else response.json()

    def _hub(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.hub.request(method, path, params=API, **kwargs)
        except httpx.HTTPError as exc:
            raise ConnectError(f"cannot reach the hub: {exc}") from None
        except (RuntimeError, ValueError) as exc:  # not signed in, token refresh failed
            raise ConnectError(str(exc)) from None
        if response.status_code >= 400 and response.status_code != 404:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise ConnectError(f"the hub refused {method} {path}: {response.status_code} {message}")
        return response

    def _connected_as(self) -> str | None:
        return connected_as(self.core)

    def _vcpus(self) -> int:
        nodes = kube_call("cannot list the cluster's nodes", lambda: self.core.list_node())
        total = 0.0
        for node in nodes.items:
            cpu = str(((node.status and node.status.capacity) or {}).get("cpu", "0"))
            total += int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        return int(total + 0.999)

    # ---- 2-4. resource, secret, chart -------------------------------------------------------------

    def create_resource(self, vcpus: int) -> pki.PrivateKey:
        key = pki.new_key()
        body = {
            "location": self.o.location,
            "properties": {
                "agentPublicKeyCertificate": pki.public_key_der_b64(key.public_key()),
                "distribution": self.o.distribution,
                "infrastructure": self.o.infrastructure,
                "totalCoreCount": vcpus,
            },
        }
        self._hub("PUT", self.o.resource_id, json=body)
        self.say(f"created {self.o.resource_id}")
        return key

    def store_key(self, key: pki.PrivateKey) -> None:
        namespace = client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
        try:
            self.core.create_namespace(namespace)
        except ApiException as exc:
            if exc.status != 409:
                raise ConnectError(f"cannot create namespace {NAMESPACE}: {describe(exc)}") from None
        create_secret(self.core, NAMESPACE, ONBOARDING_SECRET, {"privateKey": pki.key_to_pem(key)})
        self.say(f"stored the onboarding key in Secret {NAMESPACE}/{ONBOARDING_SECRET}")

    def values(self) -> dict[str, Any]:
        config = load_client_config()
        ca_file = config.get("ca_file")
        values: dict[str, Any] = {
            "hub": {"url": str(self.hub.base_url).rstrip("/")},
            "resourceId": self.o.resource_id,
            "features": {
                "clusterConnect": "cluster-connect" in self.o.features,
                "azureRbac": "azure-rbac" in self.o.features,
                "authnMode": self.o.authn_mode,
            },
        }
        if ca_file:
            values["hub"]["caCert"] = Path(ca_file).read_text()
        if "azure-rbac" in self.o.features:
            values["guard"] = azurerbac.guard_values(self.hub)
        if self.o.proxy_https or self.o.proxy_cert:
            values["proxy"] = {"https": self.o.proxy_https or ""}
            if self.o.proxy_skip_range:
                values["proxy"]["noProxy"] = self.o.proxy_skip_range
            if self.o.proxy_cert:
                values["proxy"]["caCert"] = self.o.proxy_cert.read_text()
        image = {k: v for k, v in (("repository", self.o.image_repository), ("tag", self.o.image_tag)) if v}
        if image:
            values["image"] = {"repository": self.o.image_repository or "ghcr.io/kubearc/kubearc", **image}
        return values

    def install(self) -> None:
        self.say("installing the agents (helm upgrade --install)...")
        self.helm.upgrade_install(self.o.chart, self.values())  # --timeout bounds the wait, not helm

    # ---- 5. the wait ------------------------------------------------------------------------------

    def wait(self) -> dict[str, Any]:
        """Until Connected, saying each step as it happens; at the timeout, name the missing step."""
        deadline = time.monotonic() + self.o.timeout
        said: set[str] = set()
        while True:
            steps = self._steps()
            for step, done in steps:
                if done and step not in said:
                    said.add(step)
                    self.say(f"  ok  {step}")
            resource = self._hub_get(self.o.resource_id) or {}
            if (resource.get("properties") or {}).get("connectivityStatus") == "Connected":
                self.say("  ok  the hub reports the cluster Connected")
                return resource
            if time.monotonic() >= deadline:
                missing = next((step for step, done in steps if not done), "the hub to report Connected")
                raise ConnectError(
                    f"timed out after {self.o.timeout:.0f}s waiting for {missing}; "
                    "run `kubearc cluster troubleshoot` or check "
                    f"`kubectl -n {NAMESPACE} get pods` and the agents' logs"
                )
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))

    def _steps(self) -> list[tuple[str, bool]]:
        steps: list[tuple[str, bool]] = []
        for agent in (
            "identity",
            "metadata",
            *(("connect",) if "cluster-connect" in self.o.features else ()),
        ):
            ready = False
            try:
                status = self.apps.read_namespaced_deployment(f"kubearc-{agent}", NAMESPACE).status
                ready = bool(status and (status.ready_replicas or 0) >= 1)
            except ApiException:
                pass
            steps.append((f"agent {agent} running", ready))
        try:
            self.core.read_namespaced_secret(IDENTITY_SECRET, NAMESPACE)
            identity = True
        except ApiException:
            identity = False
        steps.append(("the identity certificate (identity agent)", identity))
        resource = self._hub_get(self.o.resource_id) or {}
        heartbeat = bool((resource.get("properties") or {}).get("lastConnectivityTime"))
        steps.append(("the first heartbeat (metadata agent)", heartbeat))
        return steps

    # ---- the whole command --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        existing, vcpus = self.preflight()
        if existing is None:
            key = self.create_resource(vcpus)
            self.store_key(key)
        else:
            self.say(f"{self.o.resource_id} is this cluster's: upgrading its agents")
        if "azure-rbac" in self.o.features and self.o.authn_mode == "webhook":
            azurerbac.guard_secrets(self.core, self.say)
        self.install()
        return self.wait()
