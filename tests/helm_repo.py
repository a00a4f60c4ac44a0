"""A Helm chart repository over HTTPS for the extension tests: real `helm package` and `helm repo
index`, served by a thread with its own CA, as a platform team's private repository would be.

The chart `demo` renders its settings into a ConfigMap and its protected password into a Secret.
Version `1.2.0` carries a pre-upgrade hook the apiserver refuses (an invalid ConfigMap name), so
upgrading to it fails the way a broken hook fails a real upgrade.
"""

from __future__ import annotations

import functools
import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from foundation import pki

TEMPLATE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: demo-settings
data:
  tag: {{ .Values.image.tag | quote }}
  replicas: {{ .Values.replicas | quote }}
  chartVersion: {{ .Chart.Version | quote }}
---
apiVersion: v1
kind: Secret
metadata:
  name: demo-auth
stringData:
  password: {{ .Values.auth.password | default "" | quote }}
"""
FAILING_HOOK = """apiVersion: v1
kind: ConfigMap
metadata:
  name: Not_A_Valid_Name
  annotations:
    helm.sh/hook: pre-upgrade
data:
  broken: "on purpose"
"""


@dataclass
class HelmRepo:
    url: str
    ca_pem: str


def helm() -> str:
    return str(Path(sys.executable).parent / "helm")


def package(root: Path, version: str, failing_hook: bool = False) -> None:
    chart = root / "src" / version / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: demo\nversion: {version}\nappVersion: '{version}'\n"
    )
    (chart / "values.yaml").write_text("replicas: 1\nimage:\n  tag: stable\nauth: {}\n")
    (chart / "templates" / "settings.yaml").write_text(TEMPLATE)
    if failing_hook:
        (chart / "templates" / "hook.yaml").write_text(FAILING_HOOK)
    done = subprocess.run(
        [helm(), "package", str(chart), "--destination", str(root / "repo")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def index(root: Path, url: str) -> None:
    done = subprocess.run(
        [helm(), "repo", "index", str(root / "repo"), "--url", url], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@contextmanager
def serve(root: Path, versions: dict[str, bool]) -> Iterator[HelmRepo]:
    """Package `versions` (version -> has the failing hook) and serve them until the block ends."""
    (root / "repo").mkdir(parents=True, exist_ok=True)
    for version, failing in versions.items():
        package(root, version, failing)
    ca, cert, key = pki.ensure_serving_pair(
        root / "tls", ["127.0.0.1", "localhost"], "test helm repository CA"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root / "repo"))

    class Quiet(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:  # clients that hang up
            pass

    server = Quiet(("127.0.0.1", 0), handler)
    handler.keywords["directory"] = str(root / "repo")
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}"
    index(root, url)
    thread = threading.Thread(target=server.serve_forever, name="helm-repo", daemon=True)
    thread.start()
    try:
        yield HelmRepo(url, Path(ca).read_text())
    finally:
        server.shutdown()
        server.server_close()


def add_version(root: Path, repo: HelmRepo, version: str, failing_hook: bool = False) -> None:
    """Publish another version into a served repository (a new release of the chart)."""
    package(root, version, failing_hook)
    index(root, repo.url)
