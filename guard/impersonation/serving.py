"""The kube-aad-proxy's serving certificate: issued by the hub, kept on disk for ssl, renewed in place.

At start the proxy asks the hub, with the cluster's identity, for a certificate
for a fresh key (which also switches the cluster's `listClusterUserCredential`
to this proxy's CA and server name); `run()` renews it half-way through its
life, as the hub's `renewAfter` says, and loads it into the serving context, so
new handshakes get the new certificate while open connections carry on. How to
ask the hub is given (`Issue`): guard does not speak the agents' API itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from foundation import pki
from foundation.gate import serving_context

log = logging.getLogger("kubearc.guard.proxy")
RETRY_AFTER = dt.timedelta(minutes=5)  # after a failed renewal
SHORTEST_WAIT = 60.0


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    renew_after: dt.datetime
    server_name: str  # the name kubectl is told to expect (`tls-server-name`)


Issue = Callable[[pki.PrivateKey], Awaitable[Issued]]


class ServingCertificate:
    """The certificate files (ssl wants files) in a private directory, and the context serving them."""

    def __init__(self, issue: Issue) -> None:
        self.issue = issue
        self.directory = Path(tempfile.mkdtemp(prefix="kubearc-aad-proxy-"))  # mode 0700
        self.cert, self.key = self.directory / "tls.crt", self.directory / "tls.key"
        self.server_name = ""
        self.renew_after = dt.datetime.now(dt.UTC)
        self.tls: ssl.SSLContext | None = None

    async def fetch(self) -> ssl.SSLContext:
        """A certificate for a fresh key, written and loaded; the serving context (made once)."""
        key = pki.new_key()
        issued = await self.issue(key)
        pki.KeyPair(key, issued.certificate).write(self.cert, self.key)
        self.server_name, self.renew_after = issued.server_name, issued.renew_after
        if self.tls is None:
            self.tls = serving_context(str(self.cert), str(self.key))
        else:
            self.tls.load_cert_chain(self.cert, self.key)  # new handshakes get the new certificate
        return self.tls

    async def run(self) -> None:
        """Renew whenever due, for ever; a failed renewal keeps the current certificate and retries."""
        while True:
            wait = (self.renew_after - dt.datetime.now(dt.UTC)).total_seconds()
            await asyncio.sleep(max(SHORTEST_WAIT, wait))
            try:
                await self.fetch()
                log.info("serving certificate renewed", extra={"renewAfter": self.renew_after.isoformat()})
            except Exception as exc:  # the hub's client is given: whatever it raises, try again later
                log.warning("cannot renew the serving certificate", extra={"error": str(exc)[:300]})
                self.renew_after = dt.datetime.now(dt.UTC) + RETRY_AFTER

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
