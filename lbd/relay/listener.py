"""What every listener shares, whatever its protocol: the listening socket, housekeeping, books.

A listener owns one (VIP, port) socket and relays what arrives there to the targets its Router
picks. The protocol modules (`lbd.relay.tcp`, UDP next) subclass `Listener` and add the relay
itself; the daemon only uses the verbs defined here (start, set_options, rename, stop_accepting,
drain, cut).
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from lbd import metrics
from lbd.balancer import Target, format_target
from lbd.relay import Failure, RelayOptions, Router
from lbd.relay.books import EndpointBooks

log = structlog.get_logger("lbd.relay")

# no_endpoint warnings: the first of a burst is logged, the rest counted for this long.
NO_ENDPOINT_LOG_WINDOW = 10.0
# Period of the per-listener housekeeping (metrics flush; idle sweeps use idle_timeout/2 if less).
HOUSEKEEPING_SECONDS = 1.0
# Linux IP_FREEBIND (include/uapi/linux/in.h); works on AF_INET6 sockets too. It lets a
# listener bind a VIP before (or without) the address being on an interface.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
# Distinct (endpoint, reason) metric children cached per listener; cleared past this (churn).
MAX_FAILURE_CHILDREN = 1024


class BurstLog:
    """Log the first event of a burst; count the rest and report them on the next line (pure)."""

    __slots__ = ("window", "_last", "_suppressed")

    def __init__(self, window: float = NO_ENDPOINT_LOG_WINDOW) -> None:
        self.window = window
        self._last = float("-inf")
        self._suppressed = 0

    def hit(self, now: float) -> int | None:
        """None: stay quiet. An int: log now, with that many events suppressed since the last line."""
        if now - self._last < self.window:
            self._suppressed += 1
            return None
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        return suppressed


def bound_socket(host: str, port: int, kind: socket.SocketKind, options: Sequence[tuple[int, int, int]] = ()) -> socket.socket:
    """A non-blocking socket bound to host:port with SO_REUSEADDR and IP_FREEBIND (IPv6: v6only).

    `options` are extra (level, name, value) setsockopt calls made before bind.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        for level, name, value in options:
            sock.setsockopt(level, name, value)
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """One listening (VIP, port) and the books every protocol keeps about it."""

    # The lbd_endpoint_* families this protocol's books flush into (lbd.metrics).
    ENDPOINT_METRICS: tuple[Any, Any, Any] = metrics.TCP_ENDPOINT_METRICS

    def __init__(
        self,
        host: str,
        port: int,
        router: Router,
        options: RelayOptions,
        service: str,
        port_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port  # the bound port after start() (useful when 0 was asked for)
        self.router = router
        self.options = options
        self.service = service
        self.port_name = port_name
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self.housekeeping: asyncio.TimerHandle | None = None
        self._no_endpoint_log = BurstLog()
        self._local_log = BurstLog()
        self._m_failures: dict[tuple[Target, Failure], Any] = {}
        self.books = EndpointBooks(self.ENDPOINT_METRICS, service, port_name)
        # With workers (lbd.workers) the control plane binds the socket and hands it over.
        self.given_socket: socket.socket | None = None

    def listening_socket(self, kind: socket.SocketKind, options: Sequence[tuple[int, int, int]] = ()) -> socket.socket:
        """The socket to serve: the one handed over (`given_socket`, bound by the control plane
        into a reuseport group), with `options` applied, or a new one bound here."""
        sock, self.given_socket = self.given_socket, None
        if sock is None:
            return bound_socket(self.host, self.port, kind, options)
        try:
            for level, name, value in options:
                sock.setsockopt(level, name, value)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- the verbs the daemon uses (protocols override what they need) ------------------------

    async def start(self) -> None:
        raise NotImplementedError

    def stop_accepting(self) -> None:
        """Stop taking new clients; what is established goes on."""
        raise NotImplementedError

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for established traffic to end, then cut it; returns how many were cut."""
        raise NotImplementedError

    def cut(self) -> int:
        """Reset everything established now; returns how many connections or flows were cut."""
        raise NotImplementedError

    def set_options(self, options: RelayOptions, tuning: object = None) -> None:
        """New options for new connections or flows; `tuning` is the protocol's own (TcpOptions...)."""
        self.options = options

    def rename(self, port_name: str) -> None:
        """The service port was renamed (after a flush): new logs and metrics use the new name."""
        self.port_name = port_name
        self._m_failures.clear()
        self.books.rename(port_name)

    def forget_targets(self, targets: set[Target]) -> None:
        """Endpoints that left: drop their cached failure counters (their series are removed)
        and their books once they carry nothing."""
        for key in [k for k in self._m_failures if k[0] in targets]:
            del self._m_failures[key]
        self.books.retire(targets)

    @property
    def active(self) -> int:
        """Established connections or flows."""
        return 0

    # -- events from relays -------------------------------------------------------------------

    def failed(self, target: Target, failure: Failure) -> None:
        """An endpoint failed a client: count it by endpoint and reason, tell the router."""
        key = (target, failure)
        child = self._m_failures.get(key)
        if child is None:
            if len(self._m_failures) > MAX_FAILURE_CHILDREN:
                self._m_failures.clear()
            child = self._m_failures[key] = metrics.connect_failures_total.labels(
                self.service, self.port_name, format_target(target), str(failure)
            )
        child.inc()
        self.router.failed(target, failure)

    def local_failure(self, exc: OSError) -> None:
        """lbd ran out of a local resource relaying a client: count it, log once per burst with
        the errno and the fd limit, and blame no endpoint."""
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        metrics.local_resource_failures_total.labels(name).inc()
        suppressed = self._local_log.hit(self.clock())
        if suppressed is not None:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error(
                "local_resources_exhausted",
                service=self.service,
                port=self.port_name,
                errno=name,
                error=exc.strerror or str(exc),
                nofile_limit=soft,
                nofile_hard_limit=hard,
                suppressed=suppressed,
                hint="no endpoint was blamed; raise LimitNOFILE (systemd) or `ulimit -n`, or lower the load",
            )

    def log_no_endpoint(self, client_ip: str, tried: Sequence[Target]) -> None:
        """No endpoint took a client: log the first of a burst, count the rest."""
        suppressed = self._no_endpoint_log.hit(self.clock())
        if suppressed is not None:
            log.warning(
                "no_endpoint",
                service=self.service,
                port=self.port_name,
                client=client_ip,
                tried=[format_target(t) for t in tried],
                suppressed=suppressed,
            )

    # -- housekeeping: one timer per listener while there is anything to look after -----------

    def housekeeping_period(self) -> float:
        idle = self.options.idle_timeout
        return HOUSEKEEPING_SECONDS if idle is None else min(HOUSEKEEPING_SECONDS, idle / 2)

    def arm_housekeeping(self) -> None:
        self.housekeeping = self.loop.call_later(self.housekeeping_period(), self._housekeep)

    def _housekeep(self) -> None:
        self.housekeeping = None
        period = self.housekeeping_period()
        if self.housekeep(period):
            self.housekeeping = self.loop.call_later(period, self._housekeep)

    def housekeep(self, period: float) -> bool:
        """Periodic work (metrics flush, idle sweep); returns whether to run again."""
        return False
