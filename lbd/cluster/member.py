"""One node's membership in the cluster, on the event loop: its lease, the VIP keys, the fencing core.

The I/O shell around lbd.cluster.fencing.NodeOwnership (which decides) and
lbd.cluster.etcd.EtcdClient (which talks). Three loops:
- the lease: granted (retried until etcd answers), kept alive every TTL/4, each answer moving
  the deadline; an error or a lost lease drops every VIP at once, then a new lease is asked for;
- the watch on `{prefix}owners/`: who owns what, resumed from the last revision + 1, read again
  in full after a compaction; a key deleted while its owner's lease lives is held back a TTL;
- the clock: at the deadline every VIP is dropped, and claims wait out their grace.
Claims and releases run as their own tasks. Bind, Fence and Unbind go to `on_actions` (the
daemon's presence: address, gratuitous ARP, kernel fence).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from lbd.cluster.etcd import Compacted, EtcdClient, EtcdError
from lbd.cluster.fencing import (
    KEEPALIVES_PER_TTL,
    Action,
    Bind,
    Claim,
    Fence,
    NodeOwnership,
    Release,
    Unbind,
)

log = structlog.get_logger("lbd.cluster")

RETRY_SECONDS = 0.2  # between failed grants and broken watches
DEFAULT_MARGIN = 0.2  # seconds below the TTL; see lbd.cluster.fencing


class ClusterMember:
    def __init__(
        self,
        client: EtcdClient,
        node: str,
        on_actions: Callable[[list[Action]], None],
        *,
        prefix: bytes = b"/lbd/",
        ttl: int = 2,
        margin: float = DEFAULT_MARGIN,
        claim_grace: float | None = None,
    ) -> None:
        self.client = client
        self.node = node
        self.on_actions = on_actions
        self.owners_prefix = prefix + b"owners/"
        self.requested_ttl = ttl
        self.core = NodeOwnership(node, margin=margin, claim_grace=ttl / 2 if claim_grace is None else claim_grace)
        self.candidates: dict[str, Sequence[str]] = {}
        self.owners: dict[str, str | None] = {}
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._closing = False

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Get a lease and the owners as they are; then keep both current in the background."""
        await self._grant()
        revision = await self._resync()
        self._spawn(self._keepalive_loop())
        self._spawn(self._watch_loop(revision))
        self._spawn(self._clock_loop())

    async def stop(self, *, handover: bool = True) -> None:
        """Handover: stop answering, delete our keys, revoke the lease: the next owner starts now.
        Without it (a crash, as tests make one) everything just stops."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not handover:
            return
        # Stop answering first, then revoke the lease: etcd deletes every key on it at once, and
        # the others, finding the lease gone, claim without holding back.
        self.on_actions([a for a in self.core.handover() if not isinstance(a, Release)])
        lease = self.core.lease
        if lease is not None:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(lease)

    def want(self, candidates: Mapping[str, Sequence[str]]) -> None:
        """The VIPs and, for each, the nodes that could serve it now (this one included or not)."""
        self.candidates = dict(candidates)
        self._decide()

    def answering(self) -> frozenset[str]:
        return frozenset(self.core.answering)

    # ---- the loops --------------------------------------------------------------------------------

    async def _grant(self) -> None:
        while not self._closing:
            sent = self.loop.time()
            try:
                lease, ttl = await self.client.grant(self.requested_ttl)
            except EtcdError as exc:
                log.warning("lease_grant_failed", error=str(exc))
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._execute(self.core.granted(lease, ttl, sent))
            log.info("lease_granted", lease=lease, ttl=ttl, requested=self.requested_ttl)
            return

    async def _keepalive_loop(self) -> None:
        while not self._closing:
            lease = self.core.lease
            if lease is None:
                await self._grant()
                self._decide()
                continue
            await asyncio.sleep(self.core.ttl / KEEPALIVES_PER_TTL)
            sent = self.loop.time()
            try:
                ttl = await self.client.keepalive(lease)
            except EtcdError as exc:
                log.warning("lease_keepalive_failed", lease=lease, error=str(exc))
                self._execute(self.core.lease_lost())
                continue
            self._execute(self.core.keepalive_acked(lease, sent, ttl))

    async def _clock_loop(self) -> None:
        while not self._closing:
            now = self.loop.time()
            self._execute(self.core.tick(now))
            self._decide()
            wait = self.core.claim_grace / 2
            if self.core.answering:
                wait = min(wait, max(0.0, self.core.deadline - now))
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands
            # as the wait ends, and stop() would wait for this loop forever (seen in a test).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait + 0.001):
                    await self._wake.wait()

    async def _resync(self) -> int:
        revision, kvs = await self.client.range(self.owners_prefix)
        seen = {kv.key[len(self.owners_prefix):].decode(): kv.value.decode() for kv in kvs}
        for vip in set(self.owners) | set(seen):
            owner = seen.get(vip)
            self.owners[vip] = owner
            self._execute(self.core.owner_seen(vip, owner, revision=revision))
        return revision

    async def _watch_loop(self, revision: int) -> None:
        while not self._closing:
            try:
                async for batch in self.client.watch(self.owners_prefix, revision + 1):
                    for event in batch:
                        revision = max(revision, event.kv.mod_revision)
                        vip = event.kv.key[len(self.owners_prefix):].decode()
                        if event.kind == "DELETE":
                            await self._deleted(vip, event.prev.lease if event.prev else 0, event.kv.mod_revision)
                        else:
                            self.owners[vip] = event.kv.value.decode()
                            self._execute(self.core.owner_seen(vip, self.owners[vip], revision=event.kv.mod_revision))
                    self._decide()
            except Compacted:
                log.warning("watch_compacted", revision=revision)
                revision = await self._resync()
            except (EtcdError, OSError, ValueError) as exc:
                log.warning("watch_broken", error=str(exc), revision=revision)
            except Exception as exc:  # aiohttp's own errors on a cut stream
                log.warning("watch_broken", error=repr(exc), revision=revision)
            await asyncio.sleep(RETRY_SECONDS)

    async def _deleted(self, vip: str, lease: int, revision: int) -> None:
        """A key went: by its lease's expiry (the owner is past its deadline), or under a live
        lease (an operator): then nobody claims it for a TTL."""
        hold_until = None
        if lease:
            try:
                alive = await self.client.time_to_live(lease) > 0
            except EtcdError:
                alive = True  # unknown: be safe
            if alive:
                hold_until = self.loop.time() + max(self.core.ttl, self.requested_ttl)
        self.owners[vip] = None
        self._execute(self.core.owner_seen(vip, None, hold_until=hold_until, revision=revision))

    # ---- decisions and their execution ------------------------------------------------------------

    def _decide(self) -> None:
        if self._closing:
            return
        owners = {vip: self.owners.get(vip) for vip in self.candidates}
        self._execute(self.core.want(self.candidates, owners, self.loop.time()))

    def _execute(self, actions: list[Action]) -> None:
        local: list[Action] = []
        for action in actions:
            if isinstance(action, Claim):
                self._spawn(self._claim(action))
            elif isinstance(action, Release):
                self._spawn(self._release(action.vip))
            else:
                local.append(action)
        if local:
            for action in local:
                if isinstance(action, Bind):
                    log.info("vip_owned", vip=action.vip, until=round(action.until, 3))
                elif isinstance(action, Unbind):
                    log.info("vip_dropped", vip=action.vip, reason=str(action.reason))
            self.on_actions(local)
            if any(isinstance(a, (Bind, Fence)) for a in local):
                self._wake.set()  # the clock loop re-reads the deadline

    async def _claim(self, claim: Claim) -> None:
        try:
            won, revision = await self.client.claim(self._key(claim.vip), self.node.encode(), claim.lease)
        except EtcdError as exc:
            log.warning("claim_failed", vip=claim.vip, error=str(exc))
            won, revision = False, 0
        self._execute(self.core.claimed(claim.vip, won, claim.lease, self.loop.time(), revision))

    async def _release(self, vip: str) -> None:
        """One VIP given up while the lease lives on: the others hold back a TTL before claiming
        (they cannot tell this delete from an operator's; a release marker would let them not)."""
        with contextlib.suppress(EtcdError):
            await self.client.delete_if(self._key(vip), self.node.encode())

    def _key(self, vip: str) -> bytes:
        return self.owners_prefix + vip.encode()

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
