"""Cluster mode's core: which VIPs this node may answer for, and until when (pure, sans-IO).

Every node holds one lease in the cluster store (etcd) and keeps it alive. A VIP's owner key is
created only if absent (a transaction on `create_revision == 0`) and attached to the owner's
lease, so the store deletes it when that lease expires, and only then can another node's claim
succeed. What makes two owners impossible is when a node stops believing it owns:

    deadline = (send time of the last acknowledged grant or keepalive) + granted TTL - margin

The store counts a lease's TTL from when it *received* the request, which is no earlier than
the node sent it, so a node's deadline always falls before its keys can be deleted. Every VIP
is dropped at the deadline unless a newer keepalive was acknowledged; at once on a keepalive
error, a lost lease, or the VIP's key seen deleted or taken. The kernel fence (an element with
a timeout that lbd refreshes, so a frozen or killed daemon stops answering ARP too) is set to
expire at the same deadline: `Fence.until`.

Assumed of the shell: the watch delivers a deletion within a TTL (a watch without progress for
that long counts as a lost lease), and a key deleted while its owner's lease lives (an operator,
not an expiry) is held back for one TTL before anyone claims it (`owner_seen(hold_until=)`).
Not covered yet: a claim already in flight when an operator deletes a live owner's key can win
before that owner sees the deletion; both then answer for up to the watch's delay. Closing it
needs the claim to prove the previous owner is gone (releases written as tombstones, or the
previous lease checked), which the store's shell will do.

etcd out of reach (Patroni's failsafe mode): a keepalive that no endpoint answered does not drop
anything by itself; the deadline stands, and the owner may push it on only with the word of
every member it last knew: each confirms, directly, that it answers for none of the owner's
VIPs and promises not to take a VIP that owner held for one TTL from its answer
(`promise`). With every promise in hand, `failsafe_confirmed(sent_at)` moves the deadline to
sent_at + TTL - margin, as a keepalive would: a promise made after sent_at outlasts it. A
member that did not answer, or answers for one of the VIPs, leaves the deadline where it was.

`NodeOwnership` takes events with the time they happened (the caller's monotonic clock, never
read here) and returns actions for the I/O shell to carry out: claim or release a key, bind or
unbind an address, set the fence. Tests drive it against a simulated store with loss, delays,
freezes and kills (tests/test_cluster_fencing.py).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

# Keep-alives per TTL: one lost keepalive costs nothing, three in a row still leave a margin.
KEEPALIVES_PER_TTL = 4


class DropReason(StrEnum):
    """Why a node stopped answering for a VIP (a log field and a metric label)."""

    DEADLINE = "LeaseDeadline"  # no keepalive acknowledged in time: fenced
    LEASE_LOST = "LeaseLost"  # the store said the lease is gone, or a keepalive failed
    KEY_LOST = "KeyLost"  # the VIP's key was deleted or belongs to another node
    NOT_WANTED = "NotWanted"  # not a candidate any more (config, readiness, handover)


@dataclass(frozen=True, slots=True)
class Claim:
    """Create the VIP's key for this node, attached to `lease`, if it does not exist."""

    vip: str
    lease: int


@dataclass(frozen=True, slots=True)
class Release:
    """Delete the VIP's key if this node owns it (a handover: the next owner need not wait)."""

    vip: str


@dataclass(frozen=True, slots=True)
class Bind:
    """Start answering for the VIP: address, gratuitous ARP, fence until `until`."""

    vip: str
    until: float


@dataclass(frozen=True, slots=True)
class Fence:
    """Move the kernel fence of an answered VIP to `until` (a keepalive was acknowledged)."""

    vip: str
    until: float


@dataclass(frozen=True, slots=True)
class Unbind:
    vip: str
    reason: DropReason


Action = Claim | Release | Bind | Fence | Unbind


@functools.lru_cache(maxsize=1 << 18)
def rank(node: str, vip: str) -> bytes:
    """A node's place in a VIP's candidate order (MetalLB hashes node and IP the same way):
    deterministic, spread over the nodes, the same on every node."""
    return hashlib.sha256(f"{node}#{vip}".encode()).digest()


def preferred(vip: str, candidates: Iterable[str]) -> str | None:
    """The candidate that claims a free VIP first; the others wait out a grace period."""
    return min(candidates, key=lambda node: rank(node, vip), default=None)


def position(vip: str, candidates: frozenset[str], node: str) -> int:
    """`node`'s place in the VIP's candidate order (0: preferred). The k-th candidate claims a
    free VIP after k grace periods, so a VIP whose preferred node is dead is not claimed by
    every other node at once (50 nodes, 5,000 VIPs: one claim each, not 49)."""
    return _order(vip, candidates)[node]


@functools.lru_cache(maxsize=1 << 16)
def _order(vip: str, candidates: frozenset[str]) -> dict[str, int]:
    # Per VIP and candidate set, not per node too: a set's hash is computed once, and the
    # shell hands the same set object to every VIP with the same candidates.
    return {node: i for i, node in enumerate(sorted(candidates, key=lambda node: rank(node, vip)))}


class NodeOwnership:
    """One node's view: its lease, the VIPs it answers for, and the claims it has made."""

    def __init__(self, node: str, *, margin: float, claim_grace: float) -> None:
        self.node = node
        self.margin = margin  # below the TTL: clock-rate differences and the time to unbind
        self.claim_grace = claim_grace  # non-preferred candidates wait this long for the preferred one
        self.lease: int | None = None
        self.ttl = 0.0
        self.deadline = float("-inf")
        self.answering: set[str] = set()
        self.claiming: set[str] = set()
        self.free_since: dict[str, float] = {}  # VIPs seen without an owner, since when
        # Per VIP, the newest change of its key the watch reported: (store revision, owner).
        self.key_seen: dict[str, tuple[int, str | None]] = {}
        # VIPs whose key was deleted while its owner's lease lived (an operator, not an expiry):
        # that owner may answer until it sees the deletion, so nobody claims before this time.
        self.hold_until: dict[str, float] = {}
        self.last_owner: dict[str, str] = {}  # VIP -> the node its key last named
        self.releasing: set[str] = set()  # own keys asked to be deleted, until the watch shows it
        # Failsafe promises this node made: node -> until when it takes none of that node's VIPs.
        self.promises: dict[str, float] = {}
        self.waiting: dict[str, float] = {}  # free VIPs this node will claim, and from when
        self._full = True  # the next decision looks at every VIP

    # ---- the lease ------------------------------------------------------------------------------

    def granted(self, lease: int, ttl: float, sent_at: float) -> list[Action]:
        """A new lease (the granted TTL, which may be more than asked for)."""
        self.lease, self.ttl = lease, ttl
        self.deadline = sent_at + ttl - self.margin
        self._full = True
        # A VIP's wait counts again from now, in candidate order: after an outage that cost
        # every node its lease, 50 nodes claiming 5,000 long-free VIPs each at once would bury
        # the store (and each other's keepalives) under 250,000 transactions.
        self.free_since.clear()
        return []

    def keepalive_due(self, last_sent: float) -> float:
        return last_sent + self.ttl / KEEPALIVES_PER_TTL

    def keepalive_acked(self, lease: int, sent_at: float, ttl: float) -> list[Action]:
        """The store renewed `lease` from a request sent at `sent_at` (ttl <= 0: it is gone)."""
        if lease != self.lease:
            return []  # an answer about a lease this node already gave up
        if ttl <= 0:
            return self.lease_lost()
        deadline = sent_at + ttl - self.margin
        if deadline <= self.deadline:
            return []  # an older request's answer, overtaken
        self.deadline = deadline
        return [Fence(vip, deadline) for vip in sorted(self.answering)]

    def failsafe_confirmed(self, sent_at: float) -> list[Action]:
        """Every member confirmed and promised, asked at `sent_at`: keep answering as if a
        keepalive sent then had been acknowledged."""
        if self.lease is None:
            return []
        deadline = sent_at + self.ttl - self.margin
        if deadline <= self.deadline:
            return []
        self.deadline = deadline
        return [Fence(vip, deadline) for vip in sorted(self.answering)]

    def promise(self, node: str, now: float) -> frozenset[str]:
        """`node` asks for failsafe: promise to take none of its VIPs for a TTL from now; the
        answer is what this node answers for (the asker steps down if it overlaps its own)."""
        ttl = max(self.ttl, 1.0)  # no lease yet: still a whole TTL
        self.promises[node] = max(self.promises.get(node, now), now + ttl)
        return frozenset(self.answering | self.claiming)

    def _promised(self, vip: str, now: float) -> bool:
        return self._promise_end(vip, now) > now

    def _promise_end(self, vip: str, now: float) -> float:
        owner = self.last_owner.get(vip)
        return now if owner is None else self.promises.get(owner, now)

    def lease_lost(self) -> list[Action]:
        """A keepalive failed or the store no longer has the lease: stop answering now."""
        self.lease = None
        self.deadline = float("-inf")
        self.claiming.clear()
        self._full = True
        return self._drop_all(DropReason.LEASE_LOST)

    def tick(self, now: float) -> list[Action]:
        """Time passed: past the deadline, nothing is answered (the fence expires then too)."""
        if self.answering and now >= self.deadline:
            for vip in self.answering:  # its key may outlive the deadline: decided again later
                self.waiting[vip] = now
            return self._drop_all(DropReason.DEADLINE)
        return []

    def _drop_all(self, reason: DropReason) -> list[Action]:
        dropped = [Unbind(vip, reason) for vip in sorted(self.answering)]
        self.answering.clear()
        return dropped

    # ---- VIPs -----------------------------------------------------------------------------------

    def want(self, candidates: Mapping[str, Collection[str]], owners: Mapping[str, str | None],
             now: float, changed: Iterable[str] | None = None) -> list[Action]:
        """Given each VIP's candidates (nodes able to serve it now) and owner as last seen in
        the store (None: free), claim what this node should and give up what it should not hold.

        A node claims only a free VIP: one that comes back never takes a VIP from a healthy
        owner. The preferred candidate claims at once, the k-th in order after k x
        `claim_grace` (the ones before may be dead), and the store lets exactly one claim win.

        `changed`: the VIPs whose candidates or owner changed since the last call. Only those
        are looked at, with the ones whose wait is over (`next_due`): at 5,000 VIPs a decision
        over all of them on every watch event was what one node spent its time on. None, or a
        new lease since the last call: every VIP (`full_pass`).
        """
        if changed is None:
            self._full = True
            changed = self.answering.copy()  # all that can be decided without a lease
        vips = self.full_pass(candidates, owners, now)
        if vips is None:
            vips = sorted(changed)
            if self.lease is not None and now < self.deadline:
                vips += sorted(vip for vip, due in self.waiting.items() if due <= now)
        actions: list[Action] = []
        for vip in vips:
            actions += self._decide(vip, candidates, owners.get(vip), now)
        return actions

    def full_pass(self, candidates: Mapping[str, Collection[str]], owners: Mapping[str, str | None],
                  now: float) -> list[str] | None:
        """Every VIP, if a decision over all of them is due (a new lease, the keys read again:
        `rescan`) and claims can be made now; else None. The shell may pass them to `want` a
        slice at a time, so 5,000 VIPs do not hold its event loop for one long step."""
        if not self._full or self.lease is None or now >= self.deadline:
            return None
        self._full = False
        vips = set(candidates) | self.answering | set(self.waiting)
        vips.update(vip for vip, owner in owners.items() if owner == self.node)
        self.free_since = {vip: t for vip, t in self.free_since.items() if vip in candidates}
        self.hold_until = {vip: t for vip, t in self.hold_until.items() if t > now}
        return sorted(vips)

    def rescan(self) -> None:
        """The next decision looks at every VIP (the shell read every key again)."""
        self._full = True

    def _decide(self, vip: str, candidates: Mapping[str, Collection[str]], owner: str | None,
                now: float) -> list[Action]:
        if vip in self.answering:
            if owner not in (None, self.node):
                self.answering.discard(vip)
                return [Unbind(vip, DropReason.KEY_LOST)]
            if self.node not in candidates.get(vip, ()):
                self.answering.discard(vip)
                self.releasing.add(vip)
                return [Unbind(vip, DropReason.NOT_WANTED), Release(vip)]
            return []
        if owner == self.node:
            self.waiting.pop(vip, None)
            # A key naming this node that it does not answer for (dropped at its deadline while
            # the lease lived on, or a claim's answer lost) would keep every node away: give it up.
            if vip not in self.claiming and vip not in self.releasing:
                self.releasing.add(vip)
                return [Release(vip)]
            return []
        # Owned by another: nothing to do, and no need to work out the candidates (the cheap
        # case that most VIPs are in when a member's joining changes them all).
        nodes = () if owner is not None else candidates.get(vip, ())
        if not nodes:
            self.free_since.pop(vip, None)
            self.waiting.pop(vip, None)
            return []
        since = self.free_since.setdefault(vip, now)
        if self.node not in nodes or vip in self.claiming:
            self.waiting.pop(vip, None)
            return []
        if self.lease is None or now >= self.deadline:
            self.waiting.setdefault(vip, now)  # looked at again once claims can be made
            return []
        held = max(self.hold_until.get(vip, now), self._promise_end(vip, now))
        if held > now:
            self.waiting[vip] = held
            return []
        due = since + self.claim_grace * position(vip, frozenset(nodes), self.node)
        if now < due:
            self.waiting[vip] = due
            return []
        self.waiting.pop(vip, None)
        self.claiming.add(vip)
        return [Claim(vip, self.lease)]

    def next_due(self) -> float:
        """When the next VIP's wait is over (a claim's grace, a hold, a promise): inf if none."""
        return min(self.waiting.values(), default=float("inf"))

    def release_failed(self, vip: str, now: float) -> None:
        """A release got no answer: ask again on the next decision."""
        self.releasing.discard(vip)
        self.waiting[vip] = now

    def claimed(self, vip: str, won: bool, lease: int, now: float, revision: int = 0) -> list[Action]:
        """A claim's answer (`revision`: the store's, when the key was created). Won: the key is
        ours until the lease expires, but answering only starts if the deadline has not passed
        meanwhile, and if the watch has not already reported a later change of the key (deleted
        or taken while the answer was on its way)."""
        self.claiming.discard(vip)
        # Looked at again on the next decision unless bound below: lost to another node (whose
        # key is on its way), unanswered, or won too late.
        self.waiting[vip] = now
        if not won:
            return []
        seen_revision, seen_owner = self.key_seen.get(vip, (0, None))
        if revision and seen_revision > revision and seen_owner != self.node:
            return []
        if lease != self.lease or now >= self.deadline or self._promised(vip, now):
            return [Release(vip)] if lease == self.lease else []
        self.waiting.pop(vip, None)
        self.answering.add(vip)
        return [Bind(vip, self.deadline)]

    def owner_seen(self, vip: str, owner: str | None, *, hold_until: float | None = None,
                   revision: int = 0) -> list[Action]:
        """The store's watch says who owns `vip` now; our key gone or another's: drop at once.

        `hold_until`: the key was deleted while its owner's lease was still alive (not by an
        expiry, which comes after that owner's deadline), so its owner may still answer until
        it sees the deletion (within the watch's delay) or its deadline passes (within one
        TTL, if it is frozen): the shell passes now + TTL, and no claim is made before.
        """
        if revision:
            self.key_seen[vip] = max(self.key_seen.get(vip, (0, None)), (revision, owner), key=lambda r: r[0])
        if owner is not None:
            self.last_owner[vip] = owner
        if owner != self.node:
            self.releasing.discard(vip)
        if owner is None:
            self.free_since.pop(vip, None)  # start the grace from when `want` next sees it free
            if hold_until is not None:
                self.hold_until[vip] = max(hold_until, self.hold_until.get(vip, hold_until))
        if vip in self.answering and owner != self.node:
            self.answering.discard(vip)
            return [Unbind(vip, DropReason.KEY_LOST)]
        return []

    def handover(self) -> list[Action]:
        """Graceful stop: stop answering, then delete the keys so the next owner starts now."""
        actions: list[Action] = []
        for vip in sorted(self.answering):
            actions += [Unbind(vip, DropReason.NOT_WANTED), Release(vip)]
        self.answering.clear()
        return actions
