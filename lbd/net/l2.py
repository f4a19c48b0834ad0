"""Layer 2 announcements: gratuitous ARP/NA for a VIP, and watching who asks for it.

Like MetalLB's layer2 speaker, with one difference that follows from lbd binding the VIP to
the interface (MetalLB's speaker never does): the kernel owns the address, so the kernel
answers ARP requests and neighbour solicitations for it, with the interface's MAC (arp_ignore=1
keeps the other interfaces quiet). lbd sends no answers of its own, which would only duplicate
every reply. Its AF_PACKET socket on each announce interface sends the gratuitous frames and
watches ARP/NDP in both directions, so `requests_received_total` counts requests that reached
the interface and `responses_sent_total` counts answers that actually left it.

A VIP is announced only once its address is bound (lbd.net.claims); the interface that holds
it is where the kernel answers, so that is where the frames go.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import structlog

from lbd import metrics
from lbd.model import IPAddress
from lbd.net import arp, ndp
from lbd.net.addresses import AnnounceError, Link, Snapshot
from lbd.net.arp import DEFAULT_GARP_INTERVAL, DEFAULT_GARP_ROUNDS, Seen, Sighting
from lbd.net.claims import check_announceable
from lbd.net.ethernet import format_mac

log = structlog.get_logger("lbd.net.l2")

ETH_P_ALL = 0x0003  # include/uapi/linux/if_ether.h; only ETH_P_ALL taps see outgoing frames
SO_ATTACH_FILTER = 26  # include/uapi/asm-generic/socket.h
SNAPLEN = 128  # bytes kept per frame: an NS/NA with one option is 86, ARP 42
MAX_FRAMES_PER_WAKEUP = 64  # bound the work one readable event can do on a noisy segment

# Told once per (VIP, other MAC) when another host claims one of our VIPs: (vip, other_mac).
ConflictHook = Callable[[IPAddress, str], None]

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


def _attach_filter(sock: socket.socket, program: Sequence[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER takes a struct sock_fprog {u16 len; struct sock_filter *filter}."""
    instructions = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(instructions))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it here


class _Watcher:
    """One AF_PACKET socket on one interface: sends our frames, sees ARP/NDP both ways."""

    def __init__(self, link: Link, loop: asyncio.AbstractEventLoop, on_conflict: ConflictHook | None = None) -> None:
        self.link = link
        self.on_conflict = on_conflict
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
                    if self.on_conflict is not None:
                        self.on_conflict(sighting.ip, format_mac(sighting.mac))


@dataclass(slots=True)
class _Announcement:
    vip: IPAddress
    watcher: _Watcher
    rounds_sent: int = 0
    task: asyncio.Task[None] | None = field(default=None)


class L2Announcer:
    """Sends gratuitous ARP/NA bursts for announced VIPs and counts the ARP/NDP traffic about them."""

    def __init__(
        self,
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
        self.garp_rounds = garp_rounds
        self.garp_interval = garp_interval
        self.refresh_interval = refresh_interval
        self._announced: dict[IPAddress, _Announcement] = {}
        self._watchers: dict[str, _Watcher] = {}  # interface name -> packet socket
        self.on_conflict: ConflictHook | None = None  # the daemon's: an event per service of the VIP
        # Cluster mode's fence, asked before every frame: a VIP past this node's lease deadline
        # is not announced, even if the pass that withdraws it has not run yet.
        self.may_announce: Callable[[IPAddress], bool] | None = None

    async def close(self) -> None:
        """Stop every burst and close every packet socket."""
        tasks = [a.task for a in self._announced.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._announced.clear()
        for watcher in self._watchers.values():
            watcher.close()
        self._watchers.clear()

    async def announce(self, vip: IPAddress, snap: Snapshot, bound_to: str | None = None) -> None:
        """Send gratuitous ARP/NA now and `garp_rounds - 1` more times; watch requests until withdraw.

        `snap` shows where the address is (preferring `bound_to` if it is on several interfaces).
        Announcing again restarts the burst (e.g. after a failover the daemon wants new GARPs).
        """
        check_announceable(vip)
        link = _link_holding(vip, snap, bound_to)
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

    def _watcher_for(self, link: Link) -> _Watcher:
        """The packet socket on `link`, opened on first use, reopened if the interface changed."""
        old = self._watchers.get(link.name)
        if old is not None and (old.link.index, old.link.mac) == (link.index, link.mac):
            return old
        watcher = _Watcher(link, asyncio.get_running_loop(), self.on_conflict)
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
        if self.may_announce is not None and not self.may_announce(vip):
            log.info("garp_fenced", ip=str(vip), interface=watcher.link.name)
            return
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


def _link_holding(vip: IPAddress, snap: Snapshot, bound_to: str | None) -> Link:
    """The interface that has `vip`: the kernel answers there, so we announce there."""
    copies = snap.find(vip)
    for _, link in copies:
        if link.name == bound_to:
            return link
    if copies:
        return copies[0][1]
    raise AnnounceError(f"cannot announce VIP {vip}: it is not on any interface; claim it first")


def _prepend(first: float, rest: Iterator[float]) -> Iterator[float]:
    yield first
    yield from rest
