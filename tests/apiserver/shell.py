"""What `kubectl exec` runs in a stand-in container: a tiny built-in shell.

There are no images here, so every container has the same handful of commands,
enough for kubectl's own uses (`cp` runs `tar` and `test -d`) and for tests to
produce stdout, stderr, exit codes and stdin handling on demand:

    echo [-n] WORDS...     WORDS to stdout
    err WORDS...           WORDS to stderr
    cat [FILES...]         the files, or stdin until EOF, to stdout
    exit N                 exit with status N (also ends an `sh -c` script)
    sleep SECONDS          wait
    true / false           exit 0 / 1
    test -d|-f|-e PATH     exit 0 if PATH is a directory / file / either
    ls [PATH]              names in a directory, one a line
    tail -c +N             stdin from byte N (1-based) on
    tar cf - PATHS...      a tar of PATHS to stdout ("/" stripped, as GNU tar does)
    tar xf - [-C DIR]      unpack stdin into DIR (`-m`, `--no-same-*` accepted)
    sh -c SCRIPT           SCRIPT: commands joined by `;`, `&&`, `||` and `|`,
                           with a trailing `>&2` sending one command's stdout to stderr
    sh                     reads scripts a line at a time from stdin until EOF or
                           `exit`; on a terminal it prompts with "# "

With `kubectl exec -t` the container has a terminal: `Terminal` is its line
discipline (what the kernel's pty does for a real container): typed bytes are
echoed, Enter ends a line, Backspace erases, Ctrl-D on an empty line is end of
input, Ctrl-C interrupts; output newlines become CR LF.

An unknown command fails like a missing executable (exit 127 and a message on stderr).
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import shlex
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.apiserver.kubelet import Filesystem

Reader = Callable[[], Awaitable[bytes]]  # b"" at EOF
Writer = Callable[[bytes], Awaitable[None]]


class Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


@dataclass
class Stdio:
    read: Reader
    out: Writer
    err: Writer
    tty: bool = False


class Terminal:
    """A cooked-mode terminal in front of a process's standard streams (see the module docstring)."""

    INTERRUPT = 130  # what a shell reports for a command ended by Ctrl-C

    def __init__(self, raw: Stdio) -> None:
        self.raw = raw
        self._lines: list[bytes] = []
        self._line = bytearray()
        self._eof = False

    def stdio(self) -> Stdio:
        return Stdio(self.read, self.out, self.out, tty=True)

    async def out(self, data: bytes) -> None:
        await self.raw.out(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    async def read(self) -> bytes:
        while not self._lines and not self._eof:
            typed = await self.raw.read()
            if not typed:
                self._eof = True
                break
            await self._cook(typed)
        if self._lines:
            return self._lines.pop(0)
        return b""

    async def _cook(self, typed: bytes) -> None:
        echo = bytearray()
        for byte in typed:
            if byte in (0x0D, 0x0A):  # Enter: the line goes to the process
                self._lines.append(bytes(self._line) + b"\n")
                self._line.clear()
                echo += b"\r\n"
            elif byte == 0x04:  # Ctrl-D: what is typed goes as is; on an empty line, end of input
                if self._line:
                    self._lines.append(bytes(self._line))
                    self._line.clear()
                else:
                    self._eof = True
                    break
            elif byte == 0x03:  # Ctrl-C
                raise Exit(self.INTERRUPT)
            elif byte in (0x7F, 0x08):
                if self._line:
                    self._line.pop()
                    echo += b"\b \b"
            else:
                self._line.append(byte)
                echo.append(byte)
        if echo:
            await self.raw.out(bytes(echo))


async def _read_all(read: Reader) -> bytes:
    chunks = []
    while chunk := await read():
        chunks.append(chunk)
    return b"".join(chunks)


def _buffer(data: bytes) -> Reader:
    pending = [data] if data else []

    async def read() -> bytes:
        return pending.pop() if pending else b""

    return read


async def _tar(args: list[str], io_: Stdio, fs: Filesystem) -> int:
    mode, archive, directory, paths = "", None, "/", []
    rest = list(args)
    if rest and not rest[0].startswith("-"):
        rest[0] = "-" + rest[0]  # `tar cf -` is `tar -cf -`
    while rest:
        arg = rest.pop(0)
        if arg.startswith("--"):
            continue  # --no-same-permissions, --no-same-owner: nothing to do here
        if arg.startswith("-") and len(arg) > 1:
            for letter in arg[1:]:
                if letter in "cxt":
                    mode = letter
                elif letter == "f":
                    archive = rest.pop(0) if rest else None
                elif letter == "C":
                    directory = rest.pop(0) if rest else "/"
            continue
        paths.append(arg)
    if archive != "-":
        await io_.err(b"tar: only the archive '-' (stdin/stdout) is supported here\n")
        return 2
    if mode == "c":
        buf = io.BytesIO()
        stripped = False
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for path in paths:
                try:
                    members = fs.walk(path)
                except FileNotFoundError:
                    await io_.err(f"tar: {path}: Cannot stat: No such file or directory\n".encode())
                    continue
                for member in members:
                    name = member.lstrip("/")
                    stripped |= name != member
                    info = tarfile.TarInfo(name if member not in fs.dirs else name + "/")
                    if member in fs.dirs:
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                    else:
                        data = fs.files[member]
                        info.size, info.mode = len(data), 0o644
                        tar.addfile(info, io.BytesIO(data))
        if stripped:
            await io_.err(b"tar: Removing leading `/' from member names\n")
        await io_.out(buf.getvalue())
        return 0
    if mode == "x":
        data = await _read_all(io_.read)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for entry in tar:
                    target = fs.norm(entry.name, fs.norm(directory))
                    if not target.startswith(fs.norm(directory)):
                        await io_.err(f"tar: {entry.name}: member outside the directory, skipped\n".encode())
                        continue
                    if entry.isdir():
                        fs.mkdir(target)
                    elif entry.isfile():
                        extracted = tar.extractfile(entry)
                        fs.write(target, extracted.read() if extracted else b"")
        except tarfile.TarError as exc:
            await io_.err(f"tar: {exc}\n".encode())
            return 2
        return 0
    await io_.err(b"tar: you must specify one of the '-c' or '-x' options\n")
    return 2


async def run_command(argv: list[str], io_: Stdio, fs: Filesystem) -> int:
    """Run one command; returns its exit status (raises Exit for `exit`)."""
    if not argv:
        return 0
    name, args = argv[0], argv[1:]
    if name == "echo":
        newline = not (args and args[0] == "-n")
        words = args[1:] if not newline else args
        await io_.out((" ".join(words) + ("\n" if newline else "")).encode())
        return 0
    if name == "err":
        await io_.err((" ".join(args) + "\n").encode())
        return 0
    if name == "cat":
        if not args:
            while chunk := await io_.read():
                await io_.out(chunk)
            return 0
        status = 0
        for path in args:
            try:
                await io_.out(fs.read(path))
            except (KeyError, IsADirectoryError):
                await io_.err(f"cat: {path}: No such file or directory\n".encode())
                status = 1
        return status
    if name == "exit":
        raise Exit(int(args[0]) if args else 0)
    if name == "sleep":
        await asyncio.sleep(float(args[0]) if args else 0)
        return 0
    if name in ("true", "false"):
        return 0 if name == "true" else 1
    if name == "test" and len(args) == 2:
        check = {"-d": fs.is_dir, "-e": fs.exists, "-f": lambda p: fs.norm(p) in fs.files}.get(args[0])
        return 0 if check and check(args[1]) else 1
    if name == "ls":
        path = fs.norm(args[0] if args else "/")
        if path in fs.files:
            await io_.out(f"{path}\n".encode())
            return 0
        if path not in fs.dirs:
            await io_.err(f"ls: {path}: No such file or directory\n".encode())
            return 1
        names = sorted({posixpath.basename(p) for p in fs.walk(path)[1:] if posixpath.dirname(p) == path})
        await io_.out("".join(f"{n}\n" for n in names).encode())
        return 0
    if name == "tail" and len(args) == 2 and args[0] == "-c" and args[1].startswith("+"):
        data = await _read_all(io_.read)
        await io_.out(data[max(int(args[1][1:]) - 1, 0) :])
        return 0
    if name == "tail" and len(args) == 1 and args[0].startswith("-c+"):
        return await run_command(["tail", "-c", args[0][2:]], io_, fs)
    if name == "tar":
        return await _tar(args, io_, fs)
    if name == "sh" and len(args) >= 2 and args[0] == "-c":
        return await run_script(args[1], io_, fs)
    if name == "sh" and args in ([], ["-i"], ["-s"]):
        return await _interactive(io_, fs)
    await io_.err(f'exec: "{name}": executable file not found in $PATH\n'.encode())
    return 127


def _split(script: str) -> list[str]:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    return list(lexer)


async def _pipeline(commands: list[list[str]], io_: Stdio, fs: Filesystem) -> int:
    """`a | b | c`: each stage's stdout is buffered and fed to the next stage's stdin."""
    read, status = io_.read, 0
    for i, argv in enumerate(commands):
        to_err = argv[-2:] == [">&", "2"]
        if to_err:
            argv = argv[:-2]
        last = i == len(commands) - 1
        captured: list[bytes] = []

        async def capture(data: bytes, sink: list[bytes] = captured) -> None:
            sink.append(data)

        out = (io_.err if to_err else io_.out) if last else capture
        status = await run_command(argv, Stdio(read, out, io_.err), fs)
        read = _buffer(b"".join(captured))
    return status


async def run_script(script: str, io_: Stdio, fs: Filesystem) -> int:
    tokens = _split(script)
    status, skip = 0, False
    pipeline: list[list[str]] = []
    current: list[str] = []
    tokens.append(";")
    for token in tokens:
        if token in (";", "&&", "||", "|"):
            if current:
                pipeline.append(current)
            current = []
            if token == "|":
                continue
            if pipeline and not skip:
                status = await _pipeline(pipeline, io_, fs)
            pipeline = []
            skip = (token == "&&" and status != 0) or (token == "||" and status == 0)
        else:
            current.append(token)
    return status


async def _interactive(io_: Stdio, fs: Filesystem) -> int:
    """`sh` with no script: one line of stdin at a time, until EOF (the last status) or `exit`."""
    status, pending = 0, b""
    while True:
        if io_.tty:
            await io_.out(b"# ")
        while b"\n" not in pending:
            chunk = await io_.read()
            if not chunk:
                if pending.strip():
                    status = await run_script(pending.decode(errors="replace"), io_, fs)
                if io_.tty:
                    await io_.out(b"exit\n")
                return status
            pending += chunk
        line, _, pending = pending.partition(b"\n")
        if line.strip():
            status = await run_script(line.decode(errors="replace"), io_, fs)


async def run(argv: list[str], io_: Stdio, fs: Filesystem) -> int:
    """Run a container's command; with `tty`, behind a terminal's line discipline."""
    try:
        return await run_command(argv, io_, fs)
    except Exit as done:
        return done.code
    except (ValueError, IndexError) as exc:
        await io_.err(f"{argv[0]}: {exc}\n".encode())
        return 2
