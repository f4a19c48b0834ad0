"""TCP relay: accept on a VIP port, connect to an endpoint the Router picks, copy bytes both ways.

The hot path of lbd. Thin asyncio Protocols (uvloop in production; the default loop works
too); the decisions (which endpoint, is it ejected) live in the Router.

Per client connection:
- client data is not relayed before an upstream connect succeeded. The default loop honours
  pause_reading() in connection_made; uvloop starts reading right after connection_made
  whatever we asked, so there the first chunk (<= 256 KiB) is kept and reading paused then.
  Nothing the client sent early is lost, and at most one chunk is held;
- each connect attempt has `connect_timeout`; a refused/unreachable/timed-out attempt is
  reported to the router and the next target it picks is tried; when none is left the client
  gets a RST;
- bytes are relayed in order; EOF on one side becomes write_eof() (SHUT_WR) on the other and
  the other direction keeps flowing; both transports close once both directions ended;
- a reset (or any socket error) on one side aborts the other side with a RST;
- flow control: a side whose write buffer passes `write_buffer_high` pauses reading of its
  peer, so a slow reader costs at most about high + one read (256 KiB in uvloop) per direction;
- idle relays (no byte either way for `idle_timeout`) are closed by a per-listener sweep, so
  data chunks never touch a timer;
- two relay paths: every connection starts on Protocols (cheapest to set up and for small
  messages); one that moved `splice_after` bytes in big reads (a bulk transfer) hands its
  sockets to a SplicePump (lbd.relay.splice), which moves the payload with os.splice and never
  copies it into Python: about half the CPU per GB.

New connections/s is bounded by per-connection work, so (each was measured):
- no asyncio Task per connection: create_connection's coroutine is stepped by the upstream
  protocol itself, the way a Task would;
- no timer per connect attempt: one watchdog per listener checks connect deadlines every
  connect_timeout/4 (so a timeout fires after T..1.25 T);
- counters are plain ints, flushed into Prometheus once per HOUSEKEEPING_SECONDS;
- client sockets inherit SO_KEEPALIVE and TCP_NODELAY from the listening socket; endpoint
  sockets get TCP_NODELAY from the loop and SO_KEEPALIVE from the housekeeping scan once they
  lived KEEPALIVE_SCAN_SECONDS (probes start after the kernel's 2 h idle time anyway, and short
  connections skip two syscalls);
- one protocol object per side, with __slots__; reference cycles are cut on close.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog

from lbd import metrics
from lbd.balancer import Target, format_target
from lbd.relay import ConnectFailure, Router
from lbd.relay.splice import SplicePump

log = structlog.get_logger("lbd.relay")

# Listen backlog: the kernel caps it at net.core.somaxconn (4096 on Debian 12).
LISTEN_BACKLOG = 65535
# no_endpoint warnings: the first of a burst is logged, the rest counted for this long.
NO_ENDPOINT_LOG_WINDOW = 10.0
# Period of the per-listener housekeeping (metrics flush; idle sweep uses idle_timeout/2 if less).
HOUSEKEEPING_SECONDS = 1.0
# Endpoint sockets older than this get SO_KEEPALIVE (see the module docstring).
KEEPALIVE_SCAN_SECONDS = 5.0
# A read at least this big hints at a bulk transfer; only such reads count toward
# splice_after, so keep-alive request/response traffic stays on Protocols. (A loopback TCP
# segment is 65483 bytes; uvloop and asyncio read up to 256 KiB at a time.)
BULK_READ = 32 * 1024
# As a size: one no read reaches (splice off, or refused for this relay).
_NEVER = 1 << 62
# Linux IP_FREEBIND (include/uapi/linux/in.h); works on AF_INET6 sockets too.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0 s}: close() sends RST, not FIN

_UNREACHABLE_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ENONET}
)


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """Per-listener relay settings; `TcpListener.set_options` applies them to new connections."""

    connect_timeout: float = 2.0  # per attempt
    idle_timeout: float | None = None  # None = tunnel, never idle out (Service.idle_timeout_seconds)
    keepalive: bool = True  # SO_KEEPALIVE on both sides
    # Write buffer marks per side: the most lbd holds for a slow reader per direction (plus one
    # read). Larger marks mean fewer pause/resume round trips on bulk transfers.
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    # After this many bytes in big reads (>= BULK_READ) a relay moves to os.splice
    # (lbd.relay.splice); None = never. Setup and small messages are cheapest on Protocols,
    # bulk transfers on splice.
    splice_after: int | None = 1 << 20


def classify_connect_error(exc: BaseException) -> ConnectFailure:
    """Map a failed create_connection to the reason reported to the router and the metric."""
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure.REFUSED
    if isinstance(exc, (TimeoutError, asyncio.CancelledError)):
        return ConnectFailure.TIMEOUT
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return ConnectFailure.UNREACHABLE
    return ConnectFailure.ERROR


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


def _reset(transport: asyncio.Transport) -> None:
    """Close with a RST (SO_LINGER 0) rather than a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass  # already gone: abort() below still drops it
    transport.abort()


def _own_dup(transport: asyncio.BaseTransport) -> socket.socket | None:
    """A socket object owning a duplicate fd of the transport's socket (for the splice pump)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        return socket.socket(sock.family, socket.SOCK_STREAM, 0, os.dup(sock.fileno()))
    except OSError:
        return None


class _Upstream(asyncio.Protocol):
    """The endpoint side of one relay, and the driver of its own connect attempt.

    It is its own protocol factory (create_connection calls it) and steps create_connection's
    coroutine itself, as a Task would: send() until it yields a future, resume when that is done.
    """

    __slots__ = (
        "client",
        "transport",
        "peer",
        "target",
        "coro",
        "waiter",
        "deadline",
        "cancelled",
        "timed_out",
        "nbytes",
        "bulk_read",
        "eof",
    )

    def __init__(self, client: _Client, target: Target, deadline: float) -> None:
        self.client: _Client | None = client
        self.target = target
        self.deadline = deadline  # loop.time() after which the watchdog gives up
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = client.transport  # where our data goes
        self.coro: Any = None  # create_connection() while connecting
        self.waiter: asyncio.Future[Any] | None = None
        self.cancelled = False
        self.timed_out = False
        self.nbytes = 0  # endpoint -> client
        self.bulk_read = client.bulk_read
        self.eof = False

    def __call__(self) -> _Upstream:
        return self

    # -- connecting ---------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.coro = loop.create_connection(self, self.target[0], self.target[1])
        self._step()

    def _step(self, _done: object = None) -> None:
        coro = self.coro
        if coro is None:
            return
        self.waiter = None
        try:
            if self.cancelled and not (isinstance(_done, asyncio.Future) and _done.cancelled()):
                waiter = coro.throw(asyncio.CancelledError())  # cancel() came between two steps
            else:
                waiter = coro.send(None)
        except StopIteration:
            self._finished(None)
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._finished(exc)
            return
        if waiter is None:  # a bare `yield` (asyncio.sleep(0)): just go again
            asyncio.get_running_loop().call_soon(self._step)
            return
        waiter._asyncio_future_blocking = False  # the handshake Task does with awaited futures
        self.waiter = waiter
        waiter.add_done_callback(self._step)

    def cancel(self, timed_out: bool) -> None:
        """Give up the attempt; like Task.cancel, the coroutine sees CancelledError and cleans up."""
        if self.coro is None or self.cancelled:
            return
        self.cancelled = True
        self.timed_out = timed_out
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()  # wakes _step, whose send() raises CancelledError inside the coroutine

    def _finished(self, exc: BaseException | None) -> None:
        self.coro = None
        client = self.client
        if client is None:
            return
        client.listener.connecting.discard(self)
        if exc is None or client.upstream is not self:
            return  # success (connection_made handled it), or the client went away meanwhile
        reason = ConnectFailure.TIMEOUT if self.timed_out else classify_connect_error(exc)
        client.connect_failed(self.target, reason)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's
        if self.cancelled:
            # The watchdog gave up in the same loop pass the connect succeeded: this attempt is
            # over (the retry is already decided), so the client's bytes must not go here.
            self.peer = None
            transport.abort()
            return
        self.transport = transport
        client = self.client
        assert client is not None
        client.listener.connecting.discard(self)
        client.upstream_connected(self, transport)

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)  # type: ignore[union-attr]  # peer is set while connected
        n = len(data)
        self.nbytes += n
        if n >= self.bulk_read:
            self.client.bulk(n)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        client, peer = self.client, self.peer
        if client is not None and peer is not None and not peer.is_closing():
            if client.eof:
                client.close_both()  # both directions done: close() sends the FIN, no shutdown()
            else:
                peer.write_eof()
        return True  # keep the transport: the other direction may still flow

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()
        if self.client is not None and self.client.splice_waiting:
            self.client.try_splice()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cancelled and self.coro is not None:
            return  # a late connect we aborted: _finished still owes the client its retry
        peer, client = self.peer, self.client
        self.client = self.peer = None  # cut the cycles: refcounting frees the relay at once
        if peer is None or peer.is_closing() or (client is not None and client.pump is not None):
            return
        if exc is not None:
            _reset(peer)
        else:
            peer.close()


class _Client(asyncio.Protocol):
    """The client side of one relay: picks and connects the upstream, keeps the books."""

    __slots__ = (
        "listener",
        "transport",
        "peer",
        "upstream",
        "client_ip",
        "tried",
        "options",
        "pending",
        "nbytes",
        "eof",
        "keepalive_due",
        "bulk_read",
        "bulk_bytes",
        "splice_waiting",
        "pump",
        "finished",
        "swept",
        "idle_for",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None  # the upstream transport once connected
        self.upstream: _Upstream | None = None
        self.client_ip = ""
        self.tried: tuple[Target, ...] = ()
        self.options = listener.options
        self.pending: list[bytes] | None = None  # client data read before the upstream connected
        self.nbytes = 0  # client -> endpoint
        self.eof = False
        self.keepalive_due = 0.0  # loop time after which the endpoint socket gets SO_KEEPALIVE
        # Reads of at least bulk_read bytes count toward options.splice_after.
        self.bulk_read = _NEVER if self.options.splice_after is None else BULK_READ
        self.bulk_bytes = 0
        self.splice_waiting = False  # a switch waits for the write buffers to drain
        self.pump: SplicePump | None = None  # set once the relay moved to splice
        self.finished = False
        self.swept = 0  # bytes moved, as the last idle sweep saw them
        self.idle_for = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.pause_reading()  # honoured by the default loop; uvloop: see data_received
        self.transport = transport
        lst = self.listener
        lst.relays.add(self)
        lst.accepted += 1
        if lst.housekeeping is None:
            lst.arm_housekeeping()
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = peer[0]
        self.connect_next()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:  # not connected yet: keep this chunk and read no more until we are
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self.transport.pause_reading()  # type: ignore[union-attr]
            return
        peer.write(data)
        n = len(data)
        self.nbytes += n
        if n >= self.bulk_read:
            self.bulk(n)

    def eof_received(self) -> bool:
        self.eof = True
        peer, upstream = self.peer, self.upstream
        if peer is not None and upstream is not None and not peer.is_closing():
            if upstream.eof:
                self.close_both()  # both directions done: close() sends the FIN, no shutdown()
            else:
                peer.write_eof()
        return True  # before connecting: passed on by upstream_connected

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()
        if self.splice_waiting:
            self.try_splice()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pump is not None:
            return  # the transports were closed by the switch to splice; the pump carries on
        upstream = self.upstream
        if upstream is not None:
            transport = upstream.transport
            if transport is None:
                self.upstream = None
                upstream.cancel(timed_out=False)  # still connecting: give up the attempt
            elif not transport.is_closing():
                if exc is not None:
                    _reset(transport)
                else:
                    transport.close()
        self._finish()

    def _finish(self) -> None:
        """The relay is over: books, and cut the reference cycles so refcounting frees it."""
        if self.finished:
            return
        self.finished = True
        lst = self.listener
        lst.relays.discard(self)
        upstream, pump = self.upstream, self.pump
        lst.bytes_up += self.nbytes + (pump.up.nbytes if pump is not None else 0)
        if upstream is not None:
            lst.bytes_down += upstream.nbytes + (pump.down.nbytes if pump is not None else 0)
        self.transport = self.peer = self.upstream = None
        if lst.drain_waiter is not None and not lst.relays and not lst.drain_waiter.done():
            lst.drain_waiter.set_result(None)

    # -- splice ---------------------------------------------------------------------------

    def bulk(self, n: int) -> None:
        """A big read went through: past splice_after such bytes, move the relay to splice."""
        self.bulk_bytes += n
        if self.bulk_bytes >= (self.options.splice_after or 0):
            self.try_splice()

    def try_splice(self) -> None:
        """Hand both sockets to a SplicePump once nothing is left in either write buffer."""
        transport, peer, upstream = self.transport, self.peer, self.upstream
        if transport is None or peer is None or upstream is None or self.pump is not None:
            return
        if transport.is_closing() or peer.is_closing():
            return
        if transport.get_write_buffer_size() or peer.get_write_buffer_size():
            if not self.splice_waiting:  # get resume_writing() called only once a buffer is empty
                self.splice_waiting = True
                high = self.options.write_buffer_high
                transport.set_write_buffer_limits(high, 0)
                peer.set_write_buffer_limits(high, 0)
            return
        self.splice_waiting = False
        client_sock = _own_dup(transport)
        upstream_sock = _own_dup(peer)
        pump = None
        if client_sock is not None and upstream_sock is not None:
            try:
                pump = SplicePump.take_over(
                    self.listener.loop,
                    client_sock,
                    upstream_sock,
                    self._pump_done,
                    client_eof=self.eof,
                    upstream_eof=upstream.eof,
                )
            except OSError:
                pump = None  # EMFILE and friends: stay on Protocols
        if pump is None:
            for sock in (client_sock, upstream_sock):
                if sock is not None:
                    sock.close()
            self.bulk_read = upstream.bulk_read = _NEVER
            low, high = self.options.write_buffer_low, self.options.write_buffer_high
            transport.set_write_buffer_limits(high, low)
            peer.set_write_buffer_limits(high, low)
            return
        self.pump = pump
        if self.keepalive_due:
            self.keepalive_due = 0.0
            upstream_sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # type: ignore[union-attr]
        # The pump owns duplicates of both sockets: closing the transports only drops the
        # loop's fds (no FIN: the sockets stay open through the duplicates).
        transport.close()
        peer.close()

    def _pump_done(self, exc: BaseException | None) -> None:
        self._finish()

    # -- relay ----------------------------------------------------------------------------

    def connect_next(self) -> None:
        lst = self.listener
        target = lst.router.pick(self.client_ip, self.tried)
        if target is None:
            self.upstream = None
            lst.no_endpoint(self)
            return
        loop = lst.loop
        upstream = _Upstream(self, target, loop.time() + self.options.connect_timeout)
        self.upstream = upstream
        lst.connecting.add(upstream)
        if lst.watchdog is None:
            lst.arm_watchdog()
        upstream.start(loop)

    def connect_failed(self, target: Target, reason: ConnectFailure) -> None:
        self.listener.connect_failed(target, reason)
        self.tried = (*self.tried, target)
        if self.transport is None or self.transport.is_closing():
            return
        self.connect_next()

    def upstream_connected(self, upstream: _Upstream, transport: asyncio.Transport) -> None:
        client_transport = self.transport
        if self.upstream is not upstream or client_transport is None or client_transport.is_closing():
            transport.abort()  # the client left while we were connecting
            return
        lst = self.listener
        lst.router.connected(upstream.target)
        options = self.options
        high, low = options.write_buffer_high, options.write_buffer_low
        transport.set_write_buffer_limits(high, low)
        client_transport.set_write_buffer_limits(high, low)
        if options.keepalive:
            self.keepalive_due = lst.loop.time() + KEEPALIVE_SCAN_SECONDS
        self.peer = transport
        pending = self.pending
        if pending is not None:
            self.pending = None
            for data in pending:
                transport.write(data)
                self.nbytes += len(data)
        if self.eof:
            transport.write_eof()
        else:
            client_transport.resume_reading()

    def close_both(self) -> None:
        """Both directions ended: close both transports (each flushes what it still holds)."""
        if self.pump is not None:
            self.pump.close()
            return
        if self.transport is not None:
            self.transport.close()
        if self.peer is not None:
            self.peer.close()

    def abort(self) -> None:
        """Reset both sides now (drain timeout, idle with data stuck in a buffer)."""
        if self.pump is not None:
            self.pump.abort()
            return
        for transport in (self.transport, self.peer):
            if transport is not None:  # even if closing: a close() may be stuck flushing
                _reset(transport)

    def buffered(self) -> int:
        if self.pump is not None:
            return self.pump.buffered
        return sum(t.get_write_buffer_size() for t in (self.transport, self.peer) if t is not None)

    def moved(self) -> int:
        """Bytes relayed both ways so far (for the idle sweep)."""
        upstream, pump = self.upstream, self.pump
        n = self.nbytes + (upstream.nbytes if upstream is not None else 0)
        return n if pump is None else n + pump.up.nbytes + pump.down.nbytes


class TcpListener:
    """One listening socket (VIP, port) relaying to the targets its Router picks."""

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
        self.relays: set[_Client] = set()
        self.connecting: set[_Upstream] = set()
        self.drain_waiter: asyncio.Future[None] | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        self.housekeeping: asyncio.TimerHandle | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sock: socket.socket | None = None
        self._no_endpoint_log = BurstLog()
        self._next_keepalive_scan = 0.0
        # Sticky: some relay may carry an idle timeout (relays keep the options they started with).
        self._idle_timeouts = options.idle_timeout is not None
        # Counters as plain ints, flushed into Prometheus by flush_metrics().
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._flushed = (0, 0, 0, 0)  # accepted, bytes up, bytes down, active as last reported
        # Label children bound once: no .labels() on the hot path.
        labels = (service, port_name)
        self._m_connections = metrics.connections_total.labels(*labels)
        self._m_active = metrics.connections_active.labels(*labels)
        self._m_bytes_up = metrics.bytes_total.labels(*labels, "client_to_endpoint")
        self._m_bytes_down = metrics.bytes_total.labels(*labels, "endpoint_to_client")
        self._m_no_endpoint = metrics.no_endpoint_resets_total.labels(*labels)
        self._m_connect_failures: dict[tuple[Target, ConnectFailure], Any] = {}

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen (SO_REUSEADDR; IP_FREEBIND so a VIP can be bound as it is being added)."""
        self.loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Accepted sockets inherit both (Linux clones the listener's socket flags).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(self.options.keepalive))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
            self._server = await self.loop.create_server(
                functools.partial(_Client, self), sock=sock, backlog=LISTEN_BACKLOG
            )
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]

    def stop_accepting(self) -> None:
        """Close the listening socket only; established relays go on."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._sock = None

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
        aborted = list(self.relays)
        for relay in aborted:
            relay.abort()
        if aborted:
            await asyncio.sleep(0)  # let the connection_lost callbacks run
        self.flush_metrics()
        return len(aborted)

    @property
    def active(self) -> int:
        return len(self.relays)

    def set_options(self, options: RelayOptions) -> None:
        """New options for new connections (established relays keep theirs)."""
        old, self.options = self.options, options
        self._idle_timeouts |= options.idle_timeout is not None
        if self._sock is not None and old.keepalive != options.keepalive:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(options.keepalive))

    # -- events from relays -------------------------------------------------------------

    def connect_failed(self, target: Target, reason: ConnectFailure) -> None:
        key = (target, reason)
        child = self._m_connect_failures.get(key)
        if child is None:
            if len(self._m_connect_failures) > 1024:  # endpoint churn: keep the cache bounded
                self._m_connect_failures.clear()
            child = self._m_connect_failures[key] = metrics.connect_failures_total.labels(
                self.service, self.port_name, format_target(target), str(reason)
            )
        child.inc()
        self.router.connect_failed(target, reason)

    def no_endpoint(self, relay: _Client) -> None:
        if relay.transport is not None:
            _reset(relay.transport)
        self._m_no_endpoint.inc()
        suppressed = self._no_endpoint_log.hit(self.clock())
        if suppressed is not None:
            log.warning(
                "no_endpoint",
                service=self.service,
                port=self.port_name,
                client=relay.client_ip,
                tried=[format_target(t) for t in relay.tried],
                suppressed=suppressed,
            )

    # -- connect watchdog -----------------------------------------------------------------

    def arm_watchdog(self) -> None:
        period = max(0.005, self.options.connect_timeout / 4)
        self.watchdog = self.loop.call_later(period, self._watch)

    def _watch(self) -> None:
        self.watchdog = None
        now = self.loop.time()
        for upstream in [u for u in self.connecting if u.deadline <= now]:
            upstream.cancel(timed_out=True)
        if self.connecting:
            self.arm_watchdog()

    # -- housekeeping: metrics flush, idle sweep, late keepalive ----------------------------

    def arm_housekeeping(self) -> None:
        self.housekeeping = self.loop.call_later(self._housekeeping_period(), self._housekeep)

    def _housekeeping_period(self) -> float:
        idle = self.options.idle_timeout
        return HOUSEKEEPING_SECONDS if idle is None else min(HOUSEKEEPING_SECONDS, idle / 2)

    def _housekeep(self) -> None:
        self.housekeeping = None
        period = self._housekeeping_period()
        changed = self.flush_metrics()
        now = self.loop.time()
        keepalive_scan = now >= self._next_keepalive_scan
        if keepalive_scan:
            self._next_keepalive_scan = now + KEEPALIVE_SCAN_SECONDS
        elif not self._idle_timeouts:
            self._rearm_housekeeping(period, changed)
            return  # nothing to look at per relay this round
        for relay in list(self.relays):
            if relay.peer is None:
                continue  # connecting: the watchdog's business
            if keepalive_scan and relay.keepalive_due and relay.keepalive_due <= now and relay.pump is None:
                relay.keepalive_due = 0.0
                sock = relay.peer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            limit = relay.options.idle_timeout
            if limit is not None:
                self._idle_check(relay, limit, period)
        self._rearm_housekeeping(period, changed)

    def _rearm_housekeeping(self, period: float, changed: bool) -> None:
        if self.relays or changed:  # runs while there is anything to watch or flush
            self.housekeeping = self.loop.call_later(period, self._housekeep)

    @staticmethod
    def _idle_check(relay: _Client, limit: float, period: float) -> None:
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
        """Push the plain-int counters into Prometheus; returns whether anything changed."""
        now = (self.accepted, self.bytes_up, self.bytes_down, len(self.relays))
        before = self._flushed
        if now == before:
            return False
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
