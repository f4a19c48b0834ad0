"""The Ethernet II header (destination MAC, source MAC, EtherType) and MAC text, for ARP and NDP.

Pure like the codecs that use it (`lbd.net.arp`, `lbd.net.ndp`): bytes in, bytes or a dataclass
out, no sockets and no clock. MACs are 6 raw bytes everywhere; text ('aa:bb:cc:dd:ee:ff') is for
logs and `ip link`.

Invariants:
- `decode_header(encode_header(h.dst, h.src, h.ethertype)) == h`;
- `encode_header` refuses MACs that are not 6 bytes (struct would silently pad or cut them);
- `decode_header` reads the first 14 bytes and ignores the rest (the payload, NIC padding); fewer
  than 14 raise `EthernetDecodeError`, a ValueError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# EtherTypes (IEEE 802 numbers; include/uapi/linux/if_ether.h).
ETH_P_IP = 0x0800  # IPv4 (also ARP's protocol type for IPv4)
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD

MAC_LEN = 6
BROADCAST_MAC = b"\xff" * MAC_LEN

_HEX_DIGITS = "0123456789abcdefABCDEF"
_HEADER = struct.Struct("!6s6sH")  # destination, source, EtherType
HEADER_LEN = _HEADER.size  # 14


class EthernetDecodeError(ValueError):
    """The bytes are too short to hold an Ethernet header."""


@dataclass(frozen=True, slots=True)
class EthernetHeader:
    dst: bytes
    src: bytes
    ethertype: int


def encode_header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """The 14-byte header of a frame from `src` to `dst` carrying `ethertype`."""
    for name, mac in (("destination", dst), ("source", src)):
        if len(mac) != MAC_LEN:
            raise ValueError(f"{name} MAC must be {MAC_LEN} bytes, got {mac!r}")
    return _HEADER.pack(dst, src, ethertype)


def decode_header(data: bytes) -> EthernetHeader:
    if len(data) < HEADER_LEN:
        raise EthernetDecodeError(f"frame too short for an Ethernet header: {len(data)} < {HEADER_LEN} bytes")
    dst, src, ethertype = _HEADER.unpack_from(data)
    return EthernetHeader(dst, src, ethertype)


def parse_mac(text: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' (or with dashes, any case) -> 6 bytes."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != MAC_LEN or not all(len(p) == 2 and p.strip(_HEX_DIGITS) == "" for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    """6 bytes -> 'aa:bb:cc:dd:ee:ff' (the form `ip link` prints and logs use)."""
    return ":".join(f"{b:02x}" for b in mac)
