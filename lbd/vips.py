"""The VIP lifecycle: claim -> announce -> withdraw -> drain -> release, and the only record of it.

One owner for every VIP this node holds: which VIPs are bound (the address is on an interface,
or the VIP is on loopback), which are announced, which services use each (counted per service,
as MetalLB's layer2 announcer does), and the release tasks that wait for connections to drain.
The way a VIP is answered on the network is the Presence's business (lbd.net.presence).

Order and invariants (every change under `_lock`):
- a VIP is announced only while it is bound; it is withdrawn before it is unbound;
- release: withdraw at once, unbind once the connections it carried have drained, unless the
  VIP was acquired again meanwhile (then it stays bound and is announced again);
- revoke (ownership lost): withdraw and unbind at once, without waiting for drains;
- loopback VIPs (127.0.0.0/8, ::1) need no address and no ARP: the Presence never sees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass

import structlog

from lbd import metrics
from lbd.model import IPAddress
from lbd.net.addresses import AnnounceError
from lbd.net.presence import Presence

log = structlog.get_logger("lbd.vips")

# What a Presence raises when the network says no (no interface, netlink error, a hang).
PRESENCE_ERRORS = (AnnounceError, OSError, TimeoutError)


def is_loopback(ip: IPAddress) -> bool:
    """Loopback VIPs are served on lo by the kernel already: nothing to bind or announce."""
    return ip.is_loopback


@dataclass(slots=True)
class _Vip:
    ip: IPAddress
    interface: str | None = None
    services: tuple[str, ...] = ()
    announced: bool = False
    releasing: bool = False
    generation: int = 0  # bumped per release, so a stale release task knows it is stale


class Vips:
    """Every VIP this node holds, from claim to release."""

    def __init__(self, presence: Presence) -> None:
        self.presence = presence
        self._vips: dict[IPAddress, _Vip] = {}  # bound (or loopback) VIPs, releasing ones included
        self._tasks: set[asyncio.Task[None]] = set()
        self._unbind_later: set[IPAddress] = set()  # removals that failed, retried each pass
        self._lock = asyncio.Lock()

    # ---- views (for the plan's Running and the status) ----------------------------------------

    def held(self) -> dict[IPAddress, tuple[str, ...]]:
        """Bound VIPs that are not being released, with the services using them."""
        return {ip: v.services for ip, v in self._vips.items() if not v.releasing}

    def announced(self) -> frozenset[IPAddress]:
        return frozenset(ip for ip, v in self._vips.items() if v.announced)

    # ---- verbs ---------------------------------------------------------------------------------

    def set_interfaces(self, interfaces: Sequence[str]) -> None:
        """Where new VIPs go (the config's `interfaces`); held VIPs stay where they are."""
        self.presence.set_interfaces(interfaces)

    async def adopt(self, wanted: Collection[IPAddress]) -> None:
        """Start-up: keep an earlier run's addresses that are still wanted, remove the rest.

        Kept ones count as bound (no gap in service); `acquire` then gives them their services.
        """
        kept, _ = await self.presence.reconcile([ip for ip in wanted if not is_loopback(ip)])
        async with self._lock:
            for ip, interface in kept.items():
                self._vips.setdefault(ip, _Vip(ip, interface))

    async def acquire(self, ip: IPAddress, services: Iterable[str]) -> None:
        """Hold `ip` for `services`: claim the address unless it is held already.

        Raises what the Presence raises (PRESENCE_ERRORS) when the address cannot be claimed.
        """
        users = tuple(services)
        async with self._lock:
            vip = self._vips.get(ip)
            if vip is not None:
                vip.services = users
                vip.releasing = False  # a pending release gives up before it unbinds
                return
            try:
                interface = None if is_loopback(ip) else await self.presence.claim(ip)
            except PRESENCE_ERRORS:
                # A claim that timed out may still land: take the address off again (it is
                # only ever removed with lbd's mark), so nothing answers for an unserved VIP.
                await self._unclaim(ip)
                raise
            self._vips[ip] = _Vip(ip, interface, users)
        log.info("vip_acquired", ip=str(ip), services=list(users), interface=interface)

    async def announce(self, ip: IPAddress) -> None:
        """Tell the segment `ip` is here (gratuitous ARP/NA); a no-op when announced already."""
        async with self._lock:
            vip = self._vips.get(ip)
            if vip is None or vip.announced or vip.releasing:
                return
            if not is_loopback(ip):
                await self.presence.announce(ip, vip.interface)
            vip.announced = True

    async def release(self, ip: IPAddress, drains: Collection[Awaitable[object]] = ()) -> None:
        """No longer used: withdraw now, unbind once `drains` are done (unless acquired again)."""
        async with self._lock:
            vip = self._vips.get(ip)
            if vip is None or vip.releasing:
                return
            vip.releasing = True
            vip.services = ()
            vip.generation += 1
            await self._withdraw(vip)
        task = asyncio.get_running_loop().create_task(self._unbind_after(vip, vip.generation, drains))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def revoke(self, ip: IPAddress) -> None:
        """Ownership lost: withdraw and unbind at once; connections are not waited for."""
        async with self._lock:
            vip = self._vips.pop(ip, None)
            if vip is None:
                return
            await self._withdraw(vip)
            await self._unbind(vip, reason="revoked")

    async def close(self) -> None:
        """Shutdown, after the listeners drained: withdraw all, finish releases, unbind the rest."""
        async with self._lock:
            for vip in self._vips.values():
                await self._withdraw(vip)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._lock:
            for vip in list(self._vips.values()):
                await self._unbind(vip, reason="shutdown")
            self._vips.clear()

    async def withdraw_all(self) -> None:
        """Shutdown's first step: stop attracting new traffic while connections drain."""
        async with self._lock:
            for vip in self._vips.values():
                await self._withdraw(vip)

    # ---- internals -----------------------------------------------------------------------------

    async def _unbind_after(self, vip: _Vip, generation: int, drains: Collection[Awaitable[object]]) -> None:
        if drains:
            await asyncio.gather(*drains, return_exceptions=True)
        async with self._lock:
            if vip.releasing and vip.generation == generation and self._vips.get(vip.ip) is vip:
                del self._vips[vip.ip]
                await self._unbind(vip, reason="released")

    async def _withdraw(self, vip: _Vip) -> None:
        if not vip.announced:
            return
        vip.announced = False
        if is_loopback(vip.ip):
            return
        try:
            await self.presence.withdraw(vip.ip)
        except PRESENCE_ERRORS as exc:
            log.error("withdraw_failed", ip=str(vip.ip), error=str(exc) or type(exc).__name__)

    async def _unbind(self, vip: _Vip, reason: str) -> None:
        if is_loopback(vip.ip) or await self._unclaim(vip.ip):
            log.info("vip_released", ip=str(vip.ip), interface=vip.interface, reason=reason)
        metrics.forget_vip(str(vip.ip))  # its ARP/NDP series go with it

    async def _unclaim(self, ip: IPAddress) -> bool:
        """Remove the address; a failure is remembered and retried by `retry_unbinds`."""
        if is_loopback(ip):
            return True
        try:
            await self.presence.release(ip)
        except PRESENCE_ERRORS as exc:
            log.error("unbind_failed", ip=str(ip), error=str(exc) or type(exc).__name__, hint="retried on the next pass")
            self._unbind_later.add(ip)
            return False
        self._unbind_later.discard(ip)
        return True

    async def retry_unbinds(self) -> None:
        """Addresses whose removal failed earlier and that nobody holds now: try again."""
        async with self._lock:
            for ip in list(self._unbind_later):
                if ip not in self._vips:
                    await self._unclaim(ip)
                else:
                    self._unbind_later.discard(ip)
