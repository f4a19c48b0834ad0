"""`lbd get | describe | drain | undrain` against a running daemon on loopback (no root)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections import Counter

import pytest
import yaml

# backends and daemon_factory are fixtures: pytest finds them by name in this module.
from tests.test_daemon_loopback import (  # noqa: F401
    LBD,
    backends,
    config_for,
    daemon_factory,
    free_port,
)


def lbd(d, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LBD, *argv, "--admin-socket", str(d.socket)], capture_output=True, text=True, timeout=20)


def test_every_view_in_every_format(daemon_factory, backends) -> None:
    d = daemon_factory(config_for(backends, free_port()))
    d.start()
    table = lbd(d, "get", "svc").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS", "AGE", "NODE"]
    assert table[1].split()[:5] == ["web", "LoadBalancer", "127.0.0.240", table[1].split()[3], "3/3"]
    assert table[1].split()[-1] == socket.gethostname()  # the node holding the VIP: this one
    assert lbd(d, "get", "services", "-o", "wide").stdout.splitlines()[0].split()[-3:] == ["AFFINITY", "POLICY", "POOL"]
    rows = json.loads(lbd(d, "get", "services", "-o", "json").stdout)
    assert {"name", "namespace", "externalIP", "pending_reason", "ports", "endpoints"} <= rows[0].keys()
    assert rows[0]["node"] == socket.gethostname()
    assert {"address", "port", "ready"} <= rows[0]["endpoints"][0].keys()
    assert yaml.safe_load(lbd(d, "get", "svc", "-o", "yaml").stdout) == rows
    for name in ("web", "default/web"):
        assert [r["name"] for r in json.loads(lbd(d, "get", "svc", name, "-o", "json").stdout)] == ["web"]
    assert [r["name"] for r in json.loads(lbd(d, "get", "svc", "web", "-n", "default", "-o", "json").stdout)] == ["web"]
    missing = lbd(d, "get", "svc", "nope")
    assert missing.returncode == 1 and "no service default/nope" in missing.stderr
    endpoints = lbd(d, "get", "ep", "web").stdout.splitlines()
    assert endpoints[0].split()[:3] == ["SERVICE", "ENDPOINT", "READY"] and len(endpoints) == 4
    assert len(json.loads(lbd(d, "get", "endpoints", "-o", "json").stdout)) == 6
    pools = lbd(d, "get", "pools").stdout.splitlines()
    assert pools[1].split() == ["local", "127.0.0.240-127.0.0.250", "2/11", "true"]
    events = lbd(d, "get", "events").stdout
    assert "IPAllocated" in events and "nodeAssigned" in events
    described = lbd(d, "describe", "svc", "web").stdout
    for words in ("Name:", "web", "LoadBalancer Ingress:", "127.0.0.240", "Endpoints:", "Events:", "IPAllocated"):
        assert words in described, words
    assert d.stop() == 0


def test_get_without_a_daemon_is_one_line_and_exit_1(tmp_path) -> None:
    for argv in (["get", "svc"], ["get", "ep"], ["describe", "svc", "web"], ["drain", "endpoint", "web", "1.2.3.4"]):
        out = subprocess.run([*LBD, *argv, "--admin-socket", str(tmp_path / "none.sock")],
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "no lbd daemon" in out.stderr


def test_drain_under_a_client_loop_loses_nothing_and_sends_nothing_new(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start()
    victim = backends[0]
    held = socket.create_connection(("127.0.0.240", port), timeout=5)  # lands on a backend, kept open
    held_reader = held.makefile("rb")
    held_name = held_reader.readline().strip().decode()
    answers: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.240", port), timeout=5) as c:
                    answers[c.makefile().readline().strip()] += 1
            except OSError as exc:
                failures.append(repr(exc))
            time.sleep(0.005)

    loop = threading.Thread(target=client_loop, daemon=True)
    loop.start()
    try:
        time.sleep(0.3)
        out = lbd(d, "drain", "endpoint", "web", f"127.0.0.1:{victim.port}")
        assert out.returncode == 0 and "draining" in out.stdout, out.stderr
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ep = next(e for e in json.loads(lbd(d, "get", "ep", "web", "-o", "json").stdout) if e["port"] == victim.port)
            if not ep["ready"]:
                break
            time.sleep(0.05)
        assert ep["code"] == "Draining"
        accepted = victim.accepted
        time.sleep(1.0)  # new connections during the drain
        assert victim.accepted == accepted, "a drained endpoint got a new connection"
        held.sendall(b"still here\n")  # the established one (wherever it is) still relays
        assert held_reader.readline() == b"still here\n" and held_name
        assert lbd(d, "undrain", "endpoint", "default/web", f"127.0.0.1:{victim.port}").returncode == 0
        time.sleep(1.0)
        assert victim.accepted > accepted  # back in rotation
    finally:
        stop.set()
        loop.join(10)
        held_reader.close()  # the socket's fd closes only once its file object is closed too
        held.close()
    assert failures == []
    assert sum(answers.values()) > 50
    events = lbd(d, "get", "events", "web").stdout
    assert "EndpointDraining" in events and "EndpointUndrained" in events
    bad = lbd(d, "drain", "endpoint", "web", "127.0.0.9")
    assert bad.returncode == 1 and "has no endpoint 127.0.0.9" in bad.stderr
    assert d.stop() == 0


@pytest.mark.parametrize("argv", [["get", "widgets"], ["describe", "pool", "x"]])
def test_unknown_resources_are_usage_errors(argv: list[str], tmp_path) -> None:
    out = subprocess.run([*LBD, *argv], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2
