"""The small OData `$filter` subset ARM's authorization lists accept.

Clauses are `field eq 'value'` or `function()` / `function('value')`, joined by
`and`. Anything else is a 400 rather than a silently unfiltered (too wide) list.
"""

from __future__ import annotations

import re

from hub.errors import bad_request

_CLAUSE = re.compile(
    r"\s*(?:(?P<fn>[A-Za-z]+)\(\s*(?:'(?P<arg>(?:[^']|'')*)')?\s*\)"
    r"|(?P<field>[A-Za-z]+)\s+eq\s+'(?P<value>(?:[^']|'')*)')\s*",
)
_AND = re.compile(r"and\s+", re.IGNORECASE)


def parse_filter(text: str | None, fields: set[str], functions: set[str]) -> dict[str, str]:
    """Map each clause's field or function name (as spelled in `fields`/`functions`) to its value.

    Names compare case-insensitively; a function without an argument maps to ''.
    """
    if text is None or not text.strip():
        return {}
    by_lower = {n.lower(): n for n in fields | functions}
    out: dict[str, str] = {}
    pos = 0
    while True:
        m = _CLAUSE.match(text, pos)
        if m is None:
            raise bad_request(f"unsupported $filter {text!r} near position {pos}", "InvalidFilter")
        raw_name = m.group("fn") or m.group("field")
        name = by_lower.get(raw_name.lower())
        allowed = functions if m.group("fn") else fields
        if name is None or name not in allowed:
            supported = ", ".join(
                sorted([*(f"{f}()" for f in functions), *(f"{f} eq '...'" for f in fields)])
            )
            raise bad_request(
                f"unsupported $filter clause {m.group(0).strip()!r}; supported: {supported}", "InvalidFilter"
            )
        value = m.group("arg") if m.group("fn") else m.group("value")
        if name in out:
            raise bad_request(f"$filter names {name} twice", "InvalidFilter")
        out[name] = (value or "").replace("''", "'")
        pos = m.end()
        if pos == len(text):
            return out
        joined = _AND.match(text, pos)
        if joined is None:
            raise bad_request(f"unsupported $filter {text!r}: clauses are joined with 'and'", "InvalidFilter")
        pos = joined.end()
