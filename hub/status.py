"""Connectivity status: a pure function of a cluster's timestamps and the clock.

Nothing is stored: the status is computed on read, so it can never go stale and
no background job is needed to flip clusters to Offline.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from hub.config import StatusThresholds


class ConnectivityStatus(StrEnum):
    CONNECTING = "Connecting"
    CONNECTED = "Connected"
    OFFLINE = "Offline"
    EXPIRED = "Expired"
    AGENT_NOT_INSTALLED = "AgentNotInstalled"


def connectivity_status(
    *,
    created_at: dt.datetime,
    last_heartbeat: dt.datetime | None,
    identity_expires_at: dt.datetime | None,
    now: dt.datetime,
    thresholds: StatusThresholds,
) -> ConnectivityStatus:
    """Arc's rules:

    - Expired: the newest identity certificate has expired (every feature stops);
    - Connecting: created, no heartbeat yet, still within the agent install window;
    - AgentNotInstalled: no identity certificate and no heartbeat past that window;
    - Connected: a heartbeat within `offline_after` (15 minutes);
    - Offline: was connected, silent for longer than `offline_after`.
    """
    if identity_expires_at is not None and identity_expires_at <= now:
        return ConnectivityStatus.EXPIRED
    if last_heartbeat is None:
        if identity_expires_at is None and now - created_at > thresholds.agent_install_timeout:
            return ConnectivityStatus.AGENT_NOT_INSTALLED
        return ConnectivityStatus.CONNECTING
    if now - last_heartbeat <= thresholds.offline_after:
        return ConnectivityStatus.CONNECTED
    return ConnectivityStatus.OFFLINE
