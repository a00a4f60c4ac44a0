"""A node for the apiserver stand-in: runs the Deployments it holds as local processes, one pod each.

What helm applied is what runs: each container's command and args (the image's
entrypoint is `kubearc`), its env (`value`, `fieldRef`, `configMapKeyRef`,
`secretKeyRef` resolved against the stand-in), its ConfigMap, Secret and
emptyDir volumes mounted at their mount paths, and the service account token
projected at the standard path; `KUBERNETES_SERVICE_HOST`/`PORT` point at the
stand-in. Each pod gets its own network namespace on a bridge (so every agent
may listen on the chart's probe port, as in a cluster) and a private mount
namespace (so the paths are exact). Readiness probes are run from the node and
reported in the Deployment's status, as the kubelet and the controller would.

Needs root and iproute2; `available()` says whether this machine has them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.apiserver import ApiServer
from tests.apiserver.resources import SECRETS
from tests.apiserver.workloads import CONFIGMAPS, DEPLOYMENTS, PODS

BRIDGE = "kubearc0"
_HOSTS_HEAD = "127.0.0.1 localhost\n::1 localhost\n"
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def available() -> str | None:
    """None when pods can run here, else why not."""
    if os.geteuid() != 0:
        return "the node emulator needs root (network and mount namespaces)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"the node emulator needs {tool} (iproute2, util-linux)"
    probe = subprocess.run(["ip", "netns", "add", "kubearc-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespaces are unavailable: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "kubearc-probe"], capture_output=True)
    return None


def sh(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass
class Pod:
    namespace: str
    deployment: str
    generation: int
    index: int
    ip: str
    process: subprocess.Popen[bytes]
    directory: Path
    probe: tuple[str, int] | None  # readinessProbe httpGet path and port
    log: Path
    made_dirs: list[Path] = field(default_factory=list)
    name: str = ""  # the Pod object shown to kubectl
    container: str = ""
    offset: int = 0  # how much of the container's output kubectl has been given

    @property
    def netns(self) -> str:
        return f"kpod{self.index}"


class NodeEmulator:
    """Keeps one process per Deployment of the stand-in running, restarted when the Deployment changes."""

    def __init__(self, api: ApiServer, node_ip: str, subnet: str = "10.77.0") -> None:
        self.api, self.node_ip, self.subnet = api, node_ip, subnet
        self.pods: dict[tuple[str, str], Pod] = {}
        # Not under /tmp: the chart mounts an emptyDir there, which would hide the pods' own files.
        self.root = Path(tempfile.mkdtemp(prefix="kubearc-node-", dir="/var/tmp"))
        # Cluster DNS for the pods: one hosts file, rewritten in place (bind mounts follow the inode)
        # as Services gain and lose pods, and mounted over every pod's /etc/hosts.
        self.hosts = self.root / "hosts"
        self.hosts.write_text(_HOSTS_HEAD)
        self._free = list(range(10, 250))
        self._reporting = threading.local()  # set while this node writes a Deployment's status
        self._reporting.active = False
        self._made: set[Path] = set()  # mount points made on the host for pods' volumes
        self._mounted: dict[Path, int] = {}  # how many running pods mount each of them
        self.restarts: dict[tuple[str, str], int] = {}
        self._crashed: dict[tuple[str, str], str] = {}  # the Pod a crashed container restarts in
        self._restart_at: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="node-emulator", daemon=True)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> NodeEmulator:
        self.api.store.mutators.append(self._deployment_status)
        self._thread.start()
        return self

    def _deployment_status(self, rt: Any, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """A Deployment's status is what its pod does, not the stand-in's "every replica is up at
        once": a new generation is unobserved and unready until this node has run it."""
        if rt is not DEPLOYMENTS or getattr(self._reporting, "active", False):
            return
        meta = obj["metadata"]
        pod = self.pods.get((meta.get("namespace", ""), meta["name"]))
        previous = (old or {}).get("status") or {}
        if pod is not None and pod.generation == meta.get("generation", 1) and previous:
            obj["status"] = previous  # nothing this node has to do: keep what it reported
            return
        wanted = int((obj.get("spec") or {}).get("replicas", 1))
        observed = pod.generation if pod is not None else 0
        obj["status"] = {"observedGeneration": observed, "replicas": wanted, "readyReplicas": 0}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        for pod in self.pods.values():  # all at once: each may take seconds to drain its work
            if pod.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.process.pid, 15)
        for key in list(self.pods):
            self._kill(key)
        shutil.rmtree(self.root, ignore_errors=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.sync()
            except Exception as exc:  # keep the node alive; the test sees what the pods did
                print(f"node emulator: {exc!r}", file=sys.stderr)

    def sync(self) -> None:
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for obj in self.api.store.list_all("apps", "deployments"):
            meta = obj["metadata"]
            if (obj.get("spec") or {}).get("replicas", 1) >= 1:
                wanted[(meta["namespace"], meta["name"])] = obj
        for key in list(self.pods):
            changed = wanted.get(key)
            if changed is None or changed["metadata"].get("generation", 1) != self.pods[key].generation:
                self._kill(key)
        now = time.monotonic()
        for key, obj in wanted.items():
            pod = self.pods.get(key)
            if pod is not None and pod.process.poll() is not None:  # exited: restart with a backoff
                self._forward_logs(pod)
                self._crashed[key] = pod.name  # the kubelet restarts the container in the same Pod
                self._kill(key, keep_pod=True)
                self.restarts[key] = self.restarts.get(key, 0) + 1
                self._restart_at[key] = now + min(10.0, 0.5 * 2 ** self.restarts[key])
                pod = None
            if pod is None and now >= self._restart_at.get(key, 0):
                self.pods[key] = self._run(obj, self._crashed.pop(key, None))
            if key in self.pods:
                self._report(key, obj)
        self._publish_services()

    def _publish_services(self) -> None:
        lines = [_HOSTS_HEAD]
        for service in self.api.store.list_all("", "services"):
            meta = service["metadata"]
            name = f"{meta['name']}.{meta['namespace']}.svc"
            address = self.service_address(name)
            if address:
                lines.append(f"{address} {name} {name}.cluster.local\n")
        text = "".join(lines)
        if self.hosts.read_text() != text:
            with self.hosts.open("r+") as f:  # in place: the pods' bind mounts hold this inode
                f.write(text)
                f.truncate()

    def service_address(self, host: str) -> str | None:
        """The pod address behind `NAME.NAMESPACE.svc[.cluster.local]`, or None: what cluster DNS and
        kube-proxy give a process on the node. Only a Service whose port equals its pod's container
        port is served (no port translation here), which the chart's Services are."""
        parts = host.split(".")
        if len(parts) not in (3, 5) or parts[2] != "svc":
            return None
        service = self.api.store.find("", "services", parts[1], parts[0])
        selector = ((service or {}).get("spec") or {}).get("selector") or {}
        if not selector:
            return None
        for (namespace, name), pod in list(self.pods.items()):
            deployment = self.api.store.find("apps", "deployments", namespace, name) or {}
            template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
            labels = template.get("labels") or {}
            alive = pod.process.poll() is None
            if namespace == parts[1] and alive and all(labels.get(k) == v for k, v in selector.items()):
                return pod.ip
        return None

    def logs(self, deployment: str, namespace: str = "azure-arc") -> str:
        """Everything the deployment's containers printed, restarts included."""
        log = self.root / "logs" / f"{namespace}_{deployment}.log"
        return log.read_text(errors="replace") if log.exists() else ""

    # ---- one pod --------------------------------------------------------------------------------

    def _network(self, index: int) -> str:
        ip = f"{self.subnet}.{index}"
        ns, host_end = f"kpod{index}", f"kv{index}"
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", host_end, "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", self.node_ip)
        return ip

    def _value(self, namespace: str, source: dict[str, Any], pod: dict[str, str]) -> str | None:
        if "fieldRef" in source:
            return pod.get(source["fieldRef"]["fieldPath"])
        for kind, rt, decode in (("configMapKeyRef", CONFIGMAPS, False), ("secretKeyRef", SECRETS, True)):
            if kind in source:
                ref = source[kind]
                obj = self.api.store.find(rt.group, rt.plural, namespace, ref["name"]) or {}
                raw = (obj.get("data") or {}).get(ref["key"])
                if raw is None:
                    return None
                return base64.b64decode(raw).decode() if decode else str(raw)
        return None

    def _volume(self, namespace: str, volume: dict[str, Any], into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        for kind, rt, decode, name_key in (
            ("configMap", CONFIGMAPS, False, "name"),
            ("secret", SECRETS, True, "secretName"),
        ):
            if kind in volume:
                obj = self.api.store.find(rt.group, rt.plural, namespace, volume[kind][name_key]) or {}
                for key, value in (obj.get("data") or {}).items():
                    data = base64.b64decode(value) if decode else str(value).encode()
                    (into / key).write_bytes(data)
        os.chmod(into, 0o777 if "emptyDir" in volume else 0o755)

    def _run(self, deployment: dict[str, Any], same_pod: str | None = None) -> Pod:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        namespace, spec = meta["namespace"], template["spec"]
        container = spec["containers"][0]
        index = self._free.pop(0)
        ip = self._network(index)
        directory = self.root / f"{meta['name']}-{index}"
        sa = spec.get("serviceAccountName", "default")
        token = secrets.token_urlsafe(32)
        self.api.add_token(token, f"system:serviceaccount:{namespace}:{sa}")
        (directory / "sa").mkdir(parents=True)
        (directory / "sa" / "token").write_text(token)
        (directory / "sa" / "ca.crt").write_bytes(self.api.ca_pem)
        (directory / "sa" / "namespace").write_text(namespace)
        pod_fields = {
            "metadata.namespace": namespace,
            "metadata.name": f"{meta['name']}-{index}",
            "spec.serviceAccountName": sa,
            "status.podIP": ip,
        }
        env = {"PATH": os.environ["PATH"], "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
        env |= {"KUBERNETES_SERVICE_HOST": self.node_ip, "KUBERNETES_SERVICE_PORT": str(self.api.port)}
        for item in container.get("env") or []:
            value = (
                item.get("value")
                if "value" in item
                else self._value(namespace, item["valueFrom"], pod_fields)
            )
            if value is not None:
                env[item["name"]] = value
        mounts = [(directory / "sa", SA_PATH)]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        made: list[Path] = []
        for mount in container.get("volumeMounts") or []:
            source = directory / "volumes" / mount["name"]
            self._volume(namespace, volumes[mount["name"]], source)
            target = Path(mount["mountPath"])
            if not target.exists():
                target.mkdir(parents=True)
                self._made.add(target)
            if target in self._made:
                made.append(target)
                self._mounted[target] = self._mounted.get(target, 0) + 1
            mounts.append((source, str(target)))
        command = container.get("command") or [sys.executable, "-m", "kubearc.cli"]
        if command == ["kubearc"]:
            command = [sys.executable, "-m", "kubearc.cli"]
        argv = [*command, *(container.get("args") or [])]
        script = ["mkdir -p /var/run/secrets", "mount -t tmpfs tmpfs /var/run/secrets", f"mkdir -p {SA_PATH}"]
        script.append(f"mount --bind {shlex.quote(str(self.hosts))} /etc/hosts")
        # The "image" is this machine's filesystem: a volume mounted where the checkout or its venv
        # lives (the chart's /tmp, with a checkout under /tmp) must not hide them from the process.
        keep = sorted(
            {Path(__file__).resolve().parents[1], Path(sys.prefix).resolve()}, key=lambda p: len(p.parts)
        )
        for src, dst in mounts:
            hidden = [k for k in keep if k.is_relative_to(dst)]
            holds = [self.root / "holds" / f"{index}-{n}" for n in range(len(hidden))]
            for path, hold in zip(hidden, holds, strict=True):
                hold.mkdir(parents=True, exist_ok=True)
                script.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(hold))}")
            script.append(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}")
            for path, hold in zip(hidden, holds, strict=True):
                script.append(f"mkdir -p {shlex.quote(str(path))}")
                script.append(f"mount --bind {shlex.quote(str(hold))} {shlex.quote(str(path))}")
        script.append('exec "$@"')
        log = self.root / "logs" / f"{namespace}_{meta['name']}.log"
        log.parent.mkdir(exist_ok=True)
        root = Path(__file__).resolve().parents[1]
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                f"kpod{index}",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                " && ".join(script),
                "pod",
                *argv,
            ],
            cwd=root,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        probe = None
        readiness = (container.get("readinessProbe") or {}).get("httpGet")
        if readiness:
            port = readiness["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port)
            probe = (readiness.get("path", "/"), int(port))
        pod_name = same_pod or f"{meta['name']}-{secrets.token_hex(4)}"
        labels = (template.get("metadata") or {}).get("labels") or {}
        if same_pod is None or self.api.store.find("", "pods", namespace, same_pod) is None:
            self.api.add_pod(
                pod_name,
                namespace,
                containers=[container["name"]],
                image=container.get("image", ""),
                labels=labels,
            )
        pod = Pod(
            namespace,
            meta["name"],
            meta.get("generation", 1),
            index,
            ip,
            process,
            directory,
            probe,
            log,
            made,
        )
        pod.name, pod.container = pod_name, container["name"]
        pod.offset = log.stat().st_size if log.exists() else 0  # earlier runs' output was given already
        runtime = self.api.kubelet.container(namespace, pod_name, pod.container)
        runtime.runner = _runner(process, env, root)
        return pod

    def _forward_logs(self, pod: Pod) -> None:
        """What the process printed since last time, into its Pod's log (`kubectl logs`)."""
        try:
            with pod.log.open("rb") as f:
                f.seek(pod.offset)
                data = f.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        if complete:
            pod.offset += len(complete)
            self.api.append_log(pod.namespace, pod.name, *complete.splitlines(), container=pod.container)

    def _report(self, key: tuple[str, str], deployment: dict[str, Any]) -> None:
        pod = self.pods[key]
        self._forward_logs(pod)
        ready = pod.process.poll() is None
        if ready and pod.probe is not None:
            try:
                ready = (
                    httpx.get(f"http://{pod.ip}:{pod.probe[1]}{pod.probe[0]}", timeout=1).status_code < 400
                )
            except httpx.HTTPError:
                ready = False
        status = {
            "observedGeneration": pod.generation,
            "replicas": 1,
            "updatedReplicas": 1,
            "readyReplicas": 1 if ready else 0,
            "availableReplicas": 1 if ready else 0,
        }
        if (deployment.get("status") or {}) != status:
            current = self.api.store.find("apps", "deployments", key[0], key[1])
            if current is not None:
                self._reporting.active = True  # this write is the node's own report
                try:
                    self.api.store.replace(
                        DEPLOYMENTS, key[0], key[1], {**current, "status": status}, subresource="status"
                    )
                finally:
                    self._reporting.active = False

    def _kill(self, key: tuple[str, str], keep_pod: bool = False) -> None:
        pod = self.pods.pop(key)
        if pod.name and not keep_pod:
            with contextlib.suppress(Exception):  # already gone (a test deleted it)
                self.api.store.delete(PODS, pod.namespace, pod.name)
        if pod.process.poll() is None:
            os.killpg(pod.process.pid, 15)
            try:
                pod.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(pod.process.pid, 9)
                pod.process.wait(5)
        subprocess.run(["ip", "netns", "del", pod.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", f"kv{pod.index}"], capture_output=True)
        shutil.rmtree(pod.directory, ignore_errors=True)
        self._free.append(pod.index)
        # A mount point this emulator made goes when no pod mounts it any more: removing it while
        # another pod's mount namespace has a volume there would detach that volume (Linux >= 3.18).
        for made in reversed(pod.made_dirs):
            self._mounted[made] -= 1
            if self._mounted[made] == 0:
                del self._mounted[made]
                self._made.discard(made)
                with contextlib.suppress(OSError):
                    made.rmdir()


def _runner(process: subprocess.Popen[bytes], env: dict[str, str], cwd: Path) -> Any:
    """`kubectl exec` into the pod: the command in the process's network and mount namespaces, with
    the container's environment (`kubearc` is the image's entrypoint, here this checkout's CLI).
    Once the process has exited, exec fails as it does for a container that is not running (its
    pid may already belong to another process)."""

    def argv(command: list[str]) -> list[str]:
        if process.poll() is not None:
            return ["sh", "-c", "echo 'error: container not running (restarting)' >&2; exit 126"]
        if command[:1] == ["kubearc"]:
            command = [sys.executable, "-m", "kubearc.cli", *command[1:]]
        variables = [f"{k}={v}" for k, v in env.items()]
        target = ["nsenter", "-t", str(process.pid), "-m", "-n", f"--wd={cwd}"]
        return [*target, "--", "env", "-i", *variables, *command]

    return argv


def bridge(node_ip: str) -> None:
    """The node's bridge, with the node's address: pods reach the stand-in and the hub through it."""
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{node_ip}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def remove_bridge() -> None:
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


@contextlib.contextmanager
def exclusive_network() -> Iterator[None]:
    """Hold the machine's node network (bridge, addresses, namespaces) for one test at a time.

    Two test runs on one machine would otherwise tear down each other's bridge.
    """
    with open("/run/kubearc-node-network.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
