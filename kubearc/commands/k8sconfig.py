"""`kubearc k8s-configuration flux ...`: Flux configurations of a connected cluster, as `az` names them.

The flags map onto the hub's `fluxConfigurations` body (REFERENCE section 7);
the hub validates it and answers a bad one with a 400 naming the field. Secrets
never go on the command line: private keys, HTTPS keys and bucket secret keys
come from files (`--ssh-private-key-file`, `--https-key-file`,
`--secret-key-file`) or the environment (`KUBEARC_FLUX_HTTPS_KEY`).
`update` reads the configuration, changes what the flags name and puts it
back; protected settings it does not name are kept.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import typer

from foundation.settings import parse_duration
from kubearc.commands.output import fail, request_json, subscription_or_fail

app = typer.Typer(no_args_is_help=True, help="GitOps configurations of connected clusters.")
flux = typer.Typer(no_args_is_help=True, help="Flux v2 configurations (fluxConfigurations).")
app.add_typer(flux, name="flux")

CC = "providers/Microsoft.Kubernetes/connectedClusters"
KIND = "providers/Microsoft.KubernetesConfiguration/fluxConfigurations"
KINDS = {"git": "GitRepository", "oci": "OCIRepository", "bucket": "Bucket"}
SOURCE = {"GitRepository": "gitRepository", "OCIRepository": "ociRepository", "Bucket": "bucket"}
KUSTOMIZATION_KEYS = {
    "path": "path",
    "prune": "prune",
    "force": "force",
    "wait": "wait",
    "depends_on": "dependsOn",
    "dependson": "dependsOn",
    "sync_interval": "syncIntervalInSeconds",
    "interval": "syncIntervalInSeconds",
    "timeout": "timeoutInSeconds",
    "retry_interval": "retryIntervalInSeconds",
    "substitute": "substitute",
}

ClusterOpt = typer.Option(..., "--cluster-name", "-c", help="The connected cluster.")
GroupOpt = typer.Option(..., "--resource-group", "-g")
NameOpt = typer.Option(..., "--name", "-n", help="The flux configuration.")
SubscriptionOpt = typer.Option(None, "--subscription", envvar="KUBEARC_SUBSCRIPTION", help="Subscription id.")
ClusterTypeOpt = typer.Option(
    "connectedClusters", "--cluster-type", "-t", help="Only connectedClusters (as az takes it)."
)


def _path(subscription: str | None, group: str, cluster: str, cluster_type: str, name: str = "") -> str:
    if cluster_type != "connectedClusters":
        fail(f"--cluster-type {cluster_type!r}: kubearc manages connectedClusters only")
    sub = subscription_or_fail(subscription)
    return f"/subscriptions/{sub}/resourceGroups/{group}/{CC}/{cluster}/{KIND}" + (f"/{name}" if name else "")


def _seconds(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return max(1, round(parse_duration(text if not text.isdigit() else f"{text}s")))
    except ValueError as exc:
        fail(f"{flag}: {exc}")


def _bool(text: str, where: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    fail(f"{where}: {text!r} is not true or false")


def parse_kustomization(text: str) -> tuple[str, dict[str, Any]]:
    """`name=apps path=./apps prune=true depends_on=infra,crds` (az's form, as one quoted value)."""
    fields: dict[str, Any] = {}
    name = None
    tokens = shlex.split(text)
    if len(tokens) == 1:  # name=apps,path=./apps: commas between pairs too
        tokens = re.split(r",(?=[A-Za-z_-]+=)", tokens[0])
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            fail(f"--kustomization {text!r}: {token!r} is not KEY=VALUE (e.g. name=apps path=./apps)")
        key = key.strip().lower().replace("-", "_")
        if key == "name":
            name = value
        elif key not in KUSTOMIZATION_KEYS:
            fail(
                f"--kustomization: unknown key {key!r}; known: name, {', '.join(sorted(KUSTOMIZATION_KEYS))}"
            )
        elif KUSTOMIZATION_KEYS[key] in ("prune", "force", "wait"):
            fields[KUSTOMIZATION_KEYS[key]] = _bool(value, f"--kustomization {key}")
        elif KUSTOMIZATION_KEYS[key] == "dependsOn":
            names = json.loads(value) if value.startswith("[") else re.split(r"[,;]", value)
            fields.setdefault("dependsOn", []).extend(n for n in names if n)
        elif KUSTOMIZATION_KEYS[key] == "substitute":
            var, _, val = value.partition(":")
            fields.setdefault("postBuild", {}).setdefault("substitute", {})[var] = val
        elif KUSTOMIZATION_KEYS[key].endswith("InSeconds"):
            fields[KUSTOMIZATION_KEYS[key]] = _seconds(value, f"--kustomization {key}")
        else:
            fields[KUSTOMIZATION_KEYS[key]] = value
    if not name:
        fail(f"--kustomization {text!r}: give its name (name=...)")
    return name, fields


def _b64_file(path: Path | None, flag: str) -> str | None:
    if path is None:
        return None
    try:
        return base64.b64encode(path.expanduser().read_bytes()).decode()
    except OSError as exc:
        fail(f"{flag}: cannot read {path}: {exc.strerror}")


def _apply_flags(props: dict[str, Any], flags: dict[str, Any]) -> None:
    """Change `props` (a configuration's properties) by what the flags say; unnamed fields stay."""
    kind = KINDS[flags["kind"]] if flags.get("kind") else props.get("sourceKind", "GitRepository")
    if props.get("sourceKind") and props["sourceKind"] != kind:
        props.pop(SOURCE[props["sourceKind"]], None)
    props["sourceKind"] = kind
    source = props.setdefault(SOURCE[kind], {})
    for key in ("scope", "namespace", "suspend"):
        if flags.get(key) is not None:
            props[key] = flags[key]
    if flags.get("url"):
        source["url"] = flags["url"]
    refs = {k: flags[k] for k in ("branch", "tag", "semver", "commit", "digest") if flags.get(k)}
    if refs:
        source["repositoryRef"] = refs
    for flag, key in (
        ("sync_interval", "syncIntervalInSeconds"),
        ("timeout", "timeoutInSeconds"),
        ("https_user", "httpsUser"),
        ("local_auth_ref", "localAuthRef"),
        ("bucket_name", "bucketName"),
        ("access_key", "accessKey"),
        ("known_hosts", "sshKnownHosts"),
        ("https_ca_cert", "httpsCACert"),
    ):
        if flags.get(flag) is not None:
            source[key] = flags[flag]
    protected = props.setdefault("configurationProtectedSettings", {})
    for flag, key in (
        ("ssh_private_key", "sshPrivateKey"),
        ("https_key", "httpsKey"),
        ("secret_key", "secretKey"),
    ):
        if flags.get(flag) is not None:
            protected[key] = flags[flag]
    if flags.get("kustomizations"):
        current = props.setdefault("kustomizations", {})
        for text in flags["kustomizations"]:
            name, fields = parse_kustomization(text)
            current[name] = {**current.get(name, {}), **fields}


def _show(item: dict[str, Any], output: str) -> None:
    if output == "json":
        typer.echo(json.dumps(item, indent=2))
        return
    p = item["properties"]
    source = p.get(SOURCE.get(p.get("sourceKind", ""), ""), {})
    typer.echo(f"{item['name']}: {p.get('complianceState')} ({p.get('provisioningState')})")
    typer.echo(f"  source      {p.get('sourceKind')} {source.get('url')} {source.get('repositoryRef') or ''}")
    typer.echo(f"  synced      {p.get('sourceSyncedCommitId') or '-'} at {p.get('sourceUpdatedAt') or '-'}")
    if p.get("errorMessage"):
        typer.echo(f"  error       {p['errorMessage']}")
    for s in p.get("statuses", []):
        conditions = s.get("statusConditions", [])
        ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        message = f": {ready['message']}" if ready.get("message") else ""
        typer.echo(f"  {s['kind']}/{s['namespace']}/{s['name']}  {s.get('complianceState')}{message}")


@flux.command("create")
def create(
    name: str = NameOpt,
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    url: str = typer.Option(..., "--url", "-u", help="Source URL (https://, ssh://, git@, oci://)."),
    kind: str = typer.Option("git", "--kind", help="git, oci or bucket."),
    scope: str = typer.Option("cluster", "--scope", help="cluster or namespace."),
    namespace: str = typer.Option("default", "--namespace", help="Where the Flux objects are created."),
    branch: str = typer.Option(None, "--branch"),
    tag: str = typer.Option(None, "--tag"),
    semver: str = typer.Option(None, "--semver"),
    commit: str = typer.Option(None, "--commit"),
    digest: str = typer.Option(None, "--digest", help="OCI: sha256:..."),
    sync_interval: str = typer.Option(None, "--interval", "--sync-interval", help="e.g. 10m"),
    timeout: str = typer.Option(None, "--timeout", help="e.g. 10m"),
    kustomization: list[str] = typer.Option(
        [], "--kustomization", "-k", help="'name=apps path=./apps prune=true depends_on=infra' (repeat)."
    ),
    ssh_private_key_file: Path = typer.Option(None, "--ssh-private-key-file"),
    known_hosts_file: Path = typer.Option(None, "--known-hosts-file"),
    https_user: str = typer.Option(None, "--https-user"),
    https_key_file: Path = typer.Option(None, "--https-key-file", help="Token or password (a file)."),
    https_ca_cert_file: Path = typer.Option(None, "--https-ca-cert-file"),
    local_auth_ref: str = typer.Option(None, "--local-auth-ref", help="A Secret in --namespace instead."),
    bucket_name: str = typer.Option(None, "--bucket-name"),
    access_key: str = typer.Option(None, "--access-key"),
    secret_key_file: Path = typer.Option(None, "--secret-key-file"),
    suspend: bool = typer.Option(False, "--suspend", help="Create it suspended."),
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """Create a Flux configuration: one source and its kustomizations on the cluster."""
    if kind not in KINDS:
        fail(f"--kind {kind!r}: one of {', '.join(KINDS)}")
    path = _path(subscription, resource_group, cluster_name, cluster_type, name)
    props: dict[str, Any] = {}
    _apply_flags(props, _flags(locals()))
    _show(request_json("PUT", path, json={"properties": props}), output)


def _flags(given: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters as `_apply_flags` takes them: durations in seconds, files read."""
    flags = dict(given)
    flags["sync_interval"] = _seconds(given.get("sync_interval"), "--interval")
    flags["timeout"] = _seconds(given.get("timeout"), "--timeout")
    flags["kustomizations"] = given.get("kustomization") or []
    flags["known_hosts"] = _b64_file(given.get("known_hosts_file"), "--known-hosts-file")
    flags["https_ca_cert"] = _b64_file(given.get("https_ca_cert_file"), "--https-ca-cert-file")
    flags["ssh_private_key"] = _b64_file(given.get("ssh_private_key_file"), "--ssh-private-key-file")
    flags["https_key"] = _b64_file(given.get("https_key_file"), "--https-key-file")
    if flags["https_key"] is None and os.environ.get("KUBEARC_FLUX_HTTPS_KEY"):
        flags["https_key"] = base64.b64encode(os.environ["KUBEARC_FLUX_HTTPS_KEY"].encode()).decode()
    flags["secret_key"] = _b64_file(given.get("secret_key_file"), "--secret-key-file")
    return flags


@flux.command("update")
def update(
    name: str = NameOpt,
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    url: str = typer.Option(None, "--url", "-u"),
    branch: str = typer.Option(None, "--branch"),
    tag: str = typer.Option(None, "--tag"),
    semver: str = typer.Option(None, "--semver"),
    commit: str = typer.Option(None, "--commit"),
    digest: str = typer.Option(None, "--digest"),
    sync_interval: str = typer.Option(None, "--interval", "--sync-interval"),
    timeout: str = typer.Option(None, "--timeout"),
    kustomization: list[str] = typer.Option([], "--kustomization", "-k", help="Add or change one (repeat)."),
    remove_kustomization: list[str] = typer.Option([], "--remove-kustomization", help="Remove one by name."),
    ssh_private_key_file: Path = typer.Option(None, "--ssh-private-key-file"),
    known_hosts_file: Path = typer.Option(None, "--known-hosts-file"),
    https_user: str = typer.Option(None, "--https-user"),
    https_key_file: Path = typer.Option(None, "--https-key-file"),
    https_ca_cert_file: Path = typer.Option(None, "--https-ca-cert-file"),
    local_auth_ref: str = typer.Option(None, "--local-auth-ref"),
    suspend: bool = typer.Option(None, "--suspend/--resume", help="Suspend or resume reconciliation."),
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """Change a Flux configuration: what the flags name changes, the rest (secrets included) stays."""
    path = _path(subscription, resource_group, cluster_name, cluster_type, name)
    props = request_json("GET", path)["properties"]
    for key in ("provisioningState", "complianceState", "statuses", "sourceSyncedCommitId"):
        props.pop(key, None)
    for gone in remove_kustomization:
        if gone not in props.get("kustomizations", {}):
            fail(f"--remove-kustomization {gone!r}: the configuration has no such kustomization")
        del props["kustomizations"][gone]
    flags = _flags(locals())
    flags["kind"] = None
    _apply_flags(props, flags)
    _show(request_json("PUT", path, json={"properties": props}), output)


@flux.command("show")
def show(
    name: str = NameOpt,
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    output: str = typer.Option("json", "--output", "-o", help="json or table"),
) -> None:
    """Show a Flux configuration with its compliance and per-object status."""
    _show(request_json("GET", _path(subscription, resource_group, cluster_name, cluster_type, name)), output)


@flux.command("list")
def list_configurations(
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    output: str = typer.Option("table", "--output", "-o", help="table or json"),
) -> None:
    """List a cluster's Flux configurations."""
    items = request_json("GET", _path(subscription, resource_group, cluster_name, cluster_type))["value"]
    if output == "json":
        typer.echo(json.dumps(items, indent=2))
        return
    rows = [["NAME", "NAMESPACE", "SCOPE", "SOURCE", "COMPLIANCE", "PROVISIONING"]]
    for i in items:
        p = i["properties"]
        src = p.get(SOURCE.get(p.get("sourceKind", ""), ""), {}).get("url", "-")
        rows.append(
            [i["name"], p["namespace"], p["scope"], src, p["complianceState"], p["provisioningState"]]
        )
    widths = [max(len(str(r[c])) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@flux.command("delete")
def delete(
    name: str = NameOpt,
    cluster_name: str = ClusterOpt,
    resource_group: str = GroupOpt,
    cluster_type: str = ClusterTypeOpt,
    subscription: str = SubscriptionOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a Flux configuration; the cluster's config-agent removes the objects it created."""
    path = _path(subscription, resource_group, cluster_name, cluster_type, name)
    if not yes:
        typer.confirm(f"Delete flux configuration {name!r} of {cluster_name!r}?", abort=True)
    request_json("DELETE", path)
    typer.echo(f"deleted flux configuration {name}")
