"""`lbd run`'s options and their defaults: the one place each default is stated.

The CLI reads its defaults from here (so `--help`, the daemon and the README agree), and the
systemd unit's stop timeout is derived from the drain timeout (a test checks the unit).
Light on purpose: `lbd check` imports this without the data plane.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lbd.net.arp import DEFAULT_GARP_INTERVAL, DEFAULT_GARP_ROUNDS
from lbd.relay import DEFAULT_CONNECT_TIMEOUT, DEFAULT_SOCKET_BUFFER

DEFAULT_STATE_DIR = Path("/var/lib/lbd")
DEFAULT_ADMIN_SOCKET = Path("/run/lbd/admin.sock")
DEFAULT_DRAIN_TIMEOUT = 30.0  # seconds; Kubernetes' default terminationGracePeriodSeconds
# systemd's TimeoutStopSec must outlast the drain plus releasing VIPs and closing sockets
# (well under a second); past it systemd sends SIGKILL and VIPs stay bound until the next start.
STOP_MARGIN_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """Everything `lbd run` is told on its command line."""

    config_paths: tuple[str, ...]
    node_name: str
    state_dir: Path = DEFAULT_STATE_DIR
    admin_socket: Path | None = DEFAULT_ADMIN_SOCKET
    metrics_address: tuple[str, int] | None = None
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    garp_rounds: int = DEFAULT_GARP_ROUNDS
    garp_interval: float = DEFAULT_GARP_INTERVAL
    garp_refresh: float | None = None
    reset_state: bool = False  # the state is unreadable: accept assigning VIPs afresh
    socket_buffer: int = DEFAULT_SOCKET_BUFFER  # bytes per relayed socket and direction; 0 = autotuning
    workers: int = 1  # data-plane processes; 1 relays in the daemon's own process (lbd.workers)
    log_format: str = "auto"  # json, console or auto (lbd.log); workers log as this process does
    etcd_endpoints: tuple[str, ...] = ()  # cluster mode (lbd.cluster) when set
    etcd_prefix: str = "/lbd/"
    lease_ttl: int = 2  # seconds asked for; etcd may grant more (1.5 x its election timeout at least)
    peer_port: int = 7947  # UDP, members' failsafe asks while etcd is out of reach (lbd.cluster.peers)


def default(name: str) -> Any:
    """The default of DaemonOptions field `name` (for argparse)."""
    for f in fields(DaemonOptions):
        if f.name == name:
            return f.default
    raise KeyError(name)


def stop_timeout(drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> float:
    """The TimeoutStopSec a unit running with `drain_timeout` needs."""
    return drain_timeout + STOP_MARGIN_SECONDS


def parse_host_port(value: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT; raises ValueError with the reason."""
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    ipaddress.ip_address(host)
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"{number} is not a port (1-65535)")
    return host, number
