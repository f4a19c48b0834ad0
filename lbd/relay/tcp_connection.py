"""One relayed TCP connection: the client socket and the endpoint socket, on the reactor.

`lbd.relay.tcp` accepts; this is what happens to one client after that. Raw non-blocking
sockets registered once, edge-triggered, in the reactor (lbd.relay.reactor); one Relay object
per connection. The decisions (which endpoint, is it ejected) live in the Router.

Guarantees (the relay's tests check each):
- client data is not read before the endpoint's connect succeeded, so nothing the client sent
  early is lost or sent to an endpoint that failed;
- each connect attempt has `connect_timeout` (one watchdog per listener, no timer per
  connection); a refused/unreachable/timed-out attempt is reported to the router and the next
  target it picks is tried; when none is left the client gets a RST;
- bytes are relayed in order; EOF read on one side becomes shutdown(SHUT_WR) on the other and
  the other direction keeps flowing; both sockets close once both sides sent their EOF;
- a reset (or any socket error) on one side resets the other;
- flow control: what a side cannot take at once is kept (at most one read, BUF_SIZE) and its
  source is not read again until that is written, so a slow reader costs at most one read per
  direction in lbd plus the capped kernel buffers;
- idle relays (no byte either way for `idle_timeout`) are closed by the listener's sweep;
- bulk: a relay that moved `splice_after` bytes in big reads hands its two sockets to a
  SplicePump (lbd.relay.splice): payload never enters Python from then on.

What a short connection costs, and why (each was measured against HAProxy, same core):
- syscalls: accept (batched), getsockname (CPython checks a fd it wraps in a socket object),
  socket, TCP_NODELAY, connect, two epoll_ctl ADD, then only the reads, writes, one shutdown
  and the two closes: ~14 per short connection against HAProxy's ~18 (bench/RESULTS.md). No
  getpeername (the client's address comes with accept), no SO_ERROR on success (EPOLLOUT
  without ERR means connected),
  no epoll_ctl MOD unless a client reads slowly, no EAGAIN read after a short read (the next
  arrival raises a new edge), no read for an EOF that epoll reported before a short read
  (EPOLLRDHUP: the FIN is queued after every byte, so a short read reached it);
- the client socket stays blocking for the kernel (O_NONBLOCK would cost two fcntl): every read
  and write on it passes MSG_DONTWAIT instead (the endpoint socket is born non-blocking);
- one Python object per connection: the two directions are written out as mirror images
  (`_up`, `_down`) rather than as a per-direction object (the splice pump's `_Flow` has one),
  which would be two more objects per connection and an indirection on every read;
- one shared 256 KiB read buffer for every relay of the loop, written on with one
  `send(memoryview)`: no allocation per message unless the destination is full;
- SO_KEEPALIVE on the endpoint socket comes from the housekeeping scan once the relay lived
  KEEPALIVE_SCAN_SECONDS; client sockets inherit it (and TCP_NODELAY, the buffer cap) from the
  listening socket; the endpoint socket's buffers are capped when a relay can first queue.
"""

from __future__ import annotations

import _socket
import errno
import socket
import struct
from typing import TYPE_CHECKING

from lbd.balancer import Target
from lbd.relay import Failure
from lbd.relay.books import EndpointCounts
from lbd.relay.reactor import ERR, ET, HUP, IN, OUT, RDHUP, Reactor
from lbd.relay.splice import SplicePump

if TYPE_CHECKING:
    from lbd.relay.tcp import TcpListener

# Endpoint sockets older than this get SO_KEEPALIVE (see the module docstring).
KEEPALIVE_SCAN_SECONDS = 5.0
# One read; also the most lbd keeps per direction for a destination that cannot take it.
BUF_SIZE = 256 * 1024
# Full reads per direction and wake-up (2 MiB) before the other relays get their turn.
MAX_READS = 8
# A read at least this big hints at a bulk transfer; only such reads count toward
# splice_after, so request/response traffic never moves to splice. (A loopback segment is 65483.)
BULK_READ = 32 * 1024
_NEVER = 1 << 62  # as a read size: splice off, or refused for this relay

CLIENT_EVENTS = IN | RDHUP | ET  # EPOLLOUT only once a client read slowly (an epoll_ctl MOD)
CLIENT_EVENTS_OUT = CLIENT_EVENTS | OUT
UPSTREAM_EVENTS = IN | OUT | RDHUP | ET  # EPOLLOUT says the connect finished, then: room again
_GONE = HUP | ERR  # both directions shut, or an error (RST) pending
_EOF_SEEN = RDHUP | HUP | ERR  # a read after a short one must still happen: it returns EOF/error
# What epoll said of a side's end (c_end/u_end): its FIN arrived (RDHUP or HUP: every byte it
# sent is queued before it, so a short read after it drained the socket and the EOF read can be
# skipped), or an error is pending (the read must happen: it reports the error).
_FIN, _FAILED = 1, 2
_READABLE = IN | _EOF_SEEN

_DONTWAIT = socket.MSG_DONTWAIT
_BUF = bytearray(BUF_SIZE)
_MV = memoryview(_BUF)
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0 s}: close() sends RST, not FIN
_SOL_SOCKET, _SO_LINGER, _SO_ERROR = socket.SOL_SOCKET, socket.SO_LINGER, socket.SO_ERROR
_SHUT_WR = socket.SHUT_WR
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_INET, _INET6 = socket.AF_INET, socket.AF_INET6
_TCP, _NODELAY = socket.IPPROTO_TCP, socket.TCP_NODELAY

_UNREACHABLE_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ENONET}
)
# This host is out of something (file descriptors, socket buffers, memory): lbd's problem.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def classify_errno(code: int) -> Failure:
    """A failed connect's errno as the reason reported to the router and the metric."""
    if code == errno.ECONNREFUSED:
        return Failure.REFUSED
    if code == errno.ETIMEDOUT:
        return Failure.TIMEOUT
    if code in _UNREACHABLE_ERRNOS:
        return Failure.UNREACHABLE
    if code in LOCAL_ERRNOS:
        return Failure.LOCAL
    return Failure.ERROR


def classify_connect_error(exc: BaseException) -> Failure:
    """The same for an exception (the health checker's connects, and tests)."""
    if isinstance(exc, ConnectionRefusedError):
        return Failure.REFUSED
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, OSError) and exc.errno is not None:
        return classify_errno(exc.errno)
    return Failure.ERROR


def new_upstream_socket(family: int) -> socket.socket:
    """A non-blocking TCP socket (one syscall: the flag comes with socket()); tests wrap it."""
    return _socket.socket(family, _STREAM_NONBLOCK)  # type: ignore[return-value]


class Relay:
    """One client connection and the endpoint it was relayed to (or is being connected to)."""

    __slots__ = (
        "listener",
        "reactor",
        "cs",
        "cfd",
        "us",
        "ufd",
        "client_ip",
        "tried",
        "target",
        "deadline",
        "connecting",
        "options",
        "tcp",
        "c_readable",  # the client socket may hold unread data (edge-triggered bookkeeping)
        "c_end",  # epoll saw the client's FIN (_FIN) or an error (_FAILED): read on after a short read
        "c_drained",  # a short read after the FIN: nothing is left but the EOF
        "c_eof",  # the client's EOF was read (and passed on)
        "c_out",  # EPOLLOUT registered for the client (it read slowly once)
        "u_readable",
        "u_end",
        "u_drained",
        "u_eof",
        "up_pending",  # client bytes the endpoint could not take yet
        "down_pending",  # endpoint bytes the client could not take yet
        "nbytes",  # client -> endpoint
        "down_nbytes",  # endpoint -> client
        "bulk_read",
        "bulk_bytes",
        "counts",
        "keepalive_due",
        "buffers_capped",
        "pump",
        "finished",
        "swept",
        "idle_for",
    )

    def __init__(self, listener: TcpListener, reactor: Reactor, cs: socket.socket, cfd: int, client_ip: str) -> None:
        self.listener = listener
        self.reactor = reactor
        self.cs: socket.socket | None = cs
        self.cfd = cfd
        self.us: socket.socket | None = None
        self.ufd = -1
        self.client_ip = client_ip
        self.tried: tuple[Target, ...] = ()
        self.target: Target | None = None
        self.deadline = 0.0  # loop.time() after which the watchdog gives up the connect
        self.connecting = False
        self.options = listener.options  # a relay keeps the options it started with
        self.tcp = listener.tcp
        self.c_readable = self.c_eof = self.c_out = self.c_drained = False
        self.u_readable = self.u_eof = self.u_drained = False
        self.c_end = self.u_end = 0
        self.up_pending: memoryview | None = None
        self.down_pending: memoryview | None = None
        self.nbytes = 0
        self.down_nbytes = 0
        self.bulk_read = _NEVER if self.tcp.splice_after is None else BULK_READ
        self.bulk_bytes = 0
        self.counts: EndpointCounts | None = None
        self.keepalive_due = 0.0  # loop time after which the endpoint socket gets SO_KEEPALIVE
        self.buffers_capped = False
        self.pump: SplicePump | None = None
        self.finished = False
        self.swept = 0  # bytes moved, as the last idle sweep saw them
        self.idle_for = 0.0

    # -- connecting -------------------------------------------------------------------------

    def connect_next(self) -> None:
        """Connect to the next target the router picks; RST the client when none is left."""
        lst = self.listener
        while True:
            target = lst.router.pick(self.client_ip, self.tried)
            if target is None:
                lst.no_endpoint(self.client_ip, self.tried)
                self._close(rst=True)
                return
            host = target[0]
            try:
                us = new_upstream_socket(_INET6 if ":" in host else _INET)
            except OSError as exc:  # EMFILE and friends: lbd's own limit, no endpoint to blame
                self._local_failure(exc)
                return
            try:
                us.setsockopt(_TCP, _NODELAY, 1)
                code = us.connect_ex(target)
            except OSError as exc:
                code = exc.errno or errno.EIO
            if code == errno.EINPROGRESS or code == 0:
                break
            us.close()
            failure = classify_errno(code)
            if failure is Failure.LOCAL:
                self._local_failure(OSError(code, errno.errorcode.get(code, str(code))))
                return
            lst.failed(target, failure)
            self.tried = (*self.tried, target)
        self.us, self.ufd, self.target = us, us.fileno(), target
        self.connecting = True
        self.deadline = lst.loop.time() + self.options.connect_timeout
        self.reactor.add(self.ufd, self, UPSTREAM_EVENTS)
        lst.connecting.add(self)
        if lst.watchdog is None:
            lst.arm_watchdog()

    def _connected(self) -> None:
        self.connecting = False
        lst = self.listener
        lst.connecting.discard(self)
        target = self.target
        lst.router.succeeded(target)  # type: ignore[arg-type]
        self.counts = counts = lst.books.of(target)  # type: ignore[arg-type]
        counts.opened += 1
        if self.tcp.keepalive:
            self.keepalive_due = lst.loop.time() + KEEPALIVE_SCAN_SECONDS

    def _attempt_failed(self, failure: Failure) -> None:
        """This attempt is over (refused, unreachable, timed out): drop it, try the next target."""
        target = self.target
        self.connecting = False
        self.listener.connecting.discard(self)
        us = self.us
        self.us, self.ufd, self.target = None, -1, None
        if us is not None:
            self.reactor.close(us)
        self.listener.failed(target, failure)  # type: ignore[arg-type]
        self.tried = (*self.tried, target)  # type: ignore[arg-type]
        self.connect_next()

    def timed_out(self) -> None:
        """The watchdog gave up this connect attempt."""
        if self.connecting and not self.finished:
            self._attempt_failed(Failure.TIMEOUT)

    def _local_failure(self, exc: OSError) -> None:
        """lbd could not even make the attempt (no fd, no buffer): every other endpoint would fail
        the same way and none is to blame, so the client is reset now."""
        self.listener.local_failure(exc)
        self._close(rst=True)

    # -- events -------------------------------------------------------------------------------

    def on_event(self, fd: int, events: int) -> None:
        if fd == self.ufd:
            if self.connecting:
                if events & _GONE:
                    code = self.us.getsockopt(_SOL_SOCKET, _SO_ERROR)  # type: ignore[union-attr]
                    self._attempt_failed(classify_errno(code) if code else Failure.ERROR)
                    return
                if not events & OUT:
                    return
                self._connected()
                if self.c_readable:
                    self._up()  # the client spoke first (a request): relay it at once
                    if self.finished:
                        return
            elif events & OUT and self.up_pending is not None:
                self._up()  # room again at the endpoint: flush, then read the client on
                if self.finished:
                    return
            if events & _READABLE:
                self.u_readable = True
                if events & _EOF_SEEN:
                    if events & ERR:  # the read must report it, even after a FIN
                        self.u_end, self.u_drained = _FAILED, False
                    elif not self.u_end:
                        self.u_end = _FIN
                self._down()
            return
        # The client socket.
        if events & _READABLE:
            self.c_readable = True
            if events & _EOF_SEEN:
                if events & ERR:
                    self.c_end, self.c_drained = _FAILED, False
                elif not self.c_end:
                    self.c_end = _FIN
        if self.connecting or self.us is None:
            if events & _GONE:  # reset (or gone both ways) before we could connect: give up
                self._close(rst=True)
            return  # data waits in the kernel until the endpoint is connected
        if events & OUT and self.down_pending is not None:
            self._down()
            if self.finished:
                return
        if self.c_readable:
            self._up()

    def resume(self) -> None:
        """Called after a batch when a direction stopped early with data left (fairness)."""
        if self.finished or self.pump is not None or self.connecting:
            return
        if self.c_readable:
            self._up()
        if self.u_readable and not self.finished:
            self._down()

    # -- moving bytes -------------------------------------------------------------------------

    def _up(self) -> None:
        """Client -> endpoint: flush what waits, then read the client while the endpoint takes it."""
        us = self.us
        pending = self.up_pending
        if pending is not None:
            try:
                sent = us.send(pending)  # type: ignore[union-attr]
            except BlockingIOError:
                return
            except OSError as exc:
                self._error(exc)
                return
            if sent < len(pending):
                self.up_pending = pending[sent:]
                return
            self.up_pending = None
        cs = self.cs
        for _ in range(MAX_READS):
            if not self.c_readable:
                return
            if self.c_drained:  # the read would return 0: skip it
                self.c_readable = False
                self.c_eof = True
                self._eof_from(client=True)
                return
            try:
                n = cs.recv_into(_BUF, BUF_SIZE, _DONTWAIT)  # type: ignore[union-attr]
            except BlockingIOError:
                self.c_readable = False
                return
            except OSError as exc:
                self._error(exc)
                return
            if n == 0:
                self.c_readable = False
                self.c_eof = True
                self._eof_from(client=True)
                return
            self.nbytes += n
            if n < BUF_SIZE:
                end = self.c_end
                if not end:
                    self.c_readable = False  # drained: new data raises a new edge
                elif end == _FIN:
                    self.c_drained = True
            try:
                sent = us.send(_MV[:n])  # type: ignore[union-attr]
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._error(exc)
                return
            if sent < n:
                self.up_pending = memoryview(_MV[sent:n].tobytes())
                self.stalled()  # EPOLLOUT (registered) resumes this direction
                return
            if n >= self.bulk_read:
                self.bulk(n)
                if self.pump is not None:
                    return
        if self.c_readable:
            self.reactor.again(self)

    def _down(self) -> None:
        """Endpoint -> client: the mirror of _up (EPOLLOUT on the client is added when first needed)."""
        cs = self.cs
        pending = self.down_pending
        if pending is not None:
            try:
                sent = cs.send(pending, _DONTWAIT)  # type: ignore[union-attr]
            except BlockingIOError:
                return
            except OSError as exc:
                self._error(exc)
                return
            if sent < len(pending):
                self.down_pending = pending[sent:]
                return
            self.down_pending = None
        us = self.us
        for _ in range(MAX_READS):
            if not self.u_readable:
                return
            if self.u_drained:
                self.u_readable = False
                self.u_eof = True
                self._eof_from(client=False)
                return
            try:
                n = us.recv_into(_BUF)  # type: ignore[union-attr]  # (non-blocking: no flags to parse)
            except BlockingIOError:
                self.u_readable = False
                return
            except OSError as exc:
                self._error(exc)
                return
            if n == 0:
                self.u_readable = False
                self.u_eof = True
                self._eof_from(client=False)
                return
            self.down_nbytes += n
            if n < BUF_SIZE:
                end = self.u_end
                if not end:
                    self.u_readable = False
                elif end == _FIN:
                    self.u_drained = True
            try:
                sent = cs.send(_MV[:n], _DONTWAIT)  # type: ignore[union-attr]
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._error(exc)
                return
            if sent < n:
                self.down_pending = memoryview(_MV[sent:n].tobytes())
                if not self.c_out:
                    self.c_out = True
                    self.reactor.modify(self.cfd, CLIENT_EVENTS_OUT)
                self.stalled()
                return
            if n >= self.bulk_read:
                self.bulk(n)
                if self.pump is not None:
                    return
        if self.u_readable:
            self.reactor.again(self)

    def _eof_from(self, client: bool) -> None:
        """One side sent its FIN (all its data was written on): pass it on, or end the relay.

        An EOF is only read with nothing pending toward the other side, so when both EOFs are in
        everything was delivered and close() sends the last FIN (no shutdown needed).
        """
        if self.u_eof and self.c_eof:
            self._close(rst=False)
            return
        other = self.us if client else self.cs
        try:
            other.shutdown(_SHUT_WR)  # type: ignore[union-attr]
        except OSError:
            pass  # that side is gone: reading it reports the error

    def _error(self, exc: OSError) -> None:
        """A socket error on either side (a RST, EPIPE): reset both."""
        self._close(rst=True)

    # -- flow control and bulk ----------------------------------------------------------------

    def stalled(self) -> None:
        """A side fell behind, or a bulk transfer begins: cap the endpoint socket's buffers now.

        Client sockets inherit the cap from the listener at no cost; the endpoint socket gets it
        when a relay can start to queue, not per connection (two setsockopt calls are ~10 % of a
        short connection's cost, and a short request/response never queues).
        """
        if self.buffers_capped:
            return
        self.buffers_capped = True
        size = self.options.socket_buffer
        us = self.us
        if size and us is not None:
            try:
                us.setsockopt(_SOL_SOCKET, socket.SO_SNDBUF, size)
                us.setsockopt(_SOL_SOCKET, socket.SO_RCVBUF, size)
            except OSError:
                pass  # gone already: nothing to cap

    def bulk(self, n: int) -> None:
        """A big read went through: past splice_after such bytes, move the relay to splice."""
        self.bulk_bytes += n
        if self.bulk_bytes >= (self.tcp.splice_after or 0):
            self.try_splice()

    def try_splice(self) -> None:
        """Hand both sockets to a SplicePump (when nothing waits in lbd in either direction)."""
        cs, us = self.cs, self.us
        if cs is None or us is None or self.pump is not None or self.finished or self.connecting:
            return
        if self.up_pending is not None or self.down_pending is not None:
            return  # the next big read tries again
        self.stalled()  # a bulk transfer: cap the endpoint socket before the pump owns it
        reactor = self.reactor
        reactor.remove(self.cfd)
        reactor.remove(self.ufd)
        pump = None
        try:
            cs.setblocking(False)  # splice(2) honours O_NONBLOCK only
            pump = SplicePump.take_over(
                self.listener.loop, cs, us, self._pump_done, client_eof=self.c_eof, upstream_eof=self.u_eof
            )
        except OSError:
            pump = None
        if pump is None:  # no pipes (the user's pipe budget is spent): stay here, never retry
            self.bulk_read = _NEVER
            reactor.add(self.cfd, self, CLIENT_EVENTS_OUT if self.c_out else CLIENT_EVENTS)
            reactor.add(self.ufd, self, UPSTREAM_EVENTS)
            return
        self.pump = pump
        if self.keepalive_due:
            self.keepalive_due = 0.0
            us.setsockopt(_SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def _pump_done(self, exc: BaseException | None) -> None:
        self.cs = self.us = None  # the pump closed them
        self._finish()

    # -- the end ------------------------------------------------------------------------------

    def _close(self, rst: bool) -> None:
        """Close both sockets (RST with `rst`: SO_LINGER 0) and end the relay."""
        if self.finished:
            return
        if self.connecting:
            self.connecting = False
            self.listener.connecting.discard(self)
        reactor = self.reactor
        for sock in (self.cs, self.us):
            if sock is None:
                continue
            if rst:
                try:
                    sock.setsockopt(_SOL_SOCKET, _SO_LINGER, _LINGER_RST)
                except OSError:
                    pass
            reactor.close(sock)
        self.cs = self.us = None
        self._finish()

    def _finish(self) -> None:
        """Books, and out of the listener's set (a drain waits for that)."""
        if self.finished:
            return
        self.finished = True
        lst = self.listener
        lst.relays.discard(self)
        pump = self.pump
        up, down = self.nbytes, self.down_nbytes
        if pump is not None:
            up += pump.up.nbytes
            down += pump.down.nbytes
        lst.bytes_up += up
        lst.bytes_down += down
        counts = self.counts
        if counts is not None:
            counts.closed += 1
            counts.bytes_up += up
            counts.bytes_down += down
        self.up_pending = self.down_pending = None
        if lst.drain_waiter is not None and not lst.relays and not lst.drain_waiter.done():
            lst.drain_waiter.set_result(None)

    def close_both(self) -> None:
        """End the relay now, politely: FIN both ways (idle timeout with nothing buffered)."""
        if self.pump is not None:
            self.pump.close()
            return
        self._close(rst=False)

    def abort(self) -> None:
        """Reset both sides now (drain timeout, idle with data stuck, a forced stop)."""
        if self.pump is not None:
            self.pump.abort()
            return
        self._close(rst=True)

    def buffered(self) -> int:
        if self.pump is not None:
            return self.pump.buffered
        return len(self.up_pending or b"") + len(self.down_pending or b"")

    def moved(self) -> int:
        """Bytes relayed both ways so far (for the idle sweep)."""
        n = self.nbytes + self.down_nbytes
        pump = self.pump
        return n if pump is None else n + pump.up.nbytes + pump.down.nbytes

    def upstream_socket(self) -> socket.socket | None:
        """The endpoint socket while the relay holds it (connected, not handed to a pump)."""
        return None if self.connecting or self.pump is not None else self.us

    def sockets(self) -> tuple[socket.socket | None, socket.socket | None]:
        return self.cs, self.us
