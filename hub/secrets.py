"""Encryption at rest, and the hub-wide keys every replica shares.

The data key (Fernet) lives outside the database: `$KUBEARC_HUB_ENCRYPTION_KEY`
or `<state-dir>/encryption.key`, so a database dump alone reveals no protected
setting and no CA key. Hub-wide keys (cluster CA, serving CA, issuer signing key)
are stored encrypted in `hub_secrets`, so stateless replicas on one database agree
on them: clients trust one `ca.crt` whichever replica answers.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets as pysecrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from foundation import pki
from hub.errors import HubError
from hub.store.models import HubSecret

ENV_KEY = "KUBEARC_HUB_ENCRYPTION_KEY"
RELAY_KEY_FILE = "relay-registration.key"  # in the state directory


class SecretError(HubError):
    """A hub secret that cannot be opened (another data key sealed it) or created."""


def keep_stored(given: dict[str, str | None], stored: dict[str, str]) -> dict[str, str]:
    """Protected settings to store: the given values, and the stored one where a key is null
    (what a GET shows, PUT back as is); a null with nothing stored is a ValueError naming the key."""
    kept: dict[str, str] = {}
    for key, value in given.items():
        if value is None and key not in stored:
            raise ValueError(f"configurationProtectedSettings.{key}: null keeps a stored value, and none is")
        kept[key] = value if value is not None else stored[key]
    return kept


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_state_dir(cls, state_dir: Path) -> SecretBox:
        env = os.environ.get(ENV_KEY)
        if env:
            return cls(env.encode())
        path = state_dir / "encryption.key"
        if not path.exists():
            pki.write_private(path, Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def seal_json(self, value: Any) -> bytes | None:
        """`value` as sealed JSON; None for an empty one (nothing to keep)."""
        return self.seal(json.dumps(value).encode()) if value else None

    def open_json(self, token: bytes | None, empty: Any = None) -> Any:
        """What `seal_json` sealed; `empty` (default {}) when nothing was."""
        return json.loads(self.open(token)) if token else ({} if empty is None else empty)

    def open(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise SecretError(
                "stored secret cannot be decrypted: the hub's encryption key differs from the one "
                f"that wrote it (check ${ENV_KEY} or <state-dir>/encryption.key)"
            ) from None


async def load_or_create(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, name: str, make: Callable[[], bytes]
) -> bytes:
    """Return the hub secret `name`, creating it once; concurrent replicas agree on one value."""
    for _ in range(2):
        async with sessions() as session:
            row = await session.get(HubSecret, name)
            if row is not None:
                return box.open(row.value)
            session.add(HubSecret(name=name, value=box.seal(make()), created_at=dt.datetime.now(dt.UTC)))
            try:
                await session.commit()
            except IntegrityError:
                continue  # another replica won the race: read its value
    raise SecretError(f"could not create hub secret {name}")


async def _load_ca(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, name: str, make: Callable[[], pki.KeyPair]
) -> pki.KeyPair:
    """The CA kept as hub secret `name` (key and certificate in one PEM), made by `make` once."""

    def pem() -> bytes:
        ca = make()
        return ca.key_pem + ca.cert_pem

    stored = await load_or_create(sessions, box, name, pem)
    return pki.KeyPair(pki.load_private_key(stored), pki.load_cert(stored))


async def load_cluster_ca(sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> pki.KeyPair:
    return await _load_ca(sessions, box, "cluster-ca", lambda: pki.create_ca("kubearc cluster identity CA"))


async def load_serving_ca(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, legacy_dir: Path
) -> pki.KeyPair:
    """The CA that issues every replica's serving certificate, shared through the database.

    A hub that made its CA in `<legacy_dir>` (`ca.crt`, `ca.key`, before replicas) seeds the
    secret with it, so clients that trust that `ca.crt` keep trusting the hub.
    """

    def make() -> pki.KeyPair:
        cert, key = legacy_dir / "ca.crt", legacy_dir / "ca.key"
        if cert.exists() and key.exists():
            return pki.KeyPair.read(cert, key)
        return pki.create_ca("kubearc hub CA")

    return await _load_ca(sessions, box, "serving-ca", make)


async def load_issuer_key(sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> rsa.RSAPrivateKey:
    def make() -> bytes:
        return pki.key_to_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    key = pki.load_private_key(await load_or_create(sessions, box, "issuer-signing-key", make))
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


async def load_tenant_id(sessions: async_sessionmaker[AsyncSession], box: SecretBox) -> str:
    return (await load_or_create(sessions, box, "tenant-id", lambda: str(uuid.uuid4()).encode())).decode()


async def load_relay_registration_key(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, given: Path | None, state_dir: Path
) -> bytes:
    """The key relays register with: the given file's, or the database's (written beside the state)."""
    if given is not None:
        return _read_relay_key(given)
    key = await load_or_create(
        sessions, box, "relay-registration-key", lambda: pysecrets.token_urlsafe(32).encode()
    )
    _write_relay_key(state_dir / RELAY_KEY_FILE, key)
    return key


def _read_relay_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read the relay registration key {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise SecretError(f"the relay registration key in {path} is shorter than 16 bytes")
    return key


def _write_relay_key(path: Path, key: bytes) -> None:
    if not path.exists() or path.read_bytes().strip() != key:
        pki.write_private(path, key + b"\n")
