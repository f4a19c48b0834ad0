"""Presence: how this node makes a VIP its own on the network, behind one small interface.

Two halves, each with its own verbs:
- the address (claim/release): the VIP on an interface, so the kernel accepts and answers for it;
- the announcement (announce/withdraw): telling the segment where the VIP lives now.

The VIP lifecycle (lbd.vips) drives them in MetalLB's order: claim -> announce -> withdraw ->
(drain) -> release. `L2Presence` is today's way: a marked address plus gratuitous ARP/NA
(lbd.net.claims, lbd.net.l2). Another way of answering (BGP, a routed /32) would be another
Presence; the lifecycle does not change.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import structlog

from lbd.model import IPAddress
from lbd.net.arp import DEFAULT_GARP_INTERVAL, DEFAULT_GARP_ROUNDS
from lbd.net.claims import AddressClaims
from lbd.net.l2 import L2Announcer

log = structlog.get_logger("lbd.net.presence")


class Presence(Protocol):
    """The verbs the VIP lifecycle uses. None of them is called for loopback VIPs."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Stop announcing and close sockets; addresses stay (the lifecycle releases them)."""
        ...

    def set_interfaces(self, interfaces: Sequence[str]) -> None:
        """Where VIPs may go (the config's `interfaces`; empty: by connected subnet)."""
        ...

    async def claim(self, vip: IPAddress) -> str:
        """Make the address ours (idempotent); returns the interface. Raises AnnounceError."""
        ...

    async def release(self, vip: IPAddress) -> None: ...

    async def announce(self, vip: IPAddress, interface: str | None) -> None: ...

    async def withdraw(self, vip: IPAddress) -> None: ...

    async def reconcile(self, wanted: Collection[IPAddress]) -> tuple[dict[IPAddress, str], list[IPAddress]]:
        """Adopt wanted leftovers of an earlier run, remove the rest: (kept VIP -> interface, removed)."""
        ...


class L2Presence:
    """A VIP as a marked address on the announce interface, announced with gratuitous ARP/NA."""

    def __init__(
        self,
        interfaces: Sequence[str] = (),
        *,
        garp_rounds: int = DEFAULT_GARP_ROUNDS,
        garp_interval: float = DEFAULT_GARP_INTERVAL,
        refresh_interval: float | None = None,
    ) -> None:
        self.claims = AddressClaims(interfaces)
        self.l2 = L2Announcer(garp_rounds=garp_rounds, garp_interval=garp_interval, refresh_interval=refresh_interval)

    async def start(self) -> None:
        """Check the configured interfaces. Opens nothing: loopback-only daemons need no root."""
        snap = await self.claims.snapshot()
        for name in self.claims.interfaces:
            if snap.link(name) is None:
                log.warning("interface_missing", interface=name)
        log.info(
            "announcer_started",
            interfaces=list(self.claims.interfaces),
            garp_rounds=self.l2.garp_rounds,
            garp_interval=self.l2.garp_interval,
            refresh_interval=self.l2.refresh_interval,
        )

    async def close(self) -> None:
        await self.l2.close()

    def set_interfaces(self, interfaces: Sequence[str]) -> None:
        self.claims.interfaces = tuple(interfaces)

    async def claim(self, vip: IPAddress) -> str:
        return await self.claims.claim(vip)

    async def release(self, vip: IPAddress) -> None:
        await self.claims.release(vip)

    async def announce(self, vip: IPAddress, interface: str | None) -> None:
        await self.l2.announce(vip, await self.claims.snapshot(), interface)

    async def withdraw(self, vip: IPAddress) -> None:
        await self.l2.withdraw(vip)

    async def reconcile(self, wanted: Collection[IPAddress]) -> tuple[dict[IPAddress, str], list[IPAddress]]:
        return await self.claims.reconcile(wanted)
