"""lbd's VIP addresses on interfaces: choose the interface, add, list and remove marked addresses.

The top half is pure (the `Snapshot` model, `choose_interface`, the mark rules) and needs no
root. The bottom half is a thin synchronous pyroute2 shell; the announcer runs it in a worker
thread because pyroute2 0.9's sync `IPRoute` drives its own event loop and refuses to run inside
a running one.

How lbd recognises its own addresses (the mark), so a crash leaves nothing it cannot clean:
- every VIP is added with IFA_PROTO = `LBD_ADDR_PROTO` (the address "protocol", Linux >= 6.1;
  works for IPv4 and IPv6 and for any interface name);
- IPv4 VIPs also get the label `<ifname>:lbd` when it fits IFNAMSIZ, which every `ip addr` and
  older kernels show;
- an address carrying either is lbd's. lbd never removes an address without the mark, even if
  it has a VIP's value: someone else put it there.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from lbd.model import IPAddress

# IFA_PROTO values 0-3 are the kernel's (IFA_PROTO_UNSPEC, _KERNEL_LO, _KERNEL_RA, _KERNEL_LL in
# include/uapi/linux/if_addr.h); user space may use any other. 0xBD reads "lBD". To see it by
# name in `ip -d addr` (iproute2 >= 6.2), add "189 lbd" to /etc/iproute2/rt_addrprotos.
LBD_ADDR_PROTO = 0xBD
LABEL_SUFFIX = ":lbd"
IFNAMSIZ = 16  # include/uapi/linux/if.h, including the NUL: labels and names fit 15 characters

# Documentation/networking/ip-sysctl.rst. arp_ignore 1: answer only for addresses configured
# on the interface the request came in on. arp_announce 2: always use the best local address
# of the target's subnet as the source of our own requests, never a VIP.
ARP_IGNORE = 1
ARP_ANNOUNCE = 2
PROC_SYS = Path("/proc/sys")

# include/uapi/linux/if.h
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80


class AnnounceError(RuntimeError):
    """A VIP cannot be bound or announced; the message says why and what to change."""


class NoInterfaceError(AnnounceError):
    """No interface fits a VIP."""


@dataclass(frozen=True, slots=True)
class Link:
    """One network interface as the announcer needs it."""

    index: int
    name: str
    mac: bytes
    up: bool = True
    loopback: bool = False
    noarp: bool = False
    enslaved: bool = False  # a bridge/bond port: addresses belong on the master, not here

    @property
    def can_announce(self) -> bool:
        """What automatic choice accepts (MetalLB skips the same kinds of interface)."""
        return self.up and not self.loopback and not self.noarp and not self.enslaved and len(self.mac) == 6


@dataclass(frozen=True, slots=True)
class Address:
    """One address on one interface."""

    ip: IPAddress
    prefixlen: int
    index: int
    label: str | None = None
    proto: int | None = None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{self.ip}/{self.prefixlen}", strict=False)

    @property
    def is_host_route(self) -> bool:
        """A /32 or /128 connects no subnet (VIPs are added like that)."""
        return self.prefixlen == self.ip.max_prefixlen


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Links and addresses of the current network namespace at one moment."""

    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()

    def link(self, name: str) -> Link | None:
        return next((link for link in self.links if link.name == name), None)

    def link_at(self, index: int) -> Link | None:
        return next((link for link in self.links if link.index == index), None)

    def find(self, ip: IPAddress) -> list[tuple[Address, Link]]:
        """Every copy of `ip` on any interface."""
        return [(a, link) for a in self.addresses if a.ip == ip and (link := self.link_at(a.index)) is not None]

    def marked(self) -> list[tuple[Address, Link]]:
        """lbd's addresses, wherever they are."""
        return [
            (a, link) for a in self.addresses if (link := self.link_at(a.index)) is not None and is_marked(a, link.name)
        ]


def label_for(ifname: str) -> str | None:
    """`<ifname>:lbd`, or None when it would not fit (Linux labels must start with the name)."""
    label = ifname + LABEL_SUFFIX
    return label if len(label) < IFNAMSIZ else None


def is_marked(address: Address, ifname: str) -> bool:
    if address.proto == LBD_ADDR_PROTO:
        return True
    label = label_for(ifname)
    return address.ip.version == 4 and label is not None and address.label == label


def choose_interface(vip: IPAddress, snapshot: Snapshot, configured: Sequence[str] = ()) -> str | None:
    """The interface to put `vip` on, or None.

    With `configured` interfaces: the one whose connected subnet holds the VIP (longest prefix
    wins), else the first configured one that exists (the operator said so). Without: the
    announce-capable interface whose connected subnet holds the VIP, longest prefix first, then
    lowest index, so the answer is stable.
    """
    if configured:
        candidates = [link for name in configured if (link := snapshot.link(name)) is not None]
    else:
        candidates = [link for link in snapshot.links if link.can_announce]
    if not candidates:
        return None
    order = {link.index: position for position, link in enumerate(candidates)}
    best: tuple[int, int] | None = None  # (-prefixlen, position): smaller is better
    best_name: str | None = None
    for address in snapshot.addresses:
        if address.ip.version != vip.version or address.is_host_route or address.index not in order:
            continue
        if vip not in address.network:
            continue
        link = candidates[order[address.index]]
        if is_marked(address, link.name):
            continue
        rank = (-address.prefixlen, order[address.index])
        if best is None or rank < best:
            best, best_name = rank, link.name
    if best_name is not None:
        return best_name
    return candidates[0].name if configured else None


def no_interface_message(vip: IPAddress, snapshot: Snapshot, configured: Sequence[str]) -> str:
    """The error the operator sees when `choose_interface` says None."""
    if configured:
        missing = [name for name in configured if snapshot.link(name) is None]
        return (
            f"cannot bind VIP {vip}: none of the configured interfaces {list(configured)} exists "
            f"(missing: {missing}); fix `interfaces` in the configuration"
        )
    usable = [link.name for link in snapshot.links if link.can_announce]
    return (
        f"cannot bind VIP {vip}: no interface has a connected IPv{vip.version} subnet containing it "
        f"(candidates: {usable}); list the announce interface under `interfaces` in the configuration "
        f"or give one interface an address in the VIP's subnet"
    )


# ---- I/O: pyroute2 and /proc/sys --------------------------------------------------------------


class AddOutcome(StrEnum):
    ADDED = "added"
    KEPT = "kept"  # already there with lbd's mark: left alone, no gap in service
    FOREIGN = "foreign"  # already there without the mark: not ours, left alone


def _link_from_msg(msg: object) -> Link:
    get = msg.get  # type: ignore[attr-defined]
    flags = int(get("flags") or 0)
    mac_text = get("IFLA_ADDRESS") or ""
    try:
        mac = bytes.fromhex(mac_text.replace(":", ""))
    except ValueError:
        mac = b""
    return Link(
        index=int(get("index")),
        name=str(get("IFLA_IFNAME")),
        mac=mac,
        up=bool(flags & IFF_UP),
        loopback=bool(flags & IFF_LOOPBACK),
        noarp=bool(flags & IFF_NOARP),
        enslaved=bool(get("IFLA_MASTER")),
    )


def _address_from_msg(msg: object) -> Address | None:
    get = msg.get  # type: ignore[attr-defined]
    text = get("IFA_LOCAL") or get("IFA_ADDRESS")  # IFA_LOCAL is ours on point-to-point links
    if not text:
        return None
    return Address(
        ip=ipaddress.ip_address(text),
        prefixlen=int(get("prefixlen")),
        index=int(get("index")),
        label=get("IFA_LABEL"),
        proto=get("IFA_PROTO"),
    )


def snapshot() -> Snapshot:
    """Links and addresses now (read-only: works without root)."""
    with IPRoute() as ipr:
        links = tuple(_link_from_msg(m) for m in ipr.link("dump"))
        addresses = tuple(a for m in ipr.addr("dump") if (a := _address_from_msg(m)) is not None)
    return Snapshot(links, addresses)


def add_address(ifname: str, vip: IPAddress) -> AddOutcome:
    """Put `vip`/32 (/128) on `ifname` with lbd's mark, unless it is there already."""
    with IPRoute() as ipr:
        index = _index(ipr, ifname)
        for msg in ipr.addr("dump", index=index):
            existing = _address_from_msg(msg)
            if existing is not None and existing.ip == vip:
                return AddOutcome.KEPT if is_marked(existing, ifname) else AddOutcome.FOREIGN
        request: dict[str, object] = {
            "index": index,
            "address": str(vip),
            "prefixlen": vip.max_prefixlen,
            "proto": LBD_ADDR_PROTO,
        }
        if vip.version == 4:
            if (label := label_for(ifname)) is not None:
                request["label"] = label
        else:
            # No duplicate address detection: the allocator owns the VIP, and DAD would keep it
            # tentative (unbindable, unanswered) for a second or more.
            request["flags"] = IFA_F_NODAD
        try:
            ipr.addr("add", **request)
        except NetlinkError as error:
            if error.code != errno.EEXIST:  # a concurrent add won; treat as present
                raise AnnounceError(f"cannot add VIP {vip} to {ifname}: {error}") from error
    return AddOutcome.ADDED


def remove_address(ifname: str, vip: IPAddress) -> bool:
    """Remove `vip` from `ifname` if it carries lbd's mark. True when something was removed."""
    with IPRoute() as ipr:
        try:
            index = _index(ipr, ifname)
        except NoInterfaceError:
            return False  # the interface went away and took the address with it
        for msg in ipr.addr("dump", index=index):
            existing = _address_from_msg(msg)
            if existing is None or existing.ip != vip or not is_marked(existing, ifname):
                continue
            try:
                ipr.addr("del", index=index, address=str(vip), prefixlen=existing.prefixlen)
            except NetlinkError as error:
                if error.code == errno.EADDRNOTAVAIL:
                    return False  # already gone
                raise AnnounceError(f"cannot remove VIP {vip} from {ifname}: {error}") from error
            return True
    return False


# Where a value in effect through `all` comes from when lbd runs with ProtectKernelTunables=.
SYSCTL_DROP_IN = "/etc/sysctl.d/60-lbd.conf"


class ArpSysctlError(AnnounceError):
    """An ARP setting lbd needs is not in effect and lbd cannot put it there."""


def set_arp_sysctls(ifname: str, proc_sys: Path = PROC_SYS) -> dict[str, int]:
    """Make only `ifname` answer ARP for its addresses, with its own MAC. Returns what changed.

    The kernel applies max(net.ipv4.conf.all.KEY, net.ipv4.conf.IFNAME.KEY) for both keys, so a
    value already in effect through `all` needs no write: that is how lbd runs under systemd's
    ProtectKernelTunables= (/proc/sys read-only), with SYSCTL_DROP_IN setting `all`. Per network
    namespace (the files resolve in the caller's). Raises ArpSysctlError, naming the setting and
    the fix, when a value is not in effect and cannot be written (read-only /proc/sys, no
    CAP_NET_ADMIN), or when `all` holds a larger value the interface's cannot override.
    """
    changed: dict[str, int] = {}
    conf = proc_sys / "net" / "ipv4" / "conf"
    for key, value in (("arp_ignore", ARP_IGNORE), ("arp_announce", ARP_ANNOUNCE)):
        every = int((conf / "all" / key).read_text().strip())
        own = int((conf / ifname / key).read_text().strip())
        if max(every, own) == value:
            continue
        if every > value:
            raise ArpSysctlError(f"net.ipv4.conf.all.{key} is {every}, which overrides {ifname}'s; lbd needs "
                                 f"{value}: set net.ipv4.conf.all.{key}={value}")
        try:
            (conf / ifname / key).write_text(f"{value}\n")
        except OSError as error:
            raise ArpSysctlError(
                f"cannot set net.ipv4.conf.{ifname}.{key}={value} (it is {own}, and all.{key} is {every}): "
                f"{error.strerror or error}; set net.ipv4.conf.all.{key}={value} in {SYSCTL_DROP_IN} "
                f"(scripts/install.sh installs it) and `sysctl -p {SYSCTL_DROP_IN}`") from error
        changed[key] = value
    return changed


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NoInterfaceError(f"interface {ifname!r} does not exist")
    return int(found[0])
