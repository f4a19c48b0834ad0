"""TcpListener on loopback: exact bytes, half-close, retries, RSTs, timeouts, flow control, drain.

The listener runs in the test's own event loop (uvloop, and the default loop where marked);
backends and clients are blocking sockets in threads, so they never share the loop under test.
Everything is on 127.0.0.1 / ::1 and bounded by socket timeouts and asyncio.timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any

import pytest
import structlog
import uvloop

from lbd import metrics
from lbd.balancer import Balancer, Target
from lbd.health.passive import PassiveHealth
from lbd.model import SessionAffinity
from lbd.relay import Failure
from lbd.relay import listener as relay_listener
from lbd.relay import tcp_connection
from lbd.relay.splice import SplicePump
from lbd.relay import RelayOptions
from lbd.relay.listener import BurstLog
from lbd.relay.tcp import TcpListener, TcpOptions
from lbd.routing import ServiceRouter

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
TEST_TIMEOUT = 20.0
IO_TIMEOUT = 10.0
CHUNK = 64 * 1024


def run(coro_fn: Callable[[], Awaitable[Any]], loop_kind: str = "uvloop") -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(TEST_TIMEOUT):
            return await coro_fn()

    loop = LOOPS[loop_kind]()
    try:
        return loop.run_until_complete(bounded())
    finally:
        loop.close()


class RecordingRouter(ServiceRouter):
    """A real ServiceRouter that remembers what the relay told it."""

    def __init__(self, targets: list[Target]) -> None:
        super().__init__(Balancer(SessionAffinity.NONE), PassiveHealth(), service="test/svc", port=80)
        self.update(targets)
        self.failures: list[tuple[Target, str]] = []
        self.successes: list[Target] = []

    def failed(self, target: Target, failure: Failure) -> None:
        self.failures.append((target, failure))
        super().failed(target, failure)

    def succeeded(self, target: Target) -> None:
        self.successes.append(target)
        super().succeeded(target)


class Backend:
    """A threaded TCP server on loopback; `handler(conn)` runs in a thread per connection."""

    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.target: Target = (host, self.sock.getsockname()[1])
        self.handler = handler
        self.errors: list[BaseException] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.settimeout(IO_TIMEOUT)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except BaseException as exc:  # reported by close()
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(2)
        self.sock.close()
        for t in self._threads:
            t.join(IO_TIMEOUT)


def closed_port() -> Target:
    """A loopback port where nothing listens (connects are refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return ("127.0.0.1", port)


def recv_all(conn: socket.socket) -> bytes:
    parts = []
    while data := conn.recv(CHUNK):
        parts.append(data)
    return b"".join(parts)


def connect(listener: TcpListener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    c = socket.socket(family, socket.SOCK_STREAM)
    c.settimeout(IO_TIMEOUT)
    c.connect((listener.host, listener.port))
    return c


def echo_upper(conn: socket.socket) -> None:
    conn.sendall(recv_all(conn).upper())


def stream_chunks(seed: int, total: int) -> Iterator[bytes]:
    """Deterministic chunks, each numbered, so a lost or reordered chunk changes the hash."""
    base = hashlib.sha256(str(seed).encode()).digest() * (CHUNK // 32)
    for i in range(total // CHUNK):
        yield struct.pack(">QQ", seed, i) + base[16:]


def expected_hash(seed: int, total: int) -> str:
    h = hashlib.sha256()
    for chunk in stream_chunks(seed, total):
        h.update(chunk)
    return h.hexdigest()


def send_and_hash(conn: socket.socket, seed: int, total: int) -> tuple[str, int]:
    """Send `total` bytes on a thread while receiving to EOF here; returns (hash, bytes) received."""
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            for chunk in stream_chunks(seed, total):
                conn.sendall(chunk)
            conn.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    h, n = hashlib.sha256(), 0
    while data := conn.recv(1 << 18):
        h.update(data)
        n += len(data)
    t.join(IO_TIMEOUT)
    if errors:
        raise errors[0]
    return h.hexdigest(), n


async def started(
    router: Any, options: RelayOptions | None = None, host: str = "127.0.0.1", *, tcp: TcpOptions | None = None
) -> TcpListener:
    listener = TcpListener(host, 0, router, options or RelayOptions(), "test/svc", "80", tcp=tcp or TcpOptions())
    await listener.start()
    return listener


def through_listener(
    client: Callable[[TcpListener], Any],
    router: Any,
    options: RelayOptions | None = None,
    *,
    tcp: TcpOptions | None = None,
    loop_kind: str = "uvloop",
    host: str = "127.0.0.1",
    drain: float = IO_TIMEOUT,  # returns as soon as the relays finished; long under load
) -> Any:
    """Start a listener, run the blocking `client(listener)` on a thread, then stop and drain."""

    async def main() -> Any:
        listener = await started(router, options, host, tcp=tcp)
        try:
            return await asyncio.to_thread(client, listener)
        finally:
            listener.stop_accepting()
            await listener.drain(drain)

    return run(main, loop_kind)


# -- the tests --------------------------------------------------------------------------


class PumpSpy:
    """Counts relays that moved to splice (and lets a test refuse the pipes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, refuse: bool = False) -> None:
        self.taken = 0
        take_over = SplicePump.take_over.__func__  # type: ignore[attr-defined]

        def spy(cls: type[SplicePump], *args: Any, **kwargs: Any) -> SplicePump | None:
            if refuse:
                return None
            pump = take_over(cls, *args, **kwargs)
            self.taken += pump is not None
            return pump

        monkeypatch.setattr(SplicePump, "take_over", classmethod(spy))


@pytest.mark.parametrize(
    "loop_kind,total,splice_after",
    [
        ("uvloop", 100 * 2**20, 2**20),  # the default: Protocols first, splice after 1 MiB
        ("uvloop", 32 * 2**20, None),  # Protocols all the way
        ("asyncio", 16 * 2**20, 2**20),
        ("asyncio", 8 * 2**20, None),
    ],
)
def test_bulk_both_ways_at_once_exact_bytes(
    loop_kind: str, total: int, splice_after: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = PumpSpy(monkeypatch)
    got_at_backend: list[tuple[str, int]] = []
    backend = Backend(lambda conn: got_at_backend.append(send_and_hash(conn, 2, total)))
    router = RecordingRouter([backend.target])

    async def main() -> tuple[str, int]:
        listener = await started(router, tcp=TcpOptions(splice_after=splice_after))
        try:
            c = connect(listener)
            with c:
                return await asyncio.to_thread(send_and_hash, c, 1, total)
        finally:
            listener.stop_accepting()
            await listener.drain(IO_TIMEOUT)  # returns as soon as the relays finished

    try:
        at_client = run(main, loop_kind)
    finally:
        backend.close()
    assert not backend.errors
    assert got_at_backend == [(expected_hash(1, total), total)]
    assert at_client == (expected_hash(2, total), total)
    assert spy.taken == (splice_after is not None)


def test_bulk_stays_on_protocols_when_pipes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    PumpSpy(monkeypatch, refuse=True)  # as when the user's pipe budget is spent
    total = 8 * 2**20
    got_at_backend: list[tuple[str, int]] = []
    backend = Backend(lambda conn: got_at_backend.append(send_and_hash(conn, 4, total)))
    router = RecordingRouter([backend.target])

    async def main() -> tuple[str, int]:
        listener = await started(router, tcp=TcpOptions(splice_after=2**16))
        try:
            with connect(listener) as c:
                return await asyncio.to_thread(send_and_hash, c, 3, total)
        finally:
            listener.stop_accepting()
            await listener.drain(IO_TIMEOUT)  # returns as soon as the relays finished

    try:
        at_client = run(main)
    finally:
        backend.close()
    assert got_at_backend == [(expected_hash(3, total), total)]
    assert at_client == (expected_hash(4, total), total)


@pytest.mark.parametrize("splice_after", [2**20, None])
def test_half_close_both_orders_after_bulk(splice_after: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each side sends 3 MiB then half-closes: EOFs cross the Protocol->splice switch intact."""
    spy = PumpSpy(monkeypatch)
    big = 3 * 2**20

    def backend_replies_after_eof(conn: socket.socket) -> None:
        got = recv_all(conn)
        conn.sendall(hashlib.sha256(got).digest() * (big // 32))
        conn.shutdown(socket.SHUT_WR)

    backend = Backend(backend_replies_after_eof)
    router = RecordingRouter([backend.target])

    def client(listener: TcpListener) -> bytes:
        with connect(listener) as c:
            c.sendall(b"q" * big)
            c.shutdown(socket.SHUT_WR)
            return recv_all(c)

    try:
        reply = through_listener(client, router, tcp=TcpOptions(splice_after=splice_after))
    finally:
        backend.close()
    assert not backend.errors
    assert reply == hashlib.sha256(b"q" * big).digest() * (big // 32)
    assert spy.taken == (splice_after is not None)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_half_close_client_still_reads_reply(loop_kind: str) -> None:
    backend = Backend(echo_upper)  # replies only after the client's EOF
    router = RecordingRouter([backend.target])

    def client(listener: TcpListener) -> bytes:
        with connect(listener) as c:
            c.sendall(b"hello " * 1000)
            c.shutdown(socket.SHUT_WR)
            return recv_all(c)

    try:
        assert through_listener(client, router, loop_kind=loop_kind) == b"HELLO " * 1000
    finally:
        backend.close()


@pytest.mark.parametrize("banner", [b"banner\n", b"B" * 3 * 2**20])
def test_half_close_backend_first_other_direction_keeps_flowing(banner: bytes) -> None:
    def backend_closes_first(conn: socket.socket) -> None:
        conn.sendall(banner)
        conn.shutdown(socket.SHUT_WR)
        got = recv_all(conn)
        assert got == b"x" * 3 * 2**20
        # Our write side is shut: the reply travels as the client's read EOF, nothing else.

    backend = Backend(backend_closes_first)
    router = RecordingRouter([backend.target])

    def client(listener: TcpListener) -> bytes:
        with connect(listener) as c:
            banner = recv_all(c)  # EOF from the backend arrives as EOF here
            c.sendall(b"x" * 3 * 2**20)  # and we can still send (a big banner moved us to splice)
            c.shutdown(socket.SHUT_WR)
            return banner

    try:
        assert through_listener(client, router, drain=2) == banner
    finally:
        backend.close()
    assert not backend.errors


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_refused_endpoint_costs_the_client_nothing(loop_kind: str) -> None:
    backend = Backend(echo_upper)
    refused = closed_port()
    router = RecordingRouter([refused, backend.target])

    def client(listener: TcpListener) -> bytes:
        with connect(listener) as c:
            c.sendall(b"early data")  # sent before any endpoint accepted: must not be lost
            c.shutdown(socket.SHUT_WR)
            return recv_all(c)

    try:
        assert through_listener(client, router, loop_kind=loop_kind) == b"EARLY DATA"
    finally:
        backend.close()
    assert router.failures == [(refused, Failure.REFUSED)]
    assert router.successes == [backend.target]
    assert router.passive.ejected(time.monotonic()) == {refused}


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_all_endpoints_refused_client_sees_rst(loop_kind: str) -> None:
    router = RecordingRouter([closed_port(), closed_port()])
    before = metrics.no_endpoint_resets_total.labels("test/svc", "80")._value.get()

    async def main() -> None:
        listener = await started(router)

        def client() -> None:
            with pytest.raises(ConnectionResetError):  # the RST may even beat connect() home
                with connect(listener) as c:
                    c.recv(100)

        try:
            with structlog.testing.capture_logs() as logs:
                await asyncio.to_thread(client)
                await asyncio.to_thread(client)  # a second one in the same burst: counted, not logged
            assert [e["event"] for e in logs if e["event"] == "no_endpoint"] == ["no_endpoint"]
            assert logs[-1]["suppressed"] == 0 and len(logs[-1]["tried"]) == 2
        finally:
            listener.stop_accepting()
            await listener.drain(IO_TIMEOUT)  # returns as soon as the relays finished

    run(main, loop_kind)
    assert len(router.failures) == 4 and {r for _, r in router.failures} == {Failure.REFUSED}
    assert metrics.no_endpoint_resets_total.labels("test/svc", "80")._value.get() == before + 2


def test_no_targets_at_all_is_a_rst() -> None:
    router = RecordingRouter([])

    async def main() -> None:
        listener = await started(router)

        def client() -> None:
            with pytest.raises(ConnectionResetError):  # the RST may even beat connect() home
                with connect(listener) as c:
                    c.recv(100)

        try:
            await asyncio.to_thread(client)
        finally:
            listener.stop_accepting()

    run(main)


def test_burst_log_counts_suppressed() -> None:
    burst = BurstLog(window=10)
    assert burst.hit(0.0) == 0
    assert burst.hit(1.0) is None
    assert burst.hit(9.9) is None
    assert burst.hit(10.5) == 2
    assert burst.hit(30.0) == 0


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_backend_rst_becomes_client_rst(loop_kind: str) -> None:
    def rst_after_request(conn: socket.socket) -> None:
        conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    backend = Backend(rst_after_request)
    router = RecordingRouter([backend.target])

    async def main() -> None:
        listener = await started(router)

        def client() -> None:
            with connect(listener) as c:
                c.sendall(b"GET")
                with pytest.raises(ConnectionResetError):
                    while c.recv(100):
                        pass

        try:
            await asyncio.to_thread(client)
        finally:
            listener.stop_accepting()
            await listener.drain(IO_TIMEOUT)  # returns as soon as the relays finished

    try:
        run(main, loop_kind)
    finally:
        backend.close()


def test_client_rst_becomes_backend_rst() -> None:
    seen: list[str] = []

    def expect_rst(conn: socket.socket) -> None:
        try:
            while conn.recv(100):
                pass
            seen.append("eof")
        except ConnectionResetError:
            seen.append("rst")

    backend = Backend(expect_rst)
    router = RecordingRouter([backend.target])

    async def main() -> None:
        listener = await started(router)

        def client() -> None:
            c = connect(listener)
            c.sendall(b"hi")
            time.sleep(0.2)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

        try:
            await asyncio.to_thread(client)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
        finally:
            listener.stop_accepting()
            await listener.drain(IO_TIMEOUT)  # returns as soon as the relays finished

    try:
        run(main)
    finally:
        backend.close()
    assert seen == ["rst"]


def blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A loopback listener whose accept queue is full: Linux drops further SYNs, connects hang."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(8):  # listen(0) queues 1; fill it (and the SYN queue headroom) for sure
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(lsock.getsockname())
        fillers.append(s)
    time.sleep(0.05)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(lsock.getsockname())
        hangs = False
    except (TimeoutError, OSError):
        hangs = True
    finally:
        probe.close()
    if not hangs:
        for s in (*fillers, lsock):
            s.close()
        pytest.skip("cannot build a blackholed port on this loopback (SYN not dropped when queue full)")
    return lsock, fillers


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_connect_timeout_moves_on_without_losing_early_data(loop_kind: str) -> None:
    hole, fillers = blackhole()
    backend = Backend(echo_upper)
    hole_target = ("127.0.0.1", hole.getsockname()[1])
    router = RecordingRouter([hole_target, backend.target])

    def client(listener: TcpListener) -> tuple[bytes, float]:
        t0 = time.monotonic()
        with connect(listener) as c:
            c.sendall(b"sent while lbd waits on the blackhole")
            c.shutdown(socket.SHUT_WR)
            return recv_all(c), time.monotonic() - t0

    try:
        reply, took = through_listener(client, router, RelayOptions(connect_timeout=0.3), loop_kind=loop_kind)
    finally:
        backend.close()
        for s in (*fillers, hole):
            s.close()
    assert reply == b"SENT WHILE LBD WAITS ON THE BLACKHOLE"
    assert 0.25 < took < 3
    assert router.failures == [(hole_target, Failure.TIMEOUT)]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_idle_timeout_closes_idle_relay_and_spares_busy_one(loop_kind: str) -> None:
    def hold(conn: socket.socket) -> None:
        while data := conn.recv(100):
            conn.sendall(data)

    backend = Backend(hold)
    router = RecordingRouter([backend.target])

    async def main() -> tuple[float, bytes]:
        listener = await started(router, RelayOptions(idle_timeout=0.4))

        def idle_client() -> tuple[float, bytes]:
            with connect(listener) as c:
                c.sendall(b"x")
                assert c.recv(1) == b"x"
                t0 = time.monotonic()
                rest = recv_all(c)  # lbd closes: EOF
                return time.monotonic() - t0, rest

        def busy_client() -> bytes:
            with connect(listener) as c:
                for _ in range(12):  # 1.2 s of traffic every 0.1 s: never idle for 0.4 s
                    c.sendall(b"y")
                    assert c.recv(1) == b"y"
                    time.sleep(0.1)
                return b"alive"

        try:
            idle, busy = await asyncio.gather(asyncio.to_thread(idle_client), asyncio.to_thread(busy_client))
            assert busy == b"alive"
            return idle
        finally:
            listener.stop_accepting()
            await listener.drain(IO_TIMEOUT)  # returns as soon as the relays finished

    try:
        took, rest = run(main, loop_kind)
    finally:
        backend.close()
    assert rest == b""
    assert 0.35 < took < 1.0  # closed after idle between T and 1.5 T (+ scheduling)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_drain_lets_finishing_relay_end_and_resets_the_rest(loop_kind: str) -> None:
    def slow_reply(conn: socket.socket) -> None:
        req = recv_all(conn)
        time.sleep(0.2)
        conn.sendall(req.upper())

    def hold(conn: socket.socket) -> None:
        recv_all(conn)

    backend_fast = Backend(slow_reply)
    backend_stuck = Backend(hold)

    async def main() -> tuple[bytes, str, int]:
        router = RecordingRouter([backend_fast.target, backend_stuck.target])
        listener = await started(router)

        def finishing() -> bytes:
            with connect(listener) as c:
                c.sendall(b"bye")
                c.shutdown(socket.SHUT_WR)
                return recv_all(c)

        def stuck() -> str:
            with connect(listener) as c:
                c.sendall(b"zzz")
                try:
                    c.recv(10)
                    return "eof"
                except ConnectionResetError:
                    return "rst"

        finishing_task = asyncio.create_task(asyncio.to_thread(finishing))
        await asyncio.sleep(0.1)
        stuck_task = asyncio.create_task(asyncio.to_thread(stuck))
        for _ in range(100):
            if listener.active == 2:
                break
            await asyncio.sleep(0.01)
        assert listener.active == 2
        listener.stop_accepting()
        aborted = await listener.drain(0.8)
        return await finishing_task, await stuck_task, aborted

    try:
        reply, stuck_result, aborted = run(main, loop_kind)
    finally:
        backend_fast.close()
        backend_stuck.close()
    assert reply == b"BYE"
    assert stuck_result == "rst"
    assert aborted == 1


def test_stop_accepting_keeps_established_relays() -> None:
    backend = Backend(echo_upper)
    router = RecordingRouter([backend.target])

    async def main() -> bytes:
        listener = await started(router)
        c = connect(listener)
        await asyncio.sleep(0.05)
        listener.stop_accepting()
        with pytest.raises(ConnectionRefusedError):
            connect(listener)

        def finish() -> bytes:
            with c:
                c.sendall(b"still here")
                c.shutdown(socket.SHUT_WR)
                return recv_all(c)

        try:
            return await asyncio.to_thread(finish)
        finally:
            await listener.drain(IO_TIMEOUT)  # returns as soon as the relays finished

    try:
        assert run(main) == b"STILL HERE"
    finally:
        backend.close()


def test_sockets_have_nodelay_and_keepalive_and_metrics_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    # Endpoint sockets get SO_KEEPALIVE from the housekeeping scan; make that come at once.
    monkeypatch.setattr(tcp_connection, "KEEPALIVE_SCAN_SECONDS", 0.0)
    monkeypatch.setattr(relay_listener, "HOUSEKEEPING_SECONDS", 0.05)

    def hold(conn: socket.socket) -> None:
        conn.sendall(b"ok")
        recv_all(conn)

    backend = Backend(hold)
    router = RecordingRouter([backend.target])
    labels = ("test/svc-opts", "80")
    conns_before = metrics.connections_total.labels(*labels)._value.get()

    async def main() -> list[tuple[int, int]]:
        listener = TcpListener("127.0.0.1", 0, router, RelayOptions(), *labels)
        await listener.start()
        c = connect(listener)
        try:
            assert await asyncio.to_thread(c.recv, 2) == b"ok"
            await asyncio.sleep(0.2)  # a few housekeeping rounds
            (relay,) = listener.relays
            opts = []
            for sock in relay.sockets():
                opts.append(
                    (
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    )
                )
            listener.flush_metrics()
            assert metrics.connections_active.labels(*labels)._value.get() == 1
            return opts
        finally:
            c.close()
            listener.stop_accepting()
            await listener.drain(IO_TIMEOUT)  # returns as soon as the relays finished
            listener.flush_metrics()

    try:
        opts = run(main)
    finally:
        backend.close()
    assert all(nodelay and keepalive for nodelay, keepalive in opts)
    assert metrics.connections_total.labels(*labels)._value.get() == conns_before + 1
    assert metrics.connections_active.labels(*labels)._value.get() == 0
    assert metrics.bytes_total.labels(*labels, "endpoint_to_client")._value.get() >= 2


def test_ipv6_listener_and_endpoint() -> None:
    try:
        backend = Backend(echo_upper, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    router = RecordingRouter([backend.target])

    def client(listener: TcpListener) -> bytes:
        with connect(listener) as c:
            c.sendall(b"six")
            c.shutdown(socket.SHUT_WR)
            return recv_all(c)

    try:
        assert through_listener(client, router, host="::1") == b"SIX"
    finally:
        backend.close()


SLOW_READER_CHILD = textwrap.dedent(
    """
    import asyncio, sys, uvloop
    from lbd.relay import RelayOptions
    from lbd.relay.tcp import TcpListener, TcpOptions

    class Fixed:
        def pick(self, client_ip, tried):
            return None if tried else ("127.0.0.1", int(sys.argv[1]))
        def failed(self, target, failure): pass
        def succeeded(self, target): pass

    async def main():
        splice_after = None if sys.argv[2] == "none" else int(sys.argv[2])
        tcp = TcpOptions(splice_after=splice_after)
        listener = TcpListener("127.0.0.1", 0, Fixed(), RelayOptions(), "test/slow", "80", tcp=tcp)
        await listener.start()
        print(listener.port, flush=True)
        await asyncio.sleep(60)

    uvloop.run(main())
    """
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.parametrize("splice_after", ["1048576", "none"])
def test_slow_reader_keeps_lbd_rss_bounded(splice_after: str) -> None:
    total = 200 * 2**20
    stall = threading.Event()
    received: list[int] = []

    def slow_then_fast(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stall.wait(IO_TIMEOUT)  # not reading at all while the client pushes
        n = 0
        for _ in range(100):  # then a slow reader: 100 x 64 KiB over ~1 s
            n += len(conn.recv(CHUNK))
            time.sleep(0.01)
        while data := conn.recv(1 << 20):
            n += len(data)
        received.append(n)

    backend = Backend(slow_then_fast)
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_READER_CHILD, str(backend.target[1]), splice_after],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        # Warm up: one small relayed connection so first-use allocations are in the baseline.
        warm = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        warm.close()
        time.sleep(0.3)
        stall.clear()
        baseline = rss_kib(child.pid)

        sent = [0]

        def push() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as c:
                block = b"\xab" * (1 << 20)
                for _ in range(total // len(block)):
                    c.sendall(block)
                    sent[0] += len(block)
                c.shutdown(socket.SHUT_WR)
                c.recv(1)

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        peak = baseline
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # the client is blocked by back-pressure by now
            peak = max(peak, rss_kib(child.pid))
            time.sleep(0.05)
        stalled_at = sent[0]
        stall.set()
        deadline = time.monotonic() + 15
        while pusher.is_alive() and time.monotonic() < deadline:
            peak = max(peak, rss_kib(child.pid))
            time.sleep(0.05)
        pusher.join(1)
        assert not pusher.is_alive()
    finally:
        child.kill()
        child.wait(5)
        stall.set()
        backend.close()
    assert stalled_at < total // 2  # back-pressure reached the client while the backend stalled
    assert received[-1] == total
    assert peak - baseline < 4 * 1024, f"lbd RSS grew by {(peak - baseline) / 1024:.1f} MiB"


class _CountingRouter:
    """Router without passive health: for checking each target is tried once per connection."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.picks: list[tuple[Target, ...]] = []

    def pick(self, client_ip: str, tried: Collection[Target]) -> Target | None:
        self.picks.append(tuple(tried))
        return next((t for t in self.targets if t not in tried), None)

    def failed(self, target: Target, failure: Failure) -> None:
        pass

    def succeeded(self, target: Target) -> None:
        pass


def test_retry_passes_tried_targets_and_client_ip() -> None:
    a, b = closed_port(), closed_port()
    router = _CountingRouter([a, b])

    async def main() -> None:
        listener = await started(router)

        def client() -> None:
            with pytest.raises(ConnectionResetError):
                with connect(listener) as c:
                    c.recv(1)

        try:
            await asyncio.to_thread(client)
        finally:
            listener.stop_accepting()

    run(main)
    assert router.picks == [(), (a,), (a, b)]


def test_spliced_relay_passes_backend_rst_to_client(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = PumpSpy(monkeypatch)
    delivered = threading.Event()
    total = 3 * 2**20

    def bulk_then_rst(conn: socket.socket) -> None:
        conn.sendall(b"d" * total)
        delivered.wait(IO_TIMEOUT)  # a RST may drop bytes still in flight: send it after delivery
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    backend = Backend(bulk_then_rst)
    router = RecordingRouter([backend.target])

    def client(listener: TcpListener) -> int:
        n = 0
        with connect(listener) as c:
            with pytest.raises(ConnectionResetError):
                while data := c.recv(CHUNK):
                    n += len(data)
                    if n == total:
                        delivered.set()
        return n

    try:
        received = through_listener(client, router)
    finally:
        backend.close()
    assert spy.taken == 1
    assert received == total


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_spliced_relay_idles_out_and_drains(loop_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = PumpSpy(monkeypatch)

    def swallow(conn: socket.socket) -> None:
        recv_all(conn)

    backend = Backend(swallow)
    router = RecordingRouter([backend.target])

    async def main() -> tuple[float, str, int]:
        idle = await started(router, RelayOptions(idle_timeout=0.4))
        tunnel = await started(router)  # no idle timeout: only drain ends it

        def goes_idle() -> float:
            with connect(idle) as c:
                c.sendall(b"u" * 2 * 2**20)
                t0 = time.monotonic()
                assert recv_all(c) == b""  # lbd closes the idle relay: EOF
                return time.monotonic() - t0

        def stays() -> str:
            with connect(tunnel) as c:
                c.sendall(b"v" * 2 * 2**20)
                try:
                    c.recv(1)
                    return "eof"
                except ConnectionResetError:
                    return "rst"

        stays_task = asyncio.create_task(asyncio.to_thread(stays))
        try:
            took = await asyncio.to_thread(goes_idle)
            for _ in range(200):
                if tunnel.active and all(r.pump is not None for r in tunnel.relays):
                    break
                await asyncio.sleep(0.01)
            tunnel.stop_accepting()
            aborted = await tunnel.drain(0.2)
            return took, await stays_task, aborted
        finally:
            idle.stop_accepting()
            await idle.drain(IO_TIMEOUT)

    try:
        took, stays_result, aborted = run(main, loop_kind)
    finally:
        backend.close()
    assert spy.taken == 2
    assert 0.35 < took < 1.5
    assert (stays_result, aborted) == ("rst", 1)


def test_freebind_lets_a_vip_be_bound_before_it_is_configured() -> None:
    """IP_FREEBIND: listening on an address no interface has yet (TEST-NET-1; no packet is sent)."""
    router = RecordingRouter([])

    async def main() -> int:
        listener = TcpListener("192.0.2.77", 0, router, RelayOptions(), "test/svc", "80")
        await listener.start()
        try:
            return listener.port
        finally:
            listener.stop_accepting()

    assert run(main) > 0


def test_drain_resets_a_relay_stuck_flushing_to_a_client_that_does_not_read() -> None:
    """Both directions ended, so lbd close()d the client side, but its buffer cannot drain."""

    def reply_then_close(conn: socket.socket) -> None:
        recv_all(conn)  # the client's EOF
        conn.sendall(b"f" * 200_000)  # more than the client takes, less than pauses lbd

    backend = Backend(reply_then_close)
    router = RecordingRouter([backend.target])

    async def main() -> tuple[bool, int, int]:
        listener = await started(router, tcp=TcpOptions(splice_after=None))
        assert listener._sock is not None  # accepted sockets inherit a small, fixed send buffer:
        listener._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the reply stays in lbd
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a tiny window
        c.settimeout(IO_TIMEOUT)
        c.connect(("127.0.0.1", listener.port))
        try:
            c.shutdown(socket.SHUT_WR)  # both directions end, but the client never reads
            await asyncio.sleep(0.5)
            if not listener.active:
                pytest.skip("the kernel buffered the whole reply: nothing left stuck in lbd")
            (relay,) = listener.relays
            stuck = relay.buffered() > 0  # the reply's tail waits in lbd for a reader that never comes
            listener.stop_accepting()
            aborted = await listener.drain(0.3)
            await asyncio.sleep(0.05)
            return stuck, aborted, listener.active
        finally:
            c.close()

    try:
        assert run(main) == (True, 1, 0)
    finally:
        backend.close()


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_connect_that_lands_after_its_timeout_fired_is_dropped_and_retried(
    loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog may give up on an attempt in the same loop pass its connect succeeds.

    That attempt is over (the retry is decided): the client's bytes must go to the next endpoint,
    not into the abandoned connection. Forced here by running the watchdog's timed_out() in the
    batch that carries the connect's EPOLLOUT, then dispatching that event as the reactor does.
    """
    from lbd.relay import tcp_connection

    backends = [Backend(echo_upper), Backend(echo_upper)]
    router = RecordingRouter([b.target for b in backends])
    original = tcp_connection.Relay.on_event
    raced: list[Target] = []

    def racing(self: Any, fd: int, events: int) -> None:
        if not raced and fd == self.ufd and self.connecting and events & select.EPOLLOUT:
            raced.append(self.target)
            self.timed_out()  # what the watchdog does when the deadline passed
            handler = self.reactor.handlers.get(fd)  # the reactor looks the fd up per event
            if handler is not None:
                original(handler, fd, events)
            return
        original(self, fd, events)

    monkeypatch.setattr(tcp_connection.Relay, "on_event", racing)

    async def body() -> None:
        listener = await started(router)
        loop = asyncio.get_running_loop()

        def one_client() -> bytes:
            with connect(listener) as c:
                c.sendall(b"ping")
                c.shutdown(socket.SHUT_WR)
                return recv_all(c)

        assert await loop.run_in_executor(None, one_client) == b"PING"
        assert router.failures == [(raced[0], "timeout")]
        assert len(router.successes) == 1 and router.successes[0] != raced[0]
        listener.stop_accepting()
        await listener.drain(IO_TIMEOUT)

    try:
        run(body, loop_kind)
    finally:
        for b in backends:
            b.close()


def test_pipes_running_out_leave_no_fds_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE on the second pipe: the relay stays on Protocols and the first pipe is closed."""
    import errno

    from lbd.relay import splice

    real_pipe2 = os.pipe2
    calls: list[int] = []

    def second_fails(flags: int) -> tuple[int, int]:
        calls.append(flags)
        if len(calls) == 2:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_pipe2(flags)

    monkeypatch.setattr(splice.os, "pipe2", second_fails)
    a, b = socket.socketpair()
    loop = asyncio.new_event_loop()
    try:
        before = len(os.listdir("/proc/self/fd"))
        assert SplicePump.take_over(loop, a, b, lambda exc: None) is None
        assert len(calls) == 2
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        loop.close()
        a.close()
        b.close()


def test_a_relay_ends_only_once_the_endpoint_side_has_flushed_what_the_client_sent() -> None:
    """The endpoint says bye and half-closes first, then reads slowly; the client sends 2 MiB and
    closes. The client side is done before lbd has written everything to the endpoint: a drain
    must wait for that side too (it returned at once, and the rest was lost at exit)."""
    total = 2 * 2**20
    got: list[int] = []

    def slow_reader(conn: socket.socket) -> None:
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)
        n = 0
        while data := conn.recv(32 * 1024):  # slowly: lbd's write buffer toward us stays full
            n += len(data)
            time.sleep(0.005)
        got.append(n)

    backend = Backend(slow_reader)
    router = RecordingRouter([backend.target])

    async def main() -> int:
        listener = await started(router, tcp=TcpOptions(splice_after=None))

        def client() -> bytes:
            with connect(listener) as c:
                c.sendall(b"x" * total)
                c.shutdown(socket.SHUT_WR)
                return recv_all(c)

        assert await asyncio.to_thread(client) == b"bye"
        listener.stop_accepting()
        return await listener.drain(IO_TIMEOUT)

    try:
        aborted = run(main)
    finally:
        backend.close()
    assert aborted == 0
    assert got == [total]
