"""The node side of pods: container logs, files, the main process's stdin, and where ports lead.

The store keeps Pod objects; this keeps what a kubelet and container runtime
would. Every container has a log (lines a test appends, followed by
`kubectl logs -f` and `kubectl attach`), a small in-memory filesystem (for
`kubectl cp`, `cat`, `tar`), and a main process that echoes what `attach`
sends to its stdin. Each pod port leads to a built-in echo service unless a
test points it at a real TCP address (`port-forward`).

State is shared by the server's event loop and test threads: it sits under one
lock, and async readers wait on a `Signal`, which is safe to fire from any thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.apiserver import errors
from tests.apiserver.resources import Obj, ResourceType
from tests.apiserver.store import Event, ObjectStore, timestamp, utcnow
from tests.apiserver.workloads import PODS, pod_running_status

BASE_DIRS = ("/", "/bin", "/etc", "/home", "/root", "/tmp", "/usr", "/var", "/var/log")


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Signal:
    """A thread-safe change counter that coroutines can wait on (`await signal.wait_past(seen)`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seq = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def fire(self) -> None:
        with self._lock:
            self.seq += 1
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_wake, fut)

    async def wait_past(self, seen: int) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self.seq > seen:
                return
            self._waiters.append((loop, fut))
        await fut


@dataclass
class LogEntry:
    when: dt.datetime
    stream: str  # "stdout" or "stderr"
    data: bytes


class Filesystem:
    """A container's files: absolute paths to bytes, plus the directories that exist."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.dirs: set[str] = set(BASE_DIRS)

    @staticmethod
    def norm(path: str, cwd: str = "/") -> str:
        return posixpath.normpath(posixpath.join(cwd, path)).replace("//", "/")

    def is_dir(self, path: str) -> bool:
        return self.norm(path) in self.dirs

    def exists(self, path: str) -> bool:
        path = self.norm(path)
        return path in self.dirs or path in self.files

    def mkdir(self, path: str) -> None:
        path = self.norm(path)
        while path not in self.dirs:
            if path in self.files:
                raise NotADirectoryError(path)
            self.dirs.add(path)
            path = posixpath.dirname(path)

    def write(self, path: str, data: bytes) -> None:
        path = self.norm(path)
        if path in self.dirs:
            raise IsADirectoryError(path)
        self.mkdir(posixpath.dirname(path))
        self.files[path] = bytes(data)

    def read(self, path: str) -> bytes:
        path = self.norm(path)
        if path in self.dirs:
            raise IsADirectoryError(path)
        return self.files[path]

    def walk(self, path: str) -> list[str]:
        """`path` and everything below it, directories before their contents, sorted."""
        path = self.norm(path)
        if path in self.files:
            return [path]
        if path not in self.dirs:
            raise FileNotFoundError(path)
        prefix = path.rstrip("/") + "/"
        below = sorted(p for p in (*self.dirs, *self.files) if p.startswith(prefix))
        return [path, *below]


@dataclass
class Container:
    name: str
    log: list[LogEntry] = field(default_factory=list)
    ended: bool = False
    fs: Filesystem = field(default_factory=Filesystem)
    changed: Signal = field(default_factory=Signal)
    # A real process behind the container (the node emulator's pods): the argv that runs a command
    # inside it, so exec runs there rather than in the built-in shell.
    runner: Callable[[list[str]], list[str]] | None = None


@dataclass
class PodRuntime:
    namespace: str
    name: str
    uid: str
    containers: dict[str, Container]
    ports: dict[int, tuple[str, int]] = field(default_factory=dict)  # pod port → real TCP address


class Kubelet:
    """Runs every pod of the stand-in (one node's worth of runtime, whatever `spec.nodeName` says)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._pods: dict[str, PodRuntime] = {}  # by pod uid
        store.mutators.append(self._admit)
        store.listen(self._on_event)

    def _on_event(self, event: Event) -> None:
        """A deleted pod's containers stop: their logs end (and `logs -f`, `attach` return)."""
        if event.type == "DELETED" and (event.group, event.plural) == ("", "pods"):
            with self._lock:
                runtime = self._pods.pop(event.obj["metadata"]["uid"], None)
            for c in runtime.containers.values() if runtime else ():
                self.end_log(c)

    # -- the control plane's part: bind and start pods as they are written ---------------------------

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        if rt is not PODS:
            return
        spec = obj["spec"]
        if not spec.get("nodeName"):
            nodes = [n for n in self.store.list_all("", "nodes")]
            spec["nodeName"] = nodes[0]["metadata"]["name"] if nodes else "node-1"
        status = obj.get("status") or {}
        images = [c.get("image") for c in spec["containers"]]
        if status.get("phase") is None or images != [
            s.get("image") for s in status.get("containerStatuses") or []
        ]:
            node = self.store.find("", "nodes", "", spec["nodeName"]) or {}
            addresses = node.get("status", {}).get("addresses") or [{"address": "10.0.0.10"}]
            started = (
                status.get("startTime") or obj["metadata"].get("creationTimestamp") or timestamp(utcnow())
            )
            obj["status"] = pod_running_status(obj, addresses[0]["address"], started)

    # -- runtime state ---------------------------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> PodRuntime:
        obj = self.store.get(PODS, namespace, name)
        uid = obj["metadata"]["uid"]
        with self._lock:
            runtime = self._pods.get(uid)
            if runtime is None:
                names = [c["name"] for c in obj["spec"]["containers"]]
                runtime = PodRuntime(namespace, name, uid, {n: Container(n) for n in names})
                self._pods[uid] = runtime
            return runtime

    def container(self, namespace: str, name: str, container: str | None = None) -> Container:
        """The named container, or the pod's default one (annotation, else the first)."""
        runtime = self.pod(namespace, name)
        if container is None:
            obj = self.store.get(PODS, namespace, name)
            annotations = obj["metadata"].get("annotations") or {}
            container = annotations.get("kubectl.kubernetes.io/default-container") or next(
                iter(runtime.containers)
            )
        found = runtime.containers.get(container)
        if found is None:
            raise errors.bad_request(f"container {container} is not valid for pod {name}")
        return found

    def append_log(self, c: Container, data: bytes, stream: str = "stdout") -> None:
        with self._lock:
            if c.ended:
                raise RuntimeError(f"container {c.name} has exited; its log is closed")
            c.log.append(LogEntry(utcnow(), stream, data))
        c.changed.fire()

    def end_log(self, c: Container) -> None:
        with self._lock:
            c.ended = True
        c.changed.fire()

    def entries(self, c: Container, start: int) -> tuple[list[LogEntry], bool, int]:
        """Log entries from index `start`, whether the log has ended, and the signal count seen."""
        with self._lock:
            return c.log[start:], c.ended, c.changed.seq

    def port_target(self, runtime: PodRuntime, port: int) -> tuple[str, int] | None:
        with self._lock:
            return runtime.ports.get(port)

    def set_port_target(self, runtime: PodRuntime, port: int, address: tuple[str, int] | None) -> None:
        with self._lock:
            if address is None:
                runtime.ports.pop(port, None)
            else:
                runtime.ports[port] = address
