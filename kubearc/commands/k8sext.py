"""`kubearc k8s-extension create|update|show|list|delete` (and `extension-types list`), as `az` names them.

Settings are `--configuration-settings key=value` (repeatable, az's form) and
`--config-settings-file F` (a JSON or YAML mapping); protected settings only
from a file (`--config-protected-file`), never the command line. `create` waits
for nothing by default; `--wait` follows the extension's steps until it
succeeds or fails, printing each step as the cluster reports it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from kubearc.commands.output import fail, request_json, subscription_or_fail

app = typer.Typer(no_args_is_help=True, help="Extensions of connected clusters.")
CC = "providers/Microsoft.Kubernetes/connectedClusters"
KIND = "providers/Microsoft.KubernetesConfiguration/extensions"
TYPES = "/providers/Microsoft.KubernetesConfiguration/extensionTypes"

ClusterOpt = typer.Option(..., "--cluster-name", "-c")
GroupOpt = typer.Option(..., "--resource-group", "-g")
NameOpt = typer.Option(..., "--name", "-n", help="The extension.")
SubscriptionOpt = typer.Option(None, "--subscription", envvar="KUBEARC_SUBSCRIPTION")
ClusterTypeOpt = typer.Option("connectedClusters", "--cluster-type", "-t")
SettingsOpt = typer.Option([], "--configuration-settings", "--config", help="key=value (repeat).")
SettingsFileOpt = typer.Option(None, "--config-settings-file", help="A JSON or YAML mapping.")
ProtectedFileOpt = typer.Option(None, "--config-protected-file", help="Protected settings (JSON or YAML).")
OutputOpt = typer.Option("json", "--output", "-o", help="json or table")
WaitOpt = typer.Option(False, "--wait", help="Follow the steps until the extension succeeds or fails.")


def _path(subscription: str | None, group: str, cluster: str, cluster_type: str, name: str = "") -> str:
    if cluster_type != "connectedClusters":
        fail(f"--cluster-type {cluster_type!r}: kubearc manages connectedClusters only")
    sub = subscription_or_fail(subscription)
    return f"/subscriptions/{sub}/resourceGroups/{group}/{CC}/{cluster}/{KIND}" + (f"/{name}" if name else "")


def _mapping(path: Path | None, flag: str) -> dict[str, str]:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.expanduser().read_text())
    except OSError as exc:
        fail(f"{flag}: cannot read {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        fail(f"{flag} {path}: not JSON or YAML: {str(exc).splitlines()[0]}")
    if not isinstance(data, dict):
        fail(f"{flag} {path}: a mapping of setting -> value")
    return {str(k): str(v) if not isinstance(v, bool) else str(v).lower() for k, v in data.items()}


def _pairs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--configuration-settings {pair!r}: give key=value (e.g. image.tag=v1)")
        out[key] = value
    return out


def _show(item: dict[str, Any], output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(item, indent=2))
        return
    p = item["properties"]
    version, target = p.get("installedVersion") or "-", p["targetVersion"]
    typer.echo(f"{item['name']}: {p['provisioningState']} ({p['extensionType']} {version}, target {target})")
    for step in p.get("statuses") or []:
        typer.echo(f"  {step.get('displayStatus')}: {step.get('message', '')}")
    if p.get("errorInfo"):
        typer.echo(f"  error {p['errorInfo']['code']}: {p['errorInfo']['message']}")


def _follow(path: str, output: str, timeout: float = 1800) -> None:
    """Print each new step until the extension is Succeeded or Failed; exit 1 on Failed."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        item = request_json("GET", path)
        p = item["properties"]
        for step in p.get("statuses") or []:
            key = f"{step.get('code')}|{step.get('time')}|{step.get('message')}"
            if key not in seen:
                seen.add(key)
                typer.echo(f"{step.get('displayStatus')}: {step.get('message', '')}", err=True)
        if p["provisioningState"] in ("Succeeded", "Failed"):
            _show(item, output)
            if p["provisioningState"] == "Failed":
                raise typer.Exit(1)
            return
        if time.monotonic() > deadline:
            fail(f"still {p['provisioningState']} after {timeout:.0f}s: see `kubearc k8s-extension show`")
        time.sleep(2)


@app.command("create")
def create(
    name: str = NameOpt,
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    extension_type: str = typer.Option(
        ..., "--extension-type", help="From `kubearc k8s-extension extension-types list`."
    ),
    version: str = typer.Option(None, "--version", help="Pin a version (turns auto-upgrade off)."),
    release_train: str = typer.Option("stable", "--release-train"),
    auto_upgrade: bool = typer.Option(None, "--auto-upgrade-minor-version/--no-auto-upgrade-minor-version"),
    scope: str = typer.Option("cluster", "--scope", help="cluster or namespace"),
    release_namespace: str = typer.Option(
        None, "--release-namespace", help="Cluster scope: where the release goes."
    ),
    target_namespace: str = typer.Option(None, "--target-namespace", help="Namespace scope: its namespace."),
    configuration_settings: list[str] = SettingsOpt,
    config_settings_file: Path = SettingsFileOpt,
    config_protected_file: Path = ProtectedFileOpt,
    wait: bool = WaitOpt,
    output: str = OutputOpt,
) -> None:
    """Install an extension on the cluster (its extension-manager runs helm)."""
    if scope not in ("cluster", "namespace"):
        fail(f"--scope {scope!r}: cluster or namespace")
    if scope == "namespace" and not target_namespace:
        fail("--scope namespace needs --target-namespace")
    props: dict[str, Any] = {
        "extensionType": extension_type,
        "releaseTrain": release_train,
        "autoUpgradeMinorVersion": auto_upgrade if auto_upgrade is not None else version is None,
        "scope": {"cluster": {"releaseNamespace": release_namespace}}
        if scope == "cluster"
        else {"namespace": {"targetNamespace": target_namespace}},
        "configurationSettings": {
            **_mapping(config_settings_file, "--config-settings-file"),
            **_pairs(configuration_settings),
        },
        "configurationProtectedSettings": _mapping(config_protected_file, "--config-protected-file"),
    }
    if version:
        props["version"] = version
    path = _path(subscription, resource_group, cluster_name, cluster_type, name)
    item = request_json("PUT", path, json={"properties": props})
    _follow(path, output) if wait else _show(item, output)


@app.command("update")
def update(
    name: str = NameOpt,
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    version: str = typer.Option(None, "--version"),
    release_train: str = typer.Option(None, "--release-train"),
    auto_upgrade: bool = typer.Option(None, "--auto-upgrade-minor-version/--no-auto-upgrade-minor-version"),
    configuration_settings: list[str] = SettingsOpt,
    config_settings_file: Path = SettingsFileOpt,
    config_protected_file: Path = ProtectedFileOpt,
    wait: bool = WaitOpt,
    output: str = OutputOpt,
) -> None:
    """Change an extension's version or settings; what the flags do not name stays (secrets too)."""
    path = _path(subscription, resource_group, cluster_name, cluster_type, name)
    props = request_json("GET", path)["properties"]
    if version:
        props["version"], props["autoUpgradeMinorVersion"] = version, False
    if auto_upgrade is not None:
        props["autoUpgradeMinorVersion"] = auto_upgrade
        if auto_upgrade:
            props["version"] = None
    if release_train:
        props["releaseTrain"] = release_train
    props["configurationSettings"] = {
        **(props.get("configurationSettings") or {}),
        **_mapping(config_settings_file, "--config-settings-file"),
        **_pairs(configuration_settings),
    }
    props["configurationProtectedSettings"] = {
        **(props.get("configurationProtectedSettings") or {}),
        **_mapping(config_protected_file, "--config-protected-file"),
    }
    item = request_json("PUT", path, json={"properties": props})
    _follow(path, output) if wait else _show(item, output)


@app.command("show")
def show(
    name: str = NameOpt,
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    output: str = OutputOpt,
) -> None:
    """An extension with its provisioning state, each step and the error, if any."""
    _show(request_json("GET", _path(subscription, resource_group, cluster_name, cluster_type, name)), output)


@app.command("list")
def list_extensions(
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    items = request_json("GET", _path(subscription, resource_group, cluster_name, cluster_type))["value"]
    if output == "json":
        typer.echo(json.dumps(items, indent=2))
        return
    rows = [["NAME", "TYPE", "VERSION", "TARGET", "STATE"]]
    for i in items:
        p = i["properties"]
        rows.append(
            [
                i["name"],
                p["extensionType"],
                p.get("installedVersion") or "-",
                p["targetVersion"],
                p["provisioningState"],
            ]
        )
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@app.command("delete")
def delete(
    name: str = NameOpt,
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    force: bool = typer.Option(
        False, "--force", help="Forget it at once, without the cluster (a cluster that is gone)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y"),
    wait: bool = typer.Option(False, "--wait", help="Until the cluster has uninstalled it."),
) -> None:
    """Uninstall an extension: Deleting until the cluster's extension-manager has removed its release."""
    path = _path(subscription, resource_group, cluster_name, cluster_type, name)
    if not yes:
        typer.confirm(f"Delete extension {name!r} of {cluster_name!r}?", abort=True)
    request_json("DELETE", path, params={"force": "true"} if force else {})
    if wait and not force:
        deadline = time.monotonic() + 1800
        while True:
            from kubearc.session import hub_client

            with hub_client() as client:
                gone = client.get(path, params={"api-version": "2024-01-01"}).status_code == 404
            if gone:
                break
            if time.monotonic() > deadline:
                fail("still Deleting after 30 minutes: see `kubearc k8s-extension show`")
            time.sleep(2)
    typer.echo(f"deleted extension {name}" if wait or force else f"deleting extension {name}")


types_app = typer.Typer(no_args_is_help=True, help="The extension types the hub's catalogue offers.")
app.add_typer(types_app, name="extension-types")


@types_app.command("list")
def types_list(output: str = typer.Option("table", "--output", "-o", help="table or json")) -> None:
    items = request_json("GET", TYPES)["value"]
    if output == "json":
        typer.echo(json.dumps(items, indent=2))
        return
    for t in items:
        versions = ", ".join(f"{v['version']} ({v['releaseTrain']})" for v in t["versions"])
        typer.echo(f"{t['name']}: {t['chart']} from {t['repository']}; {versions}")
