"""How a guard server listens, and the time budget of one review.

Reviews are served over mutual TLS on `port`: the TLS handshake itself refuses
callers without a certificate from `client_ca` (ssl CERT_REQUIRED), because
uvicorn does not show the peer certificate to the application, and a check done
by the handshake cannot be forgotten by a handler. Probes and metrics, which
kubelet and Prometheus fetch without client certificates, are served in plain
HTTP on `health_port` (bind it to the pod IP or 127.0.0.1, never expose it).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from foundation import pki
from foundation.gate import Limits, serving_context
from guard.errors import OptionsError


@dataclass
class GuardConfig:
    tls_cert: Path
    tls_key: Path
    client_ca: Path
    # The apiserver calls the webhook; 127.0.0.1 suits an apiserver on the same host (static pod,
    # host network). In a cluster, listen on the pod IP or 0.0.0.0 behind a Service.
    host: str = "127.0.0.1"
    port: int = 8445  # not the hub's 8443: both may run on one machine
    health_host: str = "127.0.0.1"
    health_port: int = 8080
    # One deadline per review, well under the apiserver's webhook timeout (default 30 s, and what the
    # AuthorizationConfiguration sets): past it the authorizer's failure policy answers, never a 5xx.
    deadline: float = 3.0
    max_body: int = 1024 * 1024
    # What callers may hold on the review port before their first request (foundation.gate).
    limits: Limits = field(default_factory=Limits)

    def validate(self) -> None:
        """The serving pair and the client CA are readable PEM and belong together, checked before
        anything listens; an `OptionsError` names the flag and the file (ssl's own errors name neither)."""
        cert = _read(self.tls_cert, "--tls-cert")
        key = _read(self.tls_key, "--tls-key")
        client_ca = _read(self.client_ca, "--client-ca")
        _certificates(cert, self.tls_cert, "--tls-cert")
        try:
            pki.load_private_key(key)
        except (ValueError, TypeError) as exc:  # TypeError: an encrypted key (guard has no passphrase)
            raise OptionsError("--tls-key", f"{self.tls_key} is not a PEM private key: {exc}") from None
        _certificates(client_ca, self.client_ca, "--client-ca")
        try:
            serving_context(self.tls_cert, self.tls_key, client_ca=self.client_ca)
        except ssl.SSLError as exc:
            raise OptionsError(
                "--tls-key", f"{self.tls_key} is not the key of {self.tls_cert} ({exc.reason or exc})"
            ) from None


def _read(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OptionsError(flag, f"cannot read {path}: {exc.strerror or exc}") from None


def _certificates(pem: bytes, path: Path, flag: str) -> None:
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise OptionsError(flag, f"{path} holds no PEM certificate") from None
