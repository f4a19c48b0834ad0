"""`lbd run --workers N` end to end on loopback: N data-plane processes behind one control plane.

Clients bind distinct loopback source addresses (127.0.0.2-...), so the steering program sends
them to different workers; the tests check what a user sees: affinity per client whatever the
worker, reload and drain reaching every worker, one scrape and one status for all of them, a
killed worker restarted, SIGTERM ending every process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbd.workers.steering import reuseport_group, slot, steer
from tests.test_daemon_loopback import LBD, NameServer, backends, daemon_factory, free_port  # noqa: F401

VIP = "127.0.0.240"
SOURCES = [f"127.0.0.{i}" for i in range(2, 18)]
WORKERS = 2


def config(backends: list[NameServer], port: int, *, extra: str = "") -> str:
    eps = ", ".join(f'"127.0.0.1:{b.port}"' for b in backends)
    return f"""
pools:
  - name: local
    addresses: [{VIP}-127.0.0.250]
services:
  - name: web
    sessionAffinity: ClientIP
    loadBalancerIP: {VIP}
    ports: [{{name: http, port: {port}, protocol: TCP}}]
    endpoints: [{eps}]
{extra}"""


def hello(source: str, port: int, ip: str = VIP) -> str:
    with socket.create_connection((ip, port), timeout=5, source_address=(source, 0)) as c:
        return c.makefile().readline().strip()


def events(d, name: str) -> list[dict]:
    out = []
    for line in d.log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == name:
            out.append(entry)
    return out


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def wait_for(check, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_the_steering_program_sends_each_client_address_to_one_socket() -> None:
    """The kernel runs the BPF program as slot() computes it, for TCP and UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        socks = reuseport_group("127.0.0.1", 0, kind, WORKERS, 16)
        try:
            port = socks[0].getsockname()[1]
            for sock in socks:
                sock.settimeout(2)
            for source in SOURCES:
                with socket.socket(socket.AF_INET, kind) as c:
                    c.bind((source, 0))
                    if kind == socket.SOCK_STREAM:
                        c.connect(("127.0.0.1", port))
                        socks[slot(source, WORKERS)].accept()[0].close()  # raises if it went elsewhere
                    else:
                        c.sendto(b"x", ("127.0.0.1", port))
                        assert socks[slot(source, WORKERS)].recvfrom(8)[0] == b"x"
        finally:
            for sock in socks:
                sock.close()
    assert {slot(s, WORKERS) for s in SOURCES} == {0, 1}  # the sources cover both workers


def test_without_affinity_one_client_spreads_over_the_workers() -> None:
    """No program (or one detached by a reload that dropped ClientIP): the kernel's 4-tuple hash
    spreads one client's connections, as nginx's or HAProxy's threads get them."""
    socks = reuseport_group("127.0.0.1", 0, socket.SOCK_STREAM, WORKERS, 64, by_client=True)
    try:
        steer(socks, False)  # what a reload from ClientIP to None does
        port = socks[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(24)]
        counts = []
        for sock in socks:
            sock.setblocking(False)
            n = 0
            while True:
                try:
                    sock.accept()[0].close()
                except BlockingIOError:
                    break
                n += 1
            counts.append(n)
        for c in clients:
            c.close()
        assert sum(counts) == 24 and all(counts), counts  # all on one: 2 in 2**24
    finally:
        for sock in socks:
            sock.close()


def test_affinity_holds_across_workers_and_a_killed_worker_is_restarted(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config(backends, port))
    d.start("--workers", str(WORKERS))
    workers = children(d.proc.pid)
    assert len(workers) == WORKERS
    # Each client sticks to one backend over many connections, although every worker keeps its
    # own affinity table: the client always reaches the same worker.
    seen = {source: {hello(source, port) for _ in range(4)} for source in SOURCES}
    assert all(len(names) == 1 for names in seen.values()), seen
    assert len({next(iter(names)) for names in seen.values()}) > 1  # and clients are spread

    os.kill(workers[0], signal.SIGKILL)
    died = wait_for(lambda: events(d, "worker_died"), what="worker_died")
    assert died[0]["pid"] == workers[0] and died[0]["returncode"] == -signal.SIGKILL
    restarted = wait_for(lambda: events(d, "worker_restarted"), what="worker_restarted")
    assert restarted[0]["listeners"] == 1 and restarted[0]["failed"] == []
    now = children(d.proc.pid)
    assert len(now) == WORKERS and workers[0] not in now and workers[1] in now
    # Every client is served again, each still by one backend.
    again = {source: {hello(source, port) for _ in range(3)} for source in SOURCES}
    assert all(len(names) == 1 for names in again.values()), again
    # The other worker's clients kept their backend.
    kept = [s for s in SOURCES if slot(s, WORKERS) == 1]
    assert kept and all(again[s] == seen[s] for s in kept)
    assert d.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in now)


def test_reload_drain_status_and_metrics_reach_every_worker(daemon_factory, backends) -> None:
    port, port2 = free_port(), free_port()
    metrics_port = free_port()
    d = daemon_factory(config(backends, port))
    d.start("--workers", str(WORKERS), "--metrics-address", f"127.0.0.1:{metrics_port}")

    # Reload: an added service is served by every worker.
    eps = ", ".join(f'"127.0.0.1:{b.port}"' for b in backends)
    d.config.write_text(config(backends, port, extra=f"""  - name: more
    ports: [{{name: tcp, port: {port2}, protocol: TCP}}]
    endpoints: [{eps}]
"""))
    d.proc.send_signal(signal.SIGHUP)
    more = wait_for(lambda: next((r["externalIP"] for r in d.get() if r["name"] == "more" and r["externalIP"]), None),
                    what="the added service")
    assert all(hello(source, port2, more).startswith("backend-") for source in SOURCES)

    # Drain one endpoint: no worker sends it a new connection.
    drained = backends[0]
    subprocess.run([*LBD, "drain", "endpoint", "web", f"127.0.0.1:{drained.port}", "--admin-socket", str(d.socket)],
                   check=True, capture_output=True, timeout=10)
    before = drained.accepted
    names = Counter(hello(source, port) for source in SOURCES for _ in range(2))
    assert drained.name not in names and drained.accepted == before
    assert sum(names.values()) == 2 * len(SOURCES)

    # Status: connections held open through both workers are summed per endpoint.
    held = [socket.create_connection((VIP, port), timeout=5, source_address=(s, 0)) for s in SOURCES]
    try:
        for c in held:
            assert c.makefile().readline().startswith("backend-")

        def open_now() -> int:
            (web,) = [r for r in d.get() if r["name"] == "web"]
            return sum(e.get("connections") or 0 for e in web["endpoints"])

        wait_for(lambda: open_now() == len(held), what="connections summed over the workers")
    finally:
        for c in held:
            c.close()

    # Metrics: one scrape counts what every worker accepted.
    made = len(SOURCES) * (2 + 1)  # drained round + held ones through web

    def accepted() -> float:
        text = subprocess.run(["curl", "-s", f"http://127.0.0.1:{metrics_port}/metrics"], capture_output=True,
                              text=True, timeout=10).stdout
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}
        return values.get(("lbd_connections_total", (("port", "http"), ("service", "default/web"))), 0)

    wait_for(lambda: accepted() == made, what=f"lbd_connections_total == {made}")
    assert d.stop() == 0


def test_udp_flows_through_workers(daemon_factory) -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(0.2)
    port = free_port()
    d = daemon_factory(f"""
pools:
  - name: local
    addresses: [{VIP}-127.0.0.250]
services:
  - name: dns
    loadBalancerIP: {VIP}
    ports: [{{name: dns, port: {port}, protocol: UDP}}]
    endpoints: ["127.0.0.1:{echo.getsockname()[1]}"]
""")
    d.start("--workers", str(WORKERS))
    clients = []
    try:
        for source in SOURCES:
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((source, 0))
            c.settimeout(5)
            c.sendto(source.encode(), (VIP, port))
            clients.append(c)
        # The backend sees one flow (one lbd source port) per client and answers each.
        flows = {}
        deadline = time.monotonic() + 10
        while len(flows) < len(SOURCES) and time.monotonic() < deadline:
            try:
                data, addr = echo.recvfrom(100)
            except TimeoutError:
                continue
            flows[data] = addr
            echo.sendto(b"re:" + data, addr)
        assert len(flows) == len(SOURCES)
        for source, c in zip(SOURCES, clients):
            assert c.recvfrom(100)[0] == b"re:" + source.encode()
    finally:
        for c in clients:
            c.close()
        echo.close()
    assert d.stop() == 0


def test_workers_end_when_the_control_plane_is_killed(daemon_factory, backends) -> None:
    """SIGKILL of the control plane (no drain, no release): its workers stop serving at once
    instead of relaying for VIPs nobody manages."""
    port = free_port()
    d = daemon_factory(config(backends, port))
    d.start("--workers", str(WORKERS))
    workers = children(d.proc.pid)
    assert len(workers) == WORKERS
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(5)
    wait_for(lambda: all(not Path(f"/proc/{pid}/status").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
                         for pid in workers), what="the workers to exit")
    assert len(events(d, "worker_orphaned")) == WORKERS


def test_sigterm_drains_what_every_worker_relays_then_resets_the_rest(daemon_factory, backends) -> None:
    """SIGTERM with workers: no new connections, established ones (on both workers) go on
    relaying until they end or the drain timeout resets them; then every process exits 0."""
    port = free_port()
    d = daemon_factory(config(backends, port))
    d.start("--workers", str(WORKERS), "--drain-timeout", "3")
    workers = children(d.proc.pid)
    by_worker = {slot(s, WORKERS): s for s in SOURCES}
    held = [socket.create_connection((VIP, port), timeout=5, source_address=(by_worker[w], 0)) for w in range(WORKERS)]
    try:
        readers = [c.makefile("rb") for c in held]
        assert all(r.readline().startswith(b"backend-") for r in readers)
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):
            hello(SOURCES[0], port)
        for c, r in zip(held, readers):
            c.sendall(b"still here\n")
            assert r.readline() == b"still here\n"
        readers[0].close()  # (the file object holds the socket open too)
        held[0].close()  # one ends by itself; the other is reset at the drain timeout
        started = time.monotonic()
        assert d.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        held[1].settimeout(5)
        try:
            closed = held[1].recv(1) == b""
        except ConnectionResetError:
            closed = True
        assert closed
    finally:
        for c in held:
            c.close()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    (done,) = events(d, "shutdown_complete")
    assert done["aborted_connections"] == 1
