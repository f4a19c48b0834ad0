"""The data plane: relays that carry client traffic to endpoints picked by a Router.

This module is protocol-neutral and pure (no sockets, no event loop): the Router verbs, the
failure reasons and the options every relay shares. `lbd.relay.listener` holds the shared
listener machinery, `lbd.relay.tcp` the TCP relay (UDP plugs in beside it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from lbd.balancer import Target
from lbd.model import DEFAULT_UDP_FLOW_TIMEOUT, DEFAULT_UDP_MAX_FLOWS

# Seconds per endpoint connect attempt; a failed attempt moves on to the next endpoint.
# HAProxy's `timeout connect` examples use 5 s; 2 s keeps a dead endpoint's cost low.
DEFAULT_CONNECT_TIMEOUT = 2.0
# Kernel buffer per socket and direction (SO_SNDBUF/SO_RCVBUF; the kernel doubles it for its
# bookkeeping). Autotuning grows loopback sockets to 4-6 MiB, so a client that stops reading
# held ~10 MiB of kernel memory in lbd's two sockets; capped, ~1 MiB. 256 KiB carries 10 Gbit/s
# at 200 us RTT; raise it (--socket-buffer) for clients far away.
DEFAULT_SOCKET_BUFFER = 256 * 1024


class Failure(StrEnum):
    """Why an endpoint failed a client: a log field, a metric label and a test value."""

    REFUSED = "refused"  # RST to our SYN (TCP) or ICMP port unreachable (UDP): nothing listens
    UNREACHABLE = "unreachable"  # ICMP host/net unreachable, no route
    TIMEOUT = "timeout"  # no answer within RelayOptions.connect_timeout
    ERROR = "error"  # any other OSError of the endpoint side
    # lbd's own resources ran out (EMFILE, ENFILE, ENOBUFS, ENOMEM): not the endpoint's fault,
    # so it ejects nothing; counted and logged per listener (Listener.local_failure).
    LOCAL = "local_resources"


class Router(Protocol):
    """Where a relay sends a client; one per service port (see lbd.routing)."""

    def pick(self, client_ip: str, tried: Collection[Target]) -> Target | None:
        """The next target to try for this client; never one of `tried`."""
        ...

    def failed(self, target: Target, failure: Failure) -> None:
        """The endpoint failed this client (passive health counts it)."""
        ...

    def succeeded(self, target: Target) -> None:
        """The endpoint answered (clears passive failures)."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever the ready set may have changed (UDP flows re-check their endpoint)."""
        ...

    def is_ready(self, target: Target) -> bool:
        """Whether `target` is in the ready set now."""
        ...


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """What every relay honours, whatever the protocol; applied to new connections and flows."""

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT  # per attempt
    idle_timeout: float | None = None  # None = tunnel, never idle out (Service.idle_timeout_seconds)
    socket_buffer: int | None = DEFAULT_SOCKET_BUFFER  # per socket and direction; None = kernel autotuning


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """TCP-only relay settings, beside the neutral RelayOptions; new connections take them."""

    keepalive: bool = True  # SO_KEEPALIVE on both sides
    # Write buffer marks per side: the most lbd holds for a slow reader per direction (plus one
    # read). Larger marks mean fewer pause/resume round trips on bulk transfers.
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    # After this many bytes in big reads a relay moves to os.splice (lbd.relay.splice); None =
    # never. Setup and small messages are cheapest on Protocols, bulk transfers on splice.
    splice_after: int | None = 1 << 20


@dataclass(frozen=True, slots=True)
class UdpOptions:
    """UDP-only relay settings: how long an idle flow lives and how many flows a port keeps."""

    flow_timeout: float = DEFAULT_UDP_FLOW_TIMEOUT  # lbd.io/udp-flow-timeout
    max_flows: int = DEFAULT_UDP_MAX_FLOWS  # lbd.io/udp-max-flows


Tuning = TcpOptions | UdpOptions  # the per-protocol half of a listener's settings

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_SOCKET_BUFFER",
    "DEFAULT_UDP_FLOW_TIMEOUT",
    "DEFAULT_UDP_MAX_FLOWS",
    "Failure",
    "RelayOptions",
    "Router",
    "Target",
    "TcpOptions",
    "Tuning",
    "UdpOptions",
]
