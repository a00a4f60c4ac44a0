"""Signed tokens kubearc parts exchange, all through PyJWT.

- *Agent tokens*: an agent proves it holds its identity certificate's key by
  signing a short-lived JWT whose `x5c` header carries the certificate. The
  receiver checks the chain to the cluster CA and the signature; the token is
  bound to that certificate and useless without it.
- *Onboarding assertions*: the same shape signed with the onboarding private key,
  whose public half the cluster resource holds.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from foundation.pki import KeyPair, PrivateKey, PublicKey
from foundation.wire import AGENT_TOKEN_TYPE

AGENT_TOKEN_TTL = 300
CLOCK_LEEWAY = 60


def algorithm_for(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    raise ValueError("unsupported key type")


def make_agent_token(pair: KeyPair, audience: str, ttl: int = AGENT_TOKEN_TTL) -> str:
    now = int(time.time())
    der = pair.cert.public_bytes(serialization.Encoding.DER)
    return jwt.encode(
        {"aud": audience, "iat": now, "nbf": now - 5, "exp": now + ttl, "jti": uuid.uuid4().hex},
        pair.key,  # type: ignore[arg-type]
        algorithm=algorithm_for(pair.key),
        headers={"x5c": [base64.b64encode(der).decode()], "typ": AGENT_TOKEN_TYPE},
    )


def agent_token_x5c(token: str) -> str:
    """The x5c entry (base64 DER) of the certificate an agent token claims to be signed with."""
    try:
        entry = jwt.get_unverified_header(token)["x5c"][0]
    except (jwt.InvalidTokenError, KeyError, IndexError, TypeError) as exc:
        raise jwt.InvalidTokenError(f"agent token has no usable x5c certificate: {exc}") from None
    if not isinstance(entry, str):
        raise jwt.InvalidTokenError("agent token has no usable x5c certificate: not a string")
    return entry


def load_x5c(entry: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(base64.b64decode(entry, validate=True))
    except (TypeError, ValueError) as exc:
        raise jwt.InvalidTokenError(f"agent token has no usable x5c certificate: {exc}") from None


def agent_token_certificate(token: str) -> x509.Certificate:
    """The certificate an agent token claims to be signed with (not yet verified)."""
    return load_x5c(agent_token_x5c(token))


NUMERIC_CLAIMS = ("exp", "nbf", "iat")  # NumericDate (RFC 7519 section 2): a JSON number
STRING_CLAIMS = ("iss", "sub", "jti", "tid", "oid")
STRING_OR_LIST_CLAIMS = ("aud",)  # a string, or an array of strings (RFC 7519 section 4.1.3)


def check_claim_types(claims: dict[str, Any]) -> None:
    """Raise `jwt.InvalidTokenError` naming the claim whose value has the wrong JSON type.

    PyJWT accepts any value `int()` takes for `exp` (a numeric string, say), and code that
    then does arithmetic on the claim fails with a TypeError: a 500 instead of a 401.
    """
    for name in NUMERIC_CLAIMS:
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise jwt.InvalidTokenError(f"claim {name!r} must be a number (NumericDate)")
    for name in STRING_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            raise jwt.InvalidTokenError(f"claim {name!r} must be a string")
    for name in STRING_OR_LIST_CLAIMS:
        value = claims.get(name)
        if value is not None and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise jwt.InvalidTokenError(f"claim {name!r} must be a string or a list of strings")


def check_header_types(header: dict[str, Any]) -> None:
    """`typ`, `kid` and `alg`, when present, are strings."""
    for name in ("typ", "kid", "alg"):
        if name in header and not isinstance(header[name], str):
            raise jwt.InvalidTokenError(f"token header {name!r} must be a string")


def verify_signed(token: str, public_key: PublicKey, audience: str, max_ttl: int) -> dict[str, Any]:
    """Verify signature, audience and lifetime of a token signed by `public_key`."""
    unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
    check_header_types(unverified["header"])
    check_claim_types(unverified["payload"])
    alg = algorithm_for(public_key)
    claims: dict[str, Any] = jwt.decode(
        token,
        public_key,  # type: ignore[arg-type]
        algorithms=[alg],
        audience=audience,
        leeway=CLOCK_LEEWAY,
        options={"require": ["exp", "iat", "aud"]},
    )
    if claims["exp"] - claims["iat"] > max_ttl:
        raise jwt.InvalidTokenError(f"token lifetime exceeds {max_ttl} seconds")
    return claims


def make_onboarding_assertion(
    key: PrivateKey, resource_id: str, audience: str, ttl: int = AGENT_TOKEN_TTL
) -> str:
    now = int(time.time())
    return jwt.encode(
        {
            "sub": resource_id,
            "aud": audience,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        },
        key,  # type: ignore[arg-type]
        algorithm=algorithm_for(key),
    )
