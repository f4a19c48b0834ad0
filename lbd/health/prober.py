"""Running one probe: a fresh connection, one answer, closed; never longer than its timeout.

`start_probe` starts it on the running loop and calls `done` exactly once with the result
(from a later loop iteration, never from inside `start_probe`); `ProbeRun.cancel` drops it
without a result. Each probe opens its own connection and closes it after the answer, as the
kubelet does, so nothing (no pooled connection) can hide a dead backend.

- tcpSocket: success once the connect completes.
- httpGet: one HTTP/1.1 GET (lbd.health.http builds it and reads the status line); the
  connection is closed as soon as the status line is in; 200-399 passes.
- httpGet with scheme HTTPS: the same over TLS without certificate verification (the kubelet
  does not verify either), through an asyncio transport.

Plain TCP and HTTP probes drive a non-blocking socket with the loop's reader/writer callbacks:
no task, no transport and no stream objects per probe, which keeps 1,000 probes a second cheap
(bench/probes.py measures it). TLS needs the loop's SSL machinery, so HTTPS uses a transport.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Callable

from lbd.health import http
from lbd.health.probe import Outcome, ProbeResult, ProbeSpec
from lbd.model import HTTPGetAction

Done = Callable[[ProbeResult], None]
# Bytes read per recv while waiting for the status line.
RECV_BYTES = 8192

# Certificates are not verified, as the kubelet does not: a probe asks "does it answer", and
# backends often serve self-signed certificates.
_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE


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

    __slots__ = ("loop", "spec", "clock", "done", "started", "timeout", "finished", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: ProbeSpec, clock: Callable[[], float], done: Done):
        self.loop = loop
        self.spec = spec
        self.clock = clock
        self.done = done
        self.started = clock()
        self.timeout = float(spec.probe.timeout_seconds)
        self.finished = False
        self.timer = loop.call_later(self.timeout, self._timed_out)

    def cancel(self) -> None:
        """Drop the probe: close its connection, report nothing."""
        if not self.finished:
            self.finished = True
            self.timer.cancel()
            self._close(abort=True)

    def _timed_out(self) -> None:
        self._finish(Outcome.TIMEOUT, f"timeout after {self.timeout:g}s", abort=True)

    def _finish(self, outcome: Outcome, detail: str, abort: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self.timer.cancel()
        self._close(abort)
        now = self.clock()
        self.done(ProbeResult(outcome, detail, now - self.started, now))

    def _answered(self, received: bytes) -> bool:
        """Judge an HTTP answer once its status line is in; False while more is needed."""
        try:
            code = http.status(received)
        except http.BadResponse as exc:
            self._finish(Outcome.ERROR, f"probe error: {exc}")
            return True
        if code is None:
            return False
        self._finish(Outcome.SUCCESS if http.succeeded(code) else Outcome.FAILURE, f"HTTP {code}")
        return True

    def _close(self, abort: bool) -> None:
        raise NotImplementedError


class SocketProbe(ProbeRun):
    """tcpSocket and plain httpGet on a non-blocking socket driven by the loop's fd callbacks."""

    __slots__ = ("sock", "fd", "request", "received", "watching")

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: ProbeSpec, clock: Callable[[], float], done: Done):
        family = socket.AF_INET6 if spec.address.version == 6 else socket.AF_INET
        # First, so that when there is no socket to be had (EMFILE) nothing has started.
        self.sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        super().__init__(loop, spec, clock, done)
        action = spec.probe.action
        self.request = http.request(action, spec.address) if isinstance(action, HTTPGetAction) else None
        self.received = b""
        self.watching = 0  # 1: writer (connecting), 2: reader (waiting for the answer)
        self.fd = self.sock.fileno()
        err = self.sock.connect_ex((str(spec.address), action.port))
        if err in (0, errno.EINPROGRESS):
            loop.add_writer(self.fd, self._writable)  # also when connected already: report from the loop
            self.watching = 1
        else:
            loop.call_soon(self._finish, *connect_failure(err))

    def _writable(self) -> None:
        self.loop.remove_writer(self.fd)
        self.watching = 0
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._finish(*connect_failure(err))
        elif self.request is None:
            self._finish(Outcome.SUCCESS, "connected")
        else:
            try:
                self.sock.send(self.request)  # a few hundred bytes into an empty send buffer
            except OSError as exc:
                self._finish(Outcome.ERROR, f"probe error: {exc.strerror or exc}")
                return
            self.loop.add_reader(self.fd, self._readable)
            self.watching = 2

    def _readable(self) -> None:
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

    def _close(self, abort: bool) -> None:
        if self.watching == 1:
            self.loop.remove_writer(self.fd)
        elif self.watching == 2:
            self.loop.remove_reader(self.fd)
        self.watching = 0
        self.sock.close()


class TlsProbe(ProbeRun, asyncio.Protocol):
    """httpGet with scheme HTTPS, through an asyncio SSL transport."""

    __slots__ = ("task", "transport", "request", "received")

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: ProbeSpec, clock: Callable[[], float], done: Done):
        super().__init__(loop, spec, clock, done)
        action = spec.probe.action
        assert isinstance(action, HTTPGetAction)
        self.request = http.request(action, spec.address)
        self.received = b""
        self.transport: asyncio.Transport | None = None
        connect = loop.create_connection(
            lambda: self, str(spec.address), action.port, ssl=_TLS,
            server_hostname=action.host or "", ssl_handshake_timeout=self.timeout,
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
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.received += data
        self._answered(self.received)

    def eof_received(self) -> bool | None:
        self._finish(Outcome.ERROR, "probe error: connection closed before an answer")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(Outcome.ERROR, "probe error: connection closed before an answer")

    def _close(self, abort: bool) -> None:
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        elif not self.task.done():
            self.task.cancel()


def start_probe(loop: asyncio.AbstractEventLoop, spec: ProbeSpec, clock: Callable[[], float], done: Done) -> ProbeRun:
    """Start one probe of `spec`; `done` gets its result from a later loop iteration."""
    action = spec.probe.action
    if isinstance(action, HTTPGetAction) and action.scheme == "HTTPS":
        return TlsProbe(loop, spec, clock, done)
    try:
        return SocketProbe(loop, spec, clock, done)
    except OSError as exc:  # no socket (EMFILE): a failed probe, not a crashed checker
        return _Failed(loop, spec, clock, done, f"probe error: {exc.strerror or exc}")


class _Failed(ProbeRun):
    """A probe that could not even start; reports its error from the next loop iteration."""

    __slots__ = ()

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: ProbeSpec, clock: Callable[[], float], done: Done,
                 detail: str) -> None:
        super().__init__(loop, spec, clock, done)
        loop.call_soon(self._finish, Outcome.ERROR, detail)

    def _close(self, abort: bool) -> None:
        pass
