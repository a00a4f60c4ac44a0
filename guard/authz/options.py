"""The Azure RBAC authorizer's options: the flags' values, the rules they must obey, and `build()`.

Like kubeguard's `azure.Options` (its flags, `Validate` beside the provider):
`validate()` checks everything that can be checked before serving, and its
`OptionsError` names the flag to fix, so the command line only maps flags to
options and shows the error as a usage error. Every scope guard checks is the
cluster's resource id or one of its namespaces, so a typo there would make every
review NotAllowed: it is refused at start-up instead.

checkAccess takes one of two credentials: the cluster's identity (`--identity`,
agent tokens only a kubearc hub accepts, for its own cluster's scope) or an
Entra app (`--arm-client-id`, for ARM). `build()` runs on the serving loop: the
checkAccess client's connections belong to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from foundation.agenttoken import AgentTokens
from foundation.identitystore import IdentityStore, StoreError, open_store
from foundation.kube import Kube
from foundation.wire import ENTRA_AUTHORITY
from guard.authz.actions import CONNECTED_CLUSTERS, MANAGED_CLUSTERS
from guard.authz.checkaccess import ARM, CheckAccessClient, Credential
from guard.authz.provider import AuthorizerConfig, AzureAuthorizer
from guard.credentials import ARM_SCOPE, ClientCredential
from guard.errors import OptionsError
from guard.interfaces import FAILURE_POLICIES, FailurePolicy

ARM_SECRET_ENV = "KUBEARC_GUARD_ARM_CLIENT_SECRET"
CLUSTER_TYPES = {"connectedClusters": CONNECTED_CLUSTERS, "managedClusters": MANAGED_CLUSTERS}
_SEGMENT = r"[^/\s]+"


def failure_policy(value: str, flag: str) -> FailurePolicy:
    """A `noopinion|deny` flag's value as the policy."""
    for policy in FAILURE_POLICIES:
        if value == policy:
            return policy
    raise OptionsError(flag, "must be noopinion or deny")


def arm_cluster_type(value: str) -> str:
    """`--cluster-type` (connectedClusters, managedClusters) as the ARM type the data actions start with
    (any other value is kept as given, for `validate()` to refuse)."""
    return CLUSTER_TYPES.get(value, value)


def check_cluster_resource_id(resource_id: str, arm_type: str = CONNECTED_CLUSTERS) -> None:
    """An `OptionsError` of `--cluster-resource-id` naming the expected shape, unless it names a cluster."""
    shape = rf"/subscriptions/{_SEGMENT}/resourceGroups/{_SEGMENT}/providers/{re.escape(arm_type)}/{_SEGMENT}"
    if not re.fullmatch(shape, resource_id.strip().rstrip("/"), flags=re.IGNORECASE):
        raise OptionsError(
            "--cluster-resource-id",
            f"expected /subscriptions/SUB/resourceGroups/RG/providers/{arm_type}/NAME, got {resource_id!r}",
        )


@dataclass(frozen=True)
class AuthzOptions:
    """SubjectAccessReviews from Azure RBAC; no `rules.cluster_resource_id`: authentication only."""

    rules: AuthorizerConfig
    checkaccess_url: str = ARM
    checkaccess_ca: str | None = None
    identity: str | None = None  # file:DIR or secret:NS/NAME: agent tokens (a kubearc hub)
    identity_audience: str | None = None  # the hub's public URL (default: checkaccess_url)
    kubeconfig: Path | None = None  # for a secret: identity store
    arm_client_id: str | None = None  # an Entra app (ARM)
    arm_client_secret: str | None = field(default=None, repr=False)
    arm_authority: str | None = None
    arm_scope: str = ARM_SCOPE
    token_ca: str | None = None  # CA bundle of a self-signed token authority (default: checkaccess_ca)
    allow_ttl: float = 300.0
    deny_ttl: float = 30.0

    @property
    def enabled(self) -> bool:
        return bool(self.rules.cluster_resource_id)

    @property
    def url(self) -> str:
        return self.checkaccess_url.strip().rstrip("/")

    def validate(self) -> None:
        if not self.enabled:
            for value, flag in ((self.identity, "--identity"), (self.arm_client_id, "--arm-client-id")):
                if value:
                    raise OptionsError(flag, "is a checkAccess credential: give --cluster-resource-id too")
            return
        if self.rules.cluster_type not in CLUSTER_TYPES.values():
            raise OptionsError(
                "--cluster-type",
                f"must be one of {', '.join(CLUSTER_TYPES)}, got {self.rules.cluster_type!r}",
            )
        check_cluster_resource_id(self.rules.cluster_resource_id, self.rules.cluster_type)
        if not self.url.lower().startswith("https://") or len(self.url) <= len("https://"):
            raise OptionsError("--checkaccess-url", f"must be an https:// URL, got {self.checkaccess_url!r}")
        if self.checkaccess_ca is not None and not Path(self.checkaccess_ca).is_file():
            raise OptionsError("--checkaccess-ca", f"{self.checkaccess_ca} is not a readable file")
        if self.identity and self.arm_client_id:
            raise OptionsError("--identity", "give --identity or --arm-client-id, not both")
        if self.identity:
            self._validate_identity(self.identity)
        elif self.arm_client_id:
            self._validate_app()
        else:
            raise OptionsError(
                "--cluster-resource-id",
                "Azure RBAC needs a checkAccess credential: --identity file:DIR|secret:NAMESPACE/NAME "
                f"(a kubearc hub) or --arm-client-id with ${ARM_SECRET_ENV} (ARM)",
            )

    def _validate_identity(self, identity: str) -> None:
        if self.url.lower() == ARM and not self.identity_audience:
            raise OptionsError(
                "--identity",
                "a cluster identity's agent tokens are accepted by a kubearc hub only: "
                "give --checkaccess-url https://HUB (or use --arm-client-id for ARM)",
            )
        self._open(identity, self._kube(identity))

    def _validate_app(self) -> None:
        if not self.arm_client_secret:
            raise OptionsError("--arm-client-id", f"set ${ARM_SECRET_ENV} to the app's client secret")
        if not self.arm_authority:
            raise OptionsError(
                "--arm-client-id",
                f"give --arm-authority (e.g. {ENTRA_AUTHORITY}/TENANT_ID) or --entra-tenant",
            )
        if not self.arm_scope.endswith("/.default"):
            raise OptionsError(
                "--arm-scope", f"client credentials need a RESOURCE/.default scope, got {self.arm_scope!r}"
            )

    def _kube(self, identity: str) -> Kube | None:
        return Kube(self.kubeconfig) if identity.startswith("secret:") else None  # lazy: no I/O yet

    @staticmethod
    def _open(identity: str, kube: Kube | None) -> IdentityStore:
        try:
            return open_store(identity, kube)
        except StoreError as exc:
            raise OptionsError("--identity", str(exc)) from None

    def build(self, credential: Credential | None = None) -> AzureAuthorizer:
        """The authorizer and its checkAccess client (close with `aclose()`); validated options only.

        `credential` replaces the one the options describe (a caller that already holds the store)."""
        name: str = "the caller's credential"
        close: Callable[[], None] | None = None
        if credential is None:
            credential, name, close = self._credential()
        client = CheckAccessClient(
            self.url,
            credential,
            ca_file=self.checkaccess_ca,
            allow_ttl_cap=self.allow_ttl,
            deny_ttl_cap=self.deny_ttl,
        )
        return AzureAuthorizer(self.rules, client, credential_name=name, on_close=close)

    def _credential(self) -> tuple[Credential, str, Callable[[], None] | None]:
        if self.identity:
            kube = self._kube(self.identity)
            store = self._open(self.identity, kube)
            tokens = AgentTokens(store, self.identity_audience or self.url)
            return tokens, f"identity {store.description}", kube.close if kube is not None else None
        assert self.arm_client_id and self.arm_client_secret and self.arm_authority  # validated
        ca = self.token_ca or self.checkaccess_ca
        app = ClientCredential(
            self.arm_client_id,
            self.arm_client_secret,
            self.arm_authority.rstrip("/"),
            self.arm_scope,
            ca_file=ca,
        )
        return app, f"Entra app {self.arm_client_id} at {self.arm_authority}", app.close
