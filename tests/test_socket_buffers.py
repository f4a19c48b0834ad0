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
    # The client socket's send queue is at most 2 x the cap (inherited from the listener; the
    # kernel doubles SO_SNDBUF). The endpoint socket is capped when the relay first falls
    # behind (not per connection: it costs ~9 us), so its receive queue may hold the burst
    # that arrived before: about 1 MiB on loopback. Uncapped, the two hold ~10 MiB.
    assert result["lbd_kib_per_relay"] < 2 * DEFAULT_SOCKET_BUFFER / 1024 + 1536


def test_socket_buffer_zero_leaves_the_kernel_autotuning() -> None:
    result = stalled_memory.measure(2, ["--socket-buffer", "0"], settle=10.0)
    assert result["lbd_kib_per_relay"] > 2 * 1024  # several MiB: what the cap is for
