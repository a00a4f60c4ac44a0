"""The `kubearc` command line: the composition root that wires the parts together."""

from __future__ import annotations

import sys

import typer

from kubearc.commands import (
    aadproxy,
    admin,
    agent,
    cluster,
    clusterlogs,
    connect,
    demo,
    gettoken,
    guard,
    hub,
    k8sconfig,
    k8sext,
    login,
    proxy,
    relay,
    role,
)

app = typer.Typer(
    no_args_is_help=True,
    help="kubearc: outbound-only cluster connect, Entra ID sign-in and Azure-RBAC-style roles.",
    pretty_exceptions_enable=False,
)
app.command("hub")(hub.hub)
app.command("login")(login.login)
app.command("get-token")(gettoken.get_token)
app.command("connect")(connect.connect)
app.command("proxy")(proxy.proxy)
app.command("relay")(relay.relay)
app.command("demo")(demo.demo)
guard_app = typer.Typer(no_args_is_help=True, help="The TokenReview / SubjectAccessReview webhook.")
guard_app.command("serve")(guard.guard)
guard_app.command("kubeconfig")(guard.guard_kubeconfig)
guard_app.command("proxy")(aadproxy.aad_proxy)
app.add_typer(guard_app, name="guard")
cluster.app.command("logs")(clusterlogs.logs)
cluster.app.command("usage")(clusterlogs.usage)
app.add_typer(cluster.app, name="cluster", help="Connected-cluster resources.")
app.add_typer(role.app, name="role", help="Role definitions and role assignments.")
app.add_typer(admin.app, name="admin", help="Bootstrap the hub's directory on the hub host.")
app.add_typer(agent.app, name="agent", help="In-cluster agents.")
app.add_typer(k8sconfig.app, name="k8s-configuration", help="GitOps (Flux v2) configurations of clusters.")
app.add_typer(
    k8sext.app, name="k8s-extension", help="Extensions of clusters (Helm charts from the catalogue)."
)


def _print_version(value: bool) -> None:
    if value:
        from foundation import __version__

        typer.echo(f"kubearc {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print kubearc's version and exit."
    ),
) -> None:
    """The options of `kubearc` itself, before any command."""


def main() -> None:
    """The console script: a usage error is one line that names the problem and where to look."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's exceptions, as typer carries them
        message = exc.format_message()  # type: ignore[attr-defined]
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `kubearc` or a group alone: its help
            typer.echo(message, err=True)
        else:
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {message}{where}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
