"""A client that stops reading costs a bounded amount of kernel memory per relay.

Before: no SO_SNDBUF/SO_RCVBUF cap, so autotuning let lbd's two sockets of a stalled relay hold
~10 MiB (bench/stalled_memory.py), and a few hundred stalled clients pushed a host past tcp_mem.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lbd.relay import DEFAULT_SOCKET_BUFFER

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import stalled_memory  # noqa: E402


def test_a_stalled_relay_holds_about_four_capped_buffers() -> None:
    result = stalled_memory.measure(6, [], settle=10.0)
    print(result)
    assert result["lbd_sockets"] == 12
    # client socket's send queue + endpoint socket's receive queue, each at most 2 x the cap
    # (the kernel doubles SO_SNDBUF/SO_RCVBUF), plus slack for skb overhead.
    assert result["lbd_kib_per_relay"] < 5 * DEFAULT_SOCKET_BUFFER / 1024


def test_socket_buffer_zero_leaves_the_kernel_autotuning() -> None:
    result = stalled_memory.measure(2, ["--socket-buffer", "0"], settle=10.0)
    assert result["lbd_kib_per_relay"] > 2 * 1024  # several MiB: what the cap is for
