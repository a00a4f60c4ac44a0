"""X.509 helpers: certificate authorities, serving and client certificates, CSRs.

Everything goes through `cryptography`; this module only fixes kubearc's choices
(EC P-256 keys, SAN layout, validity) so every part issues certificates alike.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class KeyPair:
    key: PrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_to_pem(self.key)

    def write(self, cert_path: Path, key_path: Path) -> None:
        write_private(key_path, self.key_pem)
        cert_path.write_bytes(self.cert_pem)

    @classmethod
    def read(cls, cert_path: Path, key_path: Path) -> KeyPair:
        return cls(load_private_key(key_path.read_bytes()), load_cert(cert_path.read_bytes()))


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("only EC and RSA private keys are supported")
    return key


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def public_key_der_b64(key: PublicKey) -> str:
    """The form Arc's `agentPublicKeyCertificate` property carries: base64 DER SPKI."""
    import base64

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def load_public_key_b64(value: str) -> PublicKey:
    import base64
    import binascii

    try:
        der = base64.b64decode(value, validate=True)
        key = serialization.load_der_public_key(der)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 DER public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("only EC and RSA public keys are supported")
    return key


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def create_ca(common_name: str, days: int = 3650) -> KeyPair:
    key = new_key()
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def _san_entries(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        if "://" in name:
            out.append(x509.UniformResourceIdentifier(name))
            continue
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def issue_cert(
    ca: KeyPair,
    public_key: PublicKey,
    common_name: str,
    *,
    sans: list[str] | None = None,
    server: bool = False,
    client: bool = False,
    not_before: dt.datetime | None = None,
    validity: dt.timedelta = dt.timedelta(days=365),
    serial: int | None = None,
) -> x509.Certificate:
    """Sign a leaf certificate. `sans` may mix DNS names, IP addresses and URIs."""
    # Backdated a minute unless given: a certificate used the moment it is made must not be "not
    # yet valid" to a peer whose clock reads a little behind (or that rounds the second differently).
    start = not_before or utcnow() - dt.timedelta(minutes=1)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san_entries(sans)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def issue_keypair(ca: KeyPair, common_name: str, **kwargs: object) -> KeyPair:
    key = new_key()
    return KeyPair(key, issue_cert(ca, key.public_key(), common_name, **kwargs))  # type: ignore[arg-type]


def make_csr(key: PrivateKey, common_name: str) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature (proof the sender holds the key)."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise ValueError("certificate signing request signature does not verify")
    return csr


def is_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, Exception):  # InvalidSignature is not a ValueError
        return False
    return True


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def ensure_serving_pair(
    directory: Path, names: list[str], ca_name: str = "kubearc hub CA", ca: KeyPair | None = None
) -> tuple[Path, Path, Path]:
    """Create (once) a CA and a serving certificate for `names` in `directory`.

    Returns (ca_cert_path, cert_path, key_path). An existing pair is reused as long
    as it still covers the requested names, so clients keep trusting the same CA.
    Given `ca` (kept elsewhere, as hub replicas keep theirs in the database), the leaf is
    issued by it and only its certificate is written: no CA key lands on this disk.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key = directory / "tls.crt", directory / "tls.key"
    if ca is not None:
        if not ca_cert.exists() or ca_cert.read_bytes() != ca.cert_pem:
            ca_cert.write_bytes(ca.cert_pem)
    elif ca_cert.exists() and ca_key.exists():
        ca = KeyPair.read(ca_cert, ca_key)
    else:
        ca = create_ca(ca_name)
        ca.write(ca_cert, ca_key)
    if cert.exists() and key.exists():
        current = load_cert(cert.read_bytes())
        try:
            sans = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
                str(v) for v in sans.get_values_for_type(x509.IPAddress)
            }
        except x509.ExtensionNotFound:
            have = set()
        fresh = current.not_valid_after_utc > utcnow() + dt.timedelta(days=7)
        if set(names) <= have and fresh and is_issued_by(current, ca.cert):
            return ca_cert, cert, key
    pair = issue_keypair(ca, names[0], sans=names, server=True, validity=dt.timedelta(days=825))
    pair.write(cert, key)
    return ca_cert, cert, key
