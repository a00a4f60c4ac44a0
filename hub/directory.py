"""The hub's directory: users, groups, service principals, memberships.

Its own module because three parts of the hub read it and none should reach
into another for it: the local issuer signs users and service principals in,
RBAC expands group memberships for checkAccess, and `hub.auth` resolves group
overage claims.

Users sign in with their userPrincipalName (stored lowercase in `login`, since
Entra compares UPNs case-insensitively); service principals with their appId
(a GUID, also in `login`). Passwords and client secrets are stored only as
salted scrypt hashes. Every function that changes the directory commits unless
told not to (`commit=False` lets a caller batch many changes in one transaction).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import uuid
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.errors import InvalidRequest
from hub.store.models import DirectoryObject, GroupMember

USER = "user"
GROUP = "group"
SERVICE_PRINCIPAL = "servicePrincipal"
KINDS = (USER, GROUP, SERVICE_PRINCIPAL)
MIN_PASSWORD_LENGTH = 8

# scrypt cost: ~32 MiB and ~0.1 s per hash. The parameters are stored with each hash, so they can be
# raised later without invalidating passwords (and tests lower them).
SCRYPT_N = 2**15
_SCRYPT_R, _SCRYPT_P = 8, 1
_UPN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class DirectoryError(InvalidRequest):
    """A directory request that cannot be honoured; the message says why."""


class UnknownPrincipal(DirectoryError):
    """No such user, group or service principal (or not of the kind asked for)."""


class BadCredential(DirectoryError):
    """A wrong password or client secret."""


# ---------------------------------------------------------------- credentials


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_secret(secret: str) -> str:
    """`scrypt$n$r$p$salt$hash`, so stronger parameters can be introduced later."""
    salt = os.urandom(16)
    digest = _scrypt(secret, salt, SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_secret(stored: str | None, candidate: str) -> bool:
    """Constant-time check of `candidate` against a stored hash; False for anything malformed."""
    if not stored:
        # Spend the same time as a real check, so timing does not tell which accounts have credentials.
        _scrypt(candidate, b"\0" * 16, SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(candidate, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def credential_fingerprint(obj: DirectoryObject) -> str:
    """A short digest of the stored credential: refresh tokens carry it and die when it changes."""
    return hashlib.sha256((obj.credential_hash or "").encode()).hexdigest()[:16]


# ---------------------------------------------------------------- lookups


def is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def get_object(
    session: AsyncSession, object_id: str, kind: str | None = None
) -> DirectoryObject | None:
    if not is_guid(object_id):
        return None
    obj = await session.get(DirectoryObject, object_id.lower())
    if obj is None or (kind is not None and obj.kind != kind):
        return None
    return obj


async def find_by_login(session: AsyncSession, login: str, kind: str | None = None) -> DirectoryObject | None:
    """A user by UPN or a service principal by appId (case-insensitive)."""
    query = select(DirectoryObject).where(DirectoryObject.login == login.strip().lower())
    if kind is not None:
        query = query.where(DirectoryObject.kind == kind)
    return (await session.execute(query)).scalar_one_or_none()


async def resolve(session: AsyncSession, ref: str, kinds: Sequence[str] = KINDS) -> DirectoryObject:
    """An object by object id, UPN, appId or (groups only) unique display name."""
    ref = ref.strip()
    obj = await get_object(session, ref)
    if obj is None:
        obj = await find_by_login(session, ref)
    if obj is None and GROUP in kinds:
        rows = (
            await session.execute(
                select(DirectoryObject).where(
                    DirectoryObject.kind == GROUP, DirectoryObject.display_name == ref
                )
            )
        ).scalars()
        found = list(rows)
        if len(found) > 1:
            raise DirectoryError(f"{len(found)} groups are named {ref!r}; use the group's object id")
        obj = found[0] if found else None
    if obj is None or obj.kind not in kinds:
        what = " or ".join(kinds)
        raise UnknownPrincipal(f"no {what} {ref!r} in the directory")
    return obj


async def list_objects(session: AsyncSession, kind: str) -> list[DirectoryObject]:
    if kind not in KINDS:
        raise DirectoryError(f"kind must be one of {', '.join(KINDS)}")
    rows = await session.execute(
        select(DirectoryObject).where(DirectoryObject.kind == kind).order_by(DirectoryObject.display_name)
    )
    return list(rows.scalars())


async def member_groups(session: AsyncSession, object_id: str) -> list[str]:
    """Every group `object_id` belongs to, directly or through nested groups (sorted)."""
    seen: set[str] = set()
    frontier = {object_id}
    while frontier:
        rows = await session.execute(select(GroupMember.group_id).where(GroupMember.member_id.in_(frontier)))
        found = {g for (g,) in rows} - seen
        seen |= found
        frontier = found
    return sorted(seen)


async def direct_members(session: AsyncSession, group_id: str) -> list[DirectoryObject]:
    rows = await session.execute(
        select(DirectoryObject)
        .join(GroupMember, GroupMember.member_id == DirectoryObject.id)
        .where(GroupMember.group_id == group_id)
        .order_by(DirectoryObject.display_name)
    )
    return list(rows.scalars())


async def member_count(session: AsyncSession, group_id: str) -> int:
    return int(
        (await session.execute(select(func.count()).where(GroupMember.group_id == group_id))).scalar_one()
    )


# ---------------------------------------------------------------- changes


async def _save(session: AsyncSession, obj: DirectoryObject, commit: bool, duplicate: str) -> DirectoryObject:
    session.add(obj)
    if commit:
        try:
            await session.commit()
        except IntegrityError:
            await session.rollback()
            raise DirectoryError(duplicate) from None
    return obj


def _new(kind: str, display_name: str, login: str | None, credential_hash: str | None) -> DirectoryObject:
    display_name = display_name.strip()
    if not display_name or len(display_name) > 256:
        raise DirectoryError("display name must be 1-256 characters")
    return DirectoryObject(
        id=str(uuid.uuid4()),
        kind=kind,
        display_name=display_name,
        login=login,
        credential_hash=credential_hash,
        created_at=dt.datetime.now(dt.UTC),
    )


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise DirectoryError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 256:
        raise DirectoryError("password must be at most 256 characters")


async def create_user(
    session: AsyncSession, upn: str, password: str, display_name: str | None = None, *, commit: bool = True
) -> DirectoryObject:
    upn = upn.strip().lower()
    if not _UPN.match(upn) or len(upn) > 256:
        raise DirectoryError(f"{upn!r} is not a user principal name (name@domain.tld)")
    check_password(password)
    if await find_by_login(session, upn) is not None:
        raise DirectoryError(f"user {upn!r} already exists")
    credential = await asyncio.to_thread(hash_secret, password)
    obj = _new(USER, display_name or upn.split("@", 1)[0], upn, credential)
    return await _save(session, obj, commit, f"user {upn!r} already exists")


async def set_password(session: AsyncSession, user_ref: str, password: str) -> DirectoryObject:
    """Replace a user's password; refresh tokens issued before stop working."""
    check_password(password)
    user = await resolve(session, user_ref, (USER,))
    user.credential_hash = await asyncio.to_thread(hash_secret, password)
    await session.commit()
    return user


async def create_group(session: AsyncSession, display_name: str, *, commit: bool = True) -> DirectoryObject:
    """Groups are security groups; display names need not be unique (as in Entra)."""
    return await _save(session, _new(GROUP, display_name, None, None), commit, "group already exists")


async def create_service_principal(
    session: AsyncSession, display_name: str, *, commit: bool = True
) -> tuple[DirectoryObject, str, str]:
    """Return (object, appId, client secret). The secret is not stored and cannot be shown again."""
    app_id = str(uuid.uuid4())
    secret = secrets.token_urlsafe(32)
    credential = await asyncio.to_thread(hash_secret, secret)
    obj = _new(SERVICE_PRINCIPAL, display_name, app_id, credential)
    await _save(session, obj, commit, "service principal already exists")
    return obj, app_id, secret


async def add_member(session: AsyncSession, group_id: str, member_id: str, *, commit: bool = True) -> bool:
    """Add `member_id` to a group; False if it already was a direct member. Refuses cycles."""
    group = await get_object(session, group_id, GROUP)
    if group is None:
        raise UnknownPrincipal(f"no group {group_id!r} in the directory")
    member = await get_object(session, member_id)
    if member is None:
        raise UnknownPrincipal(f"no user, group or service principal {member_id!r} in the directory")
    if member.id == group.id:
        raise DirectoryError("a group cannot be a member of itself")
    if member.kind == GROUP and member.id in await member_groups(session, group.id):
        raise DirectoryError(
            f"adding group {member.display_name!r} to {group.display_name!r} would make a membership cycle"
        )
    existing = await session.get(GroupMember, (group.id, member.id))
    if existing is not None:
        return False
    session.add(GroupMember(group_id=group.id, member_id=member.id))
    if commit:
        await session.commit()
    return True


async def remove_member(session: AsyncSession, group_id: str, member_id: str) -> None:
    result = await session.execute(
        delete(GroupMember).where(
            GroupMember.group_id == group_id.lower(), GroupMember.member_id == member_id.lower()
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        await session.rollback()
        raise UnknownPrincipal(f"{member_id!r} is not a direct member of group {group_id!r}")
    await session.commit()


async def delete_object(session: AsyncSession, object_id: str) -> None:
    """Delete an object and its memberships (both as group and as member)."""
    obj = await get_object(session, object_id)
    if obj is None:
        raise UnknownPrincipal(f"no directory object {object_id!r}")
    await session.execute(
        delete(GroupMember).where((GroupMember.group_id == obj.id) | (GroupMember.member_id == obj.id))
    )
    await session.delete(obj)
    await session.commit()


# ---------------------------------------------------------------- sign-in


async def check_user_password(session: AsyncSession, upn: str, password: str) -> DirectoryObject:
    """The user whose UPN and password these are; UnknownPrincipal or BadCredential otherwise."""
    user = await find_by_login(session, upn, USER)
    ok = await asyncio.to_thread(verify_secret, user.credential_hash if user else None, password)
    if user is None:
        raise UnknownPrincipal(f"user {upn!r} does not exist")
    if not ok:
        raise BadCredential("invalid username or password")
    return user


async def check_client_secret(session: AsyncSession, app_id: str, secret: str) -> DirectoryObject:
    """The service principal with this appId and secret; UnknownPrincipal or BadCredential otherwise."""
    sp = await find_by_login(session, app_id, SERVICE_PRINCIPAL)
    if sp is None:
        raise UnknownPrincipal(f"application {app_id!r} does not exist")
    if not await asyncio.to_thread(verify_secret, sp.credential_hash, secret):
        raise BadCredential("invalid client secret")
    return sp
