"""The stand-in's protocol pieces on their own: SPDY framing, protobuf bodies, strategic merge patch,
watch semantics, logs options, field validation, the built-in shell, websocket refusals and HTTP/2."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, StreamEnded
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.apiserver import ApiServer, errors, patch, protobuf, shell, spdy
from tests.apiserver.kubelet import Filesystem
from tests.apiserver.resources import NAMESPACES
from tests.apiserver.store import ObjectStore
from tests.apiserver.workloads import CONFIGMAPS, PODS


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        server.store.create(NAMESPACES, None, {"metadata": {"name": "proto"}})
        yield server


def _https(api: ApiServer) -> httpx.Client:
    context = ssl.create_default_context(cadata=api.ca_pem.decode())
    return httpx.Client(base_url=api.url, verify=context, headers={"Authorization": f"Bearer {api.token}"})


# -- SPDY ---------------------------------------------------------------------------------------------


def _syn_stream(deflate: Any, stream_id: int, headers: dict[str, str], fin: bool = False) -> bytes:
    block = struct.pack(">I", len(headers))
    for name, value in headers.items():
        block += struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(value)) + value.encode()
    compressed = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    body = struct.pack(">IIH", stream_id, 0, 0) + compressed
    return struct.pack(">HHI", 0x8003, spdy.SYN_STREAM, ((1 if fin else 0) << 24) | len(body)) + body


def test_spdy_frames_parse_across_chunks_and_replies_decode() -> None:
    assert len(spdy.DICTIONARY) == 1423  # the SPDY/3 dictionary, byte for byte
    client_deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    wire = _syn_stream(client_deflate, 1, {"streamtype": "error", "port": "80", "requestid": "0"}, fin=True)
    wire += _syn_stream(client_deflate, 3, {"streamtype": "data", "port": "80", "requestid": "0"})
    wire += spdy.Connection.data(3, b"payload", fin=True) + spdy.Connection().ping(7)
    server = spdy.Connection()
    frames = [f for i in range(0, len(wire), 5) for f in server.feed(wire[i : i + 5])]
    assert [(f.type, f.stream_id, f.fin) for f in frames] == [
        (spdy.SYN_STREAM, 1, True),
        (spdy.SYN_STREAM, 3, False),
        (0, 3, True),
        (spdy.PING, 0, False),
    ]
    assert frames[1].header("streamType") == "data" and frames[2].data == b"payload" and frames[3].value == 7

    client = spdy.Connection()  # a second reply reuses the compression context, as spdystream does
    replies = client.feed(server.syn_reply(1) + server.syn_reply(3, {"x": "y"}) + server.rst_stream(3, 5))
    assert [(f.type, f.stream_id, f.headers) for f in replies] == [
        (spdy.SYN_REPLY, 1, {}),
        (spdy.SYN_REPLY, 3, {"x": ["y"]}),
        (spdy.RST_STREAM, 3, {}),
    ]
    assert replies[2].value == spdy.RST_CANCEL


# -- protobuf -----------------------------------------------------------------------------------------


def _field(number: int, value: bytes | int) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out

    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def _envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = _field(1, api_version.encode()) + _field(2, kind.encode())
    return protobuf.MAGIC + _field(1, type_meta) + _field(2, raw)


def test_protobuf_configmap_decodes_like_its_json() -> None:
    meta = (
        _field(1, b"cm") + _field(2, b"") + _field(7, 0) + _field(11, _field(1, b"app") + _field(2, b"web"))
    )
    raw = (
        _field(1, meta)
        + _field(2, _field(1, b"a") + _field(2, b"b"))
        + _field(3, _field(1, b"bin") + _field(2, b"\x00\x01"))
    )
    raw += _field(4, 0)  # immutable is a pointer: an explicit false stays
    assert protobuf.decode_body(_envelope("v1", "ConfigMap", raw)) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "labels": {"app": "web"}},
        "data": {"a": "b"},
        "binaryData": {"bin": "AAE="},
        "immutable": False,
    }


def test_protobuf_refuses_what_it_cannot_read() -> None:
    with pytest.raises(errors.StatusError) as unknown_field:
        protobuf.decode_body(_envelope("v1", "ConfigMap", _field(1, _field(99, b"x"))))
    assert unknown_field.value.code == 400 and "field 99 of ObjectMeta" in unknown_field.value.message
    with pytest.raises(errors.StatusError) as unknown_kind:
        protobuf.decode_body(_envelope("batch/v1", "Job", b""))
    assert unknown_kind.value.code == 415
    with pytest.raises(errors.StatusError) as no_magic:
        protobuf.decode_body(b"{}")
    assert no_magic.value.code == 400


def test_protobuf_create_over_http(api: ApiServer) -> None:
    raw = _field(1, _field(1, b"from-proto")) + _field(2, _field(1, b"k") + _field(2, b"v"))
    with _https(api) as c:
        resp = c.post(
            "/api/v1/namespaces/proto/configmaps",
            content=_envelope("v1", "ConfigMap", raw),
            headers={"content-type": protobuf.MEDIA, "accept": f"{protobuf.MEDIA},application/json"},
        )
        assert resp.status_code == 201 and resp.headers["content-type"] == "application/json"
        assert resp.json()["data"] == {"k": "v"}
        only_proto = c.get(
            "/api/v1/namespaces/proto/configmaps/from-proto", headers={"accept": protobuf.MEDIA}
        )
        assert only_proto.status_code == 406 and only_proto.json()["reason"] == "NotAcceptable"


# -- strategic merge patch ----------------------------------------------------------------------------


def test_strategic_merge_patch_merges_lists_by_key_and_honours_directives() -> None:
    current = {
        "metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1",
                    "env": [{"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 80}],
                },
                {"name": "side", "image": "busybox"},
                {"name": "old", "image": "x"},
            ],
            "tolerations": [{"key": "a"}],
        },
    }
    body = {
        "metadata": {"finalizers": ["b"], "labels": {"y": None}},
        "spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
            "containers": [
                {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]},
                {"name": "old", "$patch": "delete"},
            ],
            "tolerations": [{"key": "b"}],
        },
    }
    result = patch.apply(patch.STRATEGIC, current, body)
    assert result["metadata"] == {"finalizers": ["a", "b"], "labels": {"x": "1"}}
    assert [c["name"] for c in result["spec"]["containers"]] == ["side", "web"]
    web = result["spec"]["containers"][1]
    assert web["image"] == "nginx:2" and web["ports"] == [{"containerPort": 80}]
    assert web["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert result["spec"]["tolerations"] == [{"key": "b"}]  # no merge key: replaced
    replaced = patch.apply(
        patch.STRATEGIC, current, {"metadata": {"labels": {"$patch": "replace", "z": "3"}}}
    )
    assert replaced["metadata"]["labels"] == {"z": "3"}
    trimmed = patch.apply(
        patch.STRATEGIC, current, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}
    )
    assert trimmed["metadata"]["finalizers"] == []
    assert patch.apply(patch.MERGE, current, {"spec": {"containers": []}})["spec"]["containers"] == []


# -- watch --------------------------------------------------------------------------------------------


def _watch_lines(api: ApiServer, path: str, **params: str) -> list[dict[str, Any]]:
    with _https(api) as c:
        resp = c.get(path, params={"watch": "true", "timeoutSeconds": "1", **params})
        assert resp.status_code == 200
        return [json.loads(line) for line in resp.text.splitlines()]


def test_watch_replays_from_a_resource_version_through_selectors(api: ApiServer) -> None:
    start = api.store.resource_version
    api.add_pod("sel", "proto")
    api.store.patch(PODS, "proto", "sel", patch.MERGE, {"metadata": {"labels": {"team": "a"}}})
    api.store.patch(PODS, "proto", "sel", patch.MERGE, {"metadata": {"labels": {"team": "a", "x": "y"}}})
    api.store.patch(PODS, "proto", "sel", patch.MERGE, {"metadata": {"labels": {"team": None}}})
    api.store.delete(PODS, "proto", "sel")
    everything = _watch_lines(api, "/api/v1/namespaces/proto/pods", resourceVersion=start)
    assert [e["type"] for e in everything] == ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in everything]
    assert rvs == sorted(rvs) and len(set(rvs)) == 5
    team = _watch_lines(api, "/api/v1/namespaces/proto/pods", resourceVersion=start, labelSelector="team=a")
    assert [e["type"] for e in team] == ["ADDED", "MODIFIED", "DELETED"]  # into, within, out of the selection


def test_watch_initial_events_bookmark_and_table_form(api: ApiServer) -> None:
    api.store.create(CONFIGMAPS, "proto", {"metadata": {"name": "present"}, "data": {"a": "b"}})
    events = _watch_lines(
        api,
        "/api/v1/namespaces/proto/configmaps",
        sendInitialEvents="true",
        allowWatchBookmarks="true",
        resourceVersionMatch="NotOlderThan",
        fieldSelector="metadata.name=present",
    )
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    with _https(api) as c:
        resp = c.get(
            "/api/v1/namespaces/proto/configmaps",
            params={
                "watch": "1",
                "resourceVersion": "0",
                "timeoutSeconds": "1",
                "fieldSelector": "metadata.name=present",
            },
            headers={"accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        )
    table = json.loads(resp.text.splitlines()[0])["object"]
    assert table["kind"] == "Table" and table["rows"][0]["cells"][:2] == ["present", 1]


def test_watch_from_a_compacted_resource_version_is_410() -> None:
    store = ObjectStore()
    store._history = deque(maxlen=3)  # compaction after three writes
    for name in "abcde":
        store.create(NAMESPACES, None, {"metadata": {"name": name}})
    assert store.watch(NAMESPACES, "1", lambda e: None) is None
    backlog, rv = store.watch(NAMESPACES, "3", lambda e: None) or ([], 0)
    assert [e.obj["metadata"]["name"] for e in backlog] == ["d", "e"] and rv == 5


# -- logs, field validation, websocket refusals -------------------------------------------------------


def test_logs_options(api: ApiServer) -> None:
    api.add_pod("two", "proto", containers=("a", "b"))
    api.append_log("proto", "two", "first", "second", container="b")
    with _https(api) as c:
        base = "/api/v1/namespaces/proto/pods/two/log"
        assert (
            c.get(base).json()["message"]
            == "a container name must be specified for pod two, choose one of: [a b]"
        )
        assert c.get(base, params={"container": "b"}).text == "first\nsecond\n"
        assert c.get(base, params={"container": "b", "limitBytes": "3"}).text == "fir"
        assert c.get(base, params={"container": "b", "tailLines": "0"}).text == ""
        previous = c.get(base, params={"container": "b", "previous": "true"})
        assert previous.status_code == 400 and "previous terminated container" in previous.json()["message"]
        assert c.get(base, params={"container": "c"}).status_code == 400


def test_field_validation_directives(api: ApiServer) -> None:
    body = {"metadata": {"name": "fv", "bogus": 1}, "data": {"a": "b"}, "extra": True}
    with _https(api) as c:
        url = "/api/v1/namespaces/proto/configmaps"
        strict = c.post(url, json=body, params={"fieldValidation": "Strict"})
        assert strict.status_code == 400
        assert 'unknown field "metadata.bogus", unknown field "extra"' in strict.json()["message"]
        warned = c.post(url, json=body)
        assert warned.status_code == 201 and "extra" not in warned.json()
        assert warned.headers.get_list("warning") == [
            '299 - "unknown field \\"metadata.bogus\\""',
            '299 - "unknown field \\"extra\\""',
        ]
        dry = c.post(url, json={"metadata": {"name": "dry"}}, params={"dryRun": "All"})
        assert dry.status_code == 201 and c.get(f"{url}/dry").status_code == 404


def _ws(api: ApiServer, path: str, token: str, protocol: str = "v5.channel.k8s.io") -> Any:
    context = ssl.create_default_context(cadata=api.ca_pem.decode())
    # websockets' sync client reads in a thread with a blocking socket, while the caller's thread
    # writes. TLS 1.3 session tickets wake that reader before any response, so it sits in a TLS
    # read beside the request's write, and its join waits for ever if no answer comes (600 s in
    # CI once). TLS 1.2 has no such post-handshake message; the kernel's receive timeout bounds
    # every read, so a server that never answers fails the test in seconds.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 30, 0))
    return connect(
        api.url.replace("https", "wss") + path,
        sock=sock,
        ssl=context,
        subprotocols=[protocol],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=20,  # a loaded CI machine once took over 5 s to answer a handshake here
    )


def test_streaming_upgrades_are_refused_with_a_status(api: ApiServer) -> None:
    api.add_pod("ws", "proto")
    cases = [
        ("/api/v1/namespaces/proto/pods/ws/exec?command=true&stdout=true", "wrong", 401),
        ("/api/v1/namespaces/proto/pods/nope/exec?command=true&stdout=true", api.token, 404),
        ("/api/v1/namespaces/proto/pods/ws/exec?stdout=true", api.token, 400),
        ("/api/v1/namespaces/proto/pods/ws/exec?command=true", api.token, 400),
    ]
    for path, token, code in cases:
        with pytest.raises(InvalidStatus) as refused:
            _ws(api, path, token)
        assert refused.value.response.status_code == code
        assert json.loads(refused.value.response.body or b"{}")["code"] == code
    with _https(api) as c:  # a plain request (no upgrade at all) is refused, saying why
        plain = c.post("/api/v1/namespaces/proto/pods/ws/exec", params={"command": "true"})
        assert plain.status_code == 400 and "Upgrade request required" in plain.json()["message"]


def test_exec_over_a_plain_websocket_client(api: ApiServer) -> None:
    api.add_pod("wsexec", "proto")
    path = "/api/v1/namespaces/proto/pods/wsexec/exec?command=cat&stdin=true&stdout=true&stderr=true"
    with _ws(api, path, api.token) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        ws.send(b"\x00hello ")
        ws.send(b"\x00world")
        ws.send(bytes([255, 0]))  # v5: close stdin
        messages = []
        for message in ws:
            messages.append(message)
    assert b"".join(m[1:] for m in messages if m[0] == 1) == b"hello world"
    assert json.loads(messages[-1][1:]) == {"metadata": {}, "status": "Success"}


def _h2_events(sock: ssl.SSLSocket, conn: H2Connection, wanted: type) -> list[Any]:
    """Read from the socket until an event of the `wanted` type arrives; all events so far."""
    events: list[Any] = []
    while not any(isinstance(e, wanted) for e in events):
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        events += conn.receive_data(data)
        sock.sendall(conn.data_to_send())
    return events


def test_http2_bodies_errors_and_a_cancelled_watch(api: ApiServer) -> None:
    """HTTP/2 with clients other than Go's: a large body each way and a Status error (httpx), and a
    watch the client cancels with RST_STREAM (raw h2), which must stop while the connection lives on."""
    context = ssl.create_default_context(cadata=api.ca_pem.decode())
    auth = {"Authorization": f"Bearer {api.token}"}
    with httpx.Client(base_url=api.url, verify=context, headers=auth, http2=True) as c:
        body = {"metadata": {"name": "h2"}, "data": {"k": "v" * 300_000}}
        created = c.post("/api/v1/namespaces/proto/configmaps", json=body)
        assert (created.http_version, created.status_code) == ("HTTP/2", 201)
        assert c.get("/api/v1/namespaces/proto/configmaps/h2").json()["data"] == body["data"]
        assert c.get("/api/v1/namespaces/proto/configmaps/nope").json()["reason"] == "NotFound"
    with httpx.Client(base_url=api.url, verify=context, headers=auth) as c:  # no h2 offered
        assert c.get("/version").http_version == "HTTP/1.1"

    context.set_alpn_protocols(["h2"])
    watches = api.store.watch_count("", "configmaps")
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", api.port)), server_hostname="localhost"
    ) as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn = H2Connection(H2Configuration(client_side=True))
        conn.initiate_connection()

        def get(path: str) -> list[tuple[str, str]]:
            pseudo = [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", path)]
            return [*pseudo, ("authorization", auth["Authorization"])]

        conn.send_headers(1, get("/api/v1/namespaces/proto/configmaps?watch=true"), end_stream=True)
        sock.sendall(conn.data_to_send())
        _h2_events(sock, conn, DataReceived)  # the first ADDED event
        assert api.store.watch_count("", "configmaps") == watches + 1
        conn.reset_stream(1, ErrorCodes.CANCEL)
        conn.send_headers(3, get("/version"), end_stream=True)
        sock.sendall(conn.data_to_send())
        answered = _h2_events(sock, conn, StreamEnded)  # the connection still serves requests
        assert any(isinstance(e, StreamEnded) and e.stream_id == 3 for e in answered)
        deadline = time.monotonic() + 5
        while api.store.watch_count("", "configmaps") > watches:
            assert time.monotonic() < deadline, "the cancelled watch was never stopped"
            time.sleep(0.02)
    assert {s.http_version for s in api.seen() if s.path == "/api/v1/namespaces/proto/configmaps/h2"} == {"2"}


# -- the built-in shell -------------------------------------------------------------------------------


def _run(argv: list[str], stdin: bytes = b"", fs: Filesystem | None = None) -> tuple[int, bytes, bytes]:
    out, err, pending = bytearray(), bytearray(), [stdin] if stdin else []

    async def read() -> bytes:
        return pending.pop() if pending else b""

    async def write_out(data: bytes) -> None:
        out.extend(data)

    async def write_err(data: bytes) -> None:
        err.extend(data)

    code = asyncio.run(shell.run(argv, shell.Stdio(read, write_out, write_err), fs or Filesystem()))
    return code, bytes(out), bytes(err)


def test_builtin_shell() -> None:
    assert _run(["sh", "-c", "echo X; echo Y >&2; exit 3"]) == (3, b"X\n", b"Y\n")
    assert _run(["cat"], b"abc") == (0, b"abc", b"")
    assert _run(["sh", "-c", "false || echo a && echo b; false && echo no"]) == (1, b"a\nb\n", b"")
    assert _run(["sh", "-c", "echo hello | tail -c +2"]) == (0, b"ello\n", b"")
    assert _run(["err", "oops"]) == (0, b"", b"oops\n")
    assert _run(["nosuch"])[0] == 127
    fs = Filesystem()
    fs.write("/srv/a/b.txt", b"data")
    code, tar, err = _run(["tar", "cf", "-", "/srv"], fs=fs)
    assert code == 0 and b"Removing leading" in err
    copy = Filesystem()
    assert _run(["tar", "-xmf", "-", "-C", "/restore"], tar, copy)[0] == 0
    assert copy.read("/restore/srv/a/b.txt") == b"data"
    assert _run(["test", "-d", "/restore/srv"], fs=copy)[0] == 0
    assert _run(["test", "-d", "/restore/srv/a/b.txt"], fs=copy)[0] == 1
    assert _run(["ls", "/restore/srv/a"], fs=copy) == (0, b"b.txt\n", b"")
