"""Running one probe: a fresh connection, one answer, closed; never longer than its timeout.

`prepare(spec)` works out once per endpoint where to connect and what to send;
`Prober.start` starts one probe and calls `done` exactly once with the result (from a later
loop iteration, never from inside `start`); `ProbeRun.cancel` drops it without a result.
Each probe opens its own connection and closes it after the answer, as the kubelet does, so
nothing (no pooled connection) can hide a dead backend.

- tcpSocket: success once the connect completes; closed with a FIN.
- httpGet: one HTTP/1.1 GET (lbd.health.http builds it and reads the status line); 200-399
  passes. The connection is reset as soon as the status line is in, as HAProxy closes its
  checks: the answer is all there is to read, and no TIME_WAIT piles up at 1,000 probes/s.
- httpGet with scheme HTTPS: the same over TLS without certificate verification (the kubelet
  does not verify either), through an asyncio SSL transport, closed gracefully.

Plain TCP and HTTP probes are non-blocking sockets in one edge-triggered epoll that the loop
watches as a single fd (`Prober`): one epoll_ctl per probe and no task, transport or loop
handle per probe (uvloop's add_reader/remove_reader cost six epoll_ctl calls and an ioctl).
Like HAProxy they send the request right after the connect when the handshake is already
done (on a LAN it usually is not: then the socket's writability says when).
bench/probes.py measures the cost.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from lbd.health import http
from lbd.health.probe import Outcome, ProbeResult, ProbeSpec, probe_kind
from lbd.model import HTTPGetAction

Done = Callable[[ProbeResult], None]
# Bytes read per recv while waiting for the status line.
RECV_BYTES = 8192
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0 s}: close() sends RST, not FIN
_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

# Certificates are not verified, as the kubelet does not: a probe asks "does it answer", and
# backends often serve self-signed certificates.
_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A probe prepared once per endpoint: where it connects, what it sends, how long it may take."""

    spec: ProbeSpec
    kind: str  # http, https, tcp
    family: int
    address: tuple[str, int]
    request: bytes | None  # None: tcpSocket, a connect is all
    timeout: float
    server_hostname: str  # TLS SNI: httpGet's host, or none


def prepare(spec: ProbeSpec) -> ProbeTarget:
    """Everything a probe of `spec` needs, worked out once (the checker keeps it per endpoint)."""
    action = spec.probe.action
    http_get = action if isinstance(action, HTTPGetAction) else None
    return ProbeTarget(
        spec=spec,
        kind=probe_kind(spec.probe),
        family=socket.AF_INET6 if spec.address.version == 6 else socket.AF_INET,
        address=(str(spec.address), action.port),
        request=http.request(http_get, spec.address) if http_get is not None else None,
        timeout=float(spec.probe.timeout_seconds),
        server_hostname=(http_get.host or "") if http_get is not None else "",
    )


def connect_failure(err: int) -> tuple[Outcome, str]:
    """An errno from connect() as an outcome and the words `lbd get` shows."""
    if err == errno.ECONNREFUSED:
        return Outcome.REFUSED, "connect refused"
    if err == errno.ETIMEDOUT:
        return Outcome.TIMEOUT, "connect timed out"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Outcome.ERROR, "connect failed: unreachable"
    return Outcome.ERROR, f"connect failed: {os.strerror(err)}"


class ProbeRun:
    """One probe in flight."""

    __slots__ = ("loop", "target", "clock", "done", "started", "finished", "timer")
    RESET_AFTER_ANSWER = False  # close with a RST once the answer is in (plain sockets)

    def __init__(self, loop: asyncio.AbstractEventLoop, target: ProbeTarget, clock: Callable[[], float], done: Done):
        self.loop = loop
        self.target = target
        self.clock = clock
        self.done = done
        self.started = clock()
        self.finished = False
        self.timer: asyncio.TimerHandle | None = loop.call_later(target.timeout, self._timed_out)

    def cancel(self) -> None:
        """Drop the probe: close its connection, report nothing."""
        if not self.finished:
            self.finished = True
            self._stop_timer()
            self._close(abort=True)

    def _timed_out(self) -> None:
        self.timer = None
        self._finish(Outcome.TIMEOUT, f"timeout after {self.target.timeout:g}s", abort=True)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None  # the handle holds a bound method of ours: no cycle left for the GC

    def _finish(self, outcome: Outcome, detail: str, abort: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self._stop_timer()
        self._close(abort)
        now = self.clock()
        self.done(ProbeResult(outcome, detail, now - self.started, now))

    def _answered(self, received: bytes) -> bool:
        """Judge an HTTP answer once its status line is in; False while more is needed."""
        try:
            code = http.status(received)
        except http.BadResponse as exc:
            self._finish(Outcome.ERROR, f"probe error: {exc}", abort=self.RESET_AFTER_ANSWER)
            return True
        if code is None:
            return False
        outcome = Outcome.SUCCESS if http.succeeded(code) else Outcome.FAILURE
        self._finish(outcome, f"HTTP {code}", abort=self.RESET_AFTER_ANSWER)
        return True

    def _close(self, abort: bool) -> None:
        raise NotImplementedError


_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_OUT = select.EPOLLOUT | select.EPOLLET
_ERR = select.EPOLLERR | select.EPOLLHUP
_EVENTS_PER_WAKEUP = 1024


class Prober:
    """Starts probes on one loop. Plain sockets share one edge-triggered epoll, which the loop
    watches as a single reader; a closed socket leaves it by itself (no epoll_ctl to remove)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._probes: dict[int, SocketProbe] = {}  # fd -> the probe whose socket it is
        loop.add_reader(self._epoll.fileno(), self._ready)

    def start(self, target: ProbeTarget, clock: Callable[[], float], done: Done) -> ProbeRun:
        """Start one probe of `target`; `done` gets its result from a later loop iteration."""
        if target.kind == "https":
            return TlsProbe(self.loop, target, clock, done)
        try:
            return SocketProbe(self, target, clock, done)
        except OSError as exc:  # no socket (EMFILE): a failed probe, not a crashed checker
            return _Failed(self.loop, target, clock, done, f"probe error: {exc.strerror or exc}")

    def close(self) -> None:
        """Stop watching (after the probes were cancelled)."""
        if not self._epoll.closed:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        self._probes.clear()

    def watch(self, probe: SocketProbe, events: int) -> None:
        self._epoll.register(probe.fd, events)
        self._probes[probe.fd] = probe

    def forget(self, fd: int) -> None:
        self._probes.pop(fd, None)  # the close that follows takes the fd out of the epoll

    def _ready(self) -> None:
        for fd, mask in self._epoll.poll(0, _EVENTS_PER_WAKEUP):
            probe = self._probes.get(fd)
            if probe is not None:  # None: finished earlier in this batch
                probe.event(mask)


class SocketProbe(ProbeRun):
    """tcpSocket and plain httpGet on a non-blocking socket in the Prober's epoll."""

    __slots__ = ("prober", "sock", "fd", "received", "sent", "watched")
    RESET_AFTER_ANSWER = True

    def __init__(self, prober: Prober, target: ProbeTarget, clock: Callable[[], float], done: Done):
        # First, so that when there is no socket to be had (EMFILE) nothing has started.
        sock = self.sock = socket.socket(target.family, _SOCK_TYPE)
        super().__init__(prober.loop, target, clock, done)
        self.prober = prober
        self.received = b""
        self.sent = False  # the request is out (tcpSocket: nothing to send)
        self.watched = False
        self.fd = sock.fileno()
        err = sock.connect_ex(target.address)
        if err not in (0, errno.EINPROGRESS):
            self.loop.call_soon(self._finish, *connect_failure(err))
            return
        if target.request is not None:
            try:
                sock.send(target.request)  # a few hundred bytes: never partial
                self.sent = True
            except BlockingIOError:
                pass  # still connecting: writability will say when it is done
            except OSError as exc:
                self.loop.call_soon(self._finish, *self._failure(exc))
                return
        prober.watch(self, _IN if self.sent else _IN | _OUT)
        self.watched = True

    def event(self, mask: int) -> None:
        if not self.sent:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if mask & _ERR else 0
            if err:
                self._finish(*connect_failure(err))
                return
            if not mask & select.EPOLLOUT:
                return
            if self.target.request is None:
                self._finish(Outcome.SUCCESS, "connected")
                return
            try:
                self.sock.send(self.target.request)
            except OSError as exc:
                self._finish(*self._failure(exc))
                return
            self.sent = True
        if mask & (select.EPOLLIN | select.EPOLLRDHUP | _ERR):
            self._read()

    def _read(self) -> None:
        while not self.finished:  # edge-triggered: read until the answer is in or nothing is left
            try:
                data = self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                self._finish(Outcome.ERROR, f"probe error: {exc.strerror or exc}")
                return
            if not data:
                self._finish(Outcome.ERROR, "probe error: connection closed before an answer")
                return
            self.received += data
            self._answered(self.received)

    @staticmethod
    def _failure(exc: OSError) -> tuple[Outcome, str]:
        return connect_failure(exc.errno) if exc.errno else (Outcome.ERROR, f"probe error: {exc}")

    def _close(self, abort: bool) -> None:
        if self.watched:
            self.prober.forget(self.fd)
            self.watched = False
        if abort:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass  # already gone: close() below still drops it
        self.sock.close()


class TlsProbe(ProbeRun, asyncio.Protocol):
    """httpGet with scheme HTTPS, through an asyncio SSL transport."""

    __slots__ = ("task", "transport", "received")

    def __init__(self, loop: asyncio.AbstractEventLoop, target: ProbeTarget, clock: Callable[[], float], done: Done):
        super().__init__(loop, target, clock, done)
        self.received = b""
        self.transport: asyncio.Transport | None = None
        host, port = target.address
        connect = loop.create_connection(
            lambda: self, host, port, ssl=_TLS,
            server_hostname=target.server_hostname, ssl_handshake_timeout=target.timeout,
        )
        self.task = loop.create_task(connect)
        self.task.add_done_callback(self._connect_done)

    def _connect_done(self, task: asyncio.Future[object]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if isinstance(exc, OSError) and exc.errno is not None:
            self._finish(*connect_failure(exc.errno))
        else:
            self._finish(Outcome.ERROR, f"probe error: {type(exc).__name__}: {exc}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.finished:
            transport.abort()  # type: ignore[attr-defined]
            return
        self.transport.write(self.target.request)  # type: ignore[union-attr,arg-type]

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._answered(self.received)

    def eof_received(self) -> bool | None:
        self._finish(Outcome.ERROR, "probe error: connection closed before an answer")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(Outcome.ERROR, "probe error: connection closed before an answer")

    def _close(self, abort: bool) -> None:
        # After an answer TLS says goodbye with close_notify; a timeout or a cancel aborts.
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        elif not self.task.done():
            self.task.cancel()


class _Failed(ProbeRun):
    """A probe that could not even start; reports its error from the next loop iteration."""

    __slots__ = ()

    def __init__(self, loop: asyncio.AbstractEventLoop, target: ProbeTarget, clock: Callable[[], float], done: Done,
                 detail: str) -> None:
        super().__init__(loop, target, clock, done)
        loop.call_soon(self._finish, Outcome.ERROR, detail)

    def _close(self, abort: bool) -> None:
        pass


