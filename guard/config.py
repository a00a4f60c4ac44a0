"""How a guard server listens, and the time budget of one review.

Reviews are served over mutual TLS on `port`: the TLS handshake itself refuses
callers without a certificate from `client_ca` (ssl CERT_REQUIRED), because
uvicorn does not show the peer certificate to the application, and a check done
by the handshake cannot be forgotten by a handler. Probes and metrics, which
kubelet and Prometheus fetch without client certificates, are served in plain
HTTP on `health_port` (bind it to the pod IP or 127.0.0.1, never expose it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from foundation.gate import Limits


@dataclass
class GuardConfig:
    tls_cert: Path
    tls_key: Path
    client_ca: Path
    # The apiserver calls the webhook; 127.0.0.1 suits an apiserver on the same host (static pod,
    # host network). In a cluster, listen on the pod IP or 0.0.0.0 behind a Service.
    host: str = "127.0.0.1"
    port: int = 8443
    health_host: str = "127.0.0.1"
    health_port: int = 8080
    # One deadline per review, well under the apiserver's webhook timeout (default 30 s, and what the
    # AuthorizationConfiguration sets): past it the authorizer's failure policy answers, never a 5xx.
    deadline: float = 3.0
    max_body: int = 1024 * 1024
    # What callers may hold on the review port before their first request (foundation.gate).
    limits: Limits = field(default_factory=Limits)
