"""Interactive sign-in's pending grants: device codes (RFC 8628) and authorization codes (RFC 6749, PKCE).

Both live in the database (`AuthorizationGrant`), so a user may approve on one
replica while the client polls another. Rows are keyed by the SHA-256 of the
code the client holds; user codes are stored as typed, without the dash.

Device codes: `start_device_flow` makes the pair, the verification page finds
the request by its user code (`pending_by_user_code`) and records the user's
decision (`decide`), and the token endpoint polls (`poll_device_code`), which
answers per RFC 8628 section 3.5 by raising `AuthorizationPending`,
`SlowDown` (the interval grows by 5 s for this and every later poll),
`AccessDenied`, `ExpiredToken` or `InvalidGrant`, until the approved grant is
handed out once.

Authorization codes: `issue_code` after the sign-in page checked the user,
`redeem_code` once, with the same client, the same redirect URI and the PKCE
verifier whose S256 digest is the challenge.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.errors import HubError
from hub.store.models import AuthorizationGrant, DirectoryObject

DEVICE, CODE = "device", "code"
PENDING, APPROVED, DENIED, REDEEMED = "pending", "approved", "denied", "redeemed"
# RFC 8628 section 6.1: base-20 consonants, 8 characters (~34 bits), typed without ambiguity.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
SLOW_DOWN_STEP = 5  # seconds added to the interval after slow_down (RFC 8628 section 3.5)
POLL_TOLERANCE = 0.8  # a poll after 80% of the interval is on time (clients measure from their side)
KEEP_EXPIRED = dt.timedelta(hours=1)  # expired rows answer expired_token this long, then go
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")  # RFC 7636 section 4.1
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


class GrantError(HubError):
    """The token endpoint's answer for a grant that yields no tokens (yet); `error` is OAuth's."""

    error = "invalid_grant"


class AuthorizationPending(GrantError):
    error = "authorization_pending"


class SlowDown(GrantError):
    error = "slow_down"


class AccessDenied(GrantError):
    error = "access_denied"


class ExpiredToken(GrantError):
    error = "expired_token"


class InvalidGrant(GrantError):
    error = "invalid_grant"


class AlreadyRedeemed(InvalidGrant):
    pass


class PkceMismatch(InvalidGrant):
    pass


class RedirectMismatch(InvalidGrant):
    pass


def digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def normalize_user_code(typed: str) -> str:
    """What the user typed, as stored: upper case, without dashes or spaces."""
    return "".join(c for c in typed.upper() if c.isalnum())


def display_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def _new_user_code() -> str:
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


async def _purge(session: AsyncSession, now: dt.datetime) -> None:
    old = AuthorizationGrant.expires_at < now - KEEP_EXPIRED
    await session.execute(delete(AuthorizationGrant).where(old))


# ---------------------------------------------------------------- device codes


async def start_device_flow(
    session: AsyncSession,
    now: dt.datetime,
    *,
    client_id: str,
    scopes: Sequence[str],
    ttl: dt.timedelta,
    interval: int,
) -> tuple[str, str]:
    """A new device authorization request: (device_code for the client, user_code for the person)."""
    await _purge(session, now)
    device_code = secrets.token_urlsafe(48)
    for _ in range(5):  # a clash among live user codes is a one-in-billions event; pick again
        user_code = _new_user_code()
        taken = await session.scalar(
            select(AuthorizationGrant.id).where(AuthorizationGrant.user_code == user_code)
        )
        if taken is None:
            break
    session.add(
        AuthorizationGrant(
            id=digest(device_code),
            kind=DEVICE,
            user_code=user_code,
            client_id=client_id,
            scopes=list(scopes),
            status=PENDING,
            interval=interval,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    await session.commit()
    return device_code, user_code


async def pending_by_user_code(
    session: AsyncSession, now: dt.datetime, typed: str
) -> AuthorizationGrant | None:
    """The device request a user code stands for, while it still waits for its user."""
    code = normalize_user_code(typed)
    if len(code) != USER_CODE_LENGTH:
        return None
    grant = await session.scalar(
        select(AuthorizationGrant).where(
            AuthorizationGrant.user_code == code, AuthorizationGrant.kind == DEVICE
        )
    )
    if grant is None or grant.status != PENDING or grant.expires_at <= now:
        return None
    return grant


async def decide(
    session: AsyncSession, grant: AuthorizationGrant, user: DirectoryObject, credential: str, approve: bool
) -> bool:
    """Record the user's answer; False if the request was decided meanwhile (another tab, a replica)."""
    result = await session.execute(
        update(AuthorizationGrant)
        .where(AuthorizationGrant.id == grant.id, AuthorizationGrant.status == PENDING)
        .values(status=APPROVED if approve else DENIED, user_id=user.id, credential=credential)
    )
    await session.commit()
    return bool(getattr(result, "rowcount", 0) == 1)


async def poll_device_code(
    session: AsyncSession, now: dt.datetime, device_code: str, client_id: str
) -> AuthorizationGrant:
    """The approved grant, handed out once; otherwise raises what RFC 8628 tells the client."""
    grant = await session.get(AuthorizationGrant, digest(device_code))
    if grant is None or grant.kind != DEVICE or grant.client_id != client_id:
        raise InvalidGrant("the device code is not one this issuer gave to this client")
    if grant.expires_at <= now:
        raise ExpiredToken("the device code has expired")
    if grant.status == REDEEMED:
        raise AlreadyRedeemed("the device code was already redeemed")
    if grant.status == DENIED:
        raise AccessDenied("the user declined the sign-in")
    if grant.status == PENDING:
        last, grant.last_poll_at = grant.last_poll_at, now
        too_soon = last is not None and (now - last).total_seconds() < grant.interval * POLL_TOLERANCE
        if too_soon:
            grant.interval += SLOW_DOWN_STEP
        await session.commit()
        if too_soon:
            raise SlowDown(f"polled too often: wait {grant.interval} seconds between polls")
        raise AuthorizationPending("the user has not approved the sign-in yet")
    return await _take(session, grant)


async def _take(session: AsyncSession, grant: AuthorizationGrant) -> AuthorizationGrant:
    result = await session.execute(
        update(AuthorizationGrant)
        .where(AuthorizationGrant.id == grant.id, AuthorizationGrant.status == APPROVED)
        .values(status=REDEEMED)
    )
    await session.commit()
    if getattr(result, "rowcount", 0) != 1:
        raise AlreadyRedeemed("the grant was already redeemed")
    return grant


# ---------------------------------------------------------------- authorization codes


def redirect_allowed(registered: Sequence[str], redirect_uri: str) -> bool:
    """Exact match with a registered URI; a loopback `http` URI may use any port (RFC 8252 section 7.3)."""
    if redirect_uri in registered:
        return True
    try:
        asked = urlsplit(redirect_uri)
        asked_port = asked.port
    except ValueError:
        return False
    if asked.scheme != "http" or asked.hostname not in LOOPBACK_HOSTS or asked_port is None:
        return False
    for uri in registered:
        known = urlsplit(uri)
        if (
            known.scheme == "http"
            and known.port is None
            and known.hostname == asked.hostname
            and (known.path or "/") == (asked.path or "/")
            and known.query == asked.query
            and not asked.fragment
        ):
            return True
    return False


def valid_challenge(challenge: str) -> bool:
    """An S256 challenge: base64url of a SHA-256 digest, without padding (43 characters)."""
    return bool(re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge))


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


async def issue_code(
    session: AsyncSession,
    now: dt.datetime,
    *,
    ttl: dt.timedelta,
    client_id: str,
    user: DirectoryObject,
    credential: str,
    scopes: Sequence[str],
    redirect_uri: str,
    code_challenge: str,
    nonce: str | None,
) -> str:
    await _purge(session, now)
    code = secrets.token_urlsafe(48)
    session.add(
        AuthorizationGrant(
            id=digest(code),
            kind=CODE,
            client_id=client_id,
            scopes=list(scopes),
            status=APPROVED,
            user_id=user.id,
            credential=credential,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            nonce=nonce,
            created_at=now,
            expires_at=now + ttl,
        )
    )
    await session.commit()
    return code


async def redeem_code(
    session: AsyncSession,
    now: dt.datetime,
    *,
    code: str,
    client_id: str,
    redirect_uri: str,
    code_verifier: str,
) -> AuthorizationGrant:
    grant = await session.get(AuthorizationGrant, digest(code))
    if grant is None or grant.kind != CODE or grant.client_id != client_id:
        raise InvalidGrant("the authorization code is not one this issuer gave to this client")
    if grant.expires_at <= now:
        raise InvalidGrant("the authorization code has expired")
    if grant.status != APPROVED:
        raise AlreadyRedeemed("the authorization code was already redeemed")
    if redirect_uri != grant.redirect_uri:
        raise RedirectMismatch("redirect_uri differs from the one of the authorization request")
    if not _VERIFIER.match(code_verifier) or not hmac.compare_digest(
        s256(code_verifier), grant.code_challenge or ""
    ):
        raise PkceMismatch("the code_verifier does not match the code_challenge")
    return await _take(session, grant)
