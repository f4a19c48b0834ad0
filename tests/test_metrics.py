"""The metrics registry and its server: series go with what they measure; the server holds no
thread per connection, cuts idle clients off, renders off the loop at most once a second, and
says which address it could not take."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from lbd import metrics
from lbd.errors import CannotStart
from lbd.metrics import MetricsServer, forget


def serve(registry: CollectorRegistry, body: callable) -> None:  # type: ignore[valid-type]
    async def main() -> None:
        server = MetricsServer("127.0.0.1", 0, registry)
        await server.start()
        try:
            await body(server)
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def fetch(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_forget_removes_only_matching_children() -> None:
    registry = CollectorRegistry()
    c = Counter("c", "c", ["service", "port", "endpoint"], registry=registry)
    for service in ("a", "b"):
        for endpoint in ("e1", "e2"):
            c.labels(service, "http", endpoint).inc()
    assert forget(c, service="a", endpoint="e1") == 1
    assert sorted(c._metrics) == [("a", "http", "e2"), ("b", "http", "e1"), ("b", "http", "e2")]
    assert forget(c, keep=lambda labels: labels["service"] == "b") == 1
    assert sorted(c._metrics) == [("b", "http", "e1"), ("b", "http", "e2")]


def test_scrape_head_and_not_found() -> None:
    registry = CollectorRegistry()
    Counter("lbd_test_total", "t", registry=registry).inc(3)

    async def body(server: MetricsServer) -> None:
        status, text = await asyncio.to_thread(fetch, server.port)
        assert status == 200 and b"lbd_test_total 3.0" in text
        assert await asyncio.to_thread(fetch, server.port, "/metrics", "HEAD") == (200, b"")
        assert (await asyncio.to_thread(fetch, server.port, "/nope"))[0] == 404
        assert (await asyncio.to_thread(fetch, server.port, "/metrics", "POST"))[0] == 405

    serve(registry, body)


def test_idle_connections_hold_no_thread_and_are_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "READ_TIMEOUT", 0.5)
    registry = CollectorRegistry()

    async def body(server: MetricsServer) -> None:
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(25)]
        try:
            await asyncio.sleep(0.2)
            assert threading.active_count() <= threads + 1  # prometheus-client: one thread each
            status, _ = await asyncio.to_thread(fetch, server.port)  # a scrape still gets through
            assert status == 200
            await asyncio.sleep(0.8)
            for s in idle:  # the server closed every idle connection after READ_TIMEOUT
                assert await asyncio.to_thread(s.recv, 1) == b""
        finally:
            for s in idle:
                s.close()

    serve(registry, body)


def test_back_to_back_scrapes_render_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[float] = []
    real = metrics.generate_latest

    def counting(registry: CollectorRegistry) -> bytes:
        rendered.append(time.monotonic())
        return real(registry)

    monkeypatch.setattr(metrics, "generate_latest", counting)

    async def body(server: MetricsServer) -> None:
        for _ in range(10):
            assert (await asyncio.to_thread(fetch, server.port))[0] == 200
        assert len(rendered) == 1
        await asyncio.sleep(metrics.CACHE_SECONDS)
        await asyncio.to_thread(fetch, server.port)
        assert len(rendered) == 2

    serve(CollectorRegistry(), body)


def test_a_port_in_use_names_the_address() -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]

    async def main() -> None:
        with pytest.raises(CannotStart) as caught:
            await MetricsServer("127.0.0.1", port, CollectorRegistry()).start()
        assert str(caught.value) == (f"cannot serve metrics on 127.0.0.1:{port}: Address already in use; "
                                     "choose another --metrics-address")

    try:
        asyncio.run(main())
    finally:
        taken.close()
