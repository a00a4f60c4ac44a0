"""Default ports do not collide: the hub, its relay, guard and the kube-aad-proxy may share a machine."""

from __future__ import annotations

from typing import Any

import typer.main

from kubearc.cli import app


def defaults(*path: str) -> dict[str, object]:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # a group's subcommands (typer carries its own click)
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
