"""One relayed TCP connection: the client side and the endpoint side, two mirrored Protocols.

The hot path of lbd (`lbd.relay.tcp` holds the listener that accepts them). Thin asyncio Protocols (uvloop in production; the default loop works
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
- counters are plain ints (the listener's, and its endpoint's books), flushed into Prometheus
  once per HOUSEKEEPING_SECONDS;
- client sockets inherit SO_KEEPALIVE and TCP_NODELAY from the listening socket; endpoint
  sockets get TCP_NODELAY from the loop and SO_KEEPALIVE from the housekeeping scan once they
  lived KEEPALIVE_SCAN_SECONDS (probes start after the kernel's 2 h idle time anyway, and short
  connections skip two syscalls);
- one protocol object per side, with __slots__; reference cycles are cut on close.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from typing import TYPE_CHECKING, Any, cast

from lbd.balancer import Target
from lbd.relay import Failure
from lbd.relay.books import EndpointCounts
from lbd.relay.splice import SplicePump

if TYPE_CHECKING:
    from lbd.relay.tcp import TcpListener

# Endpoint sockets older than this get SO_KEEPALIVE (see the module docstring).
KEEPALIVE_SCAN_SECONDS = 5.0
# A read at least this big hints at a bulk transfer; only such reads count toward
# splice_after, so keep-alive request/response traffic stays on Protocols. (A loopback TCP
# segment is 65483 bytes; uvloop and asyncio read up to 256 KiB at a time.)
BULK_READ = 32 * 1024
# As a size: one no read reaches (splice off, or refused for this relay).
_NEVER = 1 << 62

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0 s}: close() sends RST, not FIN

_UNREACHABLE_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ENONET}
)
# This host is out of something (file descriptors, socket buffers, memory): lbd's problem.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def classify_connect_error(exc: BaseException) -> Failure:
    """Map a failed create_connection to the reason reported to the router and the metric."""
    if isinstance(exc, ConnectionRefusedError):
        return Failure.REFUSED
    if isinstance(exc, (TimeoutError, asyncio.CancelledError)):
        return Failure.TIMEOUT
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return Failure.UNREACHABLE
    if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
        return Failure.LOCAL
    return Failure.ERROR


def reset(transport: asyncio.Transport) -> None:
    """Close with a RST (SO_LINGER 0) rather than a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except (OSError, ValueError):  # uvloop: ValueError once the transport dropped its fd
            pass  # already gone: abort() below still drops it
    transport.abort()


def cap_buffers(transport: asyncio.BaseTransport, size: int) -> None:
    """Cap the kernel buffers of the endpoint socket (client sockets inherit the listener's):
    a client that stops reading then holds ~4 x size of kernel memory, not ~10 MiB."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except (OSError, ValueError):  # uvloop: ValueError once the transport dropped its fd
        pass  # gone already: nothing to cap


def _own_dup(transport: asyncio.BaseTransport) -> socket.socket | None:
    """A socket object owning a duplicate fd of the transport's socket (for the splice pump)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        return socket.socket(sock.family, socket.SOCK_STREAM, 0, os.dup(sock.fileno()))
    except OSError:
        return None


class Upstream(asyncio.Protocol):
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
        "lost",
        "counts",
    )

    def __init__(self, client: Client, target: Target, deadline: float) -> None:
        self.client: Client | None = client
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
        self.lost = False  # connection_lost came: the endpoint side is closed
        self.counts: EndpointCounts | None = None  # the endpoint's books, once connected

    def __call__(self) -> Upstream:
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
        reason = Failure.TIMEOUT if self.timed_out else classify_connect_error(exc)
        if reason is Failure.LOCAL:
            client.local_failure(cast(OSError, exc))
        else:
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
        if self.client is not None:
            self.client.stalled()  # the endpoint reads slowly

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()
        if self.client is not None and self.client.splice_waiting:
            self.client.try_splice()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.cancelled and self.coro is not None:
            return  # a late connect we aborted: _finished still owes the client its retry
        self.lost = True
        peer, client = self.peer, self.client
        self.client = self.peer = None  # cut the cycles: refcounting frees the relay at once
        if client is not None and client.client_gone:
            client._finish()  # the client side closed first; this side has now flushed too
        if peer is None or peer.is_closing() or (client is not None and client.pump is not None):
            return
        if exc is not None:
            reset(peer)
        else:
            peer.close()


class Client(asyncio.Protocol):
    """The client side of one relay: picks and connects the upstream, keeps the books."""

    __slots__ = (
        "listener",
        "transport",
        "peer",
        "upstream",
        "client_ip",
        "tried",
        "options",
        "tcp",
        "pending",
        "nbytes",
        "eof",
        "keepalive_due",
        "bulk_read",
        "bulk_bytes",
        "splice_waiting",
        "buffers_capped",
        "pump",
        "finished",
        "client_gone",
        "swept",
        "idle_for",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None  # the upstream transport once connected
        self.upstream: Upstream | None = None
        self.client_ip = ""
        self.tried: tuple[Target, ...] = ()
        self.options = listener.options
        self.tcp = listener.tcp
        self.pending: list[bytes] | None = None  # client data read before the upstream connected
        self.nbytes = 0  # client -> endpoint
        self.eof = False
        self.keepalive_due = 0.0  # loop time after which the endpoint socket gets SO_KEEPALIVE
        # Reads of at least bulk_read bytes count toward options.splice_after.
        self.bulk_read = _NEVER if self.tcp.splice_after is None else BULK_READ
        self.bulk_bytes = 0
        self.splice_waiting = False  # a switch waits for the write buffers to drain
        self.buffers_capped = False  # the endpoint socket's kernel buffers (see stalled())
        self.pump: SplicePump | None = None  # set once the relay moved to splice
        self.finished = False
        self.client_gone = False  # the client side closed while the endpoint side still flushes
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
        self.stalled()  # the client reads slowly

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()
        if self.splice_waiting:
            self.try_splice()

    def stalled(self) -> None:
        """One side fell behind, or a bulk transfer begins: cap the endpoint socket's buffers now.

        Client sockets inherit the cap from the listener at no cost; the endpoint socket gets
        it when a relay can start to queue (a side falls behind, or the relay moves to splice),
        not per connection: two setsockopt calls cost ~9 us of the ~85 us a short connection
        costs in all, and a short request/response never queues.
        """
        peer = self.peer
        if self.buffers_capped or peer is None:
            return
        self.buffers_capped = True
        if self.options.socket_buffer:
            cap_buffers(peer, self.options.socket_buffer)

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
                    reset(transport)
                else:
                    transport.close()
            if upstream.transport is not None and not upstream.lost:
                # The endpoint side may still be flushing what the client sent before its FIN:
                # the relay ends (and a drain counts it as done) once that side is closed too.
                self.client_gone = True
                return
        self._finish()

    def _finish(self) -> None:
        """The relay is over: books, and cut the reference cycles so refcounting frees it."""
        if self.finished:
            return
        self.finished = True
        lst = self.listener
        lst.relays.discard(self)
        upstream, pump = self.upstream, self.pump
        up = self.nbytes + (pump.up.nbytes if pump is not None else 0)
        lst.bytes_up += up
        if upstream is not None:
            down = upstream.nbytes + (pump.down.nbytes if pump is not None else 0)
            lst.bytes_down += down
            counts = upstream.counts
            if counts is not None:
                counts.closed += 1
                counts.bytes_up += up
                counts.bytes_down += down
        self.transport = self.peer = self.upstream = None
        if lst.drain_waiter is not None and not lst.relays and not lst.drain_waiter.done():
            lst.drain_waiter.set_result(None)

    # -- splice ---------------------------------------------------------------------------

    def bulk(self, n: int) -> None:
        """A big read went through: past splice_after such bytes, move the relay to splice."""
        self.bulk_bytes += n
        if self.bulk_bytes >= (self.tcp.splice_after or 0):
            self.try_splice()

    def try_splice(self) -> None:
        """Hand both sockets to a SplicePump once nothing is left in either write buffer."""
        transport, peer, upstream = self.transport, self.peer, self.upstream
        if transport is None or peer is None or upstream is None or self.pump is not None:
            return
        if transport.is_closing() or peer.is_closing():
            return
        self.stalled()  # a bulk transfer: cap the endpoint socket before the pump owns it
        if transport.get_write_buffer_size() or peer.get_write_buffer_size():
            if not self.splice_waiting:  # get resume_writing() called only once a buffer is empty
                self.splice_waiting = True
                high = self.tcp.write_buffer_high
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
            low, high = self.tcp.write_buffer_low, self.tcp.write_buffer_high
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
        upstream = Upstream(self, target, loop.time() + self.options.connect_timeout)
        self.upstream = upstream
        lst.connecting.add(upstream)
        if lst.watchdog is None:
            lst.arm_watchdog()
        upstream.start(loop)

    def connect_failed(self, target: Target, reason: Failure) -> None:
        self.listener.failed(target, reason)
        self.tried = (*self.tried, target)
        if self.transport is None or self.transport.is_closing():
            return
        self.connect_next()

    def local_failure(self, exc: OSError) -> None:
        """lbd could not even make the attempt (no fd, no buffer): no endpoint is to blame and
        every other one would fail the same way, so the client is reset now."""
        self.upstream = None
        self.listener.local_failure(exc)
        if self.transport is not None and not self.transport.is_closing():
            reset(self.transport)

    def upstream_connected(self, upstream: Upstream, transport: asyncio.Transport) -> None:
        client_transport = self.transport
        if self.upstream is not upstream or client_transport is None or client_transport.is_closing():
            transport.abort()  # the client left while we were connecting
            return
        lst = self.listener
        lst.router.succeeded(upstream.target)
        upstream.counts = counts = lst.books.of(upstream.target)
        counts.opened += 1
        tcp = self.tcp
        high, low = tcp.write_buffer_high, tcp.write_buffer_low
        transport.set_write_buffer_limits(high, low)
        client_transport.set_write_buffer_limits(high, low)
        if tcp.keepalive:
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
                reset(transport)

    def buffered(self) -> int:
        if self.pump is not None:
            return self.pump.buffered
        return sum(t.get_write_buffer_size() for t in (self.transport, self.peer) if t is not None)

    def moved(self) -> int:
        """Bytes relayed both ways so far (for the idle sweep)."""
        upstream, pump = self.upstream, self.pump
        n = self.nbytes + (upstream.nbytes if upstream is not None else 0)
        return n if pump is None else n + pump.up.nbytes + pump.down.nbytes
