"""`lbd run` end to end on loopback: a real daemon process, real clients, real backends.

Loopback VIPs (127.0.0.0/8) need no address and no ARP, so these run without root.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LBD = [sys.executable, "-m", "lbd"]
STARTUP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NameServer:
    """A TCP backend that answers every connection with its name, then echoes until EOF."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(20)
            try:
                conn.sendall(self.name.encode() + b"\n")
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def backends() -> Iterator[list[NameServer]]:
    servers = [NameServer(f"backend-{i}") for i in range(3)]
    yield servers
    for s in servers:
        s.close()


class Daemon:
    def __init__(self, tmp: Path, config_text: str) -> None:
        self.tmp = tmp
        self.config = tmp / "lbd.yaml"
        self.config.write_text(config_text)
        self.socket = tmp / "admin.sock"
        self.state = tmp / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "lbd.log"

    def start(self, *extra: str) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            [*LBD, "run", "--config", str(self.config), "--state-dir", str(self.state),
             "--admin-socket", str(self.socket), "--log-format", "json", *extra],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lbd exited {self.proc.returncode}: {self.log.read_text()}")
            if b'"ready"' in self.log.read_bytes()[offset:]:
                return
            time.sleep(0.05)
        raise AssertionError(f"lbd did not become ready: {self.log.read_text()}")

    def get(self) -> list[dict]:
        out = subprocess.run([*LBD, "get", "services", "-o", "json", "--admin-socket", str(self.socket)],
                             capture_output=True, timeout=10, check=True)
        return json.loads(out.stdout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator:
    made: list[Daemon] = []

    def make(text: str) -> Daemon:
        d = Daemon(tmp_path, text)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)
            d.proc.wait(5)


def config_for(backends: list[NameServer], port: int, affinity: str = "None") -> str:
    eps = ", ".join(f'"127.0.0.1:{b.port}"' for b in backends)
    return f"""
pools:
  - name: local
    addresses: [127.0.0.240-127.0.0.250]
services:
  - name: web
    sessionAffinity: {affinity}
    ports: [{{name: http, port: {port}, protocol: TCP}}]
    endpoints: [{eps}]
  - name: web2
    ports: [{{name: tcp, port: {port}, protocol: TCP}}]
    endpoints: [{eps}]
"""


def hello(ip: str, port: int) -> str:
    with socket.create_connection((ip, port), timeout=5) as c:
        return c.makefile().readline().strip()


def test_round_robin_status_and_sticky_restart(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start()
    rows = {r["name"]: r for r in d.get()}
    assert rows["web"]["externalIP"] == "127.0.0.240"  # lowest free address of the pool
    assert rows["web2"]["externalIP"] == "127.0.0.241"
    assert rows["web"]["pending_reason"] is None
    assert [e["ready"] for e in rows["web"]["endpoints"]] == [True, True, True]
    names = [hello("127.0.0.240", port) for _ in range(6)]
    assert sorted(names) == sorted([f"backend-{i}" for i in range(3)] * 2)
    assert names[:3] == names[3:]  # round-robin: same order every cycle
    table = subprocess.run([*LBD, "get", "services", "--admin-socket", str(d.socket)],
                           capture_output=True, text=True, timeout=10, check=True).stdout
    assert "EXTERNAL-IP" in table and "127.0.0.240" in table and "3/3" in table
    assert d.stop() == 0

    # Restart with "web" removed: "web2" keeps its VIP (sticky), web's is released.
    d.config.write_text(config_for(backends, port).split("  - name: web2")[0].replace("name: web", "name: web2"))
    d.start()
    rows = {r["name"]: r for r in d.get()}
    assert rows["web2"]["externalIP"] == "127.0.0.241"
    with pytest.raises(OSError):
        hello("127.0.0.240", port)
    assert d.stop() == 0


def test_client_ip_affinity(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port, affinity="ClientIP"))
    d.start()
    assert len({hello("127.0.0.240", port) for _ in range(5)}) == 1
    assert d.stop() == 0


def test_sigterm_drains_established_connection(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start("--drain-timeout", "10")
    with socket.create_connection(("127.0.0.240", port), timeout=5) as c:
        reader = c.makefile("rb")
        assert reader.readline().startswith(b"backend-")
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # New connections are refused while the established one still relays both ways.
        with pytest.raises(OSError):
            hello("127.0.0.240", port)
        c.sendall(b"still here\n")
        assert reader.readline() == b"still here\n"
        assert d.proc.poll() is None
    assert d.proc.wait(10) == 0


def test_sigterm_aborts_after_drain_timeout(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start("--drain-timeout", "1")
    with socket.create_connection(("127.0.0.240", port), timeout=5) as c:
        assert c.makefile("rb").readline().startswith(b"backend-")
        started = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - started < 5
        c.settimeout(5)
        try:
            closed = c.recv(1) == b""
        except ConnectionResetError:
            closed = True
        assert closed, "lbd must close connections left after the drain timeout"


def test_get_without_daemon_says_so(tmp_path: Path) -> None:
    out = subprocess.run([*LBD, "get", "services", "--admin-socket", str(tmp_path / "none.sock")],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert "no lbd daemon answers" in out.stderr


def test_admin_socket_is_private(daemon_factory, backends) -> None:
    d = daemon_factory(config_for(backends, free_port()))
    d.start()
    assert (d.socket.stat().st_mode & 0o777) == 0o600
    assert d.stop() == 0


def test_metrics_are_served_and_count(daemon_factory, backends) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    port, metrics_port = free_port(), free_port()
    d = daemon_factory(config_for(backends, port))
    d.start("--metrics-address", f"127.0.0.1:{metrics_port}")
    for _ in range(4):
        hello("127.0.0.240", port)
    key = ("lbd_connections_total", (("port", "http"), ("service", "default/web")))
    deadline = time.monotonic() + 10  # the data plane flushes its plain-int counters every few seconds
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        if samples.get(key) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert samples[key] == 4
    assert samples[("metallb_allocator_addresses_in_use_total", (("pool", "local"),))] == 2
    assert samples[("metallb_allocator_addresses_total", (("pool", "local"),))] == 11
    assert d.stop() == 0


def wait_for_event(d: Daemon, event: str, count: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.log.read_text().count(f'"event": "{event}"') >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {event} event: {d.log.read_text()}")


def test_port_in_use_fails_only_that_service(daemon_factory, backends) -> None:
    port = free_port()
    squatter = socket.create_server(("127.0.0.240", port))  # web's VIP:port is taken
    try:
        d = daemon_factory(config_for(backends, port))
        d.start()
        rows = {r["name"]: r for r in d.get()}
        assert rows["web"]["externalIP"] is None
        assert "cannot serve 127.0.0.240" in rows["web"]["pending_reason"]
        assert rows["web2"]["externalIP"] == "127.0.0.241"
        assert hello("127.0.0.241", port).startswith("backend-")
        # The port comes free; a reload brings the service up.
        squatter.close()
        d.proc.send_signal(signal.SIGHUP)
        wait_for_event(d, "reload_applied")
        assert hello("127.0.0.240", port).startswith("backend-")
        assert d.stop() == 0
    finally:
        squatter.close()


def test_reload_changing_affinity_keeps_established_connections(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start("--drain-timeout", "1")
    with socket.create_connection(("127.0.0.240", port), timeout=5) as c:
        reader = c.makefile("rb")
        assert reader.readline().startswith(b"backend-")
        d.config.write_text(config_for(backends, port, affinity="ClientIP"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for_event(d, "reload_applied")
        time.sleep(1.5)  # longer than the drain timeout: a replaced listener would have cut us off
        c.sendall(b"after reload\n")
        assert reader.readline() == b"after reload\n"
    assert len({hello("127.0.0.240", port) for _ in range(4)}) == 1  # the new policy holds
    assert d.stop() == 0


def test_reload_removing_two_services_releases_both_and_stops_cleanly(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start("--drain-timeout", "5")
    d.config.write_text("pools:\n  - name: local\n    addresses: [127.0.0.240-127.0.0.250]\nservices: []\n")
    # Removing every service must be asked for (a truncated file must not do it).
    out = subprocess.run([*LBD, "reload", "--allow-empty", "--admin-socket", str(d.socket)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("reloaded: added 0, removed 2")
    assert d.get() == []
    for ip in ("127.0.0.240", "127.0.0.241"):
        with pytest.raises(OSError):
            hello(ip, port)
    started = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - started < 3


def test_external_traffic_policy_local_uses_this_nodes_endpoints(daemon_factory, backends) -> None:
    port = free_port()
    b0, b1, b2 = backends
    d = daemon_factory(f"""
pools:
  - name: local
    addresses: [127.0.0.240-127.0.0.250]
services:
  - name: web
    externalTrafficPolicy: Local
    ports: [{{name: http, port: {port}}}]
    endpoints:
      - {{address: "127.0.0.1", port: {b0.port}, nodeName: this-node}}
      - {{address: "127.0.0.1", port: {b1.port}, nodeName: other-node}}
      - {{address: "127.0.0.1", port: {b2.port}, nodeName: this-node}}
""")
    d.start("--node-name", "this-node")
    names = {hello("127.0.0.240", port) for _ in range(6)}
    assert names == {"backend-0", "backend-2"}
    assert d.stop() == 0


def test_reload_keeps_established_connections_of_unchanged_and_updated_services(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start("--drain-timeout", "1")
    with socket.create_connection(("127.0.0.241", port), timeout=5) as c:  # web2
        reader = c.makefile("rb")
        first = reader.readline().strip().decode()
        # Remove web, and give web2 only the endpoint this connection is on.
        keep = next(b for b in backends if b.name == first)
        d.config.write_text(config_for([keep], port).split("  - name: web2")[0].replace("name: web", "name: web2"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for_event(d, "reload_applied")
        time.sleep(1.5)  # past the drain timeout of anything released
        c.sendall(b"still relayed\n")
        assert reader.readline() == b"still relayed\n"
    assert {hello("127.0.0.241", port) for _ in range(3)} == {first}
    with pytest.raises(OSError):
        hello("127.0.0.240", port)
    assert d.stop() == 0


def test_reload_over_the_admin_api_answers_with_what_changed(daemon_factory, backends) -> None:
    from lbd.admin import request

    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start()
    d.config.write_text(config_for(backends, port).split("  - name: web2")[0])  # web2 goes
    answer = request(d.socket, "POST", "/v1/reload")
    assert answer["applied"] and answer["summary"] == "added 0, removed 1, changed 0, unchanged 1"
    assert answer["removed"] == ["default/web2"] and answer["unchanged"] == ["default/web"]
    d.config.write_text("services: [{name: web, ports: [{port: 70000}]}]\n")
    answer = request(d.socket, "POST", "/v1/reload")
    assert not answer["applied"] and any("70000 is not a port" in e for e in answer["errors"])
    assert hello("127.0.0.240", port).startswith("backend-")  # the running config still serves
    (row,) = request(d.socket, "GET", "/v1/services?name=default/web")
    assert row["state"] == "Serving" and row["externalIP"] == "127.0.0.240"
    assert d.stop() == 0


def test_a_failed_service_is_retried_without_a_reload(daemon_factory, backends) -> None:
    port = free_port()
    squatter = socket.create_server(("127.0.0.240", port))
    try:
        d = daemon_factory(config_for(backends, port))
        d.start()
        assert {r["name"]: r["state"] for r in d.get()} == {"web": "Failed", "web2": "Serving"}
        squatter.close()
        deadline = time.monotonic() + 15  # the daemon tick retries every 10 s
        while time.monotonic() < deadline and {r["name"]: r["state"] for r in d.get()}["web"] != "Serving":
            time.sleep(0.2)
        assert hello("127.0.0.240", port).startswith("backend-")
        assert d.stop() == 0
    finally:
        squatter.close()
