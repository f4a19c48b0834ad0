"""A running daemon's scrape, parsed with prometheus-client's parser: MetalLB's names exactly,
no `_created`, the stale-config gauge through a rejected and a good reload, per-endpoint counts
(TCP and UDP), and an endpoint's series that outlive its removal only as long as its connection."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# backends and daemon_factory are fixtures: pytest finds them by name in this module.
from tests.test_daemon_loopback import LBD, backends, config_for, daemon_factory, free_port, hello  # noqa: F401

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[str, Samples]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def eventually(port: int, check: Callable[[Samples], Any], timeout: float = 10.0) -> Samples:
    """Scrape until `check` holds (counters are flushed once a second, scrapes cached a second)."""
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(port)
        if check(samples) or time.monotonic() > deadline:
            assert check(samples), sorted(k for k in samples if k[0].startswith("lbd_endpoint"))
            return samples
        time.sleep(0.2)


def reload(d: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LBD, "reload", "--admin-socket", str(d.socket)], capture_output=True, text=True, timeout=60)


def test_scrape_names_config_staleness_and_endpoint_counters(daemon_factory, backends) -> None:
    port, metrics_port = free_port(), free_port()
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(5)
    udp = (f"  - name: dns\n    ports: [{{name: dns, port: {port}, protocol: UDP}}]\n"
           f"    endpoints: [\"127.0.0.1:{echo.getsockname()[1]}\"]\n")
    d = daemon_factory(config_for(backends, port) + udp)
    started = time.time()
    d.start("--metrics-address", f"127.0.0.1:{metrics_port}", "--node-name", "node-a", "--drain-timeout", "1")
    vips = {r["name"]: r["externalIP"] for r in d.get()}
    held = socket.create_connection((vips["web"], port), timeout=5)
    try:
        reader = held.makefile("rb")
        held_name = reader.readline().strip().decode()
        held.sendall(b"ping\n")
        assert reader.readline() == b"ping\n"
        names = [hello(vips["web"], port) for _ in range(6)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.connect((vips["dns"], port))
            c.send(b"query")
            data, peer = echo.recvfrom(64)
            echo.sendto(b"answer!", peer)
            assert c.recv(64) == b"answer!"

        by_port = {b.name: f"127.0.0.1:{b.port}" for b in backends}
        web = {"service": "default/web", "port": "http"}
        samples = eventually(metrics_port, lambda s: sum(
            value(s, "lbd_endpoint_bytes_total", **web, endpoint=e, direction="endpoint_to_client") or 0
            for e in by_port.values()) == 6 * len("backend-0\n"))
        text, _ = scrape(metrics_port)

        # MetalLB's names, exactly: counters without `_total`, no `_created` anywhere.
        for name in ("metallb_layer2_requests_received", "metallb_layer2_responses_sent",
                     "metallb_layer2_gratuitous_sent"):
            assert f"# TYPE {name} counter\n" in text and f"{name}_total" not in text
        assert "_created" not in text
        families = {f.name: f.type for f in text_string_to_metric_families(text)}
        assert families["metallb_speaker_announced"] == "gauge"
        assert families["metallb_allocator_addresses_in_use_total"] == "gauge"
        for name, ip in vips.items():
            assert value(samples, "metallb_speaker_announced", service=f"default/{name}", protocol="layer2",
                         node="node-a", ip=ip) == 1
        assert value(samples, "metallb_allocator_addresses_in_use_total", pool="local") == 3

        # Per endpoint: round-robin put 2 of the 6 short connections on each backend, the
        # held one is open (its bytes count when it ends).
        for name, endpoint in by_port.items():
            total = names.count(name) + (name == held_name)
            assert value(samples, "lbd_endpoint_connections_total", **web, endpoint=endpoint) == total
            assert value(samples, "lbd_endpoint_connections_active", **web, endpoint=endpoint) == (name == held_name)
        dns = {"service": "default/dns", "port": "dns", "endpoint": f"127.0.0.1:{echo.getsockname()[1]}"}
        assert value(samples, "lbd_endpoint_udp_flows_total", **dns) == 1
        assert value(samples, "lbd_endpoint_udp_flows_active", **dns) == 1
        assert value(samples, "lbd_endpoint_udp_bytes_total", **dns, direction="client_to_endpoint") == len(b"query")
        assert value(samples, "lbd_endpoint_udp_bytes_total", **dns, direction="endpoint_to_client") == len(b"answer!")

        # The config: fresh, loaded at start-up.
        assert value(samples, "lbd_config_stale_bool") == 0
        loaded_at = value(samples, "lbd_config_last_reload_success_timestamp_seconds")
        assert loaded_at is not None and started - 1 <= loaded_at <= time.time()
        assert value(samples, "lbd_config_reloads_total", result="failure") == 0

        # A rejected reload: stale, counted as a failure, the success time stays.
        good = d.config.read_text()
        d.config.write_text(good + "  - name: broken\n    ports: [{port: 99999}]\n")
        assert reload(d).returncode == 1
        samples = eventually(metrics_port, lambda s: value(s, "lbd_config_stale_bool") == 1)
        assert value(samples, "lbd_config_reloads_total", result="failure") == 1
        assert value(samples, "lbd_config_reloads_total", result="success") == 0
        assert value(samples, "lbd_config_last_reload_success_timestamp_seconds") == loaded_at

        # A good one that also drops the held connection's backend: fresh again; that
        # endpoint's series stay while its connection is open...
        d.config.write_text(config_for([b for b in backends if b.name != held_name], port) + udp)
        out = reload(d)
        assert out.returncode == 0, out.stdout + out.stderr
        samples = eventually(metrics_port, lambda s: value(s, "lbd_config_stale_bool") == 0)
        assert value(samples, "lbd_config_reloads_total", result="success") == 1
        assert value(samples, "lbd_config_last_reload_success_timestamp_seconds") > loaded_at
        assert value(samples, "lbd_endpoint_connections_active", **web, endpoint=by_port[held_name]) == 1
        held.sendall(b"still relayed\n")
        assert reader.readline() == b"still relayed\n"
    finally:
        reader.close()  # the socket closes with its last file object
        held.close()
        echo.close()
    # ...and go once it ended.
    gone = ("lbd_endpoint_connections_total", tuple(sorted({**web, "endpoint": by_port[held_name]}.items())))
    eventually(metrics_port, lambda s: gone not in s)
    assert d.stop() == 0
