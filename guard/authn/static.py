"""Static bearer tokens from a file in Kubernetes' token-auth-file format.

Each line is `token,user,uid,"group1,group2"` (groups optional). Tokens are kept
only as SHA-256 digests, so a memory dump or a log line never shows one. A
simple `Authenticator`: no fast path (`cached` is None), no audiences.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from guard.errors import AuthenticationError, OptionsError
from guard.interfaces import Authenticated
from guard.reviews import UserInfo


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StaticTokens:
    def __init__(self, users: dict[str, UserInfo]) -> None:
        self._users = users  # SHA-256 hex of the token -> user

    @classmethod
    def load(cls, path: Path) -> StaticTokens:
        """The file's tokens; an `OptionsError` of `--token-file` names a bad line."""
        try:
            text = path.read_bytes().decode()
        except OSError as exc:
            raise OptionsError("--token-file", f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise OptionsError("--token-file", f"{path} is not UTF-8 text") from None
        users: dict[str, UserInfo] = {}
        for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 3:
                raise OptionsError("--token-file", f'{path}:{number}: want token,user,uid[,"groups"]')
            token, user, uid = (v.strip() for v in row[:3])
            if not user:
                raise OptionsError("--token-file", f"{path}:{number}: the user name is empty")
            groups = [g.strip() for g in row[3].split(",") if g.strip()] if len(row) > 3 else []
            users[digest(token)] = UserInfo(username=user, uid=uid, groups=groups)
        return cls(users)

    def __len__(self) -> int:
        return len(self._users)

    def cached(self, token: str) -> Authenticated | None:
        return None

    async def review(self, token: str, audiences: list[str]) -> Authenticated:
        return Authenticated(await self.authenticate(token, audiences), [])

    async def authenticate(self, token: str, audiences: list[str]) -> UserInfo:
        user = self._users.get(digest(token))
        if user is None:
            raise AuthenticationError("unknown static token")
        return user
