"""guard's authenticators against the hub's local issuer and Graph-compatible directory, in-process."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from guard.authn.base import AuthenticationError
from guard.authn.chain import AuthnChain
from guard.authn.graph import GraphGroups, GraphSettings
from guard.authn.oidc import OidcAuthenticator
from guard.authn.static import StaticTokens
from hub import directory
from tests.conftest import RunningHub
from tests.test_guard_server import AUDIENCE, make_sp, make_user

pytestmark = pytest.mark.sqlite_only


def test_static_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text('# comment\n\nt0k3n,alice,1,"a,b"\nother,bob,2\n')
    tokens = StaticTokens.load(path)
    assert len(tokens) == 2
    alice = asyncio.run(tokens.authenticate("t0k3n", []))
    assert (alice.username, alice.uid, alice.groups) == ("alice", "1", ["a", "b"])
    assert asyncio.run(tokens.authenticate("other", [])).groups == []
    with pytest.raises(AuthenticationError, match="unknown static token"):
        asyncio.run(tokens.authenticate("t0k3n ", []))
    assert "t0k3n" not in repr(tokens._users)  # only digests are kept
    path.write_text("just-a-token\n")
    with pytest.raises(ValueError, match=r"tokens\.csv:1"):
        StaticTokens.load(path)


def test_chain_picks_the_provider_by_issuer(hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)
    oidc = OidcAuthenticator([hub.hub.issuer], [AUDIENCE], ca_file=hub.ca)
    chain = AuthnChain([oidc])

    async def go() -> None:
        user = await chain.authenticate(hub.token("7f0c1f7e-0000-4000-8000-000000000001", groups=["g"]), [])
        assert user.extra == {"oid": ["7f0c1f7e-0000-4000-8000-000000000001"]} and user.groups == ["g"]
        with pytest.raises(AuthenticationError, match="not a JWT"):
            await chain.authenticate("opaque-token", [])
        other = OidcAuthenticator(["https://issuer.example/v2.0"], [AUDIENCE])
        with pytest.raises(AuthenticationError, match="not trusted"):
            await other.authenticate(hub.token(), [])
        # Overage claims but no Graph configured: refused, not authenticated without groups.
        oid, groups = make_user(hub, "dave@kubearc.test", groups=201)
        with pytest.raises(AuthenticationError, match="no Graph access"):
            await chain.authenticate(hub.token(oid, groups=groups), [])

    asyncio.run(go())


def test_overage_lookups_are_single_flight_and_cached(
    hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    app_id, secret = make_sp(hub)
    oid, groups = make_user(hub, "erin@kubearc.test", groups=230)
    settings = GraphSettings(
        client_id=app_id,
        client_secret=secret,
        authority=hub.hub.issuer,
        oidc_authority=True,
        base_url=f"{hub.url}/v1.0",
        ca_file=hub.ca,
    )
    graph = GraphGroups(settings)
    oidc = OidcAuthenticator([hub.hub.issuer], [AUDIENCE], ca_file=hub.ca, graph=graph)
    tokens = [hub.token(oid, groups=groups) for _ in range(8)]  # distinct tokens, one user

    async def go() -> None:
        try:
            users = await asyncio.gather(*(oidc.authenticate(t, []) for t in tokens))
            assert all(sorted(u.groups) == groups for u in users)
            assert graph.lookups == 1
            await oidc.authenticate(hub.token(oid, groups=groups), [])
            assert graph.lookups == 1  # per-user TTL cache
        finally:
            await graph.aclose()

    asyncio.run(go())
    # `_claim_sources` is followed only to a trusted host; anything else falls back to the configured Graph.
    evil = {
        "_claim_names": {"groups": "src1"},
        "_claim_sources": {"src1": {"endpoint": "https://evil.example/x"}},
    }
    assert graph.endpoint(oid, evil) == f"{hub.url}/v1.0/users/{oid}/getMemberGroups"
    own = {"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": f"{hub.url}/v1.0/y"}}}
    assert graph.endpoint(oid, own) == f"{hub.url}/v1.0/y"


def test_overage_with_a_wrong_graph_secret_is_refused_with_a_reason(
    hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directory, "SCRYPT_N", 2**10)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    app_id, _ = make_sp(hub)
    graph = GraphGroups(
        GraphSettings(
            client_id=app_id,
            client_secret="wrong-" + uuid.uuid4().hex,
            authority=hub.hub.issuer,
            oidc_authority=True,
            base_url=f"{hub.url}/v1.0",
            ca_file=hub.ca,
        )
    )
    oidc = OidcAuthenticator([hub.hub.issuer], [AUDIENCE], ca_file=hub.ca, graph=graph)
    oid, groups = make_user(hub, "frank@kubearc.test", groups=201)

    async def go() -> None:
        try:
            with pytest.raises(AuthenticationError, match="cannot get a Graph token"):
                await oidc.authenticate(hub.token(oid, groups=groups), [])
        finally:
            await graph.aclose()

    asyncio.run(go())
