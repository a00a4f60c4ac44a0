"""Extensions and the extension catalogue on the wire, and which version an extension gets.

The resource is Arc's `Microsoft.KubernetesConfiguration/extensions` (REFERENCE
section 7): `extensionType` names a catalogue entry (`ExtensionType`: a Helm
chart in an https:// repository or an oci:// registry, its versions, each on a
release train, and default values); `version` pins one, or
`autoUpgradeMinorVersion` follows the newest of its `releaseTrain` within the
installed major version. `ExtensionStatus` is what the extension-manager
reports as it works. Protected settings are split off at once, as for flux
configurations.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.resources import arm_time
from hub.secrets import keep_stored
from hub.store.models import Extension, ExtensionType

KIND = "Microsoft.KubernetesConfiguration/extensions"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
NAMESPACE = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
TYPE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,98}[a-z0-9])?$")
VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)([-+][0-9A-Za-z.-]+)?$")
STATES = ("Creating", "Updating", "Deleting", "Succeeded", "Failed", "Canceled")
Settings = dict[str, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterScope(_Strict):
    releaseNamespace: str | None = Field(None, pattern=NAMESPACE)


class NamespaceScope(_Strict):
    targetNamespace: str = Field(pattern=NAMESPACE)


class Scope(_Strict):
    cluster: ClusterScope | None = None
    namespace: NamespaceScope | None = None

    @model_validator(mode="after")
    def _one(self) -> Scope:
        if (self.cluster is None) == (self.namespace is None):
            raise ValueError("give exactly one of cluster (releaseNamespace) or namespace (targetNamespace)")
        return self


class ExtensionSpec(BaseModel):
    """A user's extension (`properties` of the PUT body)."""

    model_config = ConfigDict(extra="ignore")  # read-only fields echoed back are ignored
    extensionType: str = Field(min_length=1, max_length=100)
    version: str | None = Field(None, pattern=VERSION.pattern)
    releaseTrain: str = Field("stable", min_length=1, max_length=32, pattern=r"^[A-Za-z][A-Za-z0-9-]*$")
    autoUpgradeMinorVersion: bool = True
    scope: Scope = Field(default_factory=lambda: Scope(cluster=ClusterScope(releaseNamespace=None)))
    configurationSettings: Settings = Field(default_factory=dict, max_length=256)
    # A key with a null value keeps the stored value (what a GET returns, PUT back as is).
    configurationProtectedSettings: dict[str, str | None] = Field(default_factory=dict, max_length=256)

    @model_validator(mode="after")
    def _version_or_auto(self) -> ExtensionSpec:
        if self.version and self.autoUpgradeMinorVersion:
            raise ValueError("autoUpgradeMinorVersion must be false when version is given")
        if not self.version and not self.autoUpgradeMinorVersion:
            raise ValueError("give a version, or set autoUpgradeMinorVersion to follow the release train")
        for key in (*self.configurationSettings, *self.configurationProtectedSettings):
            if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
                raise ValueError(f"setting {key!r}: a dotted path of names, like image.tag")
        return self

    def desired(self, catalogue: ExtensionType) -> dict[str, Any]:
        spec = self.model_dump(exclude={"configurationProtectedSettings"})
        spec["extensionType"] = self.extensionType.lower()
        spec["releaseTrain"] = self.releaseTrain.lower()
        if self.scope.cluster is not None and not self.scope.cluster.releaseNamespace:
            spec["scope"] = {"cluster": {"releaseNamespace": catalogue.release_namespace}}
        else:
            spec["scope"] = self.scope.model_dump(exclude_none=True)
        return spec

    def protected(self, stored: Settings) -> Settings:
        """The protected settings to store (`hub.secrets.keep_stored`)."""
        return keep_stored(self.configurationProtectedSettings, stored)


class ExtensionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    properties: ExtensionSpec


class StepStatus(BaseModel):
    """One step as Arc shows it (`statuses[]`): Resolving, Installing, Waiting, Succeeded, Failed..."""

    model_config = ConfigDict(extra="ignore")
    code: str = Field(max_length=64)
    displayStatus: str = Field(max_length=64)
    level: Literal["Information", "Warning", "Error"] = "Information"
    message: str = Field("", max_length=16_384)
    time: str | None = Field(None, max_length=64)


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    code: str = Field(max_length=64)
    message: str = Field(max_length=16_384)


class ExtensionStatus(BaseModel):
    """What the extension-manager reports (`PUT /agent/v1/extensions/{name}/status`)."""

    model_config = ConfigDict(extra="ignore")
    observedGeneration: int = Field(ge=0)
    provisioningState: Literal["Creating", "Updating", "Deleting", "Succeeded", "Failed", "Deleted"]
    installedVersion: str | None = Field(None, max_length=64)
    statuses: list[StepStatus] = Field(default_factory=list, max_length=64)
    errorInfo: ErrorInfo | None = None


class CatalogueVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=VERSION.pattern)
    releaseTrain: str = Field("stable", pattern=r"^[a-z][a-z0-9-]*$")


def semver(value: str) -> tuple[int, int, int]:
    match = VERSION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a version like 1.2.3")
    return int(match[1]), int(match[2]), int(match[3])


def target_version(catalogue: ExtensionType, spec: dict[str, Any], installed: str | None) -> str:
    """The version the cluster should run: the pinned one, or its train's newest (within the
    installed major version once there is one)."""
    known = list(catalogue.versions)
    if spec.get("version"):
        wanted = spec["version"].lstrip("v")
        if not any(v["version"].lstrip("v") == wanted for v in known):
            have = ", ".join(v["version"] for v in known)
            raise ValueError(
                f"version {spec['version']!r} of {catalogue.name} is not in the catalogue (it has {have})"
            )
        return wanted
    train = [
        v["version"].lstrip("v") for v in known if v.get("releaseTrain", "stable") == spec["releaseTrain"]
    ]
    if not train:
        trains = sorted({v.get("releaseTrain", "stable") for v in known})
        raise ValueError(
            f"releaseTrain {spec['releaseTrain']!r} of {catalogue.name} has no versions (trains: {trains})"
        )
    if installed:
        same_major = [v for v in train if semver(v)[0] == semver(installed)[0]]
        train = same_major or [installed.lstrip("v")]
    return max(train, key=semver)


def to_arm(resource_id: str, row: Extension, protected_keys: list[str]) -> dict[str, Any]:
    spec = row.spec
    return {
        "id": f"{resource_id}/providers/{KIND}/{row.name}",
        "name": row.name,
        "type": KIND,
        "systemData": {"createdAt": arm_time(row.created_at), "lastModifiedAt": arm_time(row.updated_at)},
        "properties": {
            **spec,
            "configurationProtectedSettings": {k: None for k in protected_keys},
            "provisioningState": row.provisioning_state,
            "installedVersion": row.installed_version,
            "currentVersion": row.installed_version,
            "targetVersion": row.target_version,
            "statuses": row.statuses,
            "errorInfo": {"code": row.error_code, "message": row.error_message} if row.error_code else None,
            "isSystemExtension": False,
        },
    }


def to_agent(row: Extension, catalogue: ExtensionType, protected: Settings) -> dict[str, Any]:
    """What the extension-manager pulls: the release to make, the chart and the values."""
    scope = row.spec["scope"]
    namespace = (
        scope["cluster"]["releaseNamespace"] if "cluster" in scope else scope["namespace"]["targetNamespace"]
    )
    return {
        "name": row.name,
        "generation": row.generation,
        "observedGeneration": row.observed_generation,
        "provisioningState": row.provisioning_state,
        "deleting": row.deleting,
        "extensionType": catalogue.name,
        "releaseNamespace": namespace,
        "chart": {
            "repository": catalogue.repository,
            "name": catalogue.chart,
            "version": row.target_version,
            "caCert": catalogue.ca_cert,
        },
        "defaultValues": catalogue.default_values,
        "configurationSettings": row.spec.get("configurationSettings", {}),
        "configurationProtectedSettings": protected,
    }


def catalogue_to_json(t: ExtensionType) -> dict[str, Any]:
    return {
        "name": t.name,
        "repository": t.repository,
        "chart": t.chart,
        "versions": t.versions,
        "releaseNamespace": t.release_namespace,
        "defaultValues": t.default_values,
        "privateRepositoryCA": bool(t.ca_cert),
    }


def valid_name(name: str) -> bool:
    return bool(NAME.fullmatch(name))
