"""sd_notify without systemd: a unix datagram socket stands in for it (unit + a daemon on loopback)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lbd.systemd import Notifier
from tests.test_daemon_loopback import LBD, NameServer, config_for, free_port, hello


def listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


def test_disabled_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.send("READY=1") is False


def test_messages_reach_the_socket_including_abstract_names(tmp_path: Path) -> None:
    with listener(tmp_path / "notify") as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        notifier.ready("2 services, 2 VIPs, 0 pending, 6/6 endpoints ready")
        assert sock.recv(4096) == b"READY=1\nSTATUS=2 services, 2 VIPs, 0 pending, 6/6 endpoints ready"
        notifier.reloading()
        reloading = sock.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        notifier.close()
    name = f"lbd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        abstract.settimeout(5)
        Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert abstract.recv(64) == b"STOPPING=1"


def test_watchdog_interval_is_half_and_only_for_this_pid() -> None:
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "10000000"}).watchdog_interval == 5.0
    mine = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 1.0
    assert Notifier({**mine, "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}).watchdog_interval is None


def test_a_send_that_fails_is_quiet_and_false(tmp_path: Path) -> None:
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}).send("READY=1") is False


@pytest.fixture
def backends():
    servers = [NameServer(f"backend-{i}") for i in range(2)]
    yield servers
    for s in servers:
        s.close()


def test_the_daemon_tells_systemd_ready_watchdog_reloading_stopping(tmp_path: Path, backends) -> None:
    port = free_port()
    config = tmp_path / "lbd.yaml"
    config.write_text(config_for(backends, port))
    notify = listener(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000")
    proc = subprocess.Popen(
        [*LBD, "run", "--config", str(config), "--state-dir", str(tmp_path / "state"),
         "--admin-socket", str(tmp_path / "admin.sock"), "--log-format", "json"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lbd.log", "wb"), start_new_session=True,
    )

    def next_message(skip_watchdog: bool = True) -> str:
        """The next state change (STATUS= updates from the tick are skipped)."""
        while True:
            message = notify.recv(4096).decode()
            if message.startswith("STATUS="):
                continue
            if not (skip_watchdog and message == "WATCHDOG=1"):
                return message

    try:
        ready = next_message()
        assert ready.startswith("READY=1\nSTATUS=2 services, 2 VIPs, 0 pending, 4/4 endpoints ready"), ready
        assert hello("127.0.0.240", port).startswith("backend-")  # READY means the VIP answers
        # WATCHDOG=1 every 0.2 s (half of 0.4 s), from the loop: a stopped process sends none.
        started, pings = time.monotonic(), 0
        while time.monotonic() - started < 1.0:
            pings += next_message(skip_watchdog=False) == "WATCHDOG=1"
        assert 3 <= pings <= 7, pings
        os.kill(proc.pid, signal.SIGSTOP)
        notify.settimeout(0.8)
        with pytest.raises(TimeoutError):
            next_message(skip_watchdog=False)
        os.kill(proc.pid, signal.SIGCONT)
        notify.settimeout(5)
        proc.send_signal(signal.SIGHUP)
        assert next_message().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert next_message().startswith("READY=1\nSTATUS=")
        proc.send_signal(signal.SIGTERM)
        assert next_message() == "STOPPING=1"
        assert proc.wait(15) == 0
    finally:
        notify.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
