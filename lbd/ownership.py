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
over, keeping the VIP means a client gets a fast refusal instead of an ARP timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from lbd.model import IPAddress, Service
from lbd.readiness import Readiness


class OwnershipReason(StrEnum):
    """Why a node does or does not own a VIP: a status field, a log field, a metric label."""

    SINGLE_NODE = "SingleNode"  # the only node: it owns every VIP it serves


@dataclass(frozen=True, slots=True)
class Ownership:
    """The gate's answer for one VIP."""

    owner: bool
    reason: OwnershipReason


class OwnershipGate(Protocol):
    """Decides, per VIP, whether this node holds the address."""

    def decide(self, vip: IPAddress, services: Sequence[Service], readiness: Readiness) -> Ownership:
        """`services` are the ones served on `vip`; `readiness` covers at least them."""
        ...


class SingleNodeGate:
    """One lbd node, no peers: this node owns every VIP it has a served service for."""

    _OWNED = Ownership(True, OwnershipReason.SINGLE_NODE)

    def decide(self, vip: IPAddress, services: Sequence[Service], readiness: Readiness) -> Ownership:
        return self._OWNED
