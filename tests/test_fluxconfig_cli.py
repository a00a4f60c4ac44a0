"""`kubearc k8s-configuration flux`: the az command line users know, against a real hub."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kubearc.cli import app
from tests.clusters import SUB, connected, onboarder, signed_in_cli
from tests.conftest import RunningHub

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nflux-cli-secret\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.mark.sqlite_only
def test_create_update_show_list_and_delete_a_flux_configuration(
    hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = connected(hub, "cli-flux", onboarder(hub))
    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "config"))
    cli = signed_in_cli(hub, tmp_path / "config", "gail@kubearc.test", "Owner", f"/subscriptions/{SUB}")
    key = tmp_path / "id_ed25519"
    key.write_bytes(SECRET)
    hosts = tmp_path / "known_hosts"
    hosts.write_text("github.com ssh-ed25519 AAAAC3Nza\n")
    where = ["-c", "cli-flux", "-g", "rg1", "-t", "connectedClusters"]
    created = cli.invoke(
        app,
        [
            *["k8s-configuration", "flux", "create", "-n", "fleet", *where, "--namespace", "flux-system"],
            *["-u", "ssh://git@github.com/example/fleet.git", "--branch", "main", "--interval", "5m"],
            *["--ssh-private-key-file", str(key), "--known-hosts-file", str(hosts)],
            *["--kustomization", "name=infra path=./infrastructure prune=true"],
            *["--kustomization", "name=apps,path=./apps,depends_on=infra,timeout=3m"],
            "-o",
            "json",
        ],
    )
    assert created.exit_code == 0, created.output
    shown = json.loads(created.stdout)["properties"]
    assert shown["gitRepository"]["syncIntervalInSeconds"] == 300
    assert shown["gitRepository"]["sshKnownHosts"] == base64.b64encode(hosts.read_bytes()).decode()
    assert shown["kustomizations"]["apps"]["dependsOn"] == ["infra"]
    assert shown["kustomizations"]["apps"]["timeoutInSeconds"] == 180
    assert shown["kustomizations"]["infra"]["prune"] is True
    assert "flux-cli-secret" not in created.output and base64.b64encode(SECRET).decode() not in created.output
    with cluster.agent_client() as agent:
        pulled = agent.get("/agent/v1/fluxConfigurations").json()["value"][0]
    assert base64.b64decode(pulled["configurationProtectedSettings"]["sshPrivateKey"]) == SECRET

    # update changes what it names; the secret it does not name stays.
    updated = cli.invoke(
        app,
        [
            *["k8s-configuration", "flux", "update", "-n", "fleet", *where, "--tag", "v2.0.0"],
            *["--remove-kustomization", "apps", "--suspend", "-o", "json"],
        ],
    )
    assert updated.exit_code == 0, updated.output
    props = json.loads(updated.stdout)["properties"]
    assert props["gitRepository"]["repositoryRef"] == {"tag": "v2.0.0"}
    assert list(props["kustomizations"]) == ["infra"] and props["suspend"] is True
    assert props["complianceState"] == "Suspended"
    with cluster.agent_client() as agent:
        pulled = agent.get("/agent/v1/fluxConfigurations").json()["value"][0]
    assert base64.b64decode(pulled["configurationProtectedSettings"]["sshPrivateKey"]) == SECRET
    assert pulled["generation"] == 2

    listed = cli.invoke(app, ["k8s-configuration", "flux", "list", *where])
    assert listed.exit_code == 0 and "fleet" in listed.stdout and "Suspended" in listed.stdout
    table = cli.invoke(app, ["k8s-configuration", "flux", "show", "-n", "fleet", *where, "-o", "table"])
    assert "fleet: Suspended (Updating)" in table.stdout, table.output

    deleted = cli.invoke(app, ["k8s-configuration", "flux", "delete", "-n", "fleet", *where, "-y"])
    assert deleted.exit_code == 0, deleted.output
    gone = cli.invoke(app, ["k8s-configuration", "flux", "show", "-n", "fleet", *where])
    assert gone.exit_code == 1 and "404" in gone.output and "fleet" in gone.output


@pytest.mark.sqlite_only
def test_mistakes_on_the_flux_command_line_are_one_line_each(
    hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connected(hub, "cli-flux-bad", onboarder(hub))
    monkeypatch.setenv("KUBEARC_CONFIG_DIR", str(tmp_path / "config"))
    cli = signed_in_cli(hub, tmp_path / "config", "hal@kubearc.test", "Owner", f"/subscriptions/{SUB}")
    base = [
        "k8s-configuration",
        "flux",
        "create",
        "-n",
        "fleet",
        "-c",
        "cli-flux-bad",
        "-g",
        "rg1",
    ]
    url = ["-u", "https://github.com/example/fleet.git"]
    cases = [
        ([*base, *url], "gitRepository.repositoryRef"),  # no branch/tag/semver/commit: the hub's 400
        ([*base, *url, "--branch", "main", "--kustomization", "path=./x"], "give its name"),
        ([*base, *url, "--branch", "main", "--kustomization", "name=a colour=blue"], "unknown key 'colour'"),
        ([*base, *url, "--branch", "main", "--interval", "often"], "--interval: invalid duration"),
        ([*base, *url, "--branch", "main", "--https-key-file", str(tmp_path / "nope")], "--https-key-file"),
        ([*base, *url, "--branch", "main", "-t", "managedClusters"], "connectedClusters only"),
        ([*base, *url, "--branch", "main", "--kind", "svn"], "--kind 'svn'"),
    ]
    for argv, named in cases:
        result = cli.invoke(app, argv)
        assert result.exit_code == 1, (argv, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], (argv, result.output)
    listed = cli.invoke(app, ["k8s-configuration", "flux", "list", "-c", "cli-flux-bad", "-g", "rg1"])
    assert "fleet" not in listed.stdout
