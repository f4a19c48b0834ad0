"""The lab's wire tools, run inside a lab namespace: one ICMP echo, and ARP/NDP capture to pcap.

Standard library and lbd's pure codecs only, so a helper starts fast in a namespace:
    python lbd/lab/wire.py ping DST [--timeout S]     one ICMP/ICMPv6 echo; exit 0 if answered
    python lbd/lab/wire.py capture --iface eth0 --out F.pcap [--ethertypes 0x0806,0x86dd]
A capture stops on SIGTERM, after --max-seconds or --max-frames, and when its parent dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from lbd.net.ethernet import ETH_P_ARP, ETH_P_IPV6, HEADER_LEN, decode_header
from lbd.net.ndp import inet_checksum

CAPTURE_MAX_SECONDS = 60.0  # a capture stops by itself after this, whatever happens
CAPTURE_MAX_FRAMES = 10_000
ETH_P_ALL = 0x0003  # a packet socket's "every protocol"

_PCAP_HEADER = struct.Struct("=IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, linktype
_PCAP_RECORD = struct.Struct("=IIII")  # seconds, microseconds, captured length, original length
PCAP_MAGIC = 0xA1B2C3D4
PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h
LINKTYPE_ETHERNET = 1


def _die_with_parent() -> None:
    """SIGTERM us when the process that started us dies (a helper must not outlive its test)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def read_pcap(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if len(data) < _PCAP_HEADER.size:
        return []
    frames, offset = [], _PCAP_HEADER.size
    while offset + _PCAP_RECORD.size <= len(data):
        _, _, length, _ = _PCAP_RECORD.unpack_from(data, offset)
        offset += _PCAP_RECORD.size
        frames.append(data[offset : offset + length])
        offset += length
    return frames


# ---- the subcommands ---------------------------------------------------------------------------


def capture_main(iface: str, out: Path, ethertypes: set[int], max_seconds: float, max_frames: int) -> int:
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _die_with_parent()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, ETH_P_ALL))
    deadline = time.monotonic() + max_seconds
    count = 0
    with out.open("wb") as pcap:
        pcap.write(_PCAP_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        pcap.flush()
        print("READY", flush=True)
        while not stop and count < max_frames and time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                continue
            frame = sock.recv(65535)
            if len(frame) < HEADER_LEN or decode_header(frame).ethertype not in ethertypes:
                continue
            now = time.time()
            pcap.write(_PCAP_RECORD.pack(int(now), int(now % 1 * 1e6), len(frame), len(frame)) + frame)
            pcap.flush()
            count += 1
    return 0


def ping_main(destination: str, timeout: float) -> int:
    """One ICMP/ICMPv6 echo over a raw socket; exit 0 if answered."""
    address = ipaddress.ip_address(destination)
    ident, payload = os.getpid() & 0xFFFF, b"lbdt-ping"
    if address.version == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        request_type, reply_type = 8, 0
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        request_type, reply_type = 128, 129
    header = struct.pack("!BBHHH", request_type, 0, 0, ident, 1)
    if address.version == 4:  # the kernel fills in ICMPv6 checksums itself
        checksum = inet_checksum(header + payload)
        header = struct.pack("!BBHHH", request_type, 0, checksum, ident, 1)
    sock.sendto(header + payload, (destination, 0))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data, source = sock.recvfrom(2048)
        if address.version == 4:
            data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets include the IP header
        if len(data) >= 8 and ipaddress.ip_address(source[0].split("%")[0]) == address:
            kind, _, _, got_ident, _ = struct.unpack_from("!BBHHH", data)
            if kind == reply_type and got_ident == ident:
                return 0
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wire", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ping = commands.add_parser("ping", help="one ICMP echo")
    ping.add_argument("destination")
    ping.add_argument("--timeout", type=float, default=2.0)
    capture = commands.add_parser("capture", help="record frames of some EtherTypes to a pcap file")
    capture.add_argument("--iface", default="eth0")
    capture.add_argument("--out", type=Path, required=True)
    capture.add_argument("--ethertypes", default=f"0x{ETH_P_ARP:04x},0x{ETH_P_IPV6:04x}")
    capture.add_argument("--max-seconds", type=float, default=CAPTURE_MAX_SECONDS)
    capture.add_argument("--max-frames", type=int, default=CAPTURE_MAX_FRAMES)
    args = parser.parse_args(argv)
    if args.command == "ping":
        return ping_main(args.destination, args.timeout)
    types = {int(t, 0) for t in args.ethertypes.split(",") if t}
    return capture_main(args.iface, args.out, types, args.max_seconds, args.max_frames)


if __name__ == "__main__":
    raise SystemExit(main())
