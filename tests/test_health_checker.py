"""The prober and the health checker on loopback: real connections, real servers, no root.

Every server here listens on 127.0.0.0/8 only. Probe timeouts are whole seconds (as in
Kubernetes), so the few tests that need one wait about a second; the rest answer at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from lbd import __version__, metrics
from lbd.health.checker import HealthChecker
from lbd.health.probe import Outcome, ProbeResult, ProbeSpec, ProbeVerdict
from lbd.health.prober import Prober, ProbeRun, ProbeTarget, prepare
from lbd.model import HTTPGetAction, Probe, TCPSocketAction

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(coro: Coroutine[Any, Any, Any], loop: str = "asyncio") -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(asyncio.wait_for(coro, 15))


class HttpServer:
    """Answers every request with `status` (changeable), counts connections, keeps the last request."""

    def __init__(self, host: str = "127.0.0.1", status: int = 200, headers: str = "") -> None:
        self.host, self.status, self.headers = host, status, headers
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> HttpServer:
        self.server = await asyncio.start_server(self.serve, self.host, port)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(f"HTTP/1.1 {self.status} X\r\n{self.headers}Content-Length: 3\r\n\r\nok\n".encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def probe_once(spec: ProbeSpec) -> ProbeResult:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[ProbeResult] = loop.create_future()
    prober = Prober(loop)
    try:
        prober.start(prepare(spec), loop.time, done.set_result)
        return await done
    finally:
        prober.close()


def spec(port: int, action: str = "http", host: str = "127.0.0.1", **probe: Any) -> ProbeSpec:
    kinds: dict[str, Callable[[], Any]] = {
        "http": lambda: HTTPGetAction(port, "/health"),
        "https": lambda: HTTPGetAction(port, "/health", scheme="HTTPS"),
        "tcp": lambda: TCPSocketAction(port),
    }
    return ProbeSpec(ipaddress.ip_address(host), Probe(kinds[action](), **probe))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # bound, never listening, then closed: connects are refused


# ---- one probe -------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_http_status_decides_and_each_probe_has_its_own_connection(loop: str) -> None:
    async def scenario() -> None:
        server = await HttpServer().start()
        try:
            results = []
            for status in (200, 399, 301, 404, 503):
                server.status = status
                results.append(await probe_once(spec(server.port)))
            assert [(r.outcome, r.detail) for r in results] == [
                (Outcome.SUCCESS, "HTTP 200"), (Outcome.SUCCESS, "HTTP 399"), (Outcome.SUCCESS, "HTTP 301"),
                (Outcome.FAILURE, "HTTP 404"), (Outcome.FAILURE, "HTTP 503"),
            ]
            assert server.connections == 5
            assert all(0 <= r.latency < 1 for r in results)
            head = server.requests[0].decode()
            assert head.startswith("GET /health HTTP/1.1\r\n")
            assert f"User-Agent: lbd-probe/{__version__}\r\n" in head and "Connection: close\r\n" in head
        finally:
            await server.close()

    run(scenario(), loop)


def test_a_redirect_is_not_followed() -> None:
    async def scenario() -> None:
        target = await HttpServer(status=200).start()
        redirect = await HttpServer(status=302, headers=f"Location: http://127.0.0.1:{target.port}/\r\n").start()
        try:
            assert (await probe_once(spec(redirect.port))).detail == "HTTP 302"
            assert target.connections == 0
        finally:
            await redirect.close()
            await target.close()

    run(scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_tcp_connect_and_refused(loop: str) -> None:
    async def scenario() -> None:
        server = await HttpServer().start()
        try:
            ok = await probe_once(spec(server.port, "tcp"))
            assert (ok.outcome, ok.detail) == (Outcome.SUCCESS, "connected")
        finally:
            await server.close()
        for kind in ("tcp", "http"):
            refused = await probe_once(spec(closed_port(), kind))
            assert (refused.outcome, refused.detail) == (Outcome.REFUSED, "connect refused")

    run(scenario(), loop)


def test_a_probe_to_another_loopback_address_and_ipv6() -> None:
    async def scenario() -> None:
        server = await HttpServer(host="127.0.0.2").start()
        try:
            assert (await probe_once(spec(server.port, host="127.0.0.2"))).ok
        finally:
            await server.close()
        try:
            six = await HttpServer(host="::1").start()
        except OSError:
            pytest.skip("no IPv6 loopback here")
        try:
            result = await probe_once(spec(six.port, host="::1"))
            assert result.ok and f"Host: [::1]:{six.port}" in six.requests[0].decode()
        finally:
            await six.close()

    run(scenario())


def test_a_black_hole_times_out_at_the_timeout_and_not_later() -> None:
    async def scenario() -> None:
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
        port = silent.sockets[0].getsockname()[1]
        try:
            result = await probe_once(spec(port, timeout_seconds=1))
            assert (result.outcome, result.detail) == (Outcome.TIMEOUT, "timeout after 1s")
            assert 0.95 <= result.latency < 1.3
        finally:
            silent.close()

    run(scenario())


def test_an_answer_that_is_not_http_or_no_answer_is_an_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        writer.close()

    async def hangup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # read first: closing with unread data would be a reset
        writer.close()

    async def scenario() -> None:
        for handler, detail in ((garbage, "probe error: not an HTTP status line"),
                                (hangup, "probe error: connection closed before an answer")):
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            try:
                result = await probe_once(spec(server.sockets[0].getsockname()[1]))
                assert (result.outcome, result.detail) == (Outcome.ERROR, detail)
            finally:
                server.close()

    run(scenario())


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    d = tmp_path_factory.mktemp("tls")
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=backend",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        capture_output=True, timeout=30,
    ) if Path("/usr/bin/openssl").exists() else None
    if made is None or made.returncode != 0:
        pytest.skip("openssl is needed to make a self-signed certificate")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    return context


@pytest.mark.parametrize("loop", LOOPS)
def test_https_without_certificate_verification(self_signed: ssl.SSLContext, loop: str) -> None:
    async def scenario() -> None:
        server = HttpServer(status=204)
        server.server = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=self_signed)
        try:
            result = await probe_once(spec(server.port, "https"))
            assert (result.outcome, result.detail) == (Outcome.SUCCESS, "HTTP 204")
            server.status = 500
            assert (await probe_once(spec(server.port, "https"))).outcome is Outcome.FAILURE
        finally:
            await server.close()
        refused = await probe_once(spec(closed_port(), "https"))
        assert refused.outcome is Outcome.REFUSED

    run(scenario(), loop)


# ---- the checker -----------------------------------------------------------------------------


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    assert condition()


def test_checker_probes_new_endpoints_within_a_second_and_reports_changes() -> None:
    async def scenario() -> None:
        server = await HttpServer().start()
        changed: list[int] = []
        checker = HealthChecker(lambda: changed.append(1))
        await checker.start()
        s = spec(server.port, period_seconds=1, failure_threshold=1)
        try:
            checker.apply([s], [])
            assert s not in checker.verdicts or not checker.verdicts[s].ready
            await until(lambda: s in checker.verdicts and checker.verdicts[s].ready, 2.0)
            assert changed and checker.last_results()[s].detail == "HTTP 200"
            server.status = 503
            await until(lambda: not checker.verdicts[s].ready, 2.5)
            assert checker.verdicts[s] == ProbeVerdict(False, "probe failed: HTTP 503", failing=True)
            sample = metrics.REGISTRY.get_sample_value("lbd_probes_total", {"kind": "http", "result": "failure"})
            assert sample is not None and sample >= 1
        finally:
            await checker.stop()
            await server.close()

    run(scenario())


class FakeRuns:
    """A prober that records starts and answers only when told."""

    def __init__(self) -> None:
        self.started: list[ProbeSpec] = []
        self.waiting: list[Callable[[ProbeResult], None]] = []
        self.cancelled = 0

    def __call__(self, loop: asyncio.AbstractEventLoop) -> FakeRuns:
        return self  # the checker's prober factory

    def close(self) -> None:
        pass

    def start(self, target: ProbeTarget, clock: Callable[[], float], done: Callable[[ProbeResult], None]) -> ProbeRun:
        self.started.append(target.spec)
        self.waiting.append(done)
        runs = self

        class Run:
            def cancel(self) -> None:
                runs.cancelled += 1

        return Run()  # type: ignore[return-value]

    def answer(self, ok: bool = True) -> None:
        for done in self.waiting:
            done(ProbeResult(Outcome.SUCCESS if ok else Outcome.FAILURE, "HTTP 200" if ok else "HTTP 503", 0.001, 0.0))
        self.waiting.clear()


def test_unchanged_endpoints_keep_their_state_and_a_retuned_probe_moves_it() -> None:
    async def scenario() -> None:
        runs = FakeRuns()
        checker = HealthChecker(prober=runs)
        await checker.start()
        a, b = spec(80, host="127.0.0.2", period_seconds=1), spec(80, host="127.0.0.3", period_seconds=1)
        checker.apply([a, b], [])
        await until(lambda: len(runs.started) == 2, 1.5)
        runs.answer()
        assert checker.verdicts[a].ready and checker.verdicts[b].ready
        # A reload that changes nothing for `a` and retunes `b`: `b`'s new spec reads the old
        # verdict before the plan runs (no flap), and keeps it after.
        b2 = spec(80, host="127.0.0.3", period_seconds=2, failure_threshold=5)
        assert checker.verdicts[b2].ready
        checker.apply([b2], [b])
        assert set(checker.verdicts) == {a, b2} and checker.verdicts[b2].ready
        # Another service probing the same check on `a` with other timings starts from `a`'s verdict.
        a2 = spec(80, host="127.0.0.2", period_seconds=3)
        checker.apply([a2], [])
        assert checker.verdicts[a2].ready and len(checker) == 3
        # Stopping cancels what is in flight.
        await until(lambda: len(runs.waiting) >= 1, 2.5)
        in_flight = len(runs.waiting)
        checker.apply([], [a, a2, b2])
        assert len(checker) == 0 and runs.cancelled == in_flight
        await checker.stop()

    run(scenario())


def test_one_pending_probe_per_endpoint_whatever_the_period() -> None:
    async def scenario() -> None:
        runs = FakeRuns()
        checker = HealthChecker(prober=runs)
        await checker.start()
        s = spec(80, period_seconds=1, timeout_seconds=5)
        checker.apply([s], [])
        await asyncio.sleep(2.2)  # two periods with the first probe never answering
        assert len(runs.started) == 1
        runs.answer()
        await until(lambda: len(runs.started) == 2, 1.5)
        await checker.stop()
        assert runs.cancelled == 1  # the second, in flight at stop

    run(scenario())


def test_a_passive_failure_is_a_failed_probe_at_once() -> None:
    async def scenario() -> None:
        runs = FakeRuns()
        changed: list[int] = []
        checker = HealthChecker(lambda: changed.append(1), prober=runs)
        await checker.start()
        s = spec(80, period_seconds=1, failure_threshold=3)
        checker.apply([s], [])
        await until(lambda: len(runs.started) == 1, 1.5)
        runs.answer()
        assert checker.verdicts[s].ready and len(changed) == 1
        checker.passive_failure(s, "connect refused (client connection)")
        assert checker.verdicts[s] == ProbeVerdict(False, "connect refused (client connection)", failing=True)
        assert len(changed) == 2
        checker.passive_failure(spec(81), "connect refused")  # not probed: ignored
        await checker.stop()
        checker.apply([s], [])  # after stop: runs nothing
        assert len(checker) == 0

    run(scenario())


def test_first_results_waits_for_answers_but_not_past_its_timeout_nor_for_delayed_probes() -> None:
    async def scenario() -> None:
        runs = FakeRuns()
        checker = HealthChecker(prober=runs)
        await checker.start()
        quick, delayed = spec(80, host="127.0.0.2", period_seconds=1), spec(80, host="127.0.0.3", initial_delay_seconds=30)
        checker.apply([quick, delayed], [])
        started = time.monotonic()
        assert await checker.first_results([quick, delayed], 1.5) == 1  # quick never answers
        assert 1.4 < time.monotonic() - started < 2.0
        runs.answer()
        assert await checker.first_results([quick, delayed], 1.5) == 0
        await checker.stop()

    run(scenario())


def test_a_connect_still_in_progress_waits_for_writability(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a LAN the handshake is not done when the request is first tried: the epoll says when."""
    import types

    from lbd.health import prober as prober_module

    class FirstSendWouldBlock(socket.socket):
        tried = False

        def send(self, data: Any, flags: int = 0) -> int:
            if not self.tried:
                self.tried = True
                raise BlockingIOError
            return super().send(data, flags)

    fake = types.SimpleNamespace(**{k: getattr(socket, k) for k in dir(socket) if k.isupper()})
    fake.socket = FirstSendWouldBlock

    async def scenario() -> None:
        server = await HttpServer().start()
        monkeypatch.setattr(prober_module, "socket", fake)
        try:
            ok = await probe_once(spec(server.port))
            refused = await probe_once(spec(closed_port()))
        finally:
            monkeypatch.undo()
            await server.close()
        assert (ok.outcome, ok.detail) == (Outcome.SUCCESS, "HTTP 200")
        assert (refused.outcome, refused.detail) == (Outcome.REFUSED, "connect refused")

    run(scenario(), "uvloop")
