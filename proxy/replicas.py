"""One relay session per live relay replica: how an agent stays reachable through every replica.

A client may land on any relay replica (they sit behind one load-balanced URL), and
a replica only reaches the clusters whose agents hold a session to it, so the
connect agent keeps a session to every replica, one `Dialler` each (DESIGN
section 5). The set comes from the relays themselves: each session's HELLO names
the replica reached and the live set, and a REPLICAS frame tells of each change.

- The first dialler goes to the configured URL and becomes the dialler of the
  replica it reaches; a dialler is started for every other replica in the set.
- A dialler dials its replica's URL. Replicas behind one shared URL all name it,
  so a dial may reach another replica: it is kept if that replica has no dialler
  yet (and this one's replica has left), else closed and tried again after a
  backoff step (`Dialler.landed`).
- A replica that leaves the set (it drains, or stopped heartbeating) has its
  dialler retired: no more dials, its sessions close once their streams are done.
- An empty set is never acted on: a relay without a registry (a single relay, or
  an older one) sends none, and the agent keeps the one session it has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

from proxy.dialler import CredentialSource, Dialler, RelayCredential, Replicas, replica_of
from proxy.mux import Mux

log = logging.getLogger("kubearc.tunnel")

DiallerFactory = Callable[[CredentialSource], Dialler]


class ReplicaDiallers:
    def __init__(self, credentials: CredentialSource, make: DiallerFactory) -> None:
        self.credentials = credentials  # the credential, with the URL to start from
        self.make = make  # a dialler with the caller's options, for a credential source
        self.diallers: dict[str, Dialler] = {}  # by the replica each keeps a session to
        self.all: set[Dialler] = set()  # running ones, retiring and unpinned ones included
        self.replicas: Replicas = ()  # the latest non-empty set heard
        self._group: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._ended_sessions = 0  # sessions of diallers that are gone

    # Introspection, summed over every dialler (tests, benchmarks, metrics).
    @property
    def muxes(self) -> set[Mux]:
        return {mux for d in self.all for mux in d.muxes}

    @property
    def live(self) -> int:
        return sum(d.live for d in self.all)

    @property
    def sessions_started(self) -> int:
        return sum(d.sessions_started for d in self.all) + self._ended_sessions

    def reached(self) -> set[str]:
        """Replicas this agent has a usable session to now."""
        return {rid for rid, d in self.diallers.items() if d.current is not None and d.current.usable}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Keep a session to every live replica until `stop` is set (or forever)."""
        self._stop = stop or asyncio.Event()
        async with asyncio.TaskGroup() as group:
            self._group = group
            self._start(None)  # whichever replica the configured URL reaches
        self._group = None

    def _start(self, replica: str | None) -> None:
        assert self._group is not None

        async def credentials() -> RelayCredential:
            cred = await self.credentials()
            url = self._url_of(dialler.replica)
            if url is None:
                return cred
            return dataclasses.replace(cred, relay_url=url + urlsplit(cred.relay_url).path)

        dialler = self.make(credentials)
        dialler.replica, dialler.landed, dialler.on_replicas = replica, self._landed, self.update
        if replica is not None:
            self.diallers[replica] = dialler
        self.all.add(dialler)
        task = self._group.create_task(dialler.run(self._stop))
        task.add_done_callback(lambda _: self._gone(dialler))

    def _gone(self, dialler: Dialler) -> None:
        self.all.discard(dialler)
        self._ended_sessions += dialler.sessions_started
        self._unpin(dialler)

    def _unpin(self, dialler: Dialler) -> None:
        if dialler.replica is not None and self.diallers.get(dialler.replica) is dialler:
            del self.diallers[dialler.replica]

    def _url_of(self, replica: str | None) -> str | None:
        return next((r.url for r in self.replicas if r.id == replica), None)

    def _landed(self, dialler: Dialler, reached: str | None, replicas: Replicas) -> bool:
        """Keep a session `dialler` made to replica `reached`? (see the module docstring)"""
        self.replicas = replicas or self.replicas
        ids = {r.id for r in self.replicas}
        if not ids or reached is None or dialler.replica == reached:
            keep = True
        elif reached not in self.diallers and (dialler.replica is None or dialler.replica not in ids):
            self._pin(dialler, reached)
            keep = True
        else:
            keep = False
        self._reconcile()
        return keep

    def _pin(self, dialler: Dialler, replica: str) -> None:
        self._unpin(dialler)
        dialler.replica = replica
        self.diallers[replica] = dialler

    def update(self, replicas: Replicas) -> None:
        """A session heard a new replica set."""
        if replicas:  # an empty set is never acted on
            self.replicas = replicas
            self._reconcile()

    def _reconcile(self) -> None:
        if not self.replicas or self._group is None or self._stop.is_set():
            return
        ids = {r.id for r in self.replicas}
        for dialler in [d for d in self.all if d.replica is None]:
            # Unpinned (the first, from before there was a set): it becomes the dialler of
            # the replica it holds a session to, or steps aside for the one that has it.
            reached = replica_of(dialler.current)
            if reached in ids and reached not in self.diallers:
                self._pin(dialler, reached)
            else:
                dialler.retire()
        for rid in sorted(ids - self.diallers.keys()):
            log.info("relay replica joined; dialling it", extra={"replica": rid})
            self._start(rid)
        for rid, dialler in list(self.diallers.items()):
            if rid not in ids:
                log.info("relay replica left; its sessions end with their streams", extra={"replica": rid})
                del self.diallers[rid]
                dialler.retire()
