"""Churning services and endpoints never grows the metrics: the scrape shrinks back.

Before: series of removed services stayed forever (after churning 6,000 services and returning
to 6: 54,096 lines, RSS 74 -> 106 MB, 0.45 s per scrape).
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# backends and daemon_factory are fixtures: pytest finds them by name in this module.
from tests.test_daemon_loopback import LBD, backends, config_for, daemon_factory, free_port, hello  # noqa: F401

CHURNED = 150


def series(port: int) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))) for f in text_string_to_metric_families(text) for s in f.samples}


def churned_config(backends, port: int, refused: int) -> str:
    eps = ", ".join(f'"127.0.0.1:{b.port}"' for b in backends)
    pools = "".join(f"  - {{name: churn{i}, addresses: [127.1.{i}.0/30]}}\n" for i in range(CHURNED))
    services = "".join(
        f"  - {{name: c{i}, annotations: {{metallb.io/address-pool: churn{i}}}, "
        f"ports: [{{name: p{i}, port: {port}}}], endpoints: [\"127.0.0.1:{refused}\", {eps}]}}\n"
        for i in range(CHURNED)
    )
    base = config_for(backends, port)
    head, tail = base.split("services:\n")
    return head + pools + "services:\n" + services + tail


def wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_series_of_removed_services_endpoints_and_pools_go(daemon_factory, backends) -> None:
    port, metrics_port = free_port(), free_port()
    refused = free_port()  # nothing listens: every churned service records a connect failure
    d = daemon_factory(config_for(backends, port))
    d.start("--metrics-address", f"127.0.0.1:{metrics_port}", "--drain-timeout", "1")
    hello("127.0.0.240", port)
    time.sleep(1.5)  # the data plane flushes its counters every second
    before = series(metrics_port)

    d.config.write_text(churned_config(backends, port, refused))
    out = subprocess.run([*LBD, "reload", "--admin-socket", str(d.socket)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for i in range(0, CHURNED, 5):  # traffic through some: counters, failures, bytes
        with socket.create_connection((f"127.1.{i}.0", port), timeout=5) as c:
            c.makefile().readline()
    assert wait_until(lambda: len(series(metrics_port)) > len(before) + 5 * CHURNED)
    grown = len(series(metrics_port))

    d.config.write_text(config_for(backends, port))
    out = subprocess.run([*LBD, "reload", "--admin-socket", str(d.socket)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert wait_until(lambda: series(metrics_port) == before), sorted(series(metrics_port) - before)[:10]
    print(f"series: {len(before)} -> {grown} -> {len(before)}")
    assert d.stop() == 0


def test_a_removed_endpoint_takes_its_failure_series_along(daemon_factory, backends) -> None:
    port, metrics_port, refused = free_port(), free_port(), free_port()
    eps = ", ".join(f'"127.0.0.1:{b.port}"' for b in backends)
    config = (f"pools: [{{name: local, addresses: [127.0.0.240/32]}}]\nservices:\n"
              f"  - {{name: web, ports: [{{name: http, port: {port}}}], endpoints: [{{eps}}]}}\n")
    d = daemon_factory(config.replace("{eps}", f'"127.0.0.1:{refused}", {eps}'))
    d.start("--metrics-address", f"127.0.0.1:{metrics_port}")
    for _ in range(4):
        hello("127.0.0.240", port)

    def failure_endpoints() -> set[str]:
        return {dict(labels)["endpoint"] for name, labels in series(metrics_port)
                if name == "lbd_upstream_connect_failures_total"}

    assert wait_until(lambda: failure_endpoints() == {f"127.0.0.1:{refused}"})
    d.config.write_text(config.replace("{eps}", eps))
    out = subprocess.run([*LBD, "reload", "--admin-socket", str(d.socket)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "changed 1" in out.stdout, out.stdout + out.stderr
    assert wait_until(lambda: failure_endpoints() == set())
    assert d.stop() == 0


def test_a_removed_udp_service_takes_its_series_along(daemon_factory, backends) -> None:
    port, metrics_port = free_port(), free_port()
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(5)
    udp = (f"  - name: dns\n    ports: [{{name: dns, port: {port}, protocol: UDP}}]\n"
           f"    endpoints: [\"127.0.0.1:{echo.getsockname()[1]}\"]\n")
    d = daemon_factory(config_for(backends, port) + udp)
    d.start("--metrics-address", f"127.0.0.1:{metrics_port}", "--drain-timeout", "1")
    try:
        vip = next(r["externalIP"] for r in d.get() if r["name"] == "dns")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.connect((vip, port))
            c.send(b"q")
            data, peer = echo.recvfrom(64)
            echo.sendto(data, peer)
            assert c.recv(64) == b"q"
        udp_series = lambda: {s for s in series(metrics_port) if s[0].startswith("lbd_udp_")}  # noqa: E731
        assert wait_until(lambda: any(n == "lbd_udp_datagrams_total" for n, _ in udp_series()))
        d.config.write_text(config_for(backends, port))
        out = subprocess.run([*LBD, "reload", "--admin-socket", str(d.socket)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert wait_until(lambda: not udp_series()), sorted(udp_series())[:5]
        assert d.stop() == 0
    finally:
        echo.close()
