"""Ethernet + ARP frames (RFC 826) for IPv4 over Ethernet, and the gratuitous-ARP schedule.

Pure: bytes in, dataclasses or bytes out, no sockets and no clock. scapy would do this too,
but `import scapy.all` costs ~0.8 s and ~60 MB of RSS; this module imports in ~20 ms.

Invariants:
- only Ethernet/IPv4 ARP (htype 1, ptype 0x0800, hlen 6, plen 4, op 1 or 2) decodes; anything
  else raises `ArpDecodeError`, so the caller can drop it with one except;
- `decode(encode(f)) == f`, and frames are built unpadded (42 bytes) like the kernel's own ARP:
  the NIC pads to the 60-byte minimum, and trailing padding is ignored on decode.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from lbd.net import ethernet

# The Ethernet names this module has always offered (lbd.net.announcer and tests use them).
from lbd.net.ethernet import BROADCAST_MAC as BROADCAST_MAC
from lbd.net.ethernet import ETH_P_ARP as ETH_P_ARP  # EtherType of ARP
from lbd.net.ethernet import ETH_P_IP as ETH_P_IP  # ARP's protocol type for IPv4
from lbd.net.ethernet import HEADER_LEN as ETHERNET_HEADER_LEN  # 14
from lbd.net.ethernet import format_mac as format_mac
from lbd.net.ethernet import parse_mac as parse_mac

HTYPE_ETHERNET = 1  # ARP hardware type for Ethernet (RFC 826)
ZERO_MAC = b"\x00" * 6
UNSPECIFIED_IPV4 = ipaddress.IPv4Address(0)

_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype, ptype, hlen, plen, op, sha, spa, tha, tpa
FRAME_LEN = ETHERNET_HEADER_LEN + _ARP.size  # 42: Ethernet header + 28-byte ARP body

# MetalLB's numbers. It sends for 5 s once every 1100 ms, i.e. 5 rounds (internal/layer2/
# announcer.go, spamLoop). The 1.1 s comes from metallb/metallb#172: a bit longer than Linux's
# default ARP locktime (net.ipv4.neigh.default.locktime = 1 s), so that if one frame lands inside
# a client's lock window the next arrives after it has passed (old kernels ignored GARPs there).
DEFAULT_GARP_ROUNDS = 5
DEFAULT_GARP_INTERVAL = 1.1


class ArpOp(IntEnum):
    REQUEST = 1
    REPLY = 2


class ArpDecodeError(ValueError):
    """The bytes are not an Ethernet/IPv4 ARP frame."""


class Sighting(StrEnum):
    """What a frame seen on the announce interface means for a VIP (also a metric/log word)."""

    REQUEST = "request"  # someone asks who has the VIP (ARP request / neighbour solicitation)
    RESPONSE = "response"  # this node answered for the VIP (the kernel's ARP reply / solicited NA)
    CONFLICT = "conflict"  # another MAC claims the VIP


@dataclass(frozen=True, slots=True)
class Seen:
    """One sighting: what happened, for which address, and the MAC involved (asker, us, claimant)."""

    kind: Sighting
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    mac: bytes


@dataclass(frozen=True, slots=True)
class ArpFrame:
    """One Ethernet frame carrying one ARP packet; MACs are 6 raw bytes."""

    eth_dst: bytes
    eth_src: bytes
    op: ArpOp
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_mac: bytes
    target_ip: ipaddress.IPv4Address

    @property
    def is_gratuitous(self) -> bool:
        """An announcement: sender and target protocol address are both the announced address."""
        return self.sender_ip == self.target_ip

    @property
    def is_probe(self) -> bool:
        """An RFC 5227 probe (someone checking if the address is free): sender IP is 0.0.0.0."""
        return self.sender_ip == UNSPECIFIED_IPV4


def encode(frame: ArpFrame) -> bytes:
    for name in ("eth_dst", "eth_src", "sender_mac", "target_mac"):
        if len(getattr(frame, name)) != 6:
            raise ValueError(f"{name} must be 6 bytes, got {getattr(frame, name)!r}")
    return ethernet.encode_header(frame.eth_dst, frame.eth_src, ETH_P_ARP) + _ARP.pack(
        HTYPE_ETHERNET,
        ETH_P_IP,
        6,
        4,
        int(frame.op),
        frame.sender_mac,
        frame.sender_ip.packed,
        frame.target_mac,
        frame.target_ip.packed,
    )


def decode(data: bytes) -> ArpFrame:
    if len(data) < FRAME_LEN:
        raise ArpDecodeError(f"frame too short for ARP: {len(data)} < {FRAME_LEN} bytes")
    eth = ethernet.decode_header(data)  # long enough: checked above
    if eth.ethertype != ETH_P_ARP:
        raise ArpDecodeError(f"EtherType 0x{eth.ethertype:04x} is not ARP")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data, ETHERNET_HEADER_LEN)
    if (htype, ptype, hlen, plen) != (HTYPE_ETHERNET, ETH_P_IP, 6, 4):
        raise ArpDecodeError(f"not Ethernet/IPv4 ARP: htype={htype} ptype=0x{ptype:04x} hlen={hlen} plen={plen}")
    if op not in (ArpOp.REQUEST, ArpOp.REPLY):
        raise ArpDecodeError(f"ARP operation {op} is neither request nor reply")
    return ArpFrame(
        eth_dst=eth.dst,
        eth_src=eth.src,
        op=ArpOp(op),
        sender_mac=sha,
        sender_ip=ipaddress.IPv4Address(spa),
        target_mac=tha,
        target_ip=ipaddress.IPv4Address(tpa),
    )


def gratuitous(mac: bytes, ip: ipaddress.IPv4Address, op: ArpOp) -> bytes:
    """A broadcast gratuitous ARP announcing that `ip` is at `mac`.

    RFC 5944 §4.6: sender and target IP are both the address; in a reply the target MAC is also
    the announced MAC (Linux only treats a reply as gratuitous then), in a request it is unused
    and zero (RFC 5227 §2.3).
    """
    target_mac = mac if op is ArpOp.REPLY else ZERO_MAC
    return encode(ArpFrame(BROADCAST_MAC, mac, op, mac, ip, target_mac, ip))


def gratuitous_pair(mac: bytes, ip: ipaddress.IPv4Address) -> tuple[bytes, bytes]:
    """Request and reply: some stacks only learn from one of the two (metallb/metallb#172)."""
    return gratuitous(mac, ip, ArpOp.REQUEST), gratuitous(mac, ip, ArpOp.REPLY)


def reply(request: ArpFrame, mac: bytes) -> bytes:
    """The unicast answer to `request`: its target IP is at `mac`."""
    if request.op is not ArpOp.REQUEST:
        raise ValueError("can only answer an ARP request")
    return encode(
        ArpFrame(
            eth_dst=request.sender_mac,
            eth_src=mac,
            op=ArpOp.REPLY,
            sender_mac=mac,
            sender_ip=request.target_ip,
            target_mac=request.sender_mac,
            target_ip=request.sender_ip,
        )
    )


def observe(data: bytes, *, outgoing: bool, mac: bytes) -> list[Seen]:
    """What one frame seen on an interface whose MAC is `mac` says about IPv4 addresses.

    `outgoing` is the packet socket's PACKET_OUTGOING flag. Our own gratuitous frames and
    anything that is not ARP mean nothing. The caller keeps only the addresses it announces.
    """
    try:
        frame = decode(data)
    except ArpDecodeError:
        return []
    if outgoing:
        if frame.op is ArpOp.REPLY and frame.sender_mac == mac and not frame.is_gratuitous:
            return [Seen(Sighting.RESPONSE, frame.sender_ip, mac)]
        return []
    seen: list[Seen] = []
    if frame.sender_mac != mac and not frame.is_probe:
        seen.append(Seen(Sighting.CONFLICT, frame.sender_ip, frame.sender_mac))  # it says it holds sender_ip
    if (
        frame.op is ArpOp.REQUEST
        and not frame.is_gratuitous
        and frame.eth_dst in (BROADCAST_MAC, mac)  # the kernel ignores requests sent to others
    ):
        seen.append(Seen(Sighting.REQUEST, frame.target_ip, frame.sender_mac))
    return seen


def garp_delays(rounds: int, interval: float, refresh_interval: float | None) -> Iterator[float]:
    """Seconds to wait before each announcement round: a burst, then an optional refresh.

    `rounds` rounds `interval` apart starting at once; then, if `refresh_interval` is set, one
    round every `refresh_interval` for as long as the caller keeps iterating (until withdraw).
    """
    if rounds < 0 or interval <= 0 or (refresh_interval is not None and refresh_interval <= 0):
        raise ValueError("rounds must be >= 0 and intervals > 0")
    for n in range(rounds):
        yield 0.0 if n == 0 else interval
    if refresh_interval is None:
        return
    while True:
        yield refresh_interval
