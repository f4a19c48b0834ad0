"""One listening socket per worker on the same (VIP, port), and which worker gets which client.

The control plane binds N sockets with SO_REUSEPORT, in worker order, into one reuseport group.
The kernel picks a group's socket by a hash of the 4-tuple: a UDP flow (one client address and
port) always reaches the same worker, and one client's TCP connections spread over all of them,
as with nginx or HAProxy threads. For a service with ClientIP affinity that would split one
client over several workers, each with its own affinity table, so its groups get a classic BPF
program (SO_ATTACH_REUSEPORT_CBPF) that picks the socket from a hash of the source address
alone: one client, one worker, one affinity table. (Steering every service so would put all the
connections of one busy client, or of one NAT gateway, on one core.)

`slot()` is the program in Python (the tests check the kernel agrees). The program returns an
index into the group; while the group has fewer sockets than that (a socket being replaced),
the kernel falls back to its own hash.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence

from lbd.relay.listener import bound_socket

SO_ATTACH_REUSEPORT_CBPF = 51  # include/uapi/asm-generic/socket.h
SKF_NET_OFF = 0xFFF00000  # -0x100000 as u32: offsets from the network (IP) header
GOLDEN = 0x9E3779B1  # Fibonacci hashing: neighbouring addresses spread over the workers
SHIFT = 16

# Classic BPF opcodes: (code, jt, jf, k).
_LD_W_ABS, _TAX, _XOR_X, _MUL_K, _RSH_K, _MOD_K, _RET_A = 0x20, 0x07, 0xAC, 0x24, 0x74, 0x94, 0x16
Instruction = tuple[int, int, int, int]


def program(family: int, workers: int) -> tuple[Instruction, ...]:
    """The steering program for a group of `workers` sockets of `family`."""
    if family == socket.AF_INET:
        load: list[Instruction] = [(_LD_W_ABS, 0, 0, SKF_NET_OFF + 12)]  # IPv4 source address
    else:  # IPv6 source address, bytes 8-23 of the header: its four words XORed
        load = [(_LD_W_ABS, 0, 0, SKF_NET_OFF + 8)]
        for offset in (12, 16, 20):
            load += [(_TAX, 0, 0, 0), (_LD_W_ABS, 0, 0, SKF_NET_OFF + offset), (_XOR_X, 0, 0, 0)]
    return (*load, (_MUL_K, 0, 0, GOLDEN), (_RSH_K, 0, 0, SHIFT), (_MOD_K, 0, 0, workers), (_RET_A, 0, 0, 0))


def slot(address: str, workers: int) -> int:
    """The worker (socket index) the program picks for a client address."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        word = int(ip)
    else:
        packed = ip.packed
        word = 0
        for i in range(0, 16, 4):
            word ^= int.from_bytes(packed[i:i + 4], "big")
    return (((word * GOLDEN) & 0xFFFFFFFF) >> SHIFT) % workers


def attach(sock: socket.socket, instructions: Sequence[Instruction]) -> None:
    """SO_ATTACH_REUSEPORT_CBPF takes a struct sock_fprog, as SO_ATTACH_FILTER does."""
    buffer = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in instructions))
    fprog = struct.pack("HL", len(instructions), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)  # the kernel copies it


SO_DETACH_REUSEPORT_BPF = 68  # include/uapi/asm-generic/socket.h (Linux 5.3)


def steer(socks: Sequence[socket.socket], by_client: bool) -> None:
    """Steer the group by client address (its program on), or by the kernel's 4-tuple hash."""
    if by_client:
        attach(socks[0], program(socks[0].family, len(socks)))
        return
    try:
        socks[0].setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # ENOENT: no program attached
            raise


def reuseport_group(
    host: str, port: int, kind: socket.SocketKind, workers: int, backlog: int, *, by_client: bool = True
) -> list[socket.socket]:
    """`workers` sockets bound to host:port in one reuseport group, socket i for worker i (TCP
    ones listening, so the group's order is the workers' order), steered by client address or
    not (`steer`). Raises OSError (the port is taken) and leaves nothing open."""
    reuse = ((socket.SOL_SOCKET, socket.SO_REUSEPORT, 1),)
    socks: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = bound_socket(host, port, kind, reuse)
            socks.append(sock)
            port = sock.getsockname()[1]  # port 0: every other socket binds the one chosen
            if kind == socket.SOCK_STREAM:
                sock.listen(backlog)
        if by_client:
            steer(socks, True)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
