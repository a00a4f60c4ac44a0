"""`kubearc guard`: the authn/authz webhook; `guard_kubeconfig` wires an apiserver to it.

The apiserver calls the webhook, so it must reach `--host:--port`: the default
127.0.0.1 suits an apiserver on the same host (static pod with host network);
inside a cluster listen on the pod IP or 0.0.0.0 behind a Service. Probes and
metrics are plain HTTP on `--health-port` (reviews need the apiserver's client
certificate; kubelet's probes have none).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from pathlib import Path
from typing import Any

import typer
import yaml

from kubearc.logs import setup_logging
from kubearc.settings import parse_duration

GRAPH_SECRET_ENV = "KUBEARC_GUARD_GRAPH_CLIENT_SECRET"
ENTRA = "https://login.microsoftonline.com"


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
    port: int = typer.Option(8443, envvar="KUBEARC_GUARD_PORT", help="Review port (mutual TLS)."),
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
    graph_client_id: str = typer.Option(
        None,
        envvar="KUBEARC_GUARD_GRAPH_CLIENT_ID",
        help=f"App id for group overage lookups; its secret is read from ${GRAPH_SECRET_ENV}.",
    ),
    graph_authority: str = typer.Option(
        None,
        envvar="KUBEARC_GUARD_GRAPH_AUTHORITY",
        help="Token authority for Graph (default: the first Entra tenant, else the first issuer).",
    ),
    graph_url: str = typer.Option(
        None, envvar="KUBEARC_GUARD_GRAPH_URL", help="Graph /v1.0 root (default: Microsoft Graph)."
    ),
    deadline: str = typer.Option("3s", envvar="KUBEARC_GUARD_DEADLINE", help="Time budget per review."),
    failure_policy: str = typer.Option(
        "noopinion", envvar="KUBEARC_GUARD_FAILURE_POLICY", help="noopinion or deny, past the deadline."
    ),
    log_level: str = typer.Option("info", envvar="KUBEARC_LOG_LEVEL"),
    log_format: str = typer.Option("json", envvar="KUBEARC_LOG_FORMAT", help="text or json."),
) -> None:
    """Run the guard webhook: TokenReviews (Entra, local issuer, static tokens) and SubjectAccessReviews."""
    from guard.authn.chain import AuthnChain
    from guard.authn.graph import GRAPH_BASE, GraphGroups, GraphSettings
    from guard.authn.oidc import OidcAuthenticator
    from guard.authn.static import StaticTokens
    from guard.config import GuardConfig
    from guard.server import GuardServer, GuardState, NoAuthorizer

    if failure_policy not in ("noopinion", "deny"):
        raise typer.BadParameter("must be noopinion or deny", param_hint="--failure-policy")
    if (entra_tenant or issuer) and not audience:
        raise typer.BadParameter("give the accepted token audience", param_hint="--audience")
    if not (entra_tenant or issuer or token_file):
        raise typer.BadParameter("give --entra-tenant, --issuer or --token-file", param_hint="--issuer")
    setup_logging(log_level, log_format)
    ca = str(issuer_ca) if issuer_ca else None
    graph = None
    if graph_client_id:
        secret = os.environ.get(GRAPH_SECRET_ENV)
        if not secret:
            raise typer.BadParameter(f"set ${GRAPH_SECRET_ENV}", param_hint="--graph-client-id")
        authority = graph_authority or (f"{ENTRA}/{entra_tenant[0]}" if entra_tenant else issuer[0])
        graph = GraphGroups(
            GraphSettings(
                client_id=graph_client_id,
                client_secret=secret,
                authority=authority,
                oidc_authority=not authority.startswith(ENTRA),
                base_url=graph_url or GRAPH_BASE,
                ca_file=ca,
            )
        )
    providers = [OidcAuthenticator.entra(t, audience, ca_file=ca, graph=graph) for t in entra_tenant]
    if issuer:
        providers.append(OidcAuthenticator(issuer, audience, ca_file=ca, graph=graph))
    chain = AuthnChain(providers, StaticTokens.load(token_file) if token_file else None)
    config = GuardConfig(
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
        host=host,
        port=port,
        health_host=health_host,
        health_port=health_port,
        deadline=_seconds(deadline, "--deadline"),
        failure_policy="deny" if failure_policy == "deny" else "noopinion",
    )
    # SubjectAccessReviews get NoOpinion until an authorizer (Azure RBAC) is configured.
    state = GuardState(config, chain, NoAuthorizer())

    async def main() -> None:
        server = GuardServer(state, chain.ready)
        typer.echo(
            f"kubearc guard: reviews on https://{host}:{server.port}, probes on :{server.health_port}",
            err=True,
        )
        try:
            await server.serve()
        finally:
            server.close()
            if graph is not None:
                await graph.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def webhook_kubeconfig(
    server: str, ca: Path, client_cert: Path, client_key: Path, name: str
) -> dict[str, Any]:
    """A kubeconfig the apiserver uses to call one webhook: its URL, CA and the client cert for mTLS."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [
            {
                "name": "apiserver",
                "user": {"client-certificate-data": _b64(client_cert), "client-key-data": _b64(client_key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "apiserver"}}],
        "current-context": name,
    }


def authorization_config(
    kubeconfig: str, timeout: str, authorized_ttl: str, unauthorized_ttl: str, failure_policy: str
) -> dict[str, Any]:
    """AuthorizationConfiguration: Node, then guard (skipping `system:` users via CEL), then RBAC."""
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthorizationConfiguration",
        "authorizers": [
            {"type": "Node", "name": "node"},
            {
                "type": "Webhook",
                "name": "kubearc-guard",
                "webhook": {
                    "timeout": timeout,
                    "authorizedTTL": authorized_ttl,
                    "unauthorizedTTL": unauthorized_ttl,
                    "failurePolicy": failure_policy,
                    "subjectAccessReviewVersion": "v1",
                    "matchConditionSubjectAccessReviewVersion": "v1",
                    "connectionInfo": {"type": "KubeConfigFile", "kubeConfigFile": kubeconfig},
                    "matchConditions": [{"expression": "!request.user.startsWith('system:')"}],
                },
            },
            {"type": "RBAC", "name": "rbac"},
        ],
    }


def guard_kubeconfig(
    server: str = typer.Option(
        ..., help="Guard's review URL as the apiserver reaches it, e.g. https://10.0.0.5:8443."
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
    base = server.rstrip("/")
    out_dir.mkdir(parents=True, exist_ok=True)
    where = Path(config_dir) if config_dir else out_dir.resolve()
    files = {
        "authn-webhook.kubeconfig": webhook_kubeconfig(
            f"{base}/tokenreviews", ca_file, client_cert, client_key, "kubearc-guard-authn"
        ),
        "authz-webhook.kubeconfig": webhook_kubeconfig(
            f"{base}/subjectaccessreviews", ca_file, client_cert, client_key, "kubearc-guard-authz"
        ),
        "authorization-config.yaml": authorization_config(
            str(where / "authz-webhook.kubeconfig"), timeout, authorized_ttl, unauthorized_ttl, failure_policy
        ),
    }
    for name, doc in files.items():
        path = out_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the client key
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        typer.echo(str(path))
    authn, authz = where / "authn-webhook.kubeconfig", where / "authorization-config.yaml"
    typer.echo(
        f"apiserver flags: --authentication-token-webhook-config-file={authn} "
        f"--authentication-token-webhook-version=v1 --authorization-config={authz}",
        err=True,
    )
