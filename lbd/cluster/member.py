"""One node's membership in the cluster, on the event loop: its lease, the VIP keys, the fencing core.

The I/O shell around lbd.cluster.fencing.NodeOwnership (which decides) and
lbd.cluster.etcd.EtcdClient (which talks). Keys under the prefix (default `/lbd/`):
- `nodes/NODE`: a member, on its lease: a node that dies leaves the membership when its lease
  expires, one that stops gracefully at once. It names the VIPs the node is a candidate for by
  a digest, and is written only when that set changes, so etcd's load grows with nodes, not VIPs;
- `candidacies/DIGEST`: the VIP set (JSON) a digest stands for, created if absent before the
  record naming it, on the creator's lease; gone with it, it is created again by any node
  whose record names it. Nodes that load one config publish one set between them;
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
A VIP's candidates are the members whose record names a set holding it; this node's own
candidacy (`want`) counts at once, before its record round-trips.
Claims and releases run as their own tasks. Bind, Fence and Unbind go to `on_actions` (the
daemon's presence: address, gratuitous ARP, kernel fence).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from lbd.cluster.candidacy import CandidacyIndex, NodeRecord, candidacy_digest, decode_vips, encode_vips
from lbd.cluster.etcd import MAX_TXN_KEYS, Compacted, EtcdClient, EtcdError, Unavailable, WatchEvent
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
DECIDE_SLICE = 256  # VIPs decided per loop step (about 1 ms)


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
        self.candidacies_prefix = prefix + b"candidacies/"
        self.own_digest = ""  # the candidacy set this node's record names
        self.released_prefix = prefix + b"released/"
        self.freed_at: dict[str, float] = {}  # VIP -> when its owner key was last seen deleted
        self.requested_ttl = ttl
        self.core = NodeOwnership(node, margin=margin, claim_grace=ttl / 2 if claim_grace is None else claim_grace)
        self.index = CandidacyIndex(node)  # who can serve what (lbd.cluster.candidacy)
        self.owners: dict[str, str | None] = {}
        self.connected = False  # a lease is held and the keys were read
        self._changed: set[str] = set()  # VIPs whose owner or candidates changed since the last decision
        self._record_lock = asyncio.Lock()
        # A cold start claims hundreds of VIPs: a few at a time, not a burst that times out
        # (and a queue, not a task per claim waiting its turn).
        self._claims: collections.deque[Claim] = collections.deque()
        self._claimers = 0
        self._settle_until = float("inf")  # no claims before start() has read the members
        self._pending: list[str] = []  # VIPs to decide over, DECIDE_SLICE at a time
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
        if candidacy != self.index.mine:
            self._changed |= self.index.set_mine(candidacy)
            if self.connected:
                self._spawn(self._write_record())
        self._decide_soon()

    def answering(self) -> frozenset[str]:
        return frozenset(self.core.answering)

    def is_answering(self, vip: str) -> bool:
        return vip in self.core.answering

    def owner_of(self, vip: str) -> str | None:
        return self.owners.get(vip)

    @property
    def nodes(self) -> Mapping[str, NodeRecord]:
        """The members, as the store has them."""
        return self.index.records

    def candidacy_of(self, node: str) -> frozenset[str]:
        return self.index.candidacy_of(node)

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
            vips = self.index.mine
            digest = candidacy_digest(vips)
            self.index.published[digest] = vips
            self.own_digest = digest
            record = NodeRecord(digest, int(self.core.ttl), self.peer)
            try:
                if digest:  # before the record, so every reader knows the set when the record comes
                    await self.client.create(self.candidacies_prefix + digest.encode(), encode_vips(vips), lease)
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
            wait = min(self.core.claim_grace / 2, max(0.0, self.core.next_due() - now))
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
        self.index.load(
            {kv.key[len(self.nodes_prefix):].decode(): NodeRecord.decode(kv.value)
             for kv in kvs if kv.key.startswith(self.nodes_prefix)},
            {kv.key[len(self.candidacies_prefix):].decode(): decode_vips(kv.value)
             for kv in kvs if kv.key.startswith(self.candidacies_prefix)})
        self.core.rescan()
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
                        if event.kv.key.startswith(self.candidacies_prefix):
                            self._candidacy_published(event)
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
                            self._changed.add(vip)
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
        record = None if event.kind == "DELETE" else NodeRecord.decode(event.kv.value)
        self._changed |= self.index.record_changed(node, record)

    def _candidacy_published(self, event: WatchEvent) -> None:
        digest = event.kv.key[len(self.candidacies_prefix):].decode()
        if event.kind == "DELETE":
            # It went with its writer's lease; the set is kept for the records naming it, and
            # this node publishes it again if it is its own (for members that start later).
            if digest == self.own_digest and self.connected:
                self._spawn(self._write_record())
            return
        self._changed |= self.index.set_published(digest, decode_vips(event.kv.value))

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
        self._changed.add(vip)
        self.freed_at[vip] = self.loop.time()
        self._execute(self.core.owner_seen(vip, None, hold_until=hold_until, revision=revision))

    # ---- decisions and their execution ------------------------------------------------------------

    def _decide_soon(self, delay: float = DECIDE_DELAY) -> None:
        """Decide once for a burst of changes: a cold start or a node's death brings a watch
        batch per claim."""
        if self._decide_handle is None:
            self._decide_handle = self.loop.call_later(delay, self._decide)

    def _decide(self) -> None:
        """Decide over what changed, DECIDE_SLICE VIPs per loop step: a member joining changes
        every VIP's candidates, and a pass over 5,000 VIPs would hold the loop (the relay's
        too) for tens of milliseconds."""
        if self._decide_handle is not None:
            self._decide_handle.cancel()
            self._decide_handle = None
        if self._closing or self.loop.time() < self._settle_until:
            return
        now = self.loop.time()
        everything = self.core.full_pass(self.index, self.owners, now)
        if everything is not None:
            self._pending = everything
        elif self._changed:  # ahead of a backlog: a handover's VIP should not wait behind 5,000
            self._pending[:0] = sorted(self._changed)
        self._changed.clear()
        batch = self._pending[:DECIDE_SLICE]
        del self._pending[:DECIDE_SLICE]
        if self._pending:
            self._decide_soon(0)
        self._execute(self.core.want(self.index, self.owners, now, batch))

    def _execute(self, actions: list[Action]) -> None:
        local: list[Action] = []
        for action in actions:
            if isinstance(action, Claim):
                self._claims.append(action)
                if self._claimers < CLAIMS_IN_FLIGHT:
                    self._claimers += 1
                    self._spawn(self._claimer())
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

    async def _claimer(self) -> None:
        try:
            while self._claims:
                batch = [self._claims.popleft()]
                while self._claims and len(batch) < MAX_TXN_KEYS and self._claims[0].lease == batch[0].lease:
                    batch.append(self._claims.popleft())
                await self._claim(batch)
        finally:
            self._claimers -= 1

    async def _claim(self, claims: list[Claim]) -> None:
        """Claims made under one lease, in one transaction: a cold start's hundreds of claims
        are a few revisions, so every member's watch gets a few events, not one per VIP. If a
        key is taken, none is created: the free ones go again."""
        lease = claims[0].lease
        results: dict[str, tuple[bool, int]] = {}
        if lease != self.core.lease or self.loop.time() >= self.core.deadline:
            results = {claim.vip: (False, 0) for claim in claims}  # queued while the lease was lost
        else:
            by_key = {self._key(claim.vip): claim for claim in claims}
            try:
                taken, revision = await self.client.claim_many(list(by_key), self.node.encode(), lease)
                results = {by_key[key].vip: (False, revision) for key in taken}
                if taken:
                    self._claims.extendleft(reversed([c for key, c in by_key.items() if key not in taken]))
                else:
                    results = {claim.vip: (True, revision) for claim in claims}
            except EtcdError as exc:
                # No answer is not a no: the transaction may have landed. A key left naming this
                # node under its live lease would keep everyone else away while nobody answers.
                for claim in claims:
                    results[claim.vip] = await self._landed(claim)
                log.warning("claim_failed", vips=len(claims), error=str(exc),
                            landed=sum(won for won, _ in results.values()))
        now = self.loop.time()
        for vip, (won, revision) in results.items():
            self._execute(self.core.claimed(vip, won, lease, now, revision))
        if not all(won for won, _ in results.values()):
            self._decide_soon()  # looked at again (lost to another, its key on the way, or unanswered)

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
            self.core.release_failed(vip, self.loop.time())
            self._decide_soon()

    def _key(self, vip: str) -> bytes:
        return self.owners_prefix + vip.encode()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
