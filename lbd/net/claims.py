"""VIP addresses on interfaces, as asyncio verbs: claim, release, reconcile (netlink, off the loop).

`lbd.net.addresses` is the synchronous pyroute2 shell; this runs it in worker threads with a
deadline (a netlink dump takes ~2 ms; the deadline only guards against a hang) and one change
at a time, so an add and a remove of the same VIP never race. Every address lbd adds carries
its mark, and lbd only ever removes marked addresses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import TypeVar

import structlog

from lbd.model import IPAddress
from lbd.net import addresses
from lbd.net.addresses import AddOutcome, AnnounceError, NoInterfaceError, Snapshot
from lbd.net.ethernet import format_mac

log = structlog.get_logger("lbd.net.claims")

T = TypeVar("T")

NETLINK_TIMEOUT = 5.0  # seconds per netlink call


# Netlink calls get their own threads: a hung call can then never starve config parsing or
# state writes of the default executor's workers, and calls keep their order.
_NETLINK_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="netlink")


async def off_loop(function: Callable[..., T], *args: object) -> T:
    """Run a blocking netlink or /proc call in a worker thread, giving up after NETLINK_TIMEOUT.

    Raises AnnounceError for a timeout or any pyroute2 error (they do not derive from OSError),
    so callers handle one family of errors. A call that hangs keeps its thread, never the loop.
    """
    future = asyncio.get_running_loop().run_in_executor(_NETLINK_THREADS, functools.partial(function, *args))
    try:
        return await asyncio.wait_for(asyncio.shield(future), NETLINK_TIMEOUT)
    except TimeoutError:
        raise _Stuck(future, f"netlink did not answer within {NETLINK_TIMEOUT:g} s ({function.__name__})") from None
    except (AnnounceError, OSError):
        raise
    except Exception as exc:  # NetlinkError, NetlinkDecodeError, ...
        raise AnnounceError(f"netlink error in {function.__name__}: {exc}") from exc


class _Stuck(AnnounceError):
    """A call outlived its deadline; `future` ends when the thread finally returns."""

    def __init__(self, future: asyncio.Future[object], message: str) -> None:
        super().__init__(message)
        self.future = future


def check_announceable(vip: IPAddress) -> None:
    if vip.is_multicast or vip.is_unspecified or vip.is_link_local:
        raise AnnounceError(f"VIP {vip} is not a unicast address that can be announced; fix the pool")


class AddressClaims:
    """Puts VIPs on the announce interface with lbd's mark and takes them off again."""

    def __init__(self, interfaces: Sequence[str] = ()) -> None:
        self.interfaces = tuple(interfaces)
        self._lock = asyncio.Lock()  # one address change at a time: no add/remove races

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """The lock, waited for at most NETLINK_TIMEOUT. A call that outlived its deadline keeps
        the lock until its thread really returns, so a late add can never land after a remove."""
        try:
            await asyncio.wait_for(self._lock.acquire(), NETLINK_TIMEOUT)
        except TimeoutError:
            raise AnnounceError("an earlier netlink call has still not returned; try again later") from None
        try:
            yield
        except _Stuck as stuck:
            stuck.future.add_done_callback(lambda _: self._lock.release())
            raise
        except BaseException:
            self._lock.release()
            raise
        else:
            self._lock.release()

    async def snapshot(self) -> Snapshot:
        return await off_loop(addresses.snapshot)

    async def claim(self, vip: IPAddress) -> str:
        """Add `vip` with lbd's mark to the interface that fits it (idempotent); returns its name."""
        check_announceable(vip)
        async with self._exclusive():
            snap = await self.snapshot()
            ifname = addresses.choose_interface(vip, snap, self.interfaces)
            if ifname is None:
                raise NoInterfaceError(addresses.no_interface_message(vip, snap, self.interfaces))
            for address, link in snap.find(vip):  # configuration moved it: only one copy is ours
                if link.name != ifname and addresses.is_marked(address, link.name):
                    await off_loop(addresses.remove_address, link.name, vip)
                    log.info(
                        "vip_unbound", ip=str(vip), interface=link.name, mac=format_mac(link.mac), moved_to=ifname
                    )
            outcome = await off_loop(addresses.add_address, ifname, vip)
            if vip.version == 4:
                await self._set_sysctls(ifname)
        link = snap.link(ifname)
        mac = format_mac(link.mac) if link is not None else None
        if outcome is AddOutcome.FOREIGN:
            log.warning(
                "vip_address_not_owned",
                ip=str(vip),
                interface=ifname,
                mac=mac,
                hint="the address was there without lbd's mark; lbd uses it but will not remove it",
            )
        log.info("vip_bound", ip=str(vip), interface=ifname, mac=mac, outcome=str(outcome))
        return ifname

    async def release(self, vip: IPAddress) -> None:
        """Remove `vip` wherever it carries lbd's mark; the kernel stops answering for it."""
        async with self._exclusive():
            snap = await self.snapshot()
            for address, link in snap.find(vip):
                if not addresses.is_marked(address, link.name):
                    log.warning(
                        "vip_address_not_owned",
                        ip=str(vip),
                        interface=link.name,
                        mac=format_mac(link.mac),
                        hint="left in place: it does not carry lbd's mark",
                    )
                    continue
                if await off_loop(addresses.remove_address, link.name, vip):
                    log.info("vip_unbound", ip=str(vip), interface=link.name, mac=format_mac(link.mac))

    async def reconcile(self, wanted: Collection[IPAddress]) -> tuple[dict[IPAddress, str], list[IPAddress]]:
        """Keep marked addresses that are wanted, remove the others (a crash's leftovers).

        Returns (kept: VIP -> interface, removed). Kept ones are adopted, not re-added, so their
        service has no gap.
        """
        wanted_set = set(wanted)
        kept: dict[IPAddress, str] = {}
        removed: list[IPAddress] = []
        async with self._exclusive():
            snap = await self.snapshot()
            for address, link in snap.marked():
                mac = format_mac(link.mac)
                if address.ip in wanted_set:
                    kept.setdefault(address.ip, link.name)
                    log.info("vip_kept", ip=str(address.ip), interface=link.name, mac=mac)
                    continue
                if await off_loop(addresses.remove_address, link.name, address.ip):
                    removed.append(address.ip)
                    log.info("stale_vip_removed", ip=str(address.ip), interface=link.name, mac=mac)
        return kept, removed

    async def _set_sysctls(self, ifname: str) -> None:
        try:
            changed = await off_loop(addresses.set_arp_sysctls, ifname)
        except (OSError, AnnounceError) as error:
            log.warning(
                "arp_sysctl_failed",
                interface=ifname,
                error=str(error),
                hint="without arp_ignore=1 other interfaces may answer ARP for the VIP too (ARP flux); "
                     "without arp_announce=2 this host's ARP requests may carry a VIP as their source",
            )
            return
        if changed:
            log.info("arp_sysctl_set", interface=ifname, **changed)
