"""The ownership gate: may this node hold a VIP's address right now? (pure)

Asked before a VIP is bound and by start-up reconcile. It gates the **address**, not only the
announcement: the kernel answers ARP for every address bound to an interface, so a node that
binds a VIP and stays silent still attracts its traffic. A gate may also revoke: the VIP is
withdrawn and unbound at once, without waiting for connections to drain (another node takes
over). Listeners stay open on a non-owner (IP_FREEBIND), so winning a VIP back only binds the
address and announces it.

Readiness is an input so that a cluster gate can follow MetalLB's ShouldAnnounce (no serving
endpoint: not owner; externalTrafficPolicy Local: only a node with a ready local endpoint).
The single-node gate owns every VIP it serves, as lbd always has: with no other node to take
over, keeping the VIP means a client gets a fast refusal instead of an ARP timeout. One
exception, on every node alike: a VIP whose services are all `externalTrafficPolicy: Local`
is not held by a node with no ready local endpoint. Local means "only this node's pods", so
holding it would take the traffic and reset every connection (the black hole MetalLB users
report); a status that says why beats a VIP that answers and fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from lbd.model import IPAddress, Service, TrafficPolicy
from lbd.readiness import Readiness


class OwnershipReason(StrEnum):
    """Why a node does or does not own a VIP: a status field, a log field, a metric label."""

    SINGLE_NODE = "SingleNode"  # the only node: it owns every VIP it serves
    NO_LOCAL_ENDPOINT = "NoLocalEndpoint"  # externalTrafficPolicy Local, no ready endpoint here
    LEASE_HOLDER = "LeaseHolder"  # cluster: this node's key for the VIP, under its live lease
    OWNED_BY_PEER = "OwnedByPeer"  # cluster: another node holds it
    NO_OWNER = "NoOwner"  # cluster: nobody holds it yet (a claim is on its way, or a grace runs)

    @property
    def text(self) -> str:
        return _REASON_TEXT.get(self, str(self))


_REASON_TEXT = {
    OwnershipReason.NO_LOCAL_ENDPOINT:
        "not announced: no ready endpoint on this node (externalTrafficPolicy Local)",
    OwnershipReason.OWNED_BY_PEER: "standby: another node holds the VIP (see NODE)",
    OwnershipReason.NO_OWNER: "standby: no node holds the VIP yet (a claim or a failover is under way)",
}


@dataclass(frozen=True, slots=True)
class Ownership:
    """The gate's answer for one VIP."""

    owner: bool
    reason: OwnershipReason
    node: str | None = None  # the node that holds the VIP (this one or a peer); None: nobody


class OwnershipGate(Protocol):
    """Decides, per VIP, whether this node holds the address."""

    def decide(self, vip: IPAddress, services: Sequence[Service], readiness: Readiness) -> Ownership:
        """`services` are the ones served on `vip`; `readiness` covers at least them."""
        ...

    def decided(self) -> None:
        """Every VIP of one pass was asked about (a cluster gate publishes its candidacy)."""
        ...


def no_local_endpoint(services: Sequence[Service], readiness: Readiness) -> bool:
    """Every service on the VIP is Local and none has a ready endpoint on this node.

    The allocator lets Local services share a VIP only with identical selectors, and readiness
    already counts only this node's endpoints for them, so any() over the ready counts decides.
    """
    if not services or any(s.external_traffic_policy is not TrafficPolicy.LOCAL for s in services):
        return False
    return not any(r.ready_count for s in services if (r := readiness.get(s.key)) is not None)


class SingleNodeGate:
    """One lbd node, no peers: this node owns every VIP it has a served service for."""

    def __init__(self, node: str) -> None:
        self._owned = Ownership(True, OwnershipReason.SINGLE_NODE, node)
        self._no_local = Ownership(False, OwnershipReason.NO_LOCAL_ENDPOINT)

    def decide(self, vip: IPAddress, services: Sequence[Service], readiness: Readiness) -> Ownership:
        return self._no_local if no_local_endpoint(services, readiness) else self._owned

    def decided(self) -> None:
        pass
