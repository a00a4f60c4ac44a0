"""The agents' exceptions: one root, `AgentError`, so the command line catches the part, not a builtin.

```
AgentError
 ├── HubRefused        the hub refused a request (4xx) or answered with something that is not
 │                     its API; `status`, `code`, `message` (agents/hubclient.py)
 └── IdentityNotReady  no usable identity certificate yet: `kubearc agent identity` has not
                       stored one, or it expired (agents/metadata.py)
```

Transient failures (the hub or the apiserver unreachable, 5xx, 429) are retried
inside the agents and surface only as `foundation.retry.RetriesExhausted`.
"""

from __future__ import annotations


class AgentError(Exception):
    """The root of every error the agents raise on purpose."""


class HubRefused(AgentError):
    """The hub refused a request (4xx), or answered with something that is not its API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"hub refused the request ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.message = message


class IdentityNotReady(AgentError):
    """No usable identity certificate yet; the message says where it was looked for."""
