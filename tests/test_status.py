"""The connectivity status rules, as a table over the clock."""

import datetime as dt

import pytest

from hub.config import StatusThresholds
from hub.status import ConnectivityStatus as S
from hub.status import connectivity_status

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
M = dt.timedelta(minutes=1)
D = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("heartbeat", "expires", "now", "expected"),
    [
        (None, None, T0 + 5 * M, S.CONNECTING),
        (None, None, T0 + 61 * M, S.AGENT_NOT_INSTALLED),
        (None, T0 + 90 * D, T0 + 61 * M, S.CONNECTING),  # identity fetched, metadata not yet
        (T0 + M, T0 + 90 * D, T0 + 16 * M, S.CONNECTED),  # exactly 15 minutes: still connected
        (T0 + M, T0 + 90 * D, T0 + 16 * M + dt.timedelta(seconds=1), S.OFFLINE),
        (T0 + 89 * D, T0 + 90 * D, T0 + 89 * D + 2 * M, S.CONNECTED),
        (T0 + 89 * D, T0 + 90 * D, T0 + 90 * D, S.EXPIRED),  # expiry wins over a fresh heartbeat
        (None, T0 + 90 * D, T0 + 91 * D, S.EXPIRED),
    ],
)
def test_status_table(
    heartbeat: dt.datetime | None, expires: dt.datetime | None, now: dt.datetime, expected: S
) -> None:
    got = connectivity_status(
        created_at=T0,
        last_heartbeat=heartbeat,
        identity_expires_at=expires,
        now=now,
        thresholds=StatusThresholds(),
    )
    assert got == expected


def test_thresholds_are_configurable() -> None:
    short = StatusThresholds(offline_after=dt.timedelta(seconds=30))
    got = connectivity_status(
        created_at=T0, last_heartbeat=T0, identity_expires_at=None, now=T0 + M, thresholds=short
    )
    assert got == S.OFFLINE
