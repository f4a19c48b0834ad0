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
from collections.abc import Iterable, Mapping, Sequence
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


@functools.lru_cache(maxsize=1 << 16)
def position(vip: str, candidates: frozenset[str], node: str) -> int:
    """`node`'s place in the VIP's candidate order (0: preferred). The k-th candidate claims a
    free VIP after k grace periods, so a VIP whose preferred node is dead is not claimed by
    every other node at once (50 nodes, 5,000 VIPs: one claim each, not 49)."""
    mine = rank(node, vip)
    return sum(1 for other in candidates if rank(other, vip) < mine)


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

    # ---- the lease ------------------------------------------------------------------------------

    def granted(self, lease: int, ttl: float, sent_at: float) -> list[Action]:
        """A new lease (the granted TTL, which may be more than asked for)."""
        self.lease, self.ttl = lease, ttl
        self.deadline = sent_at + ttl - self.margin
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
        owner = self.last_owner.get(vip)
        return owner is not None and self.promises.get(owner, now) > now

    def lease_lost(self) -> list[Action]:
        """A keepalive failed or the store no longer has the lease: stop answering now."""
        self.lease = None
        self.deadline = float("-inf")
        self.claiming.clear()
        return self._drop_all(DropReason.LEASE_LOST)

    def tick(self, now: float) -> list[Action]:
        """Time passed: past the deadline, nothing is answered (the fence expires then too)."""
        if self.answering and now >= self.deadline:
            return self._drop_all(DropReason.DEADLINE)
        return []

    def _drop_all(self, reason: DropReason) -> list[Action]:
        dropped = [Unbind(vip, reason) for vip in sorted(self.answering)]
        self.answering.clear()
        return dropped

    # ---- VIPs -----------------------------------------------------------------------------------

    def want(self, candidates: Mapping[str, Sequence[str]], owners: Mapping[str, str | None],
             now: float) -> list[Action]:
        """Given each VIP's candidates (nodes able to serve it now) and owner as last seen in
        the store (None: free), claim what this node should and give up what it should not hold.

        A node claims only a free VIP: one that comes back never takes a VIP from a healthy
        owner. The preferred candidate claims at once, the k-th in order after k x
        `claim_grace` (the ones before may be dead), and the store lets exactly one claim win.
        """
        actions: list[Action] = []
        for vip in sorted(self.answering):
            if owners.get(vip) not in (None, self.node):
                self.answering.discard(vip)
                actions.append(Unbind(vip, DropReason.KEY_LOST))
            elif self.node not in candidates.get(vip, ()):
                self.answering.discard(vip)
                self.releasing.add(vip)
                actions += [Unbind(vip, DropReason.NOT_WANTED), Release(vip)]
        # A key naming this node that it does not answer for (dropped at its deadline while the
        # lease lived on, or a claim's answer lost) would keep every node away: give it up.
        for vip, owner in owners.items():
            if owner == self.node and vip not in self.answering and vip not in self.claiming \
                    and vip not in self.releasing:
                self.releasing.add(vip)
                actions.append(Release(vip))
        if self.lease is None or now >= self.deadline:
            return actions
        for vip, nodes in candidates.items():
            owner = owners.get(vip)
            if owner is not None:
                self.free_since.pop(vip, None)
                continue
            since = self.free_since.setdefault(vip, now)
            if self.node not in nodes or vip in self.answering or vip in self.claiming:
                continue
            if self.hold_until.get(vip, now) > now or self._promised(vip, now):
                continue
            waited = now - since
            if waited >= self.claim_grace * len(nodes) or \
                    waited >= self.claim_grace * position(vip, frozenset(nodes), self.node):
                self.claiming.add(vip)
                actions.append(Claim(vip, self.lease))
        for vip in [v for v in self.free_since if v not in candidates]:
            del self.free_since[vip]
        for vip in [v for v, until in self.hold_until.items() if until <= now]:
            del self.hold_until[vip]
        return actions

    def claimed(self, vip: str, won: bool, lease: int, now: float, revision: int = 0) -> list[Action]:
        """A claim's answer (`revision`: the store's, when the key was created). Won: the key is
        ours until the lease expires, but answering only starts if the deadline has not passed
        meanwhile, and if the watch has not already reported a later change of the key (deleted
        or taken while the answer was on its way)."""
        self.claiming.discard(vip)
        if not won:
            return []
        seen_revision, seen_owner = self.key_seen.get(vip, (0, None))
        if revision and seen_revision > revision and seen_owner != self.node:
            return []
        if lease != self.lease or now >= self.deadline or self._promised(vip, now):
            return [Release(vip)] if lease == self.lease else []
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
