"""A shaped WAN link between two network namespaces, for the tunnel benchmark's `--wan` runs.

Why this and not `tc netem`: this machine's kernel is built without sch_netem (REFERENCE
section 6), and a user-space TCP proxy that delays bytes would end every TCP connection at
the proxy, so the real congestion windows, slow start and loss recovery of the two ends
would never see the round trip. Here the link is a pair of TUN devices, one in each
namespace, and a forwarder process moves whole IP packets from one to the other after the
one-way delay, dropping a share of them at random when the profile has loss. TCP end to end
sees the delay and the losses as it would on a routed path. The rate is the kernel's own
token bucket (`tc tbf`) on each TUN device's egress, with a queue of one bandwidth-delay
product, as a bottleneck router would have.

With no loss the TUN devices take TSO/GSO packets (up to 64 KiB, `IFF_VNET_HDR` and
`TUNSETOFFLOAD`): the forwarder then handles a few thousand packets a second even at
1 Gbit/s and takes little CPU from the processes measured. With loss, offloads are off so
that a drop removes one MTU-sized segment, as a lossy link does, not 44 of them.

    hub side (namespace kbw-hub-*)          data center (namespace kbw-dc-*)
    bench client, client proxy, relay,      agent, target, `ssh -R` client
    hub, sshd          10.201.0.1 kwan0 <==> kwan0 10.201.0.2
                               forwarder (root namespace): delay, loss; tbf: rate

Run alone to try a profile: `python -m loadtest.wan 20ms,1gbit` holds the link until Ctrl-C
and prints the commands to enter each side.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import queue
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest import Parser

HUB_ADDR, DC_ADDR = "10.201.0.1", "10.201.0.2"
DEVICE = "kwan0"
MTU = 1500
CLONE_NEWNET = 0x40000000
TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
PROFILES = ("20ms,1gbit", "80ms,200mbit", "50ms,100mbit,0.5%")


@dataclass(frozen=True)
class Profile:
    """A link: round-trip time, rate in bit/s, and the share of packets lost each way."""

    rtt_ms: float
    rate_bps: float
    loss: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Profile:
        """`20ms,1gbit` or `50ms,100mbit,0.5%` (RTT, rate, optional loss each way)."""
        parts = [p.strip().lower() for p in text.split(",")]
        rtt = re.fullmatch(r"([\d.]+)\s*ms", parts[0]) if parts else None
        rate = re.fullmatch(r"([\d.]+)\s*([kmg])bit", parts[1]) if len(parts) > 1 else None
        loss = re.fullmatch(r"([\d.]+)\s*%", parts[2]) if len(parts) > 2 else None
        if rtt is None or rate is None or (len(parts) > 2 and loss is None) or len(parts) > 3:
            raise ValueError(f"{text!r}: expected RTT,RATE[,LOSS] such as 20ms,1gbit or 50ms,100mbit,0.5%")
        scale = {"k": 1e3, "m": 1e6, "g": 1e9}[rate.group(2)]
        return cls(
            float(rtt.group(1)), float(rate.group(1)) * scale, float(loss.group(1)) / 100 if loss else 0.0
        )

    @classmethod
    def argument(cls, text: str) -> Profile:
        """`Profile.parse` for argparse: a bad profile is its one-line usage error."""
        try:
            return cls.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    @property
    def rate_mb_s(self) -> float:
        return self.rate_bps / 8 / 1e6

    @property
    def bdp_bytes(self) -> int:
        return int(self.rate_bps / 8 * self.rtt_ms / 1000)

    @property
    def offload(self) -> bool:
        return self.loss == 0

    def __str__(self) -> str:
        rate = (
            f"{self.rate_bps / 1e9:g} Gbit/s" if self.rate_bps >= 1e9 else f"{self.rate_bps / 1e6:g} Mbit/s"
        )
        loss = f", {self.loss * 100:g} % loss each way" if self.loss else ""
        return f"{self.rtt_ms:g} ms RTT, {rate}{loss}"


def setns(path: Path) -> None:
    """Move the calling thread (and what it forks later) into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def ns_path(name: str) -> Path:
    return Path("/var/run/netns") / name


def open_tun(offload: bool) -> int:
    """A TUN device named DEVICE in the calling thread's namespace; the fd that carries its packets."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", DEVICE.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETOFFLOAD, (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) if offload else 0)
    return fd


class Direction:
    """One way of the link: read packets from one TUN, write each to the other after the delay."""

    def __init__(self, name: str, src: int, dst: int, delay: float, loss: float) -> None:
        self.name, self.src, self.dst, self.delay, self.loss = name, src, dst, delay, loss
        self.packets = self.dropped = self.bytes = 0
        self.queue: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
        self.rng = random.Random(0x5EED)

    def read(self) -> None:
        while True:
            try:
                packet = os.read(self.src, 65536 + 64)
            except OSError as exc:
                if exc.errno == errno.EIO:  # the device is not up yet (the parent configures it)
                    time.sleep(0.01)
                    continue
                return
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            self.queue.put((time.monotonic() + self.delay, packet))

    def write(self) -> None:
        while True:
            due, packet = self.queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                os.write(self.dst, packet)
            except OSError as exc:
                if exc.errno == errno.EIO:  # not up yet: the packet is lost, as on a link coming up
                    continue
                return
            self.packets += 1
            self.bytes += len(packet)


def forward(hub_ns: str, dc_ns: str, profile: Profile, ready: Path) -> None:
    """The forwarder process: make both TUN devices, then move packets until SIGTERM.

    Every second it writes its packet, byte and drop counts beside `ready` (`wan.counts` in the
    benchmark's temp dir, kept with `--keep`): the first thing to read when a side hears nothing.
    """
    home = Path("/proc/self/ns/net").open()  # noqa: SIM115 - held for the process's life
    setns(ns_path(hub_ns))
    hub = open_tun(profile.offload)
    setns(ns_path(dc_ns))
    dc = open_tun(profile.offload)
    setns(Path(f"/proc/self/fd/{home.fileno()}"))
    half = profile.rtt_ms / 2000
    ways = [Direction("up", dc, hub, half, profile.loss), Direction("down", hub, dc, half, profile.loss)]
    for way in ways:
        for job in (way.read, way.write):
            threading.Thread(target=job, name=f"{way.name}-{job.__name__}", daemon=True).start()
    ready.write_text("ok")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(1.0):
        counts = {w.name: {"packets": w.packets, "bytes": w.bytes, "dropped": w.dropped} for w in ways}
        ready.with_suffix(".counts").write_text(json.dumps(counts))


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def sh(*cmd: str) -> None:
    """`ip ...` or `tc ...`; its own error message when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


@dataclass
class WanLink:
    """The two namespaces, the forwarder and the shaping; `with WanLink(profile) as link:`."""

    profile: Profile
    workdir: Path
    hub_ns: str = ""
    dc_ns: str = ""
    forwarder: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        tag = f"{os.getpid()}"
        self.hub_ns, self.dc_ns = f"kbw-hub-{tag}", f"kbw-dc-{tag}"

    def __enter__(self) -> WanLink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> WanLink:
        """Bring the link up; on any failure, tear down what was made and raise."""
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def _up(self) -> None:
        for ns in (self.hub_ns, self.dc_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        ready = self.workdir / "wan.ready"
        cmd = [
            sys.executable,
            "-m",
            "loadtest.wan",
            "--forward",
            self.hub_ns,
            self.dc_ns,
            "--ready",
            str(ready),
        ]
        cmd.append(
            f"{self.profile.rtt_ms}ms,{self.profile.rate_bps / 1e3:.0f}kbit,{self.profile.loss * 100}%"
        )
        with (self.workdir / "wan.log").open("wb") as log:
            self.forwarder = subprocess.Popen(
                cmd,
                cwd=Path(__file__).resolve().parents[1],
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + 15
        while not ready.exists():
            if self.forwarder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the WAN forwarder did not start: {(self.workdir / 'wan.log').read_text()}"
                )
            time.sleep(0.02)
        # Token bucket: the burst holds two 64 KiB GSO packets (else tbf splits them); the queue is one
        # bandwidth-delay product, as a bottleneck router's buffer.
        rate = f"{self.profile.rate_bps / 1e3:.0f}kbit"
        burst = max(2 * 65536 + 2 * MTU, int(self.profile.rate_bps / 8 / 1000))
        limit = max(self.profile.bdp_bytes, 4 * burst)
        for ns, mine, peer in ((self.hub_ns, HUB_ADDR, DC_ADDR), (self.dc_ns, DC_ADDR, HUB_ADDR)):
            sh("ip", "-n", ns, "link", "set", DEVICE, "mtu", str(MTU), "up")
            sh("ip", "-n", ns, "addr", "add", mine, "peer", f"{peer}/32", "dev", DEVICE)
            sh(
                "tc",
                "-n",
                ns,
                "qdisc",
                "add",
                "dev",
                DEVICE,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                str(burst),
                "limit",
                str(limit),
            )

    def close(self) -> None:
        if self.forwarder is not None and self.forwarder.poll() is None:
            self.forwarder.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.forwarder.wait(5)
            if self.forwarder.poll() is None:
                self.forwarder.kill()
        for ns in (self.hub_ns, self.dc_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def enter(self, side: str) -> None:
        """Move this thread into one side (`hub` or `dc`); for `preexec_fn` and the bench itself."""
        setns(ns_path(self.hub_ns if side == "hub" else self.dc_ns))


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "profile", type=Profile.argument, help="RTT,RATE[,LOSS], e.g. 20ms,1gbit or 50ms,100mbit,0.5%%"
    )
    p.add_argument("--forward", nargs=2, metavar=("HUB_NS", "DC_NS"), help=argparse.SUPPRESS)
    p.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    profile = a.profile
    if a.forward:
        forward(a.forward[0], a.forward[1], profile, a.ready)
        return 0
    import tempfile

    # Ctrl-C, `timeout` and kill all tear the link down (a shell's background job ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="kubearc-wan-") as tmp, WanLink(profile, Path(tmp)) as link:
        print(f"link up: {profile}")
        print(f"  hub side:  ip netns exec {link.hub_ns} bash   ({HUB_ADDR})")
        print(f"  dc side:   ip netns exec {link.dc_ns} bash   ({DC_ADDR})")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:  # a second signal (timeout(1) signals the whole group) must not cut the teardown short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 0


if __name__ == "__main__":
    sys.exit(main())
