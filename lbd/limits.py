"""The file-descriptor limit: raised to the hard limit at start, and what it means in connections.

Each relayed TCP connection holds two descriptors (client and endpoint; a bulk relay moved to
splice holds four more for its two pipes while it lasts). Under a shell's usual soft limit of
1,024, lbd would serve ~500 connections; the hard limit (systemd's LimitNOFILE, 1,048,576 in
lbd.service) is what it may use, so `lbd run` raises the soft limit to it and says what it got.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Descriptors a relayed connection holds on Protocols (client + endpoint socket).
FDS_PER_RELAY = 2
# Held back for everything else: listeners, the admin and metrics sockets, netlink, logs.
RESERVED_FDS = 64
# Below this many connections lbd says the limit is low, and how to raise it.
LOW_CONNECTIONS = 10_000


@dataclass(frozen=True, slots=True)
class FdLimit:
    """The soft NOFILE limit before and after raising it, and the hard limit."""

    before: int
    now: int
    hard: int

    @property
    def connections(self) -> int:
        """How many connections lbd can relay at once with this limit (less one per listener)."""
        return max(0, (self.now - RESERVED_FDS) // FDS_PER_RELAY)


def raise_nofile() -> FdLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as far as the kernel allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # Linux caps descriptors at fs.nr_open anyway
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = soft
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    else:
        target = soft
    return FdLimit(soft, target, hard)
