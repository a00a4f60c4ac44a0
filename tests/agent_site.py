"""One cluster's lighter agent against a real hub and the stand-in apiserver, as a real process.

`AgentSite` holds the hub-side cluster (onboarded, its identity in a file store
the agent reads), the stand-in's kubeconfig and Python clients, an Owner's hub
client, and the agent process (`start`, `stop`, its log). `until` polls a probe
that may 404 until what it waits for exists.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from foundation.identitystore import FileStore, StoredIdentity
from tests.apiserver import ApiServer
from tests.clusters import SUB, ConnectedCluster, connected, onboarder
from tests.conftest import RunningHub

T = TypeVar("T")


def until(what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except ApiException as exc:
            if exc.status != 404:
                raise
            last = f"404: {exc.reason}"
        else:
            if value:
                return value
            last = value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


class AgentSite:
    def __init__(self, hub: RunningHub, api: ApiServer, tmp_path: Path, prefix: str) -> None:
        self.hub, self.api, self.tmp = hub, api, tmp_path
        self.cluster: ConnectedCluster = connected(hub, f"{prefix}-{uuid.uuid4().hex[:6]}", onboarder(hub))
        pair = self.cluster.identity
        assert pair is not None
        store = FileStore(tmp_path / "identity")
        hub.run(
            store.save(StoredIdentity(pair, pair.cert, dt.datetime.now(dt.UTC), self.cluster.resource_id))
        )
        self.kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        self.k8s = config.new_client_from_config(str(self.kubeconfig))
        self.custom: Any = client.CustomObjectsApi(self.k8s)  # plain dicts in and out
        self.core: Any = client.CoreV1Api(self.k8s)
        self.ext: Any = client.ApiextensionsV1Api(self.k8s)
        owner = str(uuid.uuid4())
        hub.assign(owner, "Owner", f"/subscriptions/{SUB}")
        self.user = hub.client(hub.token(owner))
        self.agent: subprocess.Popen[str] | None = None
        self.args: list[str] = []

    def start(self, agent: str, *args: str) -> None:
        self.args = [agent, *args] if args or not self.args else self.args
        log = open(self.tmp / "agent.log", "a")  # noqa: SIM115 - closed with the process
        self.agent = subprocess.Popen(
            [
                *[sys.executable, "-m", "kubearc.cli", "agent", *self.args[:1], "--hub", self.hub.url],
                *["--hub-ca", self.hub.ca, "--identity", f"file:{self.tmp / 'identity'}"],
                *["--kubeconfig", str(self.kubeconfig), "--log-format", "text", "--retry-max-delay", "0.5"],
                *self.args[1:],
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith(("KUBEARC_", "KUBECONFIG"))},
        )

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.terminate()
            assert self.agent.wait(30) == 0, self.log()
            self.agent = None

    def close(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait(10)
        self.user.close()

    def log(self) -> str:
        path = self.tmp / "agent.log"
        return path.read_text() if path.exists() else ""
