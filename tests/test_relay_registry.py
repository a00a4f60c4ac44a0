"""The hub's registry of relay replicas, driven by the relay's own client (`proxy.registry.HubRegistry`).

A real hub on real HTTPS (SQLite and PostgreSQL); the replica set is what relays
hand their agents, so who joins, who leaves and who times out must be exact.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from foundation.wire import RELAY_REPLICAS_PATH, RelayReplica
from proxy.errors import HubUnavailable
from proxy.registry import HubRegistry
from tests.conftest import FakeClock, RunningHub


def registry(hub: RunningHub, key: str | None = None) -> HubRegistry:
    given = key if key is not None else hub.hub.relay_key.decode()
    return HubRegistry(hub.url, given, hub.ca)


def ids(answer: tuple[tuple[RelayReplica, ...], float | None]) -> list[str]:
    return [r.id for r in answer[0]]


def test_replicas_see_each_other_and_one_that_leaves_is_gone_at_once(hub: RunningHub) -> None:
    relays = registry(hub)
    a, b = RelayReplica("relay-a", "wss://relay-a:8444"), RelayReplica("relay-b", "wss://relays.example:443")
    first = asyncio.run(relays.heartbeat(a))
    assert first == ((a,), 5.0)  # the default TTL is 15 s: a heartbeat every 5 s
    assert ids(asyncio.run(relays.heartbeat(b))) == ["relay-a", "relay-b"]
    assert asyncio.run(relays.heartbeat(a))[0] == (a, b)  # with the URLs they registered

    asyncio.run(relays.leave("relay-a"))
    asyncio.run(relays.leave("relay-a"))  # leaving twice is no error
    assert ids(asyncio.run(relays.heartbeat(b))) == ["relay-b"]


def test_a_replica_silent_past_its_ttl_leaves_the_set_and_rejoins_with_its_next_heartbeat(
    hub: RunningHub, clock: FakeClock
) -> None:
    relays = registry(hub)
    a, b = RelayReplica("a", "wss://a:1"), RelayReplica("b", "wss://b:1")
    asyncio.run(relays.heartbeat(a))
    clock.advance(seconds=10)
    assert ids(asyncio.run(relays.heartbeat(b))) == ["a", "b"]
    clock.advance(seconds=6)  # a: 16 s of silence, past the 15 s TTL
    assert ids(asyncio.run(relays.heartbeat(b))) == ["b"]
    assert ids(asyncio.run(relays.heartbeat(a))) == ["a", "b"]


def test_a_shorter_ttl_asks_for_more_frequent_heartbeats(start_hub: Callable[..., RunningHub]) -> None:
    hub = start_hub(relay_replica_ttl=dt.timedelta(seconds=3))
    assert asyncio.run(registry(hub).heartbeat(RelayReplica("a", "wss://a:1")))[1] == 1.0


def test_registration_needs_the_key_and_a_valid_replica(hub: RunningHub) -> None:
    with pytest.raises(HubUnavailable, match="401: relay registration needs the relay registration key"):
        asyncio.run(registry(hub, "not-the-key-at-all").heartbeat(RelayReplica("a", "wss://a:1")))
    with hub.client(hub.hub.relay_key.decode()) as client:
        assert client.get(RELAY_REPLICAS_PATH).json()["replicas"] == []  # nothing registered
        bad_id = client.put(f"{RELAY_REPLICAS_PATH}/has%20space", json={"url": "wss://a:1"})
        assert bad_id.status_code == 400 and "relay replica id" in bad_id.json()["error"]["message"]
        for url in ("https://a:1", "wss://a:1/relay/v1/agent", "wss://"):
            bad_url = client.put(f"{RELAY_REPLICAS_PATH}/a", json={"url": url})
            assert bad_url.status_code == 400, url
            assert "url" in bad_url.json()["error"]["message"]
        assert client.get(RELAY_REPLICAS_PATH).json()["replicas"] == []  # nothing half-registered
    with httpx.Client(base_url=hub.url, verify=ssl.create_default_context(cafile=hub.ca)) as anonymous:
        refused = anonymous.delete(f"{RELAY_REPLICAS_PATH}/a")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "AuthenticationFailed"


def test_the_key_is_made_once_and_written_for_relays_on_the_hubs_machine(
    start_hub: Callable[..., RunningHub], tmp_path: Path
) -> None:
    hub = start_hub()
    written = tmp_path / "state" / "relay-registration.key"
    key = hub.hub.relay_key
    assert written.read_bytes().strip() == key and len(key) >= 32
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    written.unlink()
    hub.restart()
    assert hub.hub.relay_key == key  # from the database: every hub replica checks the same key
    assert written.read_bytes().strip() == key


def test_a_key_file_given_to_the_hub_is_the_key_it_checks(
    start_hub: Callable[..., RunningHub], tmp_path: Path
) -> None:
    given = tmp_path / "shared" / "relay.key"
    given.parent.mkdir()
    given.write_text("a-key-from-a-kubernetes-secret-0123456789\n")
    hub = start_hub(relay_registration_key_file=given)
    answer = asyncio.run(
        registry(hub, "a-key-from-a-kubernetes-secret-0123456789").heartbeat(RelayReplica("a", "wss://a:1"))
    )
    assert ids(answer) == ["a"]
    assert not (tmp_path / "state" / "relay-registration.key").exists()
