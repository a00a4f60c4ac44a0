"""Default ports do not collide: the hub, its relay, guard and the kube-aad-proxy may share a machine."""

from __future__ import annotations

import click
import typer.main

from kubearc.cli import app


def defaults(*path: str) -> dict[str, object]:
    command: click.Command = typer.main.get_command(app)
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return {p.name or "": p.default for p in command.params}


def test_every_listener_defaults_to_its_own_port() -> None:
    hub, guard, proxy = defaults("hub"), defaults("guard", "serve"), defaults("guard", "proxy")
    ports = {
        "hub": int(str(hub["port"])),
        "hub relay": int(str(hub["relay_port"])),
        "guard reviews": int(str(guard["port"])),
        "guard probes": int(str(guard["health_port"])),
        "aad-proxy": int(str(proxy["listen"]).rsplit(":", 1)[1]),
        "aad-proxy probes": int(str(proxy["probes_listen"]).rsplit(":", 1)[1]),
    }
    assert len(set(ports.values())) == len(ports), ports
