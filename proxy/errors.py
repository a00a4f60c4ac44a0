"""The tunnel's exceptions: one root, `TunnelError`, so callers catch the part and not a builtin.

```
TunnelError
 ├── FrameError          a peer sent bytes that are no valid frame (protocol/frames.py); the
 │                       session answers with GOAWAY or RST and the code it carries
 ├── SessionClosed       an action on a session that cannot take it any more (failed, going
 │                       away, out of stream ids) (protocol/session.py)
 ├── SessionLost         no relay session to use: none came up in time, or it ended before HELLO
 ├── StreamError         a stream was refused, reset or lost with its session; `code`, `reason`
 ├── Unauthorized        the relay refused a credential; the message says why, never the token
 │    └── RenewalRefused a credential renewed in band was refused (another cluster or user, ...)
 └── HubUnavailable      the relay cannot reach the hub to check a credential (retry later: 503)
```
"""

from __future__ import annotations

from enum import IntEnum


class TunnelError(Exception):
    """The root of every error the tunnel raises on purpose."""


class SessionLost(TunnelError):
    """No relay session to use: none came up in time, or the one in use ended."""


class StreamError(TunnelError):
    def __init__(self, code: IntEnum | int, reason: str) -> None:
        super().__init__(f"{reason} ({code!r})")
        self.code = code
        self.reason = reason


class Unauthorized(TunnelError):
    """A refused credential; the message says why (and never contains the credential)."""


class RenewalRefused(Unauthorized):
    """A credential renewed in band was refused; the session keeps its old one until it expires."""


class HubUnavailable(TunnelError):
    """The relay could not ask the hub about a credential; the caller may try again."""
