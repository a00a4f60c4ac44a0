"""Where the cluster's identity certificate lives: a Kubernetes Secret or a directory.

Both hold `tls.crt`, `tls.key` and `ca.crt` (the Secret is `kubernetes.io/tls`,
Arc's `azure-arc/azure-identity-certificate` by default), and both are replaced
in one atomic step, so a reader never sees a certificate with another's key:
the Secret by one update guarded by its resourceVersion, the directory by
swapping a `..data` symlink, the layout kubelet uses for mounted Secrets (so a
pod can read either the same way).

Specs: `secret:NAMESPACE/NAME` (or `secret:NAME` in `azure-arc`) and `file:DIR`.
The onboarding key is read from a PEM file, or from `secret:NAMESPACE/NAME`
under the data key `privateKey` (`tls.key` is accepted too).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from kubernetes import client
from kubernetes.client.rest import ApiException

from foundation import pki
from foundation.kube import Kube, KubeError, describe

DEFAULT_NAMESPACE = "azure-arc"
DEFAULT_IDENTITY_SECRET = "azure-identity-certificate"
ONBOARDING_KEY_FIELDS = ("privateKey", "tls.key")
RENEW_AFTER = "kubearc.io/renew-after"
RESOURCE_ID = "kubearc.io/resource-id"


class StoreError(Exception):
    """The store holds something unusable, or cannot be written (a permanent problem)."""


class StoreConflict(Exception):
    """Someone else replaced the identity between our read and our write; read again."""


@dataclass(frozen=True)
class StoredIdentity:
    pair: pki.KeyPair
    ca: x509.Certificate
    renew_after: dt.datetime
    resource_id: str | None = None

    @property
    def not_after(self) -> dt.datetime:
        return self.pair.cert.not_valid_after_utc


def default_renew_after(cert: x509.Certificate) -> dt.datetime:
    """Half-way through the validity, when the store did not record the hub's renewAfter."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) / 2


def _parse(
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes,
    renew_after: str | None,
    resource_id: str | None,
    where: str,
) -> StoredIdentity:
    try:
        pair = pki.KeyPair(pki.load_private_key(key_pem), pki.load_cert(cert_pem))
        ca = pki.load_cert(ca_pem)
    except ValueError as exc:
        raise StoreError(f"{where} does not hold a usable certificate, key and CA: {exc}") from None
    if pair.key.public_key() != pair.cert.public_key():
        raise StoreError(f"{where}: tls.key does not match tls.crt")
    when = default_renew_after(pair.cert)
    if renew_after:
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(renew_after.replace("Z", "+00:00"))
    return StoredIdentity(pair, ca, when if when.tzinfo else when.replace(tzinfo=dt.UTC), resource_id)


class IdentityStore(Protocol):
    description: str

    async def load(self) -> StoredIdentity | None: ...

    async def save(self, identity: StoredIdentity) -> None: ...


class FileStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.description = f"directory {directory}"

    def _read(self) -> StoredIdentity | None:
        data = self.directory / "..data"
        base = Path(os.path.realpath(data)) if data.exists() else self.directory  # one consistent snapshot
        try:
            cert, key, ca = ((base / n).read_bytes() for n in ("tls.crt", "tls.key", "ca.crt"))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.description}: {exc}") from None
        try:
            meta = json.loads((base / "identity.json").read_text())
        except (OSError, ValueError):
            meta = {}
        return _parse(cert, key, ca, meta.get("renewAfter"), meta.get("resourceId"), self.description)

    async def load(self) -> StoredIdentity | None:
        return await asyncio.to_thread(self._read)

    def _write(self, identity: StoredIdentity) -> None:
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
            snapshot = Path(tempfile.mkdtemp(prefix="..", dir=d))
            (snapshot / "tls.crt").write_bytes(identity.pair.cert_pem)
            pki.write_private(snapshot / "tls.key", identity.pair.key_pem)
            (snapshot / "ca.crt").write_bytes(pki.cert_to_pem(identity.ca))
            meta = {"renewAfter": identity.renew_after.isoformat(), "resourceId": identity.resource_id}
            (snapshot / "identity.json").write_text(json.dumps(meta))
            for f in snapshot.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _replace_symlink(d / "..data", snapshot.name)
            for name in ("tls.crt", "tls.key", "ca.crt", "identity.json"):
                link = d / name
                if not (link.is_symlink() and os.readlink(link) == f"..data/{name}"):
                    _replace_symlink(link, f"..data/{name}")
            _fsync_dir(d)
            keep = ("..data", snapshot.name)
            for stale in d.iterdir():  # earlier snapshots, and leftovers of an interrupted write
                if stale.name.startswith("..") and stale.name not in keep and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
        except OSError as exc:
            raise StoreError(f"cannot write {self.description}: {exc}") from None

    async def save(self, identity: StoredIdentity) -> None:
        await asyncio.to_thread(self._write, identity)


def _replace_symlink(path: Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)  # rename(2) is atomic: readers see the old link or the new one


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _b64(data: Mapping[str, Any] | None, key: str) -> bytes | None:
    value = (data or {}).get(key)
    try:
        return base64.b64decode(value, validate=True) if value else None
    except (binascii.Error, ValueError, TypeError):
        raise StoreError(f"data key {key!r} is not valid base64") from None


class SecretStore:
    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.description = f"secret {namespace}/{name}"
        self._resource_version: str | None = None

    async def _read_secret(self) -> client.V1Secret | None:
        def read(api: client.ApiClient) -> client.V1Secret | None:
            try:
                return client.CoreV1Api(api).read_namespaced_secret(self.name, self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status in (401, 403):
                    raise KubeError(f"cannot read {self.description}: {describe(exc)}") from None
                raise

        return await self.kube.call(read, f"read {self.description}")

    async def load(self) -> StoredIdentity | None:
        secret = await self._read_secret()
        meta = secret.metadata if secret is not None else None
        self._resource_version = meta.resource_version if meta is not None else None
        if secret is None:
            return None
        cert, key, ca = (_b64(secret.data, k) for k in ("tls.crt", "tls.key", "ca.crt"))
        if not (cert and key and ca):
            raise StoreError(f"{self.description} lacks tls.crt, tls.key or ca.crt")
        notes = (meta.annotations if meta is not None else None) or {}
        return _parse(cert, key, ca, notes.get(RENEW_AFTER), notes.get(RESOURCE_ID), self.description)

    def _body(self, identity: StoredIdentity) -> client.V1Secret:
        notes = {RENEW_AFTER: identity.renew_after.isoformat()}
        if identity.resource_id:
            notes[RESOURCE_ID] = identity.resource_id
        meta = client.V1ObjectMeta(
            name=self.name,
            namespace=self.namespace,
            labels={"app.kubernetes.io/managed-by": "kubearc", "app.kubernetes.io/component": "identity"},
            annotations=notes,
            resource_version=self._resource_version,  # a precondition: replace only what we read
        )
        pems = {
            "tls.crt": identity.pair.cert_pem,
            "tls.key": identity.pair.key_pem,
            "ca.crt": pki.cert_to_pem(identity.ca),
        }
        return client.V1Secret(
            api_version="v1",
            kind="Secret",
            type="kubernetes.io/tls",
            metadata=meta,
            data={k: base64.b64encode(v).decode() for k, v in pems.items()},
        )

    async def save(self, identity: StoredIdentity) -> None:
        """Create the Secret, or replace it only if nobody changed it since our `load()`."""
        body = self._body(identity)

        def write(api: client.ApiClient) -> client.V1Secret:
            core = client.CoreV1Api(api)
            try:
                if self._resource_version:
                    return core.replace_namespaced_secret(self.name, self.namespace, body)
                return core.create_namespaced_secret(self.namespace, body)
            except ApiException as exc:
                if exc.status == 409:
                    raise StoreConflict(
                        f"{self.description} changed while we renewed: {describe(exc)}"
                    ) from None
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    raise KubeError(f"cannot write {self.description}: {describe(exc)}") from None
                raise

        secret = await self.kube.call(write, f"write {self.description}")
        self._resource_version = secret.metadata.resource_version if secret.metadata else None


def parse_secret_ref(ref: str) -> tuple[str, str]:
    namespace, _, name = ref.rpartition("/")
    namespace = namespace or DEFAULT_NAMESPACE
    if not name or "/" in namespace:
        raise StoreError(f"expected secret:NAMESPACE/NAME, got secret:{ref}")
    return namespace, name


def open_store(spec: str, kube: Kube | None) -> IdentityStore:
    kind, sep, rest = spec.partition(":")
    if sep and kind == "file" and rest:
        return FileStore(Path(rest))
    if sep and kind == "secret" and rest and kube is not None:
        return SecretStore(kube, *parse_secret_ref(rest))
    raise StoreError(f"a store is file:DIR or secret:NAMESPACE/NAME, not {spec!r}")


async def load_onboarding_key(spec: str, kube: Kube | None) -> pki.PrivateKey:
    """The onboarding private key from a PEM file or `secret:NAMESPACE/NAME` (data key `privateKey`)."""
    if spec.startswith("secret:"):
        if kube is None:
            raise StoreError("a secret: onboarding key needs Kubernetes access")
        namespace, name = parse_secret_ref(spec.removeprefix("secret:"))
        secret = await SecretStore(kube, namespace, name)._read_secret()
        if secret is None:
            raise StoreError(f"onboarding key secret {namespace}/{name} does not exist")
        pem = next((v for k in ONBOARDING_KEY_FIELDS if (v := _b64(secret.data, k))), None)
        where = f"secret {namespace}/{name}"
        if pem is None:
            raise StoreError(f"{where} has no {' or '.join(ONBOARDING_KEY_FIELDS)} data key")
    else:
        path = Path(spec.removeprefix("file:"))
        where = f"file {path}"
        try:
            pem = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise StoreError(f"cannot read onboarding key {where}: {exc.strerror}") from None
    try:
        return pki.load_private_key(pem)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"onboarding key in {where} is not a PEM private key: {exc}") from None
