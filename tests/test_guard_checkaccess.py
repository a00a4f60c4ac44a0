"""guard's Azure authorizer against a real hub: built-in Arc roles, caching, outages, throttling.

The authorizer calls the hub's checkAccess the way guard in a cluster does: with
the cluster identity's agent token, at the cluster's scope. Requests are counted
with an httpx event hook on the real connection. Two tests use a tiny local HTTP
server as a stand-in for Azure ARM (labelled FAKE AZURE below): one answers 429
with Retry-After, one accepts and never answers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from foundation import tokens
from guard.authz.checkaccess import CheckAccessClient
from guard.authz.provider import (
    DISCOVERY_PATHS,
    AuthorizerConfig,
    AzureAuthorizer,
    is_discovery,
    security_groups,
)
from guard.interfaces import FailurePolicy as Policy
from guard.reviews import Decision, NonResourceAttributes, ResourceAttributes, SubjectAccessReview
from tests.clusters import ConnectedCluster, connected
from tests.conftest import RunningHub

pytestmark = pytest.mark.sqlite_only


class Clock:
    """The client's clock for cache TTLs, Retry-After and the breaker; moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counter:
    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, request: httpx.Request) -> None:
        self.requests += 1


def sar(
    oid: str | None,
    verb: str,
    resource: str = "",
    group: str = "",
    ns: str = "",
    sub: str = "",
    path: str | None = None,
    user: str = "alice@example.com",
    groups: list[str] | None = None,
) -> SubjectAccessReview:
    ra = nra = None
    if path is not None:
        nra = NonResourceAttributes(path=path, verb=verb)
    else:
        ra = ResourceAttributes(namespace=ns, verb=verb, group=group, resource=resource, subresource=sub)
    extra = {"oid": [oid]} if oid else {}
    return SubjectAccessReview("authorization.k8s.io/v1", user, "", groups or [], extra, ra, nra)


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def make_authorizer(
    base_url: str,
    cluster_id: str,
    credential: Callable[[], Any],
    *,
    ca: str | None = None,
    clock: Clock | None = None,
    counter: Counter | None = None,
    failure: Policy = "noopinion",
    **client_kw: Any,
) -> AzureAuthorizer:
    hooks: dict[str, list[Callable[..., Any]]] = {"request": [counter]} if counter else {}
    client = CheckAccessClient(
        base_url, credential, ca_file=ca, clock=clock or Clock(), event_hooks=hooks, **client_kw
    )
    return AzureAuthorizer(AuthorizerConfig(cluster_id, failure=failure), client)


def agent_credential(hub: RunningHub, cluster: ConnectedCluster) -> Callable[[], Any]:
    async def credential() -> str:
        assert cluster.identity is not None
        return tokens.make_agent_token(cluster.identity, hub.url)

    return credential


@asynccontextmanager
async def authorizer_for(
    hub: RunningHub, cluster: ConnectedCluster, **kw: Any
) -> AsyncIterator[AzureAuthorizer]:
    authorizer = make_authorizer(
        hub.url, cluster.resource_id, agent_credential(hub, cluster), ca=hub.ca, **kw
    )
    try:
        yield authorizer
    finally:
        await authorizer.client.aclose()


# ---- built-in Arc roles (REFERENCE §3) -------------------------------------------------------------

REQUESTS: dict[str, dict[str, Any]] = {
    "get pods -n dev": dict(verb="get", resource="pods", ns="dev"),
    "list secrets -n dev": dict(verb="list", resource="secrets", ns="dev"),
    "create deployments -n dev": dict(verb="create", resource="deployments", group="apps", ns="dev"),
    "create rolebindings -n dev": dict(
        verb="create", resource="rolebindings", group="rbac.authorization.k8s.io", ns="dev"
    ),
    "exec pods -n dev": dict(verb="create", resource="pods", sub="exec", ns="dev"),
    "get pods -n other": dict(verb="get", resource="pods", ns="other"),
    "create clusterrolebindings": dict(
        verb="create", resource="clusterrolebindings", group="rbac.authorization.k8s.io"
    ),
    "delete nodes": dict(verb="delete", resource="nodes"),
}
NAMES = list(REQUESTS)

# Allowed requests per role, by where the role is assigned: the cluster, or namespace dev.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "Azure Arc Kubernetes Viewer": {
        "cluster": {"get pods -n dev", "get pods -n other"},
        "dev": {"get pods -n dev"},
    },
    "Azure Arc Kubernetes Writer": {
        "cluster": {
            "get pods -n dev", "list secrets -n dev", "create deployments -n dev", "exec pods -n dev",
            "get pods -n other",
        },
        "dev": {"get pods -n dev", "list secrets -n dev", "create deployments -n dev", "exec pods -n dev"},
    },
    "Azure Arc Kubernetes Admin": {
        "cluster": {
            "get pods -n dev", "list secrets -n dev", "create deployments -n dev", "exec pods -n dev",
            "create rolebindings -n dev", "get pods -n other",
        },
        "dev": {
            "get pods -n dev", "list secrets -n dev", "create deployments -n dev", "exec pods -n dev",
            "create rolebindings -n dev",
        },
    },
    "Azure Arc Kubernetes Cluster Admin": {
        "cluster": set(NAMES),
        "dev": {n for n in NAMES if n.endswith("-n dev")},
    },
    "Azure Arc Enabled Kubernetes Cluster User Role": {"cluster": set(), "dev": set()},
}  # fmt: skip


@pytest.fixture(scope="module")
def cluster(shared_hub: RunningHub) -> ConnectedCluster:
    return connected(shared_hub, f"guard-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("where", ["cluster", "dev"])
@pytest.mark.parametrize("role", list(EXPECTED))
async def test_builtin_roles(
    shared_hub: RunningHub, cluster: ConnectedCluster, role: str, where: str
) -> None:
    oid = str(uuid.uuid4())
    scope = cluster.resource_id if where == "cluster" else f"{cluster.resource_id}/namespaces/dev"
    shared_hub.assign(oid, role, scope)
    async with authorizer_for(shared_hub, cluster) as authorizer:
        got = set()
        for name, attrs in REQUESTS.items():
            decision = await authorizer.authorize(sar(oid, **attrs), soon())
            assert not decision.evaluation_error, decision
            assert not decision.denied, decision  # NotAllowed is NoOpinion by default
            if decision.allowed:
                got.add(name)
        assert got == EXPECTED[role][where]


async def test_group_assignment_counts(shared_hub: RunningHub, cluster: ConnectedCluster) -> None:
    oid, group = str(uuid.uuid4()), str(uuid.uuid4())
    shared_hub.assign(group, "Azure Arc Kubernetes Viewer", cluster.resource_id, "Group")
    async with authorizer_for(shared_hub, cluster) as authorizer:
        assert (
            await authorizer.authorize(
                sar(oid, "get", "pods", ns="dev", groups=["system:authenticated", group.upper()]), soon()
            )
        ).allowed
        assert not (await authorizer.authorize(sar(oid, "get", "pods", ns="dev"), soon())).allowed


async def test_no_opinion_without_calling(shared_hub: RunningHub, cluster: ConnectedCluster) -> None:
    counter = Counter()
    async with authorizer_for(shared_hub, cluster, counter=counter) as authorizer:
        d = await authorizer.authorize(sar(str(uuid.uuid4()), "get", "pods", user="system:admin"), soon())
        assert d == Decision.no_opinion(d.reason) and "system" in d.reason
        d = await authorizer.authorize(sar(None, "get", "pods"), soon())
        assert not d.allowed and not d.denied and "object id" in d.reason
        d = await authorizer.authorize(sar(str(uuid.uuid4()), "get", path="/apis/apps/v1"), soon())
        assert d.allowed and "discovery" in d.reason
        d = await authorizer.authorize(sar(str(uuid.uuid4()), "approve", "csr"), soon())
        assert d.denied and "approve" in d.reason
    assert counter.requests == 0


# ---- cache and TTLs ------------------------------------------------------------------------------


async def test_cache_honours_ttls(shared_hub: RunningHub, cluster: ConnectedCluster) -> None:
    oid = str(uuid.uuid4())
    shared_hub.assign(oid, "Azure Arc Kubernetes Viewer", f"{cluster.resource_id}/namespaces/dev")
    clock, counter = Clock(), Counter()
    async with authorizer_for(shared_hub, cluster, clock=clock, counter=counter) as authorizer:

        async def ask(**attrs: Any) -> bool:
            return (await authorizer.authorize(sar(oid, **attrs), soon())).allowed

        # Allowed: the hub says 300 s; reused until then.
        assert await ask(verb="get", resource="pods", ns="dev") and counter.requests == 1
        assert await ask(verb="list", resource="pods", ns="dev") and counter.requests == 1  # same action
        clock.now += 299
        assert await ask(verb="get", resource="pods", ns="dev") and counter.requests == 1
        clock.now += 2
        assert await ask(verb="get", resource="pods", ns="dev") and counter.requests == 2

        # NotAllowed: the hub says 30 s. A grant made meanwhile shows once that expires.
        assert not await ask(verb="create", resource="pods", ns="dev") and counter.requests == 3
        shared_hub.assign(oid, "Azure Arc Kubernetes Writer", f"{cluster.resource_id}/namespaces/dev")
        clock.now += 29
        assert not await ask(verb="create", resource="pods", ns="dev") and counter.requests == 3
        clock.now += 2
        assert await ask(verb="create", resource="pods", ns="dev") and counter.requests == 4

        # The key holds the groups and the scope: either changing means a new question.
        assert (
            await ask(verb="get", resource="pods", ns="dev", groups=[str(uuid.uuid4())])
            and counter.requests == 5
        )
        assert not await ask(verb="get", resource="pods", ns="prod") and counter.requests == 6


async def test_ttl_caps_are_separate(shared_hub: RunningHub, cluster: ConnectedCluster) -> None:
    oid = str(uuid.uuid4())
    shared_hub.assign(oid, "Azure Arc Kubernetes Viewer", cluster.resource_id)
    clock, counter = Clock(), Counter()
    caps = {"allow_ttl_cap": 60.0, "deny_ttl_cap": 5.0}
    async with authorizer_for(shared_hub, cluster, clock=clock, counter=counter, **caps) as authorizer:
        allow, deny = sar(oid, "get", "pods", ns="dev"), sar(oid, "get", "secrets", ns="dev")
        assert (await authorizer.authorize(allow, soon())).allowed
        assert not (await authorizer.authorize(deny, soon())).allowed
        assert counter.requests == 2
        clock.now += 6  # past the deny cap (the hub offered 30 s), within the allow cap
        await authorizer.authorize(allow, soon())
        await authorizer.authorize(deny, soon())
        assert counter.requests == 3
        clock.now += 55  # past the allow cap (the hub offered 300 s)
        await authorizer.authorize(allow, soon())
        assert counter.requests == 4


# ---- outages -------------------------------------------------------------------------------------


async def test_hub_down_fails_by_policy_then_breaker_opens(hub: RunningHub) -> None:
    cluster = connected(hub, "guard-outage")
    oid = str(uuid.uuid4())
    hub.assign(oid, "Azure Arc Kubernetes Writer", cluster.resource_id)
    clock, counter = Clock(), Counter()
    async with (
        authorizer_for(
            hub, cluster, clock=clock, counter=counter, breaker_threshold=3, breaker_cooldown=20.0
        ) as lenient,
        authorizer_for(hub, cluster, failure="deny") as strict,
    ):
        cached = sar(oid, "get", "pods", ns="dev")
        assert (await lenient.authorize(cached, soon())).allowed
        hub.stop()

        # A cached answer still stands; a new question gets the failure policy, within the deadline.
        assert (await lenient.authorize(cached, soon())).allowed
        fresh = [sar(oid, "create", r, ns="dev") for r in ("pods", "services", "configmaps", "secrets")]
        start = time.monotonic()
        d = await lenient.authorize(fresh[0], start + 2.0)
        assert time.monotonic() - start < 2.0
        assert not d.allowed and not d.denied and "unavailable" in d.reason and d.evaluation_error
        d = await strict.authorize(fresh[0], soon(2.0))
        assert d.denied and "unavailable" in d.reason

        # Two more failures open the breaker: the next review does not touch the network.
        for review in fresh[1:3]:
            await lenient.authorize(review, soon(2.0))
        assert counter.requests == 4
        start = time.monotonic()
        d = await lenient.authorize(fresh[3], soon(2.0))
        assert time.monotonic() - start < 0.1
        assert "breaker-open" in d.reason and not d.allowed and counter.requests == 4

        # After the cool-down one probe goes out again (and fails, reopening the breaker).
        clock.now += 21
        d = await lenient.authorize(fresh[3], soon(2.0))
        assert counter.requests == 5 and "unavailable" in d.reason
        d = await lenient.authorize(fresh[3], soon(2.0))
        assert counter.requests == 5 and "breaker-open" in d.reason


@asynccontextmanager
async def fake_azure(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
) -> AsyncIterator[str]:
    """FAKE AZURE: a local plain-HTTP listener standing in for ARM's checkAccess endpoint."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)


async def test_retry_after_is_honoured() -> None:
    seen: list[int] = []

    async def throttle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        seen.append(1)
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    clock = Clock()
    async with fake_azure(throttle) as url:
        cid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c"

        async def credential() -> str:
            return "arm-token"

        authorizer = make_authorizer(url, cid, credential, clock=clock, breaker_threshold=100)
        review = sar(str(uuid.uuid4()), "get", "pods", ns="dev")
        d = await authorizer.authorize(review, soon())
        assert "throttled" in d.reason and len(seen) == 1
        clock.now += 29
        d = await authorizer.authorize(review, soon())
        assert "throttled" in d.reason and "wait" in d.evaluation_error and len(seen) == 1
        clock.now += 2
        await authorizer.authorize(review, soon())
        assert len(seen) == 2
        await authorizer.client.aclose()


async def test_slow_azure_answers_by_the_deadline() -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(30)

    async with fake_azure(hang) as url:
        cid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c"

        async def credential() -> str:
            return "arm-token"

        authorizer = make_authorizer(url, cid, credential, failure="deny")
        start = time.monotonic()
        d = await authorizer.authorize(sar(str(uuid.uuid4()), "get", "pods", ns="dev"), start + 0.5)
        elapsed = time.monotonic() - start
        assert 0.45 < elapsed < 1.5, elapsed
        assert d.denied and "deadline" in d.reason
        await authorizer.client.aclose()


async def test_identical_questions_share_one_request(
    shared_hub: RunningHub, cluster: ConnectedCluster
) -> None:
    oid = str(uuid.uuid4())
    shared_hub.assign(oid, "Azure Arc Kubernetes Viewer", cluster.resource_id)
    counter = Counter()
    async with authorizer_for(shared_hub, cluster, counter=counter) as authorizer:
        review = sar(oid, "list", "services", ns="dev")
        decisions = await asyncio.gather(*(authorizer.authorize(review, soon()) for _ in range(5)))
        assert all(d.allowed for d in decisions) and counter.requests == 1


async def test_agent_of_another_cluster_is_refused(shared_hub: RunningHub, cluster: ConnectedCluster) -> None:
    other = connected(shared_hub, f"guard-{uuid.uuid4().hex[:8]}")
    oid = str(uuid.uuid4())
    shared_hub.assign(oid, "Azure Arc Kubernetes Cluster Admin", cluster.resource_id)
    authorizer = make_authorizer(
        shared_hub.url, cluster.resource_id, agent_credential(shared_hub, other), ca=shared_hub.ca
    )
    d = await authorizer.authorize(sar(oid, "get", "pods", ns="dev"), soon())
    assert not d.allowed and "http" in d.reason and "403" in d.evaluation_error
    await authorizer.client.aclose()


async def test_azure_batches_deny_assignments_and_ttls() -> None:
    bodies: list[dict[str, Any]] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = json.loads(await reader.readexactly(length))
        bodies.append(body)
        answer = [
            {
                "accessDecision": "Denied"
                if "secrets" in a["Id"]
                else "Allowed"
                if a["Id"].endswith("/read")
                else "NotAllowed",
                "actionId": a["Id"],
                "isDataAction": True,
                "roleAssignment": None,
                "denyAssignment": None,
                "timeToLiveInMs": 2000,
            }
            for a in body["Actions"]
        ]
        data = json.dumps(answer).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()

    clock = Clock()
    async with fake_azure(echo) as url:
        cid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c"

        async def credential() -> str:
            return "arm-token"

        authorizer = make_authorizer(url, cid, credential, clock=clock, failure="deny")
        client = authorizer.client
        actions = [f"Microsoft.Kubernetes/connectedClusters/crd{i}.example/things/read" for i in range(450)]
        decisions = await client.check(str(uuid.uuid4()), ["g2", "g1"], cid, actions, soon())
        assert [d.action for d in decisions] == actions and all(d.allowed for d in decisions)
        assert sorted(len(b["Actions"]) for b in bodies) == [50, 200, 200]
        assert bodies[0]["Resource"] == {"Id": cid}
        assert bodies[0]["Subject"]["Attributes"]["Groups"] == ["g2", "g1"]
        assert all(a["IsDataAction"] is True for b in bodies for a in b["Actions"])

        oid = str(uuid.uuid4())
        d = await authorizer.authorize(sar(oid, "get", "secrets", ns="dev"), soon())
        assert d.denied and "deny assignment" in d.reason
        d = await authorizer.authorize(sar(oid, "get", "pods", ns="dev"), soon())
        assert d.allowed and len(bodies) == 5
        clock.now += 1.5
        await authorizer.authorize(sar(oid, "get", "pods", ns="dev"), soon())
        assert len(bodies) == 5
        clock.now += 1  # past the 2 s the answer allowed, though the cap is 300 s
        await authorizer.authorize(sar(oid, "get", "pods", ns="dev"), soon())
        assert len(bodies) == 6
        await client.aclose()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api", True),
        ("/api/v1", True),
        ("/apis/", True),
        ("/apis/apps/v1", True),
        ("/openapi/v2", True),
        ("/version", True),
        ("/healthz/etcd", True),
        ("/apisx", False),
        ("/versions", False),
        ("/metrics", False),
        ("/logs", False),
        ("/", False),
    ],
)
def test_discovery_paths_match_whole_segments(path: str, expected: bool) -> None:
    assert is_discovery(path, DISCOVERY_PATHS) is expected


def test_only_entra_group_ids_are_sent() -> None:
    g = str(uuid.uuid4())
    assert security_groups(["system:authenticated", g.upper(), g, "devs"]) == (g,)


async def test_credential_failure_is_an_outage_not_a_crash() -> None:
    async def broken() -> str:
        raise RuntimeError("msal: no network")

    cid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c"
    authorizer = make_authorizer("https://127.0.0.1:9", cid, broken, failure="deny")
    d = await authorizer.authorize(sar(str(uuid.uuid4()), "get", "pods", ns="dev"), soon())
    assert d.denied and "unavailable" in d.reason and "no bearer token" in d.evaluation_error
    await authorizer.client.aclose()
