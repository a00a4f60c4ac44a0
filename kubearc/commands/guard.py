"""`kubearc guard`: the authn/authz webhook; `guard_kubeconfig` wires an apiserver to it.

The apiserver calls the webhook, so it must reach `--host:--port`: the default
127.0.0.1 suits an apiserver on the same host (static pod with host network);
inside a cluster listen on the pod IP or 0.0.0.0 behind a Service. Probes and
metrics are plain HTTP on `--health-port` (reviews need the apiserver's client
certificate; kubelet's probes have none).

The commands only map flags to the providers' options (`guard/authn/options.py`,
`guard/authz/options.py`), show an `OptionsError` as the usage error of the flag
it names, and run `guard.server.serve_webhook`; the rules live with the providers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml

from foundation import aio
from foundation.logs import setup_logging
from foundation.settings import parse_duration
from foundation.wire import ENTRA_AUTHORITY
from guard import webhook_config
from kubearc.commands import listenopts

if TYPE_CHECKING:
    from guard.authn.options import AuthnOptions

# The names the providers' messages use (guard.authn.options, guard.authz.options); kept here too so
# that `--help` does not import guard.
GRAPH_SECRET_ENV = "KUBEARC_GUARD_GRAPH_CLIENT_SECRET"
ARM_SECRET_ENV = "KUBEARC_GUARD_ARM_CLIENT_SECRET"
ARM = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"


GraphClientIdOpt = typer.Option(
    None,
    "--graph-client-id",
    envvar="KUBEARC_GUARD_GRAPH_CLIENT_ID",
    help=f"App id for group overage lookups; its secret is read from ${GRAPH_SECRET_ENV}.",
)
GraphAuthorityOpt = typer.Option(
    None,
    "--graph-authority",
    envvar="KUBEARC_GUARD_GRAPH_AUTHORITY",
    help="Token authority for Graph (default: the first Entra tenant, else the first issuer).",
)
GraphUrlOpt = typer.Option(
    None, "--graph-url", envvar="KUBEARC_GUARD_GRAPH_URL", help="Graph /v1.0 root (default: Microsoft Graph)."
)


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """A provider's `OptionsError` as the usage error of the flag it names."""
    from guard.errors import OptionsError

    try:
        yield
    except OptionsError as exc:
        raise typer.BadParameter(exc.message, param_hint=exc.flag) from None


def authn_options(
    entra_tenant: list[str],
    issuer: list[str],
    audience: list[str],
    issuer_ca: Path | None,
    graph: tuple[str | None, str | None, str | None],  # --graph-client-id, --graph-authority, --graph-url
    **more: Any,
) -> AuthnOptions:
    """The authenticator's flags, shared by `guard serve` and `guard proxy`, as its options."""
    from guard.authn.options import AuthnOptions

    return AuthnOptions(
        entra_tenants=tuple(entra_tenant),
        issuers=tuple(issuer),
        audiences=tuple(audience),
        issuer_ca=str(issuer_ca) if issuer_ca else None,
        graph_client_id=graph[0],
        graph_client_secret=os.environ.get(GRAPH_SECRET_ENV),
        graph_authority=graph[1],
        graph_url=graph[2],
        **more,
    )


def _seconds(value: str, flag: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None


def guard(
    tls_cert: Path = typer.Option(..., envvar="KUBEARC_GUARD_TLS_CERT", help="Serving certificate (PEM)."),
    tls_key: Path = typer.Option(..., envvar="KUBEARC_GUARD_TLS_KEY", help="Serving key (PEM)."),
    client_ca: Path = typer.Option(
        ..., envvar="KUBEARC_GUARD_CLIENT_CA", help="CA of the apiserver's client certificate."
    ),
    host: str = typer.Option(
        "127.0.0.1", envvar="KUBEARC_GUARD_HOST", help="Review address (the apiserver must reach it)."
    ),
    port: int = typer.Option(
        8445, envvar="KUBEARC_GUARD_PORT", help="Review port (mutual TLS; not the hub's 8443)."
    ),
    health_host: str = typer.Option("127.0.0.1", envvar="KUBEARC_GUARD_HEALTH_HOST", help="Probe address."),
    health_port: int = typer.Option(
        8080, envvar="KUBEARC_GUARD_HEALTH_PORT", help="Plain HTTP port for /healthz, /readyz, /metrics."
    ),
    entra_tenant: list[str] = typer.Option(
        [], envvar="KUBEARC_GUARD_ENTRA_TENANT", help="Entra tenant id whose v1/v2 tokens are accepted."
    ),
    issuer: list[str] = typer.Option(
        [],
        envvar="KUBEARC_GUARD_ISSUER",
        help="Other OIDC issuer URL accepted (e.g. the hub's local issuer).",
    ),
    audience: list[str] = typer.Option(
        [],
        envvar="KUBEARC_GUARD_AUDIENCE",
        help="Accepted token audience (repeatable; required with issuers).",
    ),
    issuer_ca: Path = typer.Option(
        None, envvar="KUBEARC_GUARD_ISSUER_CA", help="CA bundle for a self-signed issuer and its Graph."
    ),
    token_file: Path = typer.Option(
        None, envvar="KUBEARC_GUARD_TOKEN_FILE", help='Static tokens: token,user,uid,"group1,group2".'
    ),
    graph_client_id: str = GraphClientIdOpt,
    graph_authority: str = GraphAuthorityOpt,
    graph_url: str = GraphUrlOpt,
    deadline: str = typer.Option("3s", envvar="KUBEARC_GUARD_DEADLINE", help="Time budget per review."),
    failure_policy: str = typer.Option(
        "noopinion",
        envvar="KUBEARC_GUARD_FAILURE_POLICY",
        help="noopinion or deny, past the deadline or when checkAccess cannot answer.",
    ),
    cluster_resource_id: str = typer.Option(
        None,
        envvar="KUBEARC_GUARD_CLUSTER_RESOURCE_ID",
        help="ARM id of this cluster; SubjectAccessReviews then go to Azure RBAC (else: NoOpinion).",
    ),
    cluster_type: str = typer.Option(
        "connectedClusters",
        envvar="KUBEARC_GUARD_CLUSTER_TYPE",
        help="connectedClusters (Arc) or managedClusters (AKS): the data actions' prefix.",
    ),
    checkaccess_url: str = typer.Option(
        ARM, envvar="KUBEARC_GUARD_CHECKACCESS_URL", help="ARM, or the kubearc hub's URL."
    ),
    checkaccess_ca: Path = typer.Option(
        None, envvar="KUBEARC_GUARD_CHECKACCESS_CA", help="CA bundle of a self-signed checkAccess endpoint."
    ),
    identity: str = typer.Option(
        None,
        envvar="KUBEARC_GUARD_IDENTITY",
        help="checkAccess credential: the cluster identity store, file:DIR or secret:NS/NAME (hub only).",
    ),
    identity_audience: str = typer.Option(
        None,
        envvar="KUBEARC_GUARD_IDENTITY_AUDIENCE",
        help="Audience of identity agent tokens: the hub's public URL (default: --checkaccess-url).",
    ),
    kubeconfig: Path = typer.Option(
        None, envvar="KUBECONFIG", help="For a secret: identity store (default: in-cluster)."
    ),
    arm_client_id: str = typer.Option(
        None,
        envvar="KUBEARC_GUARD_ARM_CLIENT_ID",
        help=f"checkAccess credential: an Entra app id; its secret is read from ${ARM_SECRET_ENV}.",
    ),
    arm_authority: str = typer.Option(
        None,
        envvar="KUBEARC_GUARD_ARM_AUTHORITY",
        help="Token authority for --arm-client-id (default: the first --entra-tenant).",
    ),
    arm_scope: str = typer.Option(
        ARM_SCOPE,
        envvar="KUBEARC_GUARD_ARM_SCOPE",
        help="Scope for --arm-client-id tokens (a hub: its audience + /.default).",
    ),
    skip_user: list[str] = typer.Option(
        [], envvar="KUBEARC_GUARD_SKIP_USER", help="User Azure RBAC has no opinion on (repeatable)."
    ),
    skip_group: list[str] = typer.Option(
        [], envvar="KUBEARC_GUARD_SKIP_GROUP", help="Group Azure RBAC has no opinion on (repeatable)."
    ),
    not_allowed: str = typer.Option(
        "noopinion",
        envvar="KUBEARC_GUARD_NOT_ALLOWED",
        help="noopinion (Kubernetes RBAC may still allow) or deny, when no role grants the action.",
    ),
    without_oid: str = typer.Option(
        "noopinion",
        envvar="KUBEARC_GUARD_WITHOUT_OID",
        help="noopinion or deny, for users without extra.oid (not from Entra).",
    ),
    allow_ttl: str = typer.Option(
        "5m", envvar="KUBEARC_GUARD_ALLOW_TTL", help="Longest time an Allowed decision is reused."
    ),
    deny_ttl: str = typer.Option(
        "30s", envvar="KUBEARC_GUARD_DENY_TTL", help="Longest time a NotAllowed/Denied decision is reused."
    ),
    max_connections: int | None = listenopts.max_connections_option("half"),
    max_pending: int = listenopts.MaxPendingPortOpt,
    max_pending_per_address: int = listenopts.MaxPendingOpt,
    handshake_timeout: str = listenopts.HandshakeTimeoutOpt,
    header_timeout: str = listenopts.HeaderTimeoutOpt,
    idle_timeout: str = listenopts.IdleTimeoutOpt,
    log_level: str = typer.Option("info", envvar="KUBEARC_LOG_LEVEL"),
    log_format: str = typer.Option("json", envvar="KUBEARC_LOG_FORMAT", help="text or json."),
) -> None:
    """Run the guard webhook: TokenReviews (Entra, local issuer, static tokens); SARs via Azure RBAC."""
    from guard.audit import StreamAudit
    from guard.authz.options import AuthzOptions, arm_cluster_type
    from guard.authz.options import failure_policy as policy
    from guard.authz.provider import AuthorizerConfig
    from guard.config import GuardConfig
    from guard.server import serve_webhook

    with usage_errors():
        graph = (graph_client_id, graph_authority, graph_url)
        authn = authn_options(entra_tenant, issuer, audience, issuer_ca, graph, token_file=token_file)
        rules = AuthorizerConfig(
            cluster_resource_id=cluster_resource_id or "",
            cluster_type=arm_cluster_type(cluster_type),
            skip_users=frozenset(skip_user),
            skip_groups=frozenset(skip_group),
            not_allowed=policy(not_allowed, "--not-allowed"),
            without_oid=policy(without_oid, "--without-oid"),
            failure=policy(failure_policy, "--failure-policy"),
        )
        authz = AuthzOptions(
            rules,
            checkaccess_url=checkaccess_url,
            checkaccess_ca=str(checkaccess_ca) if checkaccess_ca else None,
            identity=identity,
            identity_audience=identity_audience,
            kubeconfig=kubeconfig,
            arm_client_id=arm_client_id,
            arm_client_secret=os.environ.get(ARM_SECRET_ENV),
            arm_authority=arm_authority or (f"{ENTRA_AUTHORITY}/{entra_tenant[0]}" if entra_tenant else None),
            arm_scope=arm_scope,
            token_ca=str(issuer_ca) if issuer_ca else None,
            allow_ttl=_seconds(allow_ttl, "--allow-ttl"),
            deny_ttl=_seconds(deny_ttl, "--deny-ttl"),
        )
        config = GuardConfig(
            tls_cert,
            tls_key,
            client_ca,
            host,
            port,
            health_host,
            health_port,
            _seconds(deadline, "--deadline"),
            limits=listenopts.limits(
                max_connections,
                0.5,
                max_pending_per_address,
                handshake_timeout,
                header_timeout,
                idle_timeout,
                max_pending=max_pending,
            ),
        )
        authn.validate()
        authz.validate()
        config.validate()  # the serving pair and client CA, before anything listens
        setup_logging(log_level, log_format)
        chain = authn.build()  # reads the token file
    audit = StreamAudit(sys.stderr, log_format)  # the log's format, one write per loop turn
    with contextlib.suppress(KeyboardInterrupt):
        aio.run(serve_webhook(config, chain, authz, audit, lambda line: typer.echo(line, err=True)))


def guard_kubeconfig(
    server: str = typer.Option(
        ..., help="Guard's review URL as the apiserver reaches it, e.g. https://10.0.0.5:8445."
    ),
    ca_file: Path = typer.Option(..., help="CA that signed guard's serving certificate."),
    client_cert: Path = typer.Option(..., help="The apiserver's client certificate for guard (PEM)."),
    client_key: Path = typer.Option(..., help="Its key (PEM)."),
    out_dir: Path = typer.Option(Path("."), help="Where to write the three files."),
    config_dir: str = typer.Option(
        None, help="Directory the apiserver reads them from (default: --out-dir, absolute)."
    ),
    timeout: str = typer.Option("5s", help="Webhook timeout (≤30s; above guard's --deadline)."),
    authorized_ttl: str = typer.Option("5m", help="How long the apiserver caches allows."),
    unauthorized_ttl: str = typer.Option("30s", help="How long the apiserver caches denials."),
    failure_policy: str = typer.Option("NoOpinion", help="NoOpinion or Deny when guard cannot be reached."),
) -> None:
    """Write authn/authz webhook kubeconfigs and an AuthorizationConfiguration for the apiserver."""
    if failure_policy not in ("NoOpinion", "Deny"):
        raise typer.BadParameter("must be NoOpinion or Deny", param_hint="--failure-policy")
    if _seconds(timeout, "--timeout") > 30:
        raise typer.BadParameter("the apiserver allows at most 30s", param_hint="--timeout")
    out_dir.mkdir(parents=True, exist_ok=True)
    where = Path(config_dir) if config_dir else out_dir.resolve()
    files = webhook_config.manifests(
        server,
        ca_file.read_bytes(),
        client_cert.read_bytes(),
        client_key.read_bytes(),
        str(where),
        timeout=timeout,
        authorized_ttl=authorized_ttl,
        unauthorized_ttl=unauthorized_ttl,
        failure_policy=failure_policy,
    )
    for name, doc in files.items():
        path = out_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the client key
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        typer.echo(str(path))
    typer.echo(f"apiserver flags: {webhook_config.apiserver_flags(str(where))}", err=True)
