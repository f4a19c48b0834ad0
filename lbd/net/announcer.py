"""The layer 2 announcer: VIP addresses on the announce interface, gratuitous ARP/NA, and who asks.

Like MetalLB's layer2 speaker, with one difference that follows from lbd binding the VIP to
the interface (MetalLB's speaker never does): the kernel owns the address, so the kernel
answers ARP requests and neighbour solicitations for it, with the interface's MAC (arp_ignore=1
keeps the other interfaces quiet). lbd does not send answers of its own, which would only
duplicate every reply. Its AF_PACKET socket on each announce interface sends the gratuitous
frames and watches ARP/NDP in both directions, so `requests_received_total` counts requests
that reached the interface and `responses_sent_total` counts answers that actually left it.

Order of operations (the daemon's): bind -> announce -> ... -> withdraw -> unbind. Loopback VIPs
(127.0.0.0/8, ::1) need neither an address nor ARP: every verb is a no-op for them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ipaddress
import socket
import struct
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from lbd import metrics
from lbd.net import addresses, arp, ndp
from lbd.net.addresses import AddOutcome, AnnounceError, Link, NoInterfaceError, Snapshot
from lbd.net.arp import DEFAULT_GARP_INTERVAL, DEFAULT_GARP_ROUNDS, Seen, Sighting, format_mac

__all__ = ["Announcer", "AnnounceError", "NoInterfaceError"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

log = structlog.get_logger("lbd.net.announcer")

ETH_P_ALL = 0x0003  # include/uapi/linux/if_ether.h; only ETH_P_ALL taps see outgoing frames
SO_ATTACH_FILTER = 26  # include/uapi/asm-generic/socket.h
SNAPLEN = 128  # bytes kept per frame: an NS/NA with one option is 86, ARP 42
MAX_FRAMES_PER_WAKEUP = 64  # bound the work one readable event can do on a noisy segment
NETLINK_TIMEOUT = 5.0  # seconds; a netlink dump takes ~2 ms, this only guards against a hang

# Classic BPF: keep ARP and ICMPv6 neighbour solicitations/advertisements (no IPv6 extension
# headers, as NDP sends them), drop everything else in the kernel so data traffic never wakes us.
# Each instruction is (code, jump-if-true, jump-if-false, k); jumps count from the next one.
_BPF_LDH_ABS, _BPF_LDB_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x28, 0x30, 0x15, 0x06
ARP_NDP_FILTER: tuple[tuple[int, int, int, int], ...] = (
    (_BPF_LDH_ABS, 0, 0, 12),  # 0: EtherType
    (_BPF_JEQ_K, 6, 0, arp.ETH_P_ARP),  # 1: ARP -> keep
    (_BPF_JEQ_K, 0, 6, ndp.ETH_P_IPV6),  # 2: IPv6 -> 3, else drop
    (_BPF_LDB_ABS, 0, 0, 20),  # 3: IPv6 next header
    (_BPF_JEQ_K, 0, 4, ndp.IPPROTO_ICMPV6),  # 4: ICMPv6 -> 5, else drop
    (_BPF_LDB_ABS, 0, 0, ndp.ICMPV6_OFFSET),  # 5: ICMPv6 type
    (_BPF_JEQ_K, 1, 0, ndp.NdpType.NEIGHBOR_SOLICITATION),  # 6: NS -> keep
    (_BPF_JEQ_K, 0, 1, ndp.NdpType.NEIGHBOR_ADVERTISEMENT),  # 7: NA -> keep, else drop
    (_BPF_RET_K, 0, 0, SNAPLEN),  # 8: keep
    (_BPF_RET_K, 0, 0, 0),  # 9: drop
)


def _skipped(vip: IPAddress) -> bool:
    """Loopback VIPs are served on lo by the kernel already: nothing to bind or announce."""
    return vip.is_loopback


def _check_announceable(vip: IPAddress) -> None:
    if vip.is_multicast or vip.is_unspecified or vip.is_link_local:
        raise AnnounceError(f"VIP {vip} is not a unicast address that can be announced; fix the pool")


def _attach_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER takes a struct sock_fprog {u16 len; struct sock_filter *filter}."""
    instructions = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(instructions))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it here


class _Watcher:
    """One AF_PACKET socket on one interface: sends our frames, sees ARP/NDP both ways."""

    def __init__(self, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        self.link = link
        self.mac_text = format_mac(link.mac)
        self.vips: set[IPAddress] = set()  # announced on this interface; the rest is ignored
        self._conflicts_logged: set[tuple[IPAddress, bytes]] = set()
        self._loop = loop
        # Protocol 0 receives nothing until bind(), so no unfiltered frame is queued first.
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as error:
            raise AnnounceError(
                f"cannot open a packet socket on {link.name}: {error}; lbd needs root or CAP_NET_RAW to announce"
            ) from error
        try:
            _attach_filter(self.sock, ARP_NDP_FILTER)
            self.sock.bind((link.name, ETH_P_ALL))
            self.sock.setblocking(False)
            loop.add_reader(self.sock.fileno(), self._on_readable)
        except BaseException:
            self.sock.close()
            raise

    def send(self, frame: bytes) -> bool:
        try:
            self.sock.send(frame)
        except OSError as error:  # link down, interface gone, queue full: say so, try next round
            log.warning("garp_failed", interface=self.link.name, mac=self.mac_text, error=str(error))
            return False
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _on_readable(self) -> None:
        for _ in range(MAX_FRAMES_PER_WAKEUP):
            try:
                data, address = self.sock.recvfrom(SNAPLEN)
            except BlockingIOError:
                return
            except OSError as error:  # a pending socket error (e.g. ENETDOWN) is reported once
                log.warning("l2_watch_error", interface=self.link.name, error=str(error))
                return
            outgoing = address[2] == socket.PACKET_OUTGOING
            self.account(data, outgoing)

    def account(self, data: bytes, outgoing: bool) -> None:
        ethertype = data[12:14]
        if ethertype == b"\x08\x06":
            seen: list[Seen] = arp.observe(data, outgoing=outgoing, mac=self.link.mac)
        elif ethertype == b"\x86\xdd":
            seen = ndp.observe(data, outgoing=outgoing, mac=self.link.mac)
        else:
            return
        for sighting in seen:
            if sighting.ip not in self.vips:
                continue
            ip = str(sighting.ip)
            if sighting.kind is Sighting.REQUEST:
                metrics.requests_received_total.labels(ip).inc()
            elif sighting.kind is Sighting.RESPONSE:
                metrics.responses_sent_total.labels(ip).inc()
            else:
                metrics.layer2_conflicts_total.labels(ip).inc()
                if (sighting.ip, sighting.mac) not in self._conflicts_logged:  # once per claimant
                    self._conflicts_logged.add((sighting.ip, sighting.mac))
                    log.warning(
                        "vip_conflict",
                        ip=ip,
                        interface=self.link.name,
                        mac=self.mac_text,
                        other_mac=format_mac(sighting.mac),
                    )


@dataclass(slots=True)
class _Announcement:
    vip: IPAddress
    watcher: _Watcher
    rounds_sent: int = 0
    task: asyncio.Task[None] | None = field(default=None)


class Announcer:
    """Binds VIPs to the announce interface with lbd's mark, announces them, and releases them."""

    def __init__(
        self,
        interfaces: Sequence[str] = (),
        *,
        garp_rounds: int = DEFAULT_GARP_ROUNDS,
        garp_interval: float = DEFAULT_GARP_INTERVAL,
        refresh_interval: float | None = None,
    ) -> None:
        if garp_rounds < 0:
            raise ValueError(f"garp_rounds must be >= 0, got {garp_rounds}")
        if garp_interval <= 0:
            raise ValueError(f"garp_interval must be > 0 seconds, got {garp_interval}")
        if refresh_interval is not None and refresh_interval <= 0:
            raise ValueError(f"refresh_interval must be > 0 seconds or None, got {refresh_interval}")
        self.interfaces = tuple(interfaces)
        self.garp_rounds = garp_rounds
        self.garp_interval = garp_interval
        self.refresh_interval = refresh_interval
        self._bound: dict[IPAddress, str] = {}  # VIP -> interface: what this process added or adopted
        self._announced: dict[IPAddress, _Announcement] = {}
        self._watchers: dict[str, _Watcher] = {}  # interface name -> packet socket
        self._netlink_lock = asyncio.Lock()  # one address change at a time: no add/remove races

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the configured interfaces. Opens nothing: loopback-only daemons need no root."""
        snap = await self._snapshot()
        for name in self.interfaces:
            if snap.link(name) is None:
                log.warning("interface_missing", interface=name)
        log.info(
            "announcer_started",
            interfaces=list(self.interfaces),
            garp_rounds=self.garp_rounds,
            garp_interval=self.garp_interval,
            refresh_interval=self.refresh_interval,
        )

    async def close(self) -> None:
        """Stop every task and socket. Addresses stay: the daemon decides (unbind) what goes."""
        tasks = [a.task for a in self._announced.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._announced.clear()
        for watcher in self._watchers.values():
            watcher.close()
        self._watchers.clear()

    # ---- verbs ---------------------------------------------------------------------------------

    def interface_for(self, vip: IPAddress) -> str | None:
        """The interface `bind` would use (or uses) for `vip`; None for loopback or no fit."""
        if _skipped(vip):
            return None
        if vip in self._bound:
            return self._bound[vip]
        return addresses.choose_interface(vip, _call_off_loop(addresses.snapshot), self.interfaces)

    async def bind(self, vip: IPAddress) -> str | None:
        """Add `vip` with lbd's mark to its interface (idempotent). Returns the interface."""
        if _skipped(vip):
            return None
        _check_announceable(vip)
        async with self._netlink_lock:
            snap = await self._snapshot()
            ifname = addresses.choose_interface(vip, snap, self.interfaces)
            if ifname is None:
                raise NoInterfaceError(addresses.no_interface_message(vip, snap, self.interfaces))
            for address, link in snap.find(vip):  # configuration moved it: only one copy is ours
                if link.name != ifname and addresses.is_marked(address, link.name):
                    await asyncio.to_thread(addresses.remove_address, link.name, vip)
                    log.info(
                        "vip_unbound", ip=str(vip), interface=link.name, mac=format_mac(link.mac), moved_to=ifname
                    )
            outcome = await asyncio.to_thread(addresses.add_address, ifname, vip)
            if vip.version == 4:
                await self._set_sysctls(ifname)
            self._bound[vip] = ifname
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

    async def announce(self, vip: IPAddress) -> None:
        """Send gratuitous ARP/NA now and `garp_rounds - 1` more times; watch requests until withdraw.

        Announcing again restarts the burst (e.g. after a failover the daemon wants new GARPs).
        """
        if _skipped(vip):
            return None
        _check_announceable(vip)
        snap = await self._snapshot()
        link = self._link_holding(vip, snap)
        watcher = self._watcher_for(link)
        watcher.vips.add(vip)
        previous = self._announced.pop(vip, None)
        if previous is not None:  # re-announce: a fresh burst, same socket unless the VIP moved
            await self._cancel(previous)
            if previous.watcher is not watcher:
                self._release(previous.watcher, vip)
        announcement = _Announcement(vip, watcher)
        self._announced[vip] = announcement
        delays = arp.garp_delays(self.garp_rounds, self.garp_interval, self.refresh_interval)
        first = next(delays, None)
        if first == 0.0:
            self._send_round(announcement)  # at once, before announce() returns
        elif first is not None:
            delays = _prepend(first, delays)  # no burst, refresh only
        announcement.task = asyncio.get_running_loop().create_task(
            self._rounds(announcement, delays), name=f"garp-{vip}"
        )
        log.info("vip_announced", ip=str(vip), interface=link.name, mac=watcher.mac_text)

    async def withdraw(self, vip: IPAddress) -> None:
        """Stop gratuitous frames and stop counting requests for `vip`. The address stays."""
        announcement = self._announced.pop(vip, None)
        if announcement is None:
            return
        await self._stop(announcement)
        watcher = announcement.watcher
        log.info("vip_withdrawn", ip=str(vip), interface=watcher.link.name, mac=watcher.mac_text)

    async def unbind(self, vip: IPAddress) -> None:
        """Remove `vip` from its interface if it carries lbd's mark; the kernel stops answering."""
        if _skipped(vip):
            return
        if vip in self._announced:  # release order is withdraw then unbind; keep it even if misused
            await self.withdraw(vip)
        async with self._netlink_lock:
            self._bound.pop(vip, None)
            snap = await self._snapshot()
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
                removed = await asyncio.to_thread(addresses.remove_address, link.name, vip)
                if removed:
                    log.info("vip_unbound", ip=str(vip), interface=link.name, mac=format_mac(link.mac))

    async def reconcile(self, wanted: Collection[IPAddress]) -> list[IPAddress]:
        """Remove lbd-marked addresses that are not wanted (a crash's leftovers); keep wanted ones.

        Wanted ones are adopted as bound, not re-added, so their service never has a gap.
        """
        wanted_set = set(wanted)
        removed: list[IPAddress] = []
        async with self._netlink_lock:
            snap = await self._snapshot()
            for address, link in snap.marked():
                mac = format_mac(link.mac)
                if address.ip in wanted_set:
                    self._bound.setdefault(address.ip, link.name)
                    log.info("vip_kept", ip=str(address.ip), interface=link.name, mac=mac)
                    continue
                if address.ip in self._announced:
                    await self.withdraw(address.ip)
                if await asyncio.to_thread(addresses.remove_address, link.name, address.ip):
                    self._bound.pop(address.ip, None)
                    removed.append(address.ip)
                    log.info("stale_vip_removed", ip=str(address.ip), interface=link.name, mac=mac)
        return removed

    # ---- internals -----------------------------------------------------------------------------

    async def _snapshot(self) -> Snapshot:
        return await asyncio.wait_for(asyncio.to_thread(addresses.snapshot), NETLINK_TIMEOUT)

    async def _set_sysctls(self, ifname: str) -> None:
        try:
            changed = await asyncio.to_thread(addresses.set_arp_sysctls, ifname)
        except OSError as error:
            log.warning(
                "arp_sysctl_failed",
                interface=ifname,
                error=str(error),
                hint="other interfaces may answer ARP for the VIP too (ARP flux)",
            )
            return
        if changed:
            log.info("arp_sysctl_set", interface=ifname, **changed)

    def _link_holding(self, vip: IPAddress, snap: Snapshot) -> Link:
        """The interface that has `vip`: the kernel answers there, so we announce there."""
        copies = snap.find(vip)
        bound_to = self._bound.get(vip)
        for _, link in copies:
            if link.name == bound_to:
                return link
        if copies:
            return copies[0][1]
        raise AnnounceError(f"cannot announce VIP {vip}: it is not on any interface; bind() it first")

    def _watcher_for(self, link: Link) -> _Watcher:
        """The packet socket on `link`, opened on first use, reopened if the interface changed."""
        old = self._watchers.get(link.name)
        if old is not None and (old.link.index, old.link.mac) == (link.index, link.mac):
            return old
        watcher = _Watcher(link, asyncio.get_running_loop())
        if old is not None:  # the interface was recreated or changed its MAC: move its VIPs over
            watcher.vips = old.vips
            for announcement in self._announced.values():
                if announcement.watcher is old:
                    announcement.watcher = watcher
            old.close()
        self._watchers[link.name] = watcher
        return watcher

    def _send_round(self, announcement: _Announcement) -> None:
        watcher, vip = announcement.watcher, announcement.vip
        if vip.version == 4:
            frames: tuple[bytes, ...] = arp.gratuitous_pair(watcher.link.mac, vip)  # type: ignore[arg-type]
        else:
            frames = (ndp.unsolicited_advertisement(watcher.link.mac, vip),)  # type: ignore[arg-type]
        sent = 0
        for frame in frames:
            if watcher.send(frame):
                metrics.gratuitous_sent_total.labels(str(vip)).inc()
                sent += 1
        announcement.rounds_sent += 1
        log.info(
            "garp_sent",
            ip=str(vip),
            interface=watcher.link.name,
            mac=watcher.mac_text,
            round=announcement.rounds_sent,
            packets=sent,
        )

    async def _rounds(self, announcement: _Announcement, delays: Iterator[float]) -> None:
        for delay in delays:  # finite unless a refresh interval is set; withdraw cancels it
            await asyncio.sleep(delay)
            self._send_round(announcement)

    async def _stop(self, announcement: _Announcement) -> None:
        await self._cancel(announcement)
        self._release(announcement.watcher, announcement.vip)

    async def _cancel(self, announcement: _Announcement) -> None:
        if announcement.task is not None:
            announcement.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcement.task

    def _release(self, watcher: _Watcher, vip: IPAddress) -> None:
        watcher.vips.discard(vip)
        if not watcher.vips and self._watchers.get(watcher.link.name) is watcher:
            watcher.close()  # nothing left to watch on this interface
            del self._watchers[watcher.link.name]


def _prepend(first: float, rest: Iterator[float]) -> Iterator[float]:
    yield first
    yield from rest


def _call_off_loop(function: Callable[[], T]) -> T:
    """Run a sync pyroute2 call; in a worker thread when this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function).result(timeout=NETLINK_TIMEOUT)
