"""The lab's wire tools, run inside a lab namespace: ICMP echo, ARP/NDP capture, UDP clients.

Standard library and lbd's pure codecs only, so a helper starts fast in a namespace:
    python lbd/lab/wire.py ping DST [--timeout S]     one ICMP/ICMPv6 echo; exit 0 if answered
    python lbd/lab/wire.py capture --iface eth0 --out F.pcap [--ethertypes 0x0806,0x86dd]
    python lbd/lab/wire.py udp-ask HOST PORT [--count N] [--new-socket] [--size B] [--replies R]
        N requests from a CONNECTED socket (one per request with --new-socket); prints one JSON
        line per reply: its source, size and first line ("timeout" when none came)
    python lbd/lab/wire.py udp-flood HOST PORT --sources N [--extra-ips IP,...] [--rate PPS]
        one datagram from each of N distinct (address, port) sources, paced, from a raw socket
A capture stops on SIGTERM, after --max-seconds or --max-frames, and when its parent dies; every
UDP tool is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
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
    return [frame for _, frame in read_pcap_timed(path)]


def read_pcap_timed(path: Path) -> list[tuple[float, bytes]]:
    """Each frame with when it was seen (Unix time, microseconds)."""
    data = path.read_bytes()
    if len(data) < _PCAP_HEADER.size:
        return []
    frames, offset = [], _PCAP_HEADER.size
    while offset + _PCAP_RECORD.size <= len(data):
        seconds, micros, length, _ = _PCAP_RECORD.unpack_from(data, offset)
        offset += _PCAP_RECORD.size
        frames.append((seconds + micros / 1e6, data[offset : offset + length]))
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


def udp_ask_main(host: str, port: int, count: int, new_socket: bool, size: int, replies: int, timeout: float) -> int:
    """Requests from connected sockets, as dig and `nc -u` send them: only replies from HOST:PORT
    reach a connected socket, so an answer proves it came from the VIP."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = None
    payload = (b"q" * size) if size else b""
    for i in range(count):
        if sock is None or new_socket:
            if sock is not None:
                sock.close()
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.settimeout(timeout)
            sock.connect((host, port))
        sock.send(payload or f"request {i}".encode())
        for _ in range(replies):
            try:
                data, source = sock.recvfrom(65536)
            except TimeoutError:
                print(json.dumps({"request": i, "timeout": True}), flush=True)
                break
            first = data.split(b"\n", 1)[0].decode(errors="replace")
            print(json.dumps({"request": i, "source": list(source[:2]), "size": len(data), "first": first,
                              "local_port": sock.getsockname()[1]}), flush=True)
    if sock is not None:
        sock.close()
    return 0


def udp_flood_main(host: str, port: int, sources: int, extra_ips: list[str], rate: float) -> int:
    """One small datagram from each of `sources` distinct (address, port) pairs, at most `rate` per
    second: a raw socket writes the IPv4 and UDP headers, so no socket per source is needed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL implied
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((host, port))
    source_ips = [probe.getsockname()[0], *extra_ips]
    probe.close()
    destination = socket.inet_aton(host)
    payload = b"flood"
    started = time.monotonic()
    for n in range(sources):
        src = socket.inet_aton(source_ips[n % len(source_ips)])
        sport = 1024 + (n // len(source_ips)) % 64000
        udp = struct.pack("!HHHH", sport, port, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
        # version/IHL, TOS, total length and id/checksum filled by the kernel, TTL 64, UDP.
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0, src, destination)
        sock.sendto(header + udp, (host, 0))
        ahead = (n + 1) / rate - (time.monotonic() - started)
        if ahead > 0.001:
            time.sleep(ahead)
    sock.close()
    print(json.dumps({"sent": sources, "seconds": round(time.monotonic() - started, 3)}), flush=True)
    return 0


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
    ask = commands.add_parser("udp-ask", help="requests from connected UDP sockets, replies as JSON lines")
    ask.add_argument("host")
    ask.add_argument("port", type=int)
    ask.add_argument("--count", type=int, default=1)
    ask.add_argument("--new-socket", action="store_true", help="a new socket (source port) per request")
    ask.add_argument("--size", type=int, default=0, help="payload bytes (default: 'request N')")
    ask.add_argument("--replies", type=int, default=1, help="replies to wait for per request")
    ask.add_argument("--timeout", type=float, default=2.0)
    flood = commands.add_parser("udp-flood", help="one datagram from each of N distinct sources")
    flood.add_argument("host")
    flood.add_argument("port", type=int)
    flood.add_argument("--sources", type=int, required=True)
    flood.add_argument("--extra-ips", default="", help="more source addresses (configured on this host)")
    flood.add_argument("--rate", type=float, default=20000.0, help="datagrams per second at most")
    args = parser.parse_args(argv)
    if args.command == "ping":
        return ping_main(args.destination, args.timeout)
    if args.command == "udp-ask":
        count = max(1, min(args.count, 100_000))
        return udp_ask_main(args.host, args.port, count, args.new_socket, args.size, args.replies, args.timeout)
    if args.command == "udp-flood":
        extra = [ip for ip in args.extra_ips.split(",") if ip]
        return udp_flood_main(args.host, args.port, max(1, min(args.sources, 1_000_000)), extra, args.rate)
    types = {int(t, 0) for t in args.ethertypes.split(",") if t}
    return capture_main(args.iface, args.out, types, args.max_seconds, args.max_frames)


if __name__ == "__main__":
    raise SystemExit(main())
