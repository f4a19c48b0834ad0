"""Which members can serve which VIP: their membership records and the VIP sets those name (pure).

A member's record (`nodes/NODE` in the store) names its candidacy by a digest; the set itself
is published once under `candidacies/DIGEST`. Nodes that load one config name one set, so a
record is a few bytes, not 5,000 addresses that every member must read and index. The index
keeps the other members grouped by the set they name: a VIP's candidates cost one test per
distinct set (one, with one config), and a member joining or leaving moves between groups.
Every change returns the VIPs whose candidates it changed, which is what the fencing core
decides over next.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A member as its `nodes/` key says: its candidacy (the digest of a published VIP set,
    "" for none), its lease's TTL, where it answers failsafe asks (lbd.cluster.peers)."""

    candidacy: str
    ttl: int
    peer: tuple[str, int] | None = None

    def encode(self) -> bytes:
        data: dict[str, Any] = {"candidacy": self.candidacy, "ttl": self.ttl}
        if self.peer is not None:
            data["peer"] = list(self.peer)
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> NodeRecord:
        try:
            data = json.loads(raw)
            peer = data.get("peer")
            return cls(str(data.get("candidacy", "")), int(data.get("ttl", 0)),
                       (str(peer[0]), int(peer[1])) if peer else None)
        except (ValueError, TypeError, AttributeError, IndexError):
            return cls("", 0)  # a record lbd did not write: a member with no candidacy


def encode_vips(vips: frozenset[str]) -> bytes:
    return json.dumps(sorted(vips), separators=(",", ":")).encode()


def decode_vips(raw: bytes) -> frozenset[str]:
    try:
        return frozenset(str(vip) for vip in json.loads(raw))
    except (ValueError, TypeError):
        return frozenset()


def candidacy_digest(vips: frozenset[str]) -> str:
    return hashlib.sha256(encode_vips(vips)).hexdigest()[:24] if vips else ""


class CandidacyIndex(Mapping[str, Collection[str]]):
    """VIP -> the members that can serve it now: this node by its own word (`mine`), the others
    by their records. Worked out per VIP when asked, one set object per combination of groups,
    so the fencing core's per-set caches hit."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.mine: frozenset[str] = frozenset()
        self.records: dict[str, NodeRecord] = {}  # every member, this node included
        self.published: dict[str, frozenset[str]] = {"": frozenset()}  # digest -> its VIPs
        self.groups: dict[frozenset[str], set[str]] = {}  # a VIP set -> the other members naming it
        self._sets: dict[tuple[int, ...], frozenset[str]] = {}

    # ---- changes, each returning the VIPs whose candidates changed ----------------------------

    def set_mine(self, vips: frozenset[str]) -> frozenset[str]:
        changed = vips ^ self.mine
        self.mine = vips
        self._sets.clear()
        return changed

    def load(self, records: dict[str, NodeRecord], published: dict[str, frozenset[str]]) -> None:
        """Everything as read from the store (a start, a resync): decide over every VIP next."""
        self.published.update(published)
        self.records = dict(records)
        self.groups = {}
        for node in self.records:
            if node != self.node and (vips := self.candidacy_of(node)):
                self.groups.setdefault(vips, set()).add(node)
        self._sets.clear()

    def record_changed(self, node: str, record: NodeRecord | None) -> frozenset[str]:
        """A member's record written (None: deleted, the member is gone)."""
        before = self.candidacy_of(node)
        self.records.pop(node, None)
        if record is not None:
            self.records[node] = record
        return self._regroup(node, before, self.candidacy_of(node))

    def set_published(self, digest: str, vips: frozenset[str]) -> frozenset[str]:
        """A VIP set seen under its digest; records that named it before count from now."""
        if digest in self.published:
            return frozenset()
        self.published[digest] = vips
        changed: frozenset[str] = frozenset()
        for node, record in self.records.items():
            if record.candidacy == digest:
                changed |= self._regroup(node, frozenset(), vips)
        return changed

    def candidacy_of(self, node: str) -> frozenset[str]:
        """The VIPs a member's record names (none while its set has not been seen)."""
        record = self.records.get(node)
        return self.published.get(record.candidacy, frozenset()) if record is not None else frozenset()

    def _regroup(self, node: str, before: frozenset[str], after: frozenset[str]) -> frozenset[str]:
        if before == after or node == self.node:
            return frozenset()
        holders = self.groups.get(before)
        if holders is not None:
            holders.discard(node)
            if not holders:
                del self.groups[before]
        if after:
            self.groups.setdefault(after, set()).add(node)
        self._sets.clear()
        return before ^ after

    # ---- the mapping ---------------------------------------------------------------------------

    def __getitem__(self, vip: str) -> frozenset[str]:
        key = tuple(i for i, vips in enumerate(self.groups) if vip in vips)
        if vip in self.mine:
            key += (-1,)
        if not key:
            raise KeyError(vip)
        nodes = self._sets.get(key)
        if nodes is None:
            holders = list(self.groups.values())
            members = {node for i in key if i >= 0 for node in holders[i]}
            if key[-1] < 0:
                members.add(self.node)
            nodes = self._sets[key] = frozenset(members)
        return nodes

    def __contains__(self, vip: object) -> bool:
        return vip in self.mine or any(vip in vips for vips in self.groups)

    def __iter__(self) -> Iterator[str]:
        return iter(self.mine.union(*self.groups))

    def __len__(self) -> int:
        return len(self.mine.union(*self.groups))
