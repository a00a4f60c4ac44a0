"""`kubectl exec` and `kubectl attach` over websockets: the channel protocol (v4 and v5.channel.k8s.io).

Every binary message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr,
3 error (the final `metav1.Status`), 4 resize (`{"Width":..,"Height":..}`).
v5 adds the close signal `[255, channel]` by which kubectl half-closes stdin
once its own stdin reaches EOF. After the process ends, the server sends the
Status on channel 3 (reason NonZeroExitCode with an ExitCode cause for a failed
command, which kubectl turns into its own exit code) and closes normally.
The same sessions run over direct SPDY upgrades (`spdy_upgrade.py`, one SPDY
stream per channel) through the `StdStreams` interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

from starlette.websockets import WebSocket

from tests.apiserver import shell
from tests.apiserver.kubelet import Container, Kubelet

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
log = logging.getLogger(__name__)


def exit_status(code: int, command: list[str]) -> dict[str, Any]:
    """The Status a kubelet reports on the error channel when a command exits."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {command}, "
        f"exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


class StdStreams(Protocol):
    """The standard streams of one process, whatever carries them (websocket channels or SPDY streams)."""

    tty: bool  # kubectl asked for a terminal (`exec -t`)

    async def read(self) -> bytes: ...  # stdin; b"" at EOF
    async def out(self, data: bytes) -> None: ...
    async def err(self, data: bytes) -> None: ...
    async def pump(self, on_stdin: Any = None) -> None: ...  # read the client until it goes away
    async def finish(self, status: dict[str, Any]) -> None: ...  # the final Status, then close


class Channels:
    """One websocket carrying the multiplexed standard streams of one process."""

    def __init__(self, ws: WebSocket, *, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
        self.ws = ws
        self.want_stdin, self.want_stdout, self.want_stderr, self.tty = stdin, stdout, stderr, tty
        self.stdin: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self.resizes: list[dict[str, Any]] = []
        self.gone = asyncio.Event()  # the client went away
        self._send_lock = asyncio.Lock()
        if not stdin:
            self.stdin.put_nowait(b"")

    async def send(self, channel: int, data: bytes) -> None:
        if self.gone.is_set():
            return
        try:
            async with self._send_lock:
                await self.ws.send_bytes(bytes([channel]) + data)
        except Exception:  # the peer closed mid-write: the reader notices too
            self.gone.set()

    async def out(self, data: bytes) -> None:
        if self.want_stdout and data:
            await self.send(STDOUT, data)

    async def err(self, data: bytes) -> None:
        if data and (self.want_stderr or self.tty):
            await self.send(STDOUT if self.tty else STDERR, data)

    async def read(self) -> bytes:
        return await self.stdin.get()

    async def pump(self, on_stdin: Any = None) -> None:
        """Read client messages until it disconnects: stdin, resizes and the v5 close signal."""
        stdin_open = self.want_stdin
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes") or (message.get("text") or "").encode()
                if not data:
                    continue
                channel, payload = data[0], data[1:]
                if channel == STDIN and stdin_open and payload:
                    await (on_stdin(payload) if on_stdin else self.stdin.put(payload))
                elif channel == CLOSE and payload[:1] == bytes([STDIN]) and stdin_open:
                    stdin_open = False
                    if not on_stdin:
                        await self.stdin.put(b"")
                elif channel == RESIZE:
                    with contextlib.suppress(ValueError):
                        self.resizes.append(json.loads(payload))
        finally:
            self.gone.set()
            if stdin_open and not on_stdin:
                self.stdin.put_nowait(b"") if not self.stdin.full() else None

    async def finish(self, status: dict[str, Any]) -> None:
        await self.send(ERROR, json.dumps(status).encode())
        if not self.gone.is_set():
            with contextlib.suppress(Exception):
                await self.ws.close(1000)


async def _until_either(work: asyncio.Task[Any], pump: asyncio.Task[None]) -> bool:
    """Wait for `work`; if the client disconnects first, cancel it. True when `work` finished."""
    await asyncio.wait({work, pump}, return_when=asyncio.FIRST_COMPLETED)
    if work.done():
        return True
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    return False


async def _process(argv: list[str], io_: shell.Stdio) -> int:
    """A real process (the container's runner): stdin from the client, stdout and stderr to it."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdin and process.stdout and process.stderr

    async def copy(source: asyncio.StreamReader, write: Any) -> None:
        while chunk := await source.read(65536):
            await write(chunk)

    async def feed(sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await io_.read():
                sink.write(chunk)
                await sink.drain()
            sink.close()

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(copy(process.stdout, io_.out))
            tasks.create_task(copy(process.stderr, io_.err))
            feeding = tasks.create_task(feed(process.stdin))
            code = await process.wait()
            feeding.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return code


async def run_exec(ch: StdStreams, command: list[str], container: Container) -> None:
    pump = asyncio.create_task(ch.pump())
    io_ = shell.Stdio(ch.read, ch.out, ch.err)
    if ch.tty and container.runner is None:
        io_ = shell.Terminal(io_).stdio()  # the container's terminal (a real one has a pty)
    if container.runner is not None:
        work = asyncio.create_task(_process(container.runner(command), io_))
    else:
        work = asyncio.create_task(shell.run(command, io_, container.fs))
    try:
        if await _until_either(work, pump):
            await ch.finish(exit_status(work.result(), command))
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)


async def run_attach(ch: StdStreams, kubelet: Kubelet, container: Container) -> None:
    """Attach to the container's main process: its output from now on; stdin is echoed back."""

    async def echo(data: bytes) -> None:
        if not container.ended:
            kubelet.append_log(container, data)

    async def follow() -> None:
        index = len(kubelet.entries(container, 0)[0])
        while True:
            entries, ended, seen = kubelet.entries(container, index)
            for entry in entries:
                await (ch.err if entry.stream == "stderr" else ch.out)(entry.data)
            index += len(entries)
            if ended:
                return
            await container.changed.wait_past(seen)

    pump = asyncio.create_task(ch.pump(on_stdin=echo))
    work = asyncio.create_task(follow())
    try:
        if await _until_either(work, pump):
            await ch.finish(exit_status(0, []))
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
