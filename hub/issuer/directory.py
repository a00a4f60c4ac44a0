"""The local issuer's directory: users, groups, service principals, memberships."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.store.models import GroupMember


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
