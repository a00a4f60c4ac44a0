"""`kubearc cluster troubleshoot`: what is wrong with a connected cluster, and a support bundle.

Each check reads one thing through the kube context or the hub and ends in one
line: `ok` or `problem`, with what to do next. Everything read goes into a
`.tar.gz` bundle (Secrets by name and expiry only, never their data; helm
values with anything secret-looking redacted) that a support engineer can read.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import io
import json
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from foundation.kube import Kube, describe
from kubearc.clusterside import CLUSTER_CONFIG, ConnectError, cluster_config, kube_call
from kubearc.helm import NAMESPACE, Helm, HelmError
from kubearc.onboard import API, IDENTITY_SECRET

AGENTS = ("identity", "metadata", "connect", "guard", "aad-proxy")
SECRET_WORDS = ("secret", "password", "token", "key")


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok     ' if self.ok else 'problem'}  {self.check}: {self.detail}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    bundle: dict[str, Any] = field(default_factory=dict)

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.findings.append(Finding(check, ok, detail))

    @property
    def healthy(self) -> bool:
        return all(f.ok for f in self.findings)

    def write(self, path: Path) -> None:
        with tarfile.open(path, "w:gz") as tar:
            files = {**self.bundle, "summary.txt": "\n".join(f.line() for f in self.findings) + "\n"}
            for name, content in files.items():
                data = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
                raw = data.encode()
                info = tarfile.TarInfo(f"kubearc-troubleshoot/{name}")
                info.size, info.mtime, info.mode = len(raw), int(time.time()), 0o600
                tar.addfile(info, io.BytesIO(raw))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "REDACTED" if any(w in k.lower() for w in SECRET_WORDS) else _redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def troubleshoot(resource_id: str, hub: httpx.Client, kube: Kube, helm: Helm) -> Report:
    report = Report()
    core = client.CoreV1Api(kube.api)
    apps = client.AppsV1Api(kube.api)
    kube_call(
        "cannot reach the cluster's apiserver (check --kube-config / --kube-context)",
        client.VersionApi(kube.api).get_code,
    )

    # The hub's view, and the clock against the hub's.
    try:
        response = hub.get(resource_id, params=API)
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach the hub: {exc}") from None
    if response.status_code == 404:
        raise ConnectError(f"{resource_id} does not exist on the hub")
    resource = response.json()
    report.bundle["hub-resource.json"] = resource
    props = resource.get("properties") or {}
    status = props.get("connectivityStatus")
    report.add(
        "hub",
        status == "Connected",
        f"{status}, last heartbeat {props.get('lastConnectivityTime') or 'never'}"
        + ("" if status == "Connected" else "; the metadata agent's heartbeats do not arrive"),
    )
    if "date" in response.headers:
        skew = (
            dt.datetime.now(dt.UTC) - email.utils.parsedate_to_datetime(response.headers["date"])
        ).total_seconds()
        report.add(
            "clock", abs(skew) < 60, f"{skew:+.0f}s against the hub" + ("" if abs(skew) < 60 else "; fix NTP")
        )

    # The cluster belongs to this resource.
    try:
        data, missing = cluster_config(core), f"{NAMESPACE}/{CLUSTER_CONFIG} is missing"
    except ConnectError as exc:
        data, missing = None, str(exc)
    if data is None:
        report.add("cluster", False, f"{missing}; run `kubearc connect` again")
    else:
        report.bundle["azure-clusterconfig.json"] = data
        belongs = data.get("AZURE_RESOURCE_ID", "")
        detail = f"{NAMESPACE}/{CLUSTER_CONFIG} names {belongs}"
        report.add("cluster", belongs.lower() == resource_id.lower(), detail)

    # The release.
    try:
        release = helm.release()
        report.bundle["helm-release.json"] = release
        if release is None:
            report.add("helm", False, "no kubearc release; run `kubearc connect` again")
        else:
            detail = f"release {release['name']} revision {release['revision']} {release['status']}"
            report.add("helm", release.get("status") == "deployed", detail)
    except HelmError as exc:
        report.add("helm", False, str(exc))

    # The agents.
    listed = apps.list_namespaced_deployment(NAMESPACE).items
    deployments = {d.metadata.name: d for d in listed if d.metadata is not None}
    report.bundle["deployments.json"] = [api_dict(d) for d in deployments.values()]
    for agent in AGENTS:
        deployment = deployments.get(f"kubearc-{agent}")
        if deployment is None:
            continue
        wanted = deployment.spec.replicas if deployment.spec and deployment.spec.replicas is not None else 1
        ready = (deployment.status.ready_replicas or 0) if deployment.status else 0
        ok = wanted >= 1 and ready >= wanted
        restarts, last_error = _pods(core, agent, report)
        hint = "" if ok else f"; see `kubectl -n {NAMESPACE} describe deploy kubearc-{agent}` and its logs"
        if not ok and last_error:
            hint += f"; its last error: {last_error[:300]}"
        report.add(f"agent {agent}", ok, f"{ready}/{wanted} ready, {restarts} restarts{hint}")
    try:
        report.bundle["events.json"] = [api_dict(e) for e in core.list_namespaced_event(NAMESPACE).items]
    except ApiException as exc:
        report.bundle["events.json"] = {"error": describe(exc)}

    # The identity certificate.
    try:
        secret = core.read_namespaced_secret(IDENTITY_SECRET, NAMESPACE)
        pem = _secret_cert(secret.data or {})
        if pem is None:
            report.add("identity", False, f"Secret {IDENTITY_SECRET} holds no certificate")
        else:
            cert = x509.load_pem_x509_certificate(pem)
            left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
            report.add(
                "identity",
                left > dt.timedelta(days=7),
                f"certificate valid until {cert.not_valid_after_utc:%Y-%m-%d} ({left.days} days)",
            )
            report.bundle["identity.json"] = {
                "notAfter": cert.not_valid_after_utc,
                "subject": cert.subject.rfc4514_string(),
            }
    except ApiException as exc:
        report.add(
            "identity",
            False,
            f"Secret {NAMESPACE}/{IDENTITY_SECRET}: {describe(exc)}; the identity agent has not obtained "
            f"the certificate (check `kubectl -n {NAMESPACE} logs deploy/kubearc-identity`)",
        )

    # Proxy settings the agents run with.
    try:
        values = _redact(json.loads(helm.values_json()))
        report.bundle["helm-values.json"] = values
        proxy = (values or {}).get("proxy") or {}
        report.add(
            "proxy",
            True,
            f"https {proxy.get('https') or 'none'}, no_proxy {proxy.get('noProxy') or 'default'}",
        )
    except (HelmError, ValueError) as exc:
        report.add("proxy", False, f"cannot read the release's values: {exc}")
    _reachability(core, report)
    return report


def _reachability(core: client.CoreV1Api, report: Report) -> None:
    """DNS, TCP and TLS to the hub and the relay as an agent's pod sees them: `kubearc agent diagnose`
    executed in the connect agent's pod (the metadata agent's when cluster connect is off)."""
    from kubernetes.stream import stream

    for agent in ("connect", "metadata"):
        try:
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/component={agent}")
        except ApiException:
            continue
        running = [p for p in pods.items if p.status and p.status.phase == "Running" and p.metadata]
        if running:
            break
    else:
        report.add("network", False, "no running agent pod to check the hub and relay from")
        return
    meta = running[0].metadata
    pod = str(meta.name if meta else "")
    try:
        session = stream(
            core.connect_get_namespaced_pod_exec,
            pod,
            NAMESPACE,
            command=["kubearc", "agent", "diagnose"],
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
            _preload_content=False,
        )
        session.run_forever(timeout=60)
        out, err = session.read_stdout(), session.read_stderr()
        session.close()
    except (ApiException, OSError, ValueError) as exc:
        report.add("network", False, f"cannot run `kubearc agent diagnose` in pod {pod}: {exc}")
        return
    checks = []
    for line in out.splitlines():
        try:
            checks.append(json.loads(line))
        except ValueError:
            continue
    report.bundle["network.json"] = {"pod": pod, "checks": checks, "stderr": err}
    if not checks:
        last = (err.strip().splitlines() or ["nothing on stderr"])[-1]
        report.add("network", False, f"`kubearc agent diagnose` in pod {pod} printed no checks: {last[:300]}")
    for check in checks:
        report.add(
            f"network {check.get('check')}", bool(check.get("ok")), f"from {pod}: {check.get('detail')}"
        )


def _pods(core: client.CoreV1Api, agent: str, report: Report) -> tuple[int, str]:
    """The agent's restarts and its log's last error or warning line; its logs go into the bundle."""
    restarts, last_error = 0, ""
    try:
        pods = core.list_namespaced_pod(
            NAMESPACE, label_selector=f"app.kubernetes.io/component={agent}"
        ).items
    except ApiException as exc:
        report.bundle[f"logs/{agent}/error.txt"] = f"cannot list its pods: {describe(exc)}"
        return 0, ""
    for pod in pods:
        name = (pod.metadata.name if pod.metadata else None) or ""
        for status in (pod.status.container_statuses or []) if pod.status else []:
            restarts += status.restart_count or 0
        try:
            log = core.read_namespaced_pod_log(name, NAMESPACE, tail_lines=200)
        except ApiException as exc:
            report.bundle[f"logs/{agent}/{name}.error.txt"] = f"cannot read its log: {describe(exc)}"
            continue
        report.bundle[f"logs/{agent}/{name}.log"] = log
        for line in reversed(log.splitlines()):
            if any(word in line.lower() for word in ("error", "warning")):
                last_error = last_error or line.strip()
                break
    return restarts, last_error


def _secret_cert(data: dict[str, Any]) -> bytes | None:
    import base64

    for key in ("tls.crt", "certificate", "cert.pem"):
        if key in data:
            return base64.b64decode(data[key])
    return None


def api_dict(obj: Any) -> Any:
    return client.ApiClient().sanitize_for_serialization(obj)
