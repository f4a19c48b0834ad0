"""One node's membership in the cluster, on the event loop: its lease, the VIP keys, the fencing core.

The I/O shell around lbd.cluster.fencing.NodeOwnership (which decides) and
lbd.cluster.etcd.EtcdClient (which talks). Keys under the prefix (default `/lbd/`):
- `nodes/NODE`: a member and the VIPs it is a candidate for (JSON), on its lease: a node that
  dies leaves the membership when its lease expires, one that stops gracefully at once. It is
  written only when the candidacy changes, so etcd's load grows with nodes, not VIPs;
- `owners/VIP`: the owner's node name, on its lease, created only if absent;
- `released/VIP`: written in the same transaction that deletes an owner key a node gives up
  while it lives on (a reload, readiness): the others need not hold back as they must for a
  delete by an operator, so a handover takes one watch round-trip, not a TTL.
Three loops:
- the lease: granted (retried with backoff until etcd answers), kept alive every TTL/4, each
  answer moving the deadline; an error or a lost lease drops every VIP at once, then a new
  lease is asked for and the membership record written again;
- the watch on the prefix: members and owners, resumed from the last revision + 1, read again
  in full after a compaction; a key deleted while its owner's lease lives is held back a TTL;
- the clock: at the deadline every VIP is dropped, and claims wait out their grace.
A VIP's candidates are the members whose record lists it; this node's own candidacy (`want`)
counts at once, before its record round-trips.
Claims and releases run as their own tasks. Bind, Fence and Unbind go to `on_actions` (the
daemon's presence: address, gratuitous ARP, kernel fence).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from lbd.cluster.etcd import Compacted, EtcdClient, EtcdError, Unavailable, WatchEvent
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
from lbd.cluster.peers import PeerLink

log = structlog.get_logger("lbd.cluster")

RETRY_SECONDS = 0.2  # between broken watches, and the first wait between failed grants
MAX_BACKOFF = 5.0  # the longest wait between grants while etcd is unreachable
DEFAULT_MARGIN = 0.2  # seconds below the TTL; see lbd.cluster.fencing
CLAIMS_IN_FLIGHT = 16
DECIDE_DELAY = 0.01  # seconds a decision waits for more watch events (a handover's cost)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A member as its `nodes/` key says: the VIPs it can serve now and its lease's TTL."""

    vips: frozenset[str]
    ttl: int
    peer: tuple[str, int] | None = None  # where it answers failsafe asks (lbd.cluster.peers)

    def encode(self) -> bytes:
        data: dict[str, Any] = {"vips": sorted(self.vips), "ttl": self.ttl}
        if self.peer is not None:
            data["peer"] = list(self.peer)
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> NodeRecord:
        try:
            data = json.loads(raw)
            peer = data.get("peer")
            return cls(frozenset(str(v) for v in data.get("vips", ())), int(data.get("ttl", 0)),
                       (str(peer[0]), int(peer[1])) if peer else None)
        except (ValueError, TypeError, AttributeError, IndexError):
            return cls(frozenset(), 0)  # a record lbd did not write: a member with no candidacy


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
        peer: tuple[str, int] | None = None,
    ) -> None:
        self.client = client
        self.node = node
        self.on_actions = on_actions
        self.prefix = prefix
        self.owners_prefix = prefix + b"owners/"
        self.nodes_prefix = prefix + b"nodes/"
        self.released_prefix = prefix + b"released/"
        self.freed_at: dict[str, float] = {}  # VIP -> when its owner key was last seen deleted
        self.requested_ttl = ttl
        self.core = NodeOwnership(node, margin=margin, claim_grace=ttl / 2 if claim_grace is None else claim_grace)
        self.candidacy: frozenset[str] = frozenset()  # the VIPs this node can serve now
        self.nodes: dict[str, NodeRecord] = {}  # the members, as the store has them
        self.owners: dict[str, str | None] = {}
        self.connected = False  # a lease is held and the keys were read
        # VIP -> the other members listing it, kept up to date record by record (50 members of
        # 5,000 VIPs each would cost 250,000 steps to rebuild on every change).
        self._others: dict[str, set[str]] | None = None
        self._candidates: dict[str, Sequence[str]] | None = None  # candidates(), until something changes
        self._record_lock = asyncio.Lock()
        # A cold start claims hundreds of VIPs: a few at a time, not a burst that times out.
        self._claims_in_flight = asyncio.Semaphore(CLAIMS_IN_FLIGHT)
        self._settle_until = float("inf")  # no claims before start() has read the members
        self._decide_handle: asyncio.TimerHandle | None = None
        self.on_seen: Callable[[], None] = lambda: None  # owners or members changed (the status shows them)
        self.peer = peer
        self.peers = PeerLink(node, lambda asker: self.core.promise(asker, self.loop.time()))
        self.failsafe_active = False  # etcd out of reach; VIPs kept on the members' word
        self._failsafe_task: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._closing = False

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Get a lease and the keys as they are (waiting, with backoff, while etcd does not
        answer); then keep both current in the background."""
        if self.peer is not None:
            await self.peers.open(*self.peer)
        await self._grant()
        delay = RETRY_SECONDS
        while True:
            try:
                revision = await self._resync()
                break
            except EtcdError as exc:
                log.warning("etcd_read_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        self.connected = True
        # Claim nothing for a grace period: the other members' records arrive meanwhile, so a
        # cold cluster spreads its VIPs by preference instead of the first node taking all.
        self._settle_until = self.loop.time() + self.core.claim_grace
        self._spawn(self._write_record())
        self._spawn(self._keepalive_loop())
        self._spawn(self._watch_loop(revision))
        self._spawn(self._clock_loop())

    async def stop(self, *, handover: bool = True) -> None:
        """Handover: stop answering, delete our keys, revoke the lease: the next owner starts now.
        Without it (a crash, as tests make one) everything just stops."""
        self._closing = True
        self.peers.close()
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

    def want(self, vips: Iterable[str]) -> None:
        """The VIPs this node can serve now (listeners open, readiness allows): its candidacy."""
        candidacy = frozenset(vips)
        if candidacy != self.candidacy:
            self.candidacy = candidacy
            self._candidates = None
            if self.connected:
                self._spawn(self._write_record())
        self._decide_soon()

    def answering(self) -> frozenset[str]:
        return frozenset(self.core.answering)

    def is_answering(self, vip: str) -> bool:
        return vip in self.core.answering

    def owner_of(self, vip: str) -> str | None:
        return self.owners.get(vip)

    def candidates(self) -> dict[str, Sequence[str]]:
        """VIP -> the members that can serve it now (this node by its own word, the others by
        their records)."""
        if self._candidates is not None:
            return self._candidates
        if self._others is None:
            others: defaultdict[str, set[str]] = defaultdict(set)
            for node, record in self.nodes.items():
                if node != self.node:
                    for vip in record.vips:
                        others[vip].add(node)
            self._others = dict(others)
        out: dict[str, Sequence[str]] = {vip: tuple(nodes) for vip, nodes in self._others.items() if nodes}
        for vip in self.candidacy:
            out[vip] = (*self._others.get(vip, ()), self.node)
        self._candidates = out
        return out

    # ---- the loops --------------------------------------------------------------------------------

    async def _grant(self) -> None:
        delay = RETRY_SECONDS
        while not self._closing:
            sent = self.loop.time()
            try:
                lease, ttl = await self.client.grant(self.requested_ttl)
            except EtcdError as exc:
                log.warning("lease_grant_failed", error=str(exc), endpoints=self.client.endpoints, retry_in=delay,
                            hint="etcd does not answer: no VIP is held until it does")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            self._execute(self.core.granted(lease, ttl, sent))
            log.info("lease_granted", lease=lease, ttl=ttl, requested=self.requested_ttl)
            if self.connected:  # a new lease after a lost one: the old record went with it
                self._spawn(self._write_record())
            return

    async def _write_record(self) -> None:
        """This node's membership record, on its lease (the newest candidacy when it runs)."""
        async with self._record_lock:
            lease = self.core.lease
            if lease is None or self._closing:
                return
            record = NodeRecord(self.candidacy, int(self.core.ttl), self.peer)
            try:
                await self.client.put(self.nodes_prefix + self.node.encode(), record.encode(), lease)
            except EtcdError as exc:
                log.warning("node_record_failed", error=str(exc))  # the next lease or change writes it

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
                # Short: an etcd that hangs must leave time for a failsafe round before the deadline.
                ttl = await self.client.keepalive(lease, timeout=self.core.ttl / 3)
            except Unavailable as exc:
                # etcd out of reach, the lease perhaps alive: the deadline stands, and the
                # members' word may carry it on (failsafe); otherwise the clock drops at it.
                if not self.failsafe_active:
                    log.warning("etcd_unreachable", lease=lease, error=str(exc),
                                hint="VIPs are kept while every member confirms it holds none of them")
                self.failsafe_active = True
                if self._failsafe_task is None or self._failsafe_task.done():
                    self._failsafe_task = self._spawn(self._failsafe())
                continue
            except EtcdError as exc:
                log.warning("lease_keepalive_failed", lease=lease, error=str(exc))
                self._execute(self.core.lease_lost())
                continue
            if self.failsafe_active:
                self.failsafe_active = False
                log.info("etcd_reachable_again", lease=lease, ttl=ttl)
            self._execute(self.core.keepalive_acked(lease, sent, ttl))

    async def _failsafe(self) -> None:
        """One round: ask every member last known for its word; all given, keep the VIPs."""
        answering = set(self.core.answering)
        if not answering:
            return
        peers = {n: r.peer for n, r in self.nodes.items() if n != self.node and r.peer is not None}
        silent = [n for n, r in self.nodes.items() if n != self.node and r.peer is None]
        if silent:  # a member that cannot be asked cannot promise: no failsafe
            log.warning("failsafe_impossible", members_without_peer_address=silent)
            return
        sent = self.loop.time()
        if await self.peers.confirm(peers, answering, timeout=self.core.ttl / KEEPALIVES_PER_TTL):
            self._execute(self.core.failsafe_confirmed(sent))

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
        revision, kvs = await self.client.range(self.prefix)
        seen = {kv.key[len(self.owners_prefix):].decode(): kv.value.decode()
                for kv in kvs if kv.key.startswith(self.owners_prefix)}
        self.nodes = {kv.key[len(self.nodes_prefix):].decode(): NodeRecord.decode(kv.value)
                      for kv in kvs if kv.key.startswith(self.nodes_prefix)}
        self._others = self._candidates = None
        for kv in kvs:  # keys naming this node under an earlier lease (a restart): give them up
            if kv.key.startswith(self.owners_prefix) and kv.value == self.node.encode() and kv.lease != self.core.lease:
                self._spawn(self.client.delete_if(kv.key, kv.value))
        for vip in set(self.owners) | set(seen):
            owner = seen.get(vip)
            self.owners[vip] = owner
            self._execute(self.core.owner_seen(vip, owner, revision=revision))
        return revision

    async def _watch_loop(self, revision: int) -> None:
        while not self._closing:
            try:
                async for batch in self.client.watch(self.prefix, revision + 1):
                    # A release's marker comes in the same revision as its delete.
                    released = {(e.kv.key[len(self.released_prefix):].decode(), e.kv.mod_revision)
                                for e in batch if e.kind == "PUT" and e.kv.key.startswith(self.released_prefix)}
                    # Lease -> alive, asked once per batch: a node's death deletes its keys at once.
                    alive: dict[int, bool] = {}
                    for event in batch:
                        revision = max(revision, event.kv.mod_revision)
                        if event.kv.key.startswith(self.nodes_prefix):
                            self._member_changed(event)
                            continue
                        if not event.kv.key.startswith(self.owners_prefix):
                            continue
                        vip = event.kv.key[len(self.owners_prefix):].decode()
                        if event.kind == "DELETE":
                            voluntary = (vip, event.kv.mod_revision) in released
                            await self._deleted(vip, 0 if voluntary or not event.prev else event.prev.lease,
                                                event.kv.mod_revision, alive)
                        else:
                            self.owners[vip] = event.kv.value.decode()
                            self._execute(self.core.owner_seen(vip, self.owners[vip], revision=event.kv.mod_revision))
                    self._decide_soon()
                    self.on_seen()
            except Compacted:
                log.warning("watch_compacted", revision=revision)
                with contextlib.suppress(EtcdError):  # if etcd fails now, the next round compacts again
                    revision = await self._resync()
            except (EtcdError, OSError, ValueError) as exc:
                log.warning("watch_broken", error=str(exc), revision=revision)
            except Exception as exc:  # aiohttp's own errors on a cut stream
                log.warning("watch_broken", error=repr(exc), revision=revision)
            await asyncio.sleep(RETRY_SECONDS)

    def _member_changed(self, event: WatchEvent) -> None:
        node = event.kv.key[len(self.nodes_prefix):].decode()
        old = self.nodes.pop(node, None)
        if event.kind != "DELETE":
            self.nodes[node] = NodeRecord.decode(event.kv.value)
        before = old.vips if old is not None else frozenset()
        after = self.nodes[node].vips if node in self.nodes else frozenset()
        if before == after:
            return
        self._candidates = None
        if self._others is not None and node != self.node:
            for vip in before - after:
                self._others[vip].discard(node)
            for vip in after - before:
                self._others.setdefault(vip, set()).add(node)

    async def _deleted(self, vip: str, lease: int, revision: int, alive: dict[int, bool]) -> None:
        """A key went: by its lease's expiry (the owner is past its deadline), or under a live
        lease (an operator): then nobody claims it for a TTL."""
        hold_until = None
        if lease:
            if lease not in alive:
                try:
                    alive[lease] = await self.client.time_to_live(lease) > 0
                except EtcdError:
                    alive[lease] = True  # unknown: be safe
            if alive[lease]:
                hold_until = self.loop.time() + max(self.core.ttl, self.requested_ttl)
        self.owners[vip] = None
        self.freed_at[vip] = self.loop.time()
        self._execute(self.core.owner_seen(vip, None, hold_until=hold_until, revision=revision))

    # ---- decisions and their execution ------------------------------------------------------------

    def _decide_soon(self) -> None:
        """Decide once for a burst of changes: a decision looks at every VIP, and a cold start
        or a node's death brings a watch batch per claim."""
        if self._decide_handle is None:
            self._decide_handle = self.loop.call_later(DECIDE_DELAY, self._decide)

    def _decide(self) -> None:
        if self._decide_handle is not None:
            self._decide_handle.cancel()
            self._decide_handle = None
        if self._closing or self.loop.time() < self._settle_until:
            return
        self._execute(self.core.want(self.candidates(), self.owners, self.loop.time()))

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
            async with self._claims_in_flight:
                if claim.lease != self.core.lease or self.loop.time() >= self.core.deadline:
                    won, revision = False, 0  # queued behind others while the lease was lost
                else:
                    won, revision = await self.client.claim(self._key(claim.vip), self.node.encode(), claim.lease)
        except EtcdError as exc:
            # No answer is not a no: the transaction may have landed. A key left naming this
            # node under its live lease would keep everyone else away while nobody answers.
            won, revision = await self._landed(claim)
            log.warning("claim_failed", vip=claim.vip, error=str(exc), landed=won)
        self._execute(self.core.claimed(claim.vip, won, claim.lease, self.loop.time(), revision))

    async def _landed(self, claim: Claim) -> tuple[bool, int]:
        try:
            kv = await self.client.get(self._key(claim.vip))
        except EtcdError:
            return False, 0  # still unknown: the next resync or the lease's end settles it
        if kv is not None and kv.value == self.node.encode() and kv.lease == claim.lease:
            return True, kv.create_revision
        return False, 0

    async def _release(self, vip: str) -> None:
        """One VIP given up while the lease lives on (Unbind ran before this task): delete the
        key with a release marker, so the next owner claims at once."""
        lease = self.core.lease
        try:
            if lease is None:
                await self.client.delete_if(self._key(vip), self.node.encode())
            else:
                await self.client.release(self._key(vip), self.node.encode(), self.released_prefix + vip.encode(), lease)
        except EtcdError as exc:
            log.warning("release_failed", vip=vip, error=str(exc))
            self.core.releasing.discard(vip)  # asked again on the next decision

    def _key(self, vip: str) -> bytes:
        return self.owners_prefix + vip.encode()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
