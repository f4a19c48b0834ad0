"""Ethernet + IPv6 + ICMPv6 neighbour solicitations and advertisements (RFC 4861 §4.3, §4.4).

IPv6's ARP. Pure like `lbd.net.arp`: build the unsolicited advertisement lbd sends for a VIP,
parse solicitations and advertisements seen on the wire. Only extension-header-free packets are
handled: RFC 4861 NDP never carries them in practice, and anything else raises `NdpDecodeError`.

Invariants:
- `decode(encode(f)) == f`; encode always computes the ICMPv6 checksum, decode always checks it;
- a decoded frame has next header 58, ICMPv6 code 0 and type 135 or 136; the hop limit is kept
  so the caller can drop non-255 ones as RFC 4861 §7.1 requires.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from lbd.net import ethernet
from lbd.net.arp import Seen, Sighting
from lbd.net.ethernet import ETH_P_IPV6 as ETH_P_IPV6  # EtherType of IPv6 (lbd.net.announcer uses ndp's)
from lbd.net.ethernet import HEADER_LEN as ETHERNET_HEADER_LEN  # 14

IPPROTO_ICMPV6 = 58
NDP_HOP_LIMIT = 255  # RFC 4861 §7.1: a node drops NDP that a router may have forwarded
ALL_NODES = ipaddress.IPv6Address("ff02::1")  # where unsolicited advertisements go (§7.2.6)
OPTION_SOURCE_LLADDR = 1
OPTION_TARGET_LLADDR = 2
FLAG_ROUTER = 0x80
FLAG_SOLICITED = 0x40
FLAG_OVERRIDE = 0x20

_IPV6 = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next header, hop limit, src, dst
_ND_BODY = struct.Struct("!BBHB3x16s")  # type, code, checksum, flags (NA; 0 in NS), reserved, target
_OPTION_HEADER = struct.Struct("!BB")  # type, length in units of 8 bytes
IPV6_HEADER_LEN = _IPV6.size
ICMPV6_OFFSET = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN  # 54
MIN_FRAME_LEN = ICMPV6_OFFSET + _ND_BODY.size  # 78


class NdpType(IntEnum):
    NEIGHBOR_SOLICITATION = 135
    NEIGHBOR_ADVERTISEMENT = 136


class NdpDecodeError(ValueError):
    """The bytes are not a well-formed Ethernet/IPv6 neighbour solicitation or advertisement."""


@dataclass(frozen=True, slots=True)
class NdpFrame:
    """One neighbour solicitation or advertisement in one Ethernet frame; MACs are 6 raw bytes."""

    eth_dst: bytes
    eth_src: bytes
    src_ip: ipaddress.IPv6Address
    dst_ip: ipaddress.IPv6Address
    type: NdpType
    target: ipaddress.IPv6Address
    flags: int = 0  # FLAG_ROUTER | FLAG_SOLICITED | FLAG_OVERRIDE (advertisements only)
    source_lladdr: bytes | None = None
    target_lladdr: bytes | None = None
    hop_limit: int = NDP_HOP_LIMIT

    @property
    def solicited(self) -> bool:
        return bool(self.flags & FLAG_SOLICITED)

    @property
    def override(self) -> bool:
        return bool(self.flags & FLAG_OVERRIDE)


def multicast_mac(ip: ipaddress.IPv6Address) -> bytes:
    """RFC 2464 §7: 33:33 followed by the last four bytes of the multicast address."""
    return b"\x33\x33" + ip.packed[-4:]


def solicited_node(ip: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """RFC 4291 §2.7.1: ff02::1:ffXX:XXXX, where solicitations for `ip` are sent."""
    return ipaddress.IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + ip.packed[-3:])


def icmpv6_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> int:
    """RFC 4443 §2.3: one's complement sum over the IPv6 pseudo-header and the message."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6)
    return inet_checksum(pseudo + message)


def inet_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum (ICMP, ICMPv6 with its pseudo-header)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _lladdr_option(kind: int, mac: bytes) -> bytes:
    return _OPTION_HEADER.pack(kind, 1) + mac  # 2 + 6 bytes = one 8-byte unit


def encode(frame: NdpFrame) -> bytes:
    options = b""
    if frame.source_lladdr is not None:
        options += _lladdr_option(OPTION_SOURCE_LLADDR, frame.source_lladdr)
    if frame.target_lladdr is not None:
        options += _lladdr_option(OPTION_TARGET_LLADDR, frame.target_lladdr)
    flags = frame.flags if frame.type is NdpType.NEIGHBOR_ADVERTISEMENT else 0
    body = _ND_BODY.pack(int(frame.type), 0, 0, flags, frame.target.packed) + options
    checksum = icmpv6_checksum(frame.src_ip, frame.dst_ip, body)
    body = body[:2] + struct.pack("!H", checksum) + body[4:]
    ipv6 = _IPV6.pack(
        6 << 28, len(body), IPPROTO_ICMPV6, frame.hop_limit, frame.src_ip.packed, frame.dst_ip.packed
    )
    return ethernet.encode_header(frame.eth_dst, frame.eth_src, ETH_P_IPV6) + ipv6 + body


def decode(data: bytes) -> NdpFrame:
    if len(data) < MIN_FRAME_LEN:
        raise NdpDecodeError(f"frame too short for NDP: {len(data)} < {MIN_FRAME_LEN} bytes")
    eth = ethernet.decode_header(data)  # long enough: checked above
    if eth.ethertype != ETH_P_IPV6:
        raise NdpDecodeError(f"EtherType 0x{eth.ethertype:04x} is not IPv6")
    vtf, payload_len, next_header, hop_limit, src, dst = _IPV6.unpack_from(data, ETHERNET_HEADER_LEN)
    if vtf >> 28 != 6:
        raise NdpDecodeError(f"IP version {vtf >> 28} is not 6")
    if next_header != IPPROTO_ICMPV6:
        raise NdpDecodeError(f"next header {next_header} is not ICMPv6 (extension headers are not handled)")
    end = ICMPV6_OFFSET + payload_len
    if payload_len < _ND_BODY.size or end > len(data):
        raise NdpDecodeError(f"IPv6 payload length {payload_len} does not fit the frame")
    message = data[ICMPV6_OFFSET:end]
    kind, code, checksum, flags, target = _ND_BODY.unpack_from(message)
    if kind not in (NdpType.NEIGHBOR_SOLICITATION, NdpType.NEIGHBOR_ADVERTISEMENT) or code != 0:
        raise NdpDecodeError(f"ICMPv6 type {kind} code {code} is not a neighbour solicitation/advertisement")
    src_ip, dst_ip = ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst)
    zeroed = message[:2] + b"\x00\x00" + message[4:]
    if icmpv6_checksum(src_ip, dst_ip, zeroed) != checksum:
        raise NdpDecodeError("ICMPv6 checksum mismatch")
    lladdrs: dict[int, bytes] = {}
    offset = _ND_BODY.size
    while offset < len(message):
        if offset + _OPTION_HEADER.size > len(message):
            raise NdpDecodeError("truncated NDP option")
        opt_type, opt_units = _OPTION_HEADER.unpack_from(message, offset)
        opt_len = opt_units * 8
        if opt_len == 0 or offset + opt_len > len(message):
            raise NdpDecodeError(f"bad NDP option length {opt_units}")  # RFC 4861 §4.6: 0 is invalid
        if opt_type in (OPTION_SOURCE_LLADDR, OPTION_TARGET_LLADDR) and opt_len == 8:
            lladdrs.setdefault(opt_type, message[offset + 2 : offset + 8])
        offset += opt_len
    ndp_type = NdpType(kind)
    return NdpFrame(
        eth_dst=eth.dst,
        eth_src=eth.src,
        src_ip=src_ip,
        dst_ip=dst_ip,
        type=ndp_type,
        target=ipaddress.IPv6Address(target),
        flags=flags if ndp_type is NdpType.NEIGHBOR_ADVERTISEMENT else 0,
        source_lladdr=lladdrs.get(OPTION_SOURCE_LLADDR),
        target_lladdr=lladdrs.get(OPTION_TARGET_LLADDR),
        hop_limit=hop_limit,
    )


def unsolicited_advertisement(mac: bytes, ip: ipaddress.IPv6Address) -> bytes:
    """RFC 4861 §7.2.6: to all-nodes, override set, solicited clear, our MAC as target lladdr.

    The source is the VIP itself, as Linux does for its own unsolicited advertisements (the VIP
    is assigned to the interface, which is what §4.4 asks of the source).
    """
    return encode(
        NdpFrame(
            eth_dst=multicast_mac(ALL_NODES),
            eth_src=mac,
            src_ip=ip,
            dst_ip=ALL_NODES,
            type=NdpType.NEIGHBOR_ADVERTISEMENT,
            target=ip,
            flags=FLAG_OVERRIDE,
            target_lladdr=mac,
        )
    )


def observe(data: bytes, *, outgoing: bool, mac: bytes) -> list[Seen]:
    """What one frame seen on an interface whose MAC is `mac` says about IPv6 addresses.

    Outgoing solicited advertisements from our MAC are the kernel's answers; incoming
    solicitations are questions; an incoming advertisement from another MAC is a claim.
    """
    try:
        frame = decode(data)
    except NdpDecodeError:
        return []
    if frame.hop_limit != NDP_HOP_LIMIT:
        return []
    if frame.type is NdpType.NEIGHBOR_ADVERTISEMENT:
        if outgoing:
            if frame.solicited and frame.eth_src == mac:
                return [Seen(Sighting.RESPONSE, frame.target, mac)]
            return []
        claimed_by = frame.target_lladdr or frame.eth_src
        return [Seen(Sighting.CONFLICT, frame.target, claimed_by)] if claimed_by != mac else []
    if outgoing or frame.eth_src == mac:
        return []  # our own solicitations are not questions about our VIPs
    return [Seen(Sighting.REQUEST, frame.target, frame.source_lladdr or frame.eth_src)]
