"""The cluster's ownership gate: a VIP is this node's while its member answers for it (pure).

Asked by every reconcile pass (lbd.reconcile), like the single-node gate. Each answer also
records whether this node is a *candidate* for the VIP (a served service on it, and for
`externalTrafficPolicy: Local` a ready endpoint here); at the end of the pass (`decided`) the
candidacy goes to the member, which publishes it and claims or gives up VIPs. The member's
Bind and Unbind then mark the state dirty, and the next pass binds or revokes the address.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lbd.model import IPAddress, Service
from lbd.ownership import Ownership, OwnershipReason, no_local_endpoint
from lbd.readiness import Readiness


class Member(Protocol):
    """What the gate reads of lbd.cluster.member.ClusterMember."""

    node: str

    def is_answering(self, vip: str) -> bool: ...

    def owner_of(self, vip: str) -> str | None: ...

    def want(self, vips: set[str]) -> None: ...


class ClusterGate:
    def __init__(self, member: Member) -> None:
        self.member = member
        self._candidacy: set[str] = set()

    def decide(self, vip: IPAddress, services: Sequence[Service], readiness: Readiness) -> Ownership:
        key = str(vip)
        owner = self.member.owner_of(key)
        if no_local_endpoint(services, readiness):
            return Ownership(False, OwnershipReason.NO_LOCAL_ENDPOINT, owner)
        self._candidacy.add(key)
        if self.member.is_answering(key):
            return Ownership(True, OwnershipReason.LEASE_HOLDER, self.member.node)
        if owner is not None and owner != self.member.node:
            return Ownership(False, OwnershipReason.OWNED_BY_PEER, owner)
        return Ownership(False, OwnershipReason.NO_OWNER, None)

    def decided(self) -> None:
        candidacy, self._candidacy = self._candidacy, set()
        self.member.want(candidacy)
