"""Can this pod reach the hub and the relay? DNS, TCP and TLS from inside the cluster.

`kubearc cluster troubleshoot` runs `kubearc agent diagnose` in an agent's pod
(as Arc's troubleshoot runs its diagnostic checks in the cluster), because only
the cluster side sees the cluster's DNS, its egress firewall and its proxy. Each
endpoint is checked step by step so the first failing step names the problem:
the name resolves (the proxy's name when a proxy carries the connection), a TCP
connection opens, then a TLS handshake and one HTTP request succeed through the
same proxy settings and CA the agents use. The relay's address comes from the
hub's discovery document, as the connect agent learns it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from foundation.wire import DISCOVERY_PATH, Discovery, WireError

TIMEOUT = 5.0


@dataclass(frozen=True)
class Check:
    check: str  # e.g. "dns hub"
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail}


def _via_proxy(host: str) -> tuple[str, int] | None:
    """The HTTPS proxy the agents' HTTP clients would use for `host` (environment), or None."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get("https")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
    if not url or bypass(host, proxies):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


async def _reach(name: str, url: str, verify: ssl.SSLContext) -> tuple[list[Check], httpx.Response | None]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    proxy = _via_proxy(host)
    target, target_port = proxy or (host, port)
    how = f" (through the proxy {target}:{target_port})" if proxy else ""
    checks: list[Check] = []
    loop = asyncio.get_running_loop()
    try:
        found = await asyncio.wait_for(
            loop.getaddrinfo(target, target_port, type=socket.SOCK_STREAM), TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        checks.append(
            Check(f"dns {name}", False, f"{target} does not resolve{how}: {exc}; check the cluster's DNS")
        )
        return checks, None
    addresses = sorted({str(info[4][0]) for info in found})
    checks.append(Check(f"dns {name}", True, f"{target} is {', '.join(addresses)}{how}"))
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, target_port), TIMEOUT)
        writer.close()
    except (OSError, TimeoutError) as exc:
        why = str(exc) or "timed out"
        detail = f"no TCP connection to {target}:{target_port}{how}: {why}; check the egress firewall"
        checks.append(Check(f"tcp {name}", False, detail))
        return checks, None
    checks.append(Check(f"tcp {name}", True, f"{target}:{target_port} accepts connections{how}"))
    try:
        async with httpx.AsyncClient(verify=verify, timeout=TIMEOUT, trust_env=True) as http:
            response = await http.get(url)
    except httpx.HTTPError as exc:
        checks.append(Check(f"tls {name}", False, f"{url}: {exc}; check the hub CA and the proxy's CA"))
        return checks, None
    checks.append(Check(f"tls {name}", True, f"{url} answered HTTP {response.status_code}"))
    return checks, response


async def diagnose(hub_url: str, hub_ca: Path | None) -> list[Check]:
    """The checks, hub first; the relay's only when the hub's discovery document names it."""
    try:
        verify = ssl.create_default_context(cafile=str(hub_ca) if hub_ca else None)
    except (OSError, ssl.SSLError) as exc:
        detail = f"cannot load {hub_ca}: {exc.strerror or exc}; check --hub-ca (KUBEARC_HUB_CA)"
        return [Check("hub ca", False, detail)]
    checks, response = await _reach("hub", hub_url.rstrip("/") + DISCOVERY_PATH, verify)
    if response is None:
        return checks
    try:
        relay = Discovery.from_json(response.json()).relay_url
    except (ValueError, WireError) as exc:
        return [*checks, Check("relay", False, f"the hub's discovery document is not usable: {exc}")]
    if not relay:
        return [*checks, Check("relay", False, "the hub names no relay; cluster connect cannot work")]
    https = relay.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    relay_checks, _ = await _reach("relay", https, verify)
    return checks + relay_checks
