"""TCP listener: accept on a VIP port and hand each client to a relayed connection.

The connection itself is `lbd.relay.tcp_connection` (a Relay on the reactor, splice for bulk);
this is the per-(VIP, port) part: the listening socket in the reactor (level-triggered: up to
ACCEPT_BATCH accepts per wake-up, the rest on the next), one connect watchdog for all attempts
(no timer per connection), and housekeeping that flushes plain-int counters into Prometheus,
sweeps idle relays and sets SO_KEEPALIVE on endpoint sockets that lived a while. Per-endpoint
counts live in the listener's books (lbd.relay.books), bumped per connection, flushed likewise.
"""

from __future__ import annotations

import _socket
import asyncio
import socket
import time
from collections.abc import Callable, Sequence

from lbd import metrics
from lbd.balancer import Target
from lbd.relay import RelayOptions, Router, TcpOptions
from lbd.relay import tcp_connection
from lbd.relay.listener import Listener
from lbd.relay.reactor import IN, Reactor
from lbd.relay.tcp_connection import CLIENT_EVENTS, LOCAL_ERRNOS, Relay

__all__ = ["LISTEN_BACKLOG", "TcpListener", "TcpOptions"]

# Listen backlog: the kernel caps it at net.core.somaxconn (4096 on Debian 12).
LISTEN_BACKLOG = 65535
# Accepts per wake-up of the listening socket; the rest wait for the next batch (fairness).
ACCEPT_BATCH = 64
# Out of file descriptors at accept: the queue stays readable, so stop looking for this long
# (HAProxy pauses its listeners too) instead of spinning on EMFILE.
ACCEPT_PAUSE_SECONDS = 0.1


class TcpListener(Listener):
    """One listening TCP socket (VIP, port) relaying to the targets its Router picks."""

    def __init__(
        self,
        host: str,
        port: int,
        router: Router,
        options: RelayOptions,
        service: str,
        port_name: str,
        *,
        tcp: TcpOptions = TcpOptions(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host, port, router, options, service, port_name, clock=clock)
        self.tcp = tcp
        self.relays: set[Relay] = set()
        self.connecting: set[Relay] = set()
        self.drain_waiter: asyncio.Future[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.reactor: Reactor = None  # type: ignore[assignment]  # set by start()
        self._sock: socket.socket | None = None
        self._accept_paused: asyncio.TimerHandle | None = None
        self._next_keepalive_scan = 0.0
        # Sticky: some relay may carry an idle timeout (relays keep the options they started with).
        self._idle_timeouts = options.idle_timeout is not None
        # Counters as plain ints, flushed into Prometheus by flush_metrics().
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._flushed = (0, 0, 0, 0)  # accepted, bytes up, bytes down, active as last reported
        self._bind_metrics()

    def _bind_metrics(self) -> None:
        # Label children bound once: no .labels() on the hot path.
        labels = (self.service, self.port_name)
        self._m_connections = metrics.connections_total.labels(*labels)
        self._m_active = metrics.connections_active.labels(*labels)
        self._m_bytes_up = metrics.bytes_total.labels(*labels, "client_to_endpoint")
        self._m_bytes_down = metrics.bytes_total.labels(*labels, "endpoint_to_client")
        self._m_no_endpoint = metrics.no_endpoint_resets_total.labels(*labels)

    def rename(self, port_name: str) -> None:
        """Counters so far stay under the old name; what comes next counts under the new one."""
        active = len(self.relays)
        self.flush_metrics()
        self._m_active.dec(active)  # the open connections move to the new label
        super().rename(port_name)
        self._bind_metrics()
        self._m_active.inc(active)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen; accepted sockets inherit SO_KEEPALIVE, TCP_NODELAY and the buffer cap
        (Linux clones them)."""
        self.loop = asyncio.get_running_loop()
        options = [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(self.tcp.keepalive)),
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        ]
        if self.options.socket_buffer:  # before listen(): accepted sockets inherit the cap
            options += [(socket.SOL_SOCKET, socket.SO_SNDBUF, self.options.socket_buffer),
                        (socket.SOL_SOCKET, socket.SO_RCVBUF, self.options.socket_buffer)]
        sock = self.listening_socket(socket.SOCK_STREAM, options)
        try:
            sock.listen(LISTEN_BACKLOG)
            self.reactor = Reactor.of(self.loop)
            self.reactor.add(sock.fileno(), self, IN)  # level-triggered: a batch may leave some
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]

    def stop_accepting(self) -> None:
        """Close the listening socket only; established relays go on."""
        if self._accept_paused is not None:
            self._accept_paused.cancel()
            self._accept_paused = None
        if self._sock is not None:
            self.reactor.close(self._sock)
            self._sock = None

    # -- accepting ----------------------------------------------------------------------

    def on_event(self, fd: int, events: int) -> None:
        """The listening socket is readable: accept a batch, each client straight to a connect."""
        sock = self._sock
        if sock is None:
            return
        accept, family, reactor = sock._accept, sock.family, self.reactor  # type: ignore[attr-defined]
        relays = self.relays
        for _ in range(ACCEPT_BATCH):
            try:
                cfd, address = accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in LOCAL_ERRNOS:
                    self.local_failure(exc)
                    self._pause_accepting()
                    break
                continue  # ECONNABORTED and the like: that client is gone already
            # Family, type and protocol given: the socket object costs no syscall but the
            # kernel's fd check (getsockname).
            cs = _socket.socket(family, socket.SOCK_STREAM, 0, cfd)
            relay = Relay(self, reactor, cs, cfd, address[0])  # type: ignore[arg-type]
            reactor.add(cfd, relay, CLIENT_EVENTS)
            relays.add(relay)
            self.accepted += 1
            relay.connect_next()
        if self.housekeeping is None and relays:
            self.arm_housekeeping()

    def _pause_accepting(self) -> None:
        sock = self._sock
        if sock is None or self._accept_paused is not None:
            return
        self.reactor.remove(sock.fileno())

        def resume() -> None:
            self._accept_paused = None
            if self._sock is not None:
                self.reactor.add(self._sock.fileno(), self, IN)

        self._accept_paused = self.loop.call_later(ACCEPT_PAUSE_SECONDS, resume)

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for relays to finish, then reset the rest; returns how many were reset."""
        if self.relays:
            self.drain_waiter = self.loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self.drain_waiter
            except TimeoutError:
                pass
            finally:
                self.drain_waiter = None
        aborted = self.cut()
        if aborted:
            await asyncio.sleep(0)  # let the connection_lost callbacks run
        self.flush_metrics()
        return aborted

    def cut(self) -> int:
        """Reset every relay now (drain timeout, or a forced stop)."""
        relays = list(self.relays)
        for relay in relays:
            relay.abort()
        return len(relays)

    @property
    def active(self) -> int:
        return len(self.relays)

    def set_options(self, options: RelayOptions, tuning: object = None) -> None:
        """New options for new connections (established relays keep theirs)."""
        self.options = options
        self._idle_timeouts |= options.idle_timeout is not None
        if isinstance(tuning, TcpOptions):
            old, self.tcp = self.tcp, tuning
            if self._sock is not None and old.keepalive != tuning.keepalive:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(tuning.keepalive))

    # -- events from relays -------------------------------------------------------------

    def no_endpoint(self, client_ip: str, tried: Sequence[Target]) -> None:
        """No endpoint took a client (the relay resets it): count, and log once per burst."""
        self._m_no_endpoint.inc()
        self.log_no_endpoint(client_ip, tried)

    # -- connect watchdog -----------------------------------------------------------------

    def arm_watchdog(self) -> None:
        period = max(0.005, self.options.connect_timeout / 4)
        self.watchdog = self.loop.call_later(period, self._watch)

    def _watch(self) -> None:
        self.watchdog = None
        now = self.loop.time()
        for relay in [r for r in self.connecting if r.deadline <= now]:
            relay.timed_out()
        if self.connecting:
            self.arm_watchdog()

    # -- housekeeping: metrics flush, idle sweep, late keepalive ----------------------------

    def housekeep(self, period: float) -> bool:
        changed = self.flush_metrics()
        now = self.loop.time()
        keepalive_scan = now >= self._next_keepalive_scan
        if keepalive_scan:
            self._next_keepalive_scan = now + tcp_connection.KEEPALIVE_SCAN_SECONDS
        elif not self._idle_timeouts:
            return bool(self.relays) or changed  # nothing to look at per relay this round
        for relay in list(self.relays):
            if relay.connecting or relay.us is None:
                continue  # connecting: the watchdog's business
            if keepalive_scan and relay.keepalive_due and relay.keepalive_due <= now:
                relay.keepalive_due = 0.0
                sock = relay.upstream_socket()
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            limit = relay.options.idle_timeout
            if limit is not None:
                self._idle_check(relay, limit, period)
        return bool(self.relays) or changed  # runs while there is anything to watch or flush

    @staticmethod
    def _idle_check(relay: Relay, limit: float, period: float) -> None:
        """Close a relay that moved no byte for `limit` (it is closed after limit..limit+period)."""
        moved = relay.moved()
        if moved != relay.swept:
            relay.swept, relay.idle_for = moved, 0.0
            return
        relay.idle_for += period
        if relay.idle_for >= limit:
            if relay.buffered():
                relay.abort()  # data stuck in a buffer would keep close() waiting forever
            else:
                relay.close_both()

    def flush_metrics(self) -> bool:
        """Push the plain-int counters (the listener's, its endpoints') into Prometheus; returns
        whether anything changed."""
        endpoints = self.books.flush(self.router.is_ready)
        now = (self.accepted, self.bytes_up, self.bytes_down, len(self.relays))
        before = self._flushed
        if now == before:
            return endpoints
        self._flushed = now
        if now[0] != before[0]:
            self._m_connections.inc(now[0] - before[0])
        if now[1] != before[1]:
            self._m_bytes_up.inc(now[1] - before[1])
        if now[2] != before[2]:
            self._m_bytes_down.inc(now[2] - before[2])
        if now[3] != before[3]:
            self._m_active.inc(now[3] - before[3])  # inc, not set: v4 + v6 listeners share labels
        return True
