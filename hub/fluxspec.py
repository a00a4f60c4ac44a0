"""Flux configurations on the wire: what users PUT, what agents pull and report, in one place.

The shape is Arc's `Microsoft.KubernetesConfiguration/fluxConfigurations`
(REFERENCE section 7), so a body written for `az k8s-configuration flux` works
here. `FluxSpec` is the desired state a user writes (validated here, so a bad
body is a 400 naming the field); `FluxStatus` is what the cluster's config-agent
reports back. Protected settings are split off the spec at once: they are sealed
at rest and only the cluster's own agents get them back.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.resources import arm_time
from hub.secrets import keep_stored
from hub.store.models import FluxConfiguration

KIND = "Microsoft.KubernetesConfiguration/fluxConfigurations"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$")  # Arc: at most 30 characters
NAMESPACE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
K8S_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
SOURCE_FIELDS = {"GitRepository": "gitRepository", "OCIRepository": "ociRepository", "Bucket": "bucket"}
# Protected settings each source kind understands (values base64, as Arc takes them).
PROTECTED_KEYS = {
    "GitRepository": {"sshPrivateKey", "httpsKey"},
    "OCIRepository": {"tlsClientCertificate", "tlsPrivateKey"},
    "Bucket": {"secretKey"},
}
COMPLIANCE = ("Compliant", "Non-Compliant", "Pending", "Suspended", "Unknown")
Seconds = Annotated[int, Field(ge=1, le=86_400 * 7)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class GitRef(_Strict):
    branch: str | None = Field(None, min_length=1, max_length=255)
    tag: str | None = Field(None, min_length=1, max_length=255)
    semver: str | None = Field(None, min_length=1, max_length=255)
    commit: str | None = Field(None, pattern=r"^[0-9a-f]{7,64}$")

    @model_validator(mode="after")
    def _one(self) -> GitRef:
        given = [k for k in ("branch", "tag", "semver", "commit") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of branch, tag, semver, commit")
        return self


class GitRepository(_Strict):
    url: str = Field(min_length=1, max_length=2048, pattern=r"^(https?|ssh)://|^git@[^:]+:")
    repositoryRef: GitRef
    syncIntervalInSeconds: Seconds = 600
    timeoutInSeconds: Seconds = 600
    sshKnownHosts: str | None = Field(None, max_length=65_536)  # base64, as Arc takes it
    httpsUser: str | None = Field(None, max_length=256)
    httpsCACert: str | None = Field(None, max_length=65_536)  # base64 PEM
    localAuthRef: str | None = Field(None, pattern=K8S_NAME)

    @field_validator("sshKnownHosts", "httpsCACert")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        return _b64(value)

    @model_validator(mode="after")
    def _ssh_only_with_ssh(self) -> GitRepository:
        if self.sshKnownHosts and not self.url.startswith(("ssh://", "git@")):
            raise ValueError("sshKnownHosts is for an ssh:// or git@ url")
        return self


class OciRef(_Strict):
    tag: str | None = Field(None, min_length=1, max_length=128)
    semver: str | None = Field(None, min_length=1, max_length=255)
    digest: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _one(self) -> OciRef:
        if len([k for k in ("tag", "semver", "digest") if getattr(self, k)]) != 1:
            raise ValueError("give exactly one of tag, semver, digest")
        return self


class OciRepository(_Strict):
    url: str = Field(min_length=1, max_length=2048, pattern=r"^oci://")
    repositoryRef: OciRef
    syncIntervalInSeconds: Seconds = 600
    timeoutInSeconds: Seconds = 600
    insecure: bool = False
    localAuthRef: str | None = Field(None, pattern=K8S_NAME)


class Bucket(_Strict):
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    bucketName: str = Field(min_length=3, max_length=63)
    syncIntervalInSeconds: Seconds = 600
    timeoutInSeconds: Seconds = 600
    accessKey: str | None = Field(None, max_length=256)
    insecure: bool = False
    localAuthRef: str | None = Field(None, pattern=K8S_NAME)


class SubstituteFrom(_Strict):
    kind: Literal["ConfigMap", "Secret"]
    name: str = Field(pattern=K8S_NAME)
    optional: bool = False


class PostBuild(_Strict):
    substitute: dict[str, str] = Field(default_factory=dict)
    substituteFrom: list[SubstituteFrom] = Field(default_factory=list, max_length=32)


class Kustomization(_Strict):
    path: str = Field("", max_length=1024)
    dependsOn: list[str] = Field(default_factory=list, max_length=64)
    timeoutInSeconds: Seconds = 600
    syncIntervalInSeconds: Seconds = 600
    retryIntervalInSeconds: Seconds | None = None
    prune: bool = False
    force: bool = False
    wait: bool = True
    postBuild: PostBuild | None = None

    @field_validator("dependsOn", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        # Older API versions wrote [{"kustomizationName": "x"}]; both mean the same.
        if isinstance(value, list):
            return [v.get("kustomizationName", v) if isinstance(v, dict) else v for v in value]
        return value


class FluxSpec(BaseModel):
    """A user's flux configuration (`properties` of the PUT body)."""

    model_config = ConfigDict(extra="ignore")  # read-only fields a client echoes back are ignored
    scope: Literal["cluster", "namespace"] = "cluster"
    namespace: str = Field("default", pattern=NAMESPACE, max_length=253)
    sourceKind: Literal["GitRepository", "OCIRepository", "Bucket"] = "GitRepository"
    suspend: bool = False
    gitRepository: GitRepository | None = None
    ociRepository: OciRepository | None = None
    bucket: Bucket | None = None
    kustomizations: dict[str, Kustomization] = Field(default_factory=dict, max_length=64)
    # A key with a null value keeps the value already stored (what a GET returns, PUT back as is).
    configurationProtectedSettings: dict[str, str | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> FluxSpec:
        wanted = SOURCE_FIELDS[self.sourceKind]
        if getattr(self, wanted) is None:
            raise ValueError(f"sourceKind {self.sourceKind} needs {wanted}")
        for other in set(SOURCE_FIELDS.values()) - {wanted}:
            if getattr(self, other) is not None:
                raise ValueError(f"{other} is given but sourceKind is {self.sourceKind}")
        for name, k in self.kustomizations.items():
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
                raise ValueError(f"kustomizations: invalid name {name!r}: lowercase letters, digits and '-'")
            for dep in k.dependsOn:
                if dep not in self.kustomizations or dep == name:
                    raise ValueError(f"kustomizations.{name}.dependsOn: no other kustomization {dep!r}")
        _no_cycle({n: k.dependsOn for n, k in self.kustomizations.items()})
        allowed = PROTECTED_KEYS[self.sourceKind]
        unknown = sorted(set(self.configurationProtectedSettings) - allowed)
        if unknown:
            raise ValueError(
                f"configurationProtectedSettings: unknown keys {unknown} for {self.sourceKind}; "
                f"allowed: {sorted(allowed)}"
            )
        for key, value in self.configurationProtectedSettings.items():
            try:
                _b64(value)
            except ValueError:
                raise ValueError(f"configurationProtectedSettings.{key}: not base64") from None
        return self

    def protected(self, stored: dict[str, str]) -> dict[str, str]:
        """The protected settings to store (`hub.secrets.keep_stored`)."""
        return keep_stored(self.configurationProtectedSettings, stored)

    def desired(self) -> dict[str, Any]:
        """The spec as stored and returned (protected settings removed, defaults filled in)."""
        return self.model_dump(exclude={"configurationProtectedSettings"}, exclude_none=True)


class FluxBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    properties: FluxSpec


class Condition(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(max_length=64)
    status: Literal["True", "False", "Unknown"]
    reason: str | None = Field(None, max_length=256)
    message: str | None = Field(None, max_length=8192)
    lastTransitionTime: str | None = Field(None, max_length=64)


class ObjectStatus(BaseModel):
    model_config = ConfigDict(extra="ignore")
    kind: str = Field(max_length=64)
    name: str = Field(max_length=253)
    namespace: str = Field(max_length=253)
    complianceState: Literal[COMPLIANCE] = "Unknown"  # type: ignore[valid-type]
    appliedBy: dict[str, str] | None = None
    statusConditions: list[Condition] = Field(default_factory=list, max_length=16)


class FluxStatus(BaseModel):
    """What the config-agent reports for one configuration (`PUT .../fluxConfigurations/{name}/status`)."""

    model_config = ConfigDict(extra="ignore")
    observedGeneration: int = Field(ge=0)
    provisioningState: Literal["Succeeded", "Failed"]
    complianceState: Literal[COMPLIANCE]  # type: ignore[valid-type]
    statuses: list[ObjectStatus] = Field(default_factory=list, max_length=128)
    sourceSyncedCommitId: str | None = Field(None, max_length=512)
    sourceUpdatedAt: dt.datetime | None = None
    errorMessage: str | None = Field(None, max_length=8192)


def valid_name(name: str) -> bool:
    return bool(NAME.fullmatch(name))


def _b64(value: str | None) -> str | None:
    if value is not None:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
    return value


def _no_cycle(graph: dict[str, list[str]]) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = " -> ".join([*path[path.index(node) :], node])
            raise ValueError(f"kustomizations: dependsOn makes a cycle: {cycle}")
        state[node] = 1
        for dep in graph.get(node, []):
            visit(dep, [*path, node])
        state[node] = 2

    for node in graph:
        visit(node, [])


def to_arm(resource_id: str, row: FluxConfiguration, protected_keys: list[str]) -> dict[str, Any]:
    """The ARM resource a user reads: the spec, the keys of the protected settings (never their
    values, as Azure shows them), and the status the cluster reported."""
    return {
        "id": f"{resource_id}/providers/{KIND}/{row.name}",
        "name": row.name,
        "type": KIND,
        "systemData": {"createdAt": arm_time(row.created_at), "lastModifiedAt": arm_time(row.updated_at)},
        "properties": {
            **row.spec,
            "configurationProtectedSettings": {k: None for k in protected_keys},
            "provisioningState": row.provisioning_state,
            "complianceState": row.compliance_state,
            "statuses": row.statuses,
            "sourceSyncedCommitId": row.source_synced_commit_id,
            "sourceUpdatedAt": arm_time(row.source_updated_at),
            "statusUpdatedAt": arm_time(row.status_updated_at),
            "errorMessage": row.error_message,
        },
    }


def to_agent(row: FluxConfiguration, protected: dict[str, str]) -> dict[str, Any]:
    """What the cluster's config-agent pulls: the spec with its generation and the protected settings."""
    return {
        "name": row.name,
        "generation": row.generation,
        **row.spec,
        "configurationProtectedSettings": protected,
    }
