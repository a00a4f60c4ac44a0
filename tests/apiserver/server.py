"""Running the stand-in: its own CA and serving certificate, uvicorn in a background thread.

The socket is bound before the thread starts, so `url` is valid at once (the
same pattern as the hub's HubThread). TLS offers `h2` and `http/1.1` through
ALPN, as a real apiserver does; every connection starts in `front.py`, which
serves HTTP/2 itself, runs direct SPDY upgrades and leaves the rest to uvicorn.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
import yaml
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.server import ServerProtocol

from foundation import pki
from tests.apiserver.app import ApiServerState, Seen, build_app
from tests.apiserver.crds import CrdController
from tests.apiserver.front import ALPN, front_protocol
from tests.apiserver.kubeconfig import write_kubeconfig
from tests.apiserver.kubelet import Kubelet
from tests.apiserver.rbac import default_service_accounts
from tests.apiserver.resources import NAMESPACES, NODES, Obj, default_registry
from tests.apiserver.services import SERVICES, allocator, kubernetes_service
from tests.apiserver.store import ObjectStore, timestamp, utcnow
from tests.apiserver.webhooks import Resolve, Webhooks
from tests.apiserver.workloads import PODS

DEFAULT_VERSION = "v1.36.1"
SERVICE_NAMES = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
]
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    cpu: str = "4"
    memory: str = "16Gi"
    ready: bool = True
    labels: dict[str, str] = field(default_factory=dict)


def node_object(spec: NodeSpec, kubelet_version: str, index: int) -> dict[str, Any]:
    """A Node as a kubelet would register it (every field the Python client requires is present)."""
    now = timestamp(utcnow())
    resources = {"cpu": spec.cpu, "memory": spec.memory, "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "metadata": {
            "name": spec.name,
            "labels": {
                "kubernetes.io/hostname": spec.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **spec.labels,
            },
        },
        "spec": {"podCIDR": f"10.244.{index}.0/24"},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if spec.ready else "False",
                    "reason": "KubeletReady" if spec.ready else "KubeletNotReady",
                    "message": "kubelet is posting ready status" if spec.ready else "kubelet stopped posting",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": f"10.0.0.{10 + index}"},
                {"type": "Hostname", "address": spec.name},
            ],
            "nodeInfo": {
                "machineID": f"{index:032x}",
                "systemUUID": f"00000000-0000-0000-0000-{index:012x}",
                "bootID": f"00000000-0000-0000-0001-{index:012x}",
                "kernelVersion": "6.8.0",
                "osImage": "kubearc apiserver stand-in",
                "containerRuntimeVersion": "containerd://2.0.0",
                "kubeletVersion": kubelet_version,
                "kubeProxyVersion": kubelet_version,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


class _Server(uvicorn.Server):
    """uvicorn that offers h2 through ALPN and says when it is listening, so `start()` needs no polling."""

    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.config.ssl is not None:
            self.config.ssl.set_alpn_protocols(ALPN)
        await super().startup(sockets)
        self._started_event.set()


class _LenientServerProtocol(ServerProtocol):
    """Leaves subprotocols to the app: kubectl offers `SPDY/3.1+portforward.k8s.io`, which is not an
    RFC 6455 token ("/"), so the websockets library's strict parser would refuse the handshake."""

    def process_subprotocol(self, headers: Headers) -> None:
        return None  # uvicorn answers with the subprotocol the app accepts


class _WebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _LenientServerProtocol(max_size=self.config.ws_max_size, logger=self.logger)


class ApiServer:
    """A Kubernetes apiserver stand-in over real HTTPS on 127.0.0.1 (tests and `kubearc demo`)."""

    def __init__(
        self,
        *,
        nodes: list[NodeSpec] | None = None,
        version: str = DEFAULT_VERSION,
        tls_server_name: str = "kubernetes.default.svc",
        serving_names: list[str] | None = None,
        token: str | None = None,
        directory: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.version = version
        self.tls_server_name = tls_server_name
        self.token = token or secrets.token_urlsafe(32)
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="kubearc-apiserver-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = pki.create_ca("kubearc apiserver stand-in CA")
        names = serving_names or ["localhost", host, tls_server_name, *SERVICE_NAMES]
        serving = pki.issue_keypair(
            self.ca,
            "kube-apiserver",
            sans=list(dict.fromkeys(names)),
            server=True,
            validity=dt.timedelta(days=30),
        )
        self.ca_file = self.directory / "ca.crt"
        self.ca_file.write_bytes(self.ca.cert_pem)
        self._cert, self._key = self.directory / "apiserver.crt", self.directory / "apiserver.key"
        serving.write(self._cert, self._key)

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"https://{host}:{self.port}"

        self.store = ObjectStore()
        self.registry = default_registry()
        self.kubelet = Kubelet(self.store)
        self.state = ApiServerState(
            self.registry,
            self.store,
            version,
            f"{host}:{self.port}",
            tokens={self.token: "admin"},
            kubelet=self.kubelet,
        )
        self.store.mutators.append(allocator(self.store))
        self.crds = CrdController(self.store, self.registry)
        default_service_accounts(self.store)
        for ns in SYSTEM_NAMESPACES:
            self.store.create(NAMESPACES, None, {"metadata": {"name": ns}})
        self.store.create(SERVICES, "default", kubernetes_service())
        for i, spec in enumerate(nodes if nodes is not None else [NodeSpec("node-1")]):
            self.store.create(NODES, None, node_object(spec, version, i))

        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="apiserver-standin", daemon=True)

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def add_token(self, token: str, user: str) -> None:
        self.state.tokens[token] = user

    def use_webhooks(
        self,
        files: dict[str, str],
        *,
        authentication_config_file: str | None = None,
        authentication_version: str = "v1beta1",
        authorization_config: str | None = None,
        authorization_webhook_config_file: str | None = None,
        authorization_version: str = "v1beta1",
        resolve: Resolve | None = None,
    ) -> None:
        """Configure webhook token authentication and authorization as an admin configures a real
        apiserver: `files` are what was placed on the control plane (path → content), the other
        arguments its flags (`--authentication-token-webhook-config-file`, `--authorization-config`
        or `--authorization-webhook-config-file`, and the webhook versions)."""

        def read(path: str) -> dict[str, Any]:
            if path not in files:
                raise FileNotFoundError(f"the control plane has no {path}")
            doc: dict[str, Any] = yaml.safe_load(files[path])
            return doc

        authz_file = authorization_config or authorization_webhook_config_file
        self.state.webhooks = Webhooks(
            read(authentication_config_file) if authentication_config_file else None,
            read(authz_file) if authz_file else None,
            directory=self.directory,
            authn_version=authentication_version,
            authz_version=authorization_version,
            resolve=resolve,
            read=read,
        )

    def kubeconfig(
        self,
        path: Path,
        *,
        tls_server_name: bool = False,
        token: str | None = None,
        namespace: str | None = None,
    ) -> Path:
        """Write a kubeconfig; `tls_server_name=True` verifies the cert as `kubernetes.default.svc`."""
        return write_kubeconfig(
            path,
            self.url,
            self.ca_pem,
            token or self.token,
            tls_server_name=self.tls_server_name if tls_server_name else None,
            namespace=namespace,
        )

    # -- pods: the Python API tests use to play the containers' part ---------------------------------

    def add_pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        containers: tuple[str, ...] | list[str] = ("main",),
        image: str = "busybox:1.36",
        labels: dict[str, str] | None = None,
        ports: tuple[int, ...] | list[int] = (),
    ) -> Obj:
        """Create a Running pod (as if scheduled and started) with the named containers."""
        spec = {
            "containers": [
                {
                    "name": c,
                    "image": image,
                    **({"ports": [{"containerPort": p} for p in ports]} if ports else {}),
                }
                for c in containers
            ]
        }
        meta: dict[str, object] = {"name": name, **({"labels": labels} if labels else {})}
        return self.store.create(PODS, namespace, {"metadata": meta, "spec": spec})

    def append_log(
        self,
        namespace: str,
        pod: str,
        *lines: str | bytes,
        container: str | None = None,
        stream: str = "stdout",
    ) -> None:
        """Append lines (with a newline where missing) to a container's log, for `logs -f` and `attach`."""
        c = self.kubelet.container(namespace, pod, container)
        for line in lines:
            data = line.encode() if isinstance(line, str) else line
            self.kubelet.append_log(c, data if data.endswith(b"\n") else data + b"\n", stream)

    def end_logs(self, namespace: str, pod: str, container: str | None = None) -> None:
        """The container's main process exits: followed logs and attached sessions end."""
        self.kubelet.end_log(self.kubelet.container(namespace, pod, container))

    def write_file(
        self, namespace: str, pod: str, path: str, data: bytes, container: str | None = None
    ) -> None:
        self.kubelet.container(namespace, pod, container).fs.write(path, data)

    def read_file(self, namespace: str, pod: str, path: str, container: str | None = None) -> bytes:
        return self.kubelet.container(namespace, pod, container).fs.read(path)

    def set_port_forward_target(
        self, namespace: str, pod: str, port: int, address: tuple[str, int] | None
    ) -> None:
        """Where `port-forward` to the pod's `port` leads: a real TCP address, or None (built-in echo)."""
        self.kubelet.set_port_target(self.kubelet.pod(namespace, pod), port, address)

    def seen(self) -> list[Seen]:
        """The requests received so far (HTTP version, method, path, upgrade), oldest first."""
        return list(self.state.seen)

    def wait_for_watch(self, plural: str, group: str = "", count: int = 1, timeout: float = 15) -> None:
        """Block until `count` watches on the resource are open (e.g. `kubectl get -w` has connected)."""
        deadline = time.monotonic() + timeout
        while self.store.watch_count(group, plural) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no watch on {plural} opened within {timeout}s")
            time.sleep(0.02)

    def _run(self) -> None:
        config = uvicorn.Config(
            build_app(self.state),
            ssl_certfile=str(self._cert),
            ssl_keyfile=str(self._key),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            http=front_protocol(self.state),
            ws=_WebSocketProtocol,
            ws_per_message_deflate=False,
        )
        self._server = _Server(config, self._ready)
        try:
            asyncio.run(self._server.serve(sockets=[self.sock]))
        except BaseException as exc:  # surfaced by start()
            self._error = exc
        finally:
            self._ready.set()

    def start(self, timeout: float = 15) -> ApiServer:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("apiserver stand-in did not start")
        if self._error or not (self._server and self._server.started):
            raise RuntimeError(f"apiserver stand-in failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.sock.close()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
