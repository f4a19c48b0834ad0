"""The kernel fence of cluster mode: ARP for a VIP is answered only until this node's deadline.

The kernel answers ARP for every address bound to an interface, whether lbd runs, is frozen
(SIGSTOP, a stalled VM) or was killed. In cluster mode a peer takes a VIP over once this node's
lease can have expired, so a node that only unbinds VIPs from its own loop could answer at the
same time as the new owner. The fence is a dead-man switch in the kernel: an nftables `arp`
table drops ARP requests for, and ARP frames from, every VIP this node has bound, unless the VIP
is in the `live` set, whose elements time out. lbd puts a VIP in `live` with the time left to
its deadline (lbd.cluster.fencing) and moves it on every acknowledged keepalive; if lbd stops
doing so, the kernel goes quiet for that VIP at the deadline, with nothing of lbd running.

Chosen over answering ARP from user space (MetalLB's way, the VIP not bound): that needs a
responder in the hot path of every ARP request, and its "frozen means silent" holds only for
the process, not for the kernel, which still answers for a bound address. Measured in the lab
(integration/test_cluster.py): a frozen owner's MAC is not heard after its deadline.

Applied through libnftables (the nftables package's library) with ctypes, in-process: one
netlink transaction per change, no nft process per keepalive. Every write replaces the whole
`live` set in one transaction (flush, then add with the new timeouts), so a refresh never opens
a gap. IPv6 VIPs get the same from an `ip6 lbd` table on neighbour discovery: solicitations
for a fenced VIP are dropped, advertisements of it are not sent. nft has no field for the
target address, so it is matched as the 128 bits after the ICMPv6 header's first 8 bytes
(`@th,64,128`), and the sets hold addresses as 128-bit integers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping

import structlog

from lbd.errors import CannotStart
from lbd.model import IPAddress

log = structlog.get_logger("lbd.net.fence")

TABLE = "lbd"

_SCHEMA = """
add table arp {table}
add set arp {table} bound {{ type ipv4_addr; }}
add set arp {table} live {{ type ipv4_addr; flags timeout; }}
add chain arp {table} input {{ type filter hook input priority 0; policy accept; }}
add chain arp {table} output {{ type filter hook output priority 0; policy accept; }}
flush chain arp {table} input
flush chain arp {table} output
add rule arp {table} input arp daddr ip @bound arp daddr ip != @live drop
add rule arp {table} output arp saddr ip @bound arp saddr ip != @live drop
add table ip6 {table}
add set ip6 {table} bound {{ typeof @th,64,128; }}
add set ip6 {table} live {{ typeof @th,64,128; flags timeout; }}
add chain ip6 {table} input {{ type filter hook input priority 0; policy accept; }}
add chain ip6 {table} output {{ type filter hook output priority 0; policy accept; }}
flush chain ip6 {table} input
flush chain ip6 {table} output
add rule ip6 {table} input icmpv6 type nd-neighbor-solicit @th,64,128 @bound @th,64,128 != @live drop
add rule ip6 {table} output icmpv6 type nd-neighbor-advert @th,64,128 @bound @th,64,128 != @live drop
"""


class NftError(CannotStart):
    """libnftables is missing or refused a command (its message says why)."""


class Nft:
    """libnftables through ctypes: run a batch of nft commands in this process's netns."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise NftError(f"cluster mode needs libnftables (Debian: apt-get install nftables): {exc}") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def run(self, commands: str) -> str:
        """One transaction: every command applies, or none (nft's own batch semantics)."""
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
        if rc != 0:
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace").strip()
            raise NftError(f"nft: {error or 'failed'}")
        return (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")


class ArpFence:
    """The `arp lbd` table: `bound` (every VIP this node bound in cluster mode) and `live`."""

    def __init__(self, nft: Nft | None = None, table: str = TABLE) -> None:
        self.nft = nft or Nft()
        self.table = table
        self.bound: set[IPAddress] = set()

    def install(self) -> None:
        """Create the table if absent; elements a crashed run left keep their timeouts (a
        restart must not reopen ARP for its leftovers before they are reconciled)."""
        self.nft.run(_SCHEMA.format(table=self.table))

    def set_live(self, until: Mapping[IPAddress, float], now: float) -> None:
        """Answer for exactly these VIPs, each until its deadline (seconds on `now`'s clock)."""
        fresh = [ip for ip in until if ip not in self.bound]
        commands = []
        for family in ("arp", "ip6"):
            version = 4 if family == "arp" else 6
            new = [_element(ip) for ip in fresh if ip.version == version]
            if new:
                commands.append(f"add element {family} {self.table} bound {{ {', '.join(new)} }}")
            commands.append(f"flush set {family} {self.table} live")
            live = [f"{_element(ip)} timeout {ms}ms" for ip, t in sorted(until.items(), key=lambda i: int(i[0]))
                    if ip.version == version and (ms := int((t - now) * 1000)) > 0]
            if live:
                commands.append(f"add element {family} {self.table} live {{ {', '.join(live)} }}")
        self.nft.run("\n".join(commands))
        self.bound.update(fresh)

    def remove(self) -> None:
        """Graceful stop, every VIP unbound: the tables go."""
        self.nft.run(f"delete table arp {self.table}\ndelete table ip6 {self.table}")
        self.bound.clear()

    def listed(self) -> str:
        return self.nft.run(f"list table arp {self.table}\nlist table ip6 {self.table}")


def remove_leftover(nft: Nft | None = None, table: str = TABLE) -> bool:
    """Single-node mode owns every VIP it binds: a fence a cluster-mode run left would mute them."""
    try:
        nft = nft or Nft()
    except NftError:
        return False  # no libnftables: no fence can exist
    removed = False
    for family in ("arp", "ip6"):
        try:
            nft.run(f"delete table {family} {table}")
            removed = True
        except NftError:
            pass  # none there
    if not removed:
        return False
    log.info("cluster_fence_removed", table=table)
    return True


def _element(ip: IPAddress) -> str:
    """How a set holds the address: dotted for `arp`, a 128-bit integer for the raw ip6 match."""
    return str(ip) if ip.version == 4 else f"0x{int(ip):032x}"
