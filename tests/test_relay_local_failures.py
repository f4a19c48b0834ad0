"""lbd's own resource failures (EMFILE, ENFILE, ENOBUFS, ENOMEM) eject no endpoint.

Before: at EMFILE lbd's own socket() failure counted as an endpoint connect failure, so every
healthy endpoint was ejected (7,682 false failures each) and the errno was never logged.
The in-process test injects the error; the daemon test really runs out of descriptors, in a
child process with a lowered RLIMIT_NOFILE (never the test runner's own limit).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog

from lbd import metrics
from lbd.relay import Failure
from lbd.relay import tcp_connection
from lbd.relay.tcp_connection import classify_connect_error
from tests.test_daemon_loopback import LBD, NameServer, free_port
from tests.test_relay_tcp import Backend, RecordingRouter, connect, echo_upper, run, started


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_local_errnos_are_their_own_failure_class(code: int) -> None:
    assert classify_connect_error(OSError(code, os.strerror(code))) is Failure.LOCAL
    assert classify_connect_error(ConnectionRefusedError()) is Failure.REFUSED


def test_emfile_ejects_no_endpoint_and_is_logged_once_per_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Backend(echo_upper)
    router = RecordingRouter([backend.target])
    real_socket = tcp_connection.new_upstream_socket
    out_of_fds = [True]

    def new_upstream_socket(family: int) -> socket.socket:
        if out_of_fds[0]:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_socket(family)

    monkeypatch.setattr(tcp_connection, "new_upstream_socket", new_upstream_socket)
    counter = metrics.local_resource_failures_total.labels("EMFILE")
    before = counter._value.get()

    async def main() -> bytes:
        listener = await started(router)

        def refused_client() -> None:
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                with connect(listener) as c:
                    c.sendall(b"x")
                    c.recv(100)

        def good_client() -> bytes:
            with connect(listener) as c:
                c.sendall(b"back again")
                c.shutdown(socket.SHUT_WR)
                return c.recv(100)

        try:
            with structlog.testing.capture_logs() as logs:
                for _ in range(3):
                    await asyncio.to_thread(refused_client)
                out_of_fds[0] = False
                answer = await asyncio.to_thread(good_client)
        finally:
            listener.stop_accepting()
            await listener.drain(1)
        local = [e for e in logs if e["event"] == "local_resources_exhausted"]
        assert len(local) == 1  # the burst: one line, the rest counted
        assert local[0]["errno"] == "EMFILE" and local[0]["log_level"] == "error"
        assert local[0]["nofile_limit"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert not [e for e in logs if e["event"] in ("endpoint_ejected", "no_endpoint")]
        return answer

    try:
        assert run(main) == b"BACK AGAIN"
    finally:
        backend.close()
    assert router.failures == []  # no endpoint was blamed
    assert router.passive.ejected(time.monotonic()) == frozenset()
    assert counter._value.get() == before + 3


def _lowered(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


def test_a_daemon_out_of_fds_blames_no_backend(tmp_path: Path) -> None:
    backends = [NameServer(f"backend-{i}") for i in range(2)]
    port = free_port()
    eps = ", ".join(f'"127.0.0.1:{b.port}"' for b in backends)
    config = tmp_path / "lbd.yaml"
    config.write_text(f"pools: [{{name: local, addresses: [127.0.0.240/32]}}]\n"
                      f"services: [{{name: web, ports: [{{port: {port}}}], endpoints: [{eps}]}}]\n")
    log = tmp_path / "lbd.log"
    proc = subprocess.Popen(
        [*LBD, "run", "--config", str(config), "--state-dir", str(tmp_path / "state"),
         "--admin-socket", str(tmp_path / "admin.sock"), "--log-format", "json", "--drain-timeout", "1"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True, preexec_fn=_lowered(64),
    )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while b'"ready"' not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # Each relay takes 2 fds: its accept, then its endpoint socket. Which of the two meets
        # EMFILE first depends on how many fds lbd holds already; uvloop sheds an accept that
        # fails (libuv's EMFILE trick) without a word, so make the endpoint socket the one that
        # fails: with an odd number left, the last accept gets the last fd. An idle admin
        # connection (lbd closes it after 5 s) makes the count odd when it is even.
        if (64 - len(os.listdir(f"/proc/{proc.pid}/fd"))) % 2 == 0:
            admin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            admin.connect(str(tmp_path / "admin.sock"))
            held.append(admin)
            time.sleep(0.2)
        for _ in range(60):  # 2 fds each in lbd: well past 64
            try:
                c = socket.create_connection(("127.0.0.240", port), timeout=2)
                c.settimeout(2)
                held.append(c)
                c.recv(64)  # the backend's name, when relayed
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while b"local_resources_exhausted" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in held:
            c.close()
        held.clear()
        time.sleep(0.5)
        names = set()
        for _ in range(4):  # both backends still take turns: neither was ejected
            with socket.create_connection(("127.0.0.240", port), timeout=5) as c:
                names.add(c.makefile().readline().strip())
        text = log.read_text()
        assert names == {"backend-0", "backend-1"}, text[-3000:]
        assert '"errno": "EMFILE"' in text and '"nofile_limit": 64' in text
        assert "endpoint_ejected" not in text
    finally:
        for c in held:
            c.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for b in backends:
            b.close()


def test_lbd_run_raises_its_soft_fd_limit_and_says_what_it_can_relay(tmp_path: Path) -> None:
    config = tmp_path / "lbd.yaml"
    config.write_text("pools: [{name: local, addresses: [127.0.0.240/32]}]\n"
                      f"services: [{{name: web, ports: [{{port: {free_port()}}}], endpoints: [127.0.0.1]}}]\n")
    log = tmp_path / "lbd.log"

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    proc = subprocess.Popen(
        [*LBD, "run", "--config", str(config), "--state-dir", str(tmp_path / "state"),
         "--admin-socket", str(tmp_path / "admin.sock"), "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True, preexec_fn=limits,
    )
    try:
        deadline = time.monotonic() + 10
        while b'"ready"' not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with open(f"/proc/{proc.pid}/limits") as f:
            line = next(x for x in f if x.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"]
        event = next(json.loads(x) for x in log.read_text().splitlines() if '"fd_limit"' in x)
        assert (event["nofile"], event["raised_from"], event["hard_limit"]) == (4096, 256, 4096)
        assert event["connections"] == (4096 - 64) // 2
        assert event["level"] == "warning" and "LimitNOFILE" in event["hint"]  # under 10,000 connections
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
