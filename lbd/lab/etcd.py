"""A throwaway one-member etcd inside a lab host's namespace, for cluster-mode tests and the demo
(and one on loopback for the benchmarks: `loopback_etcd`).

Debian's etcd-server, unpacked by scripts/setup.sh into .venv/etcd (or an installed one). Its
data lives in the lab's tmpdir; the lab kills it with its other processes. It can be stopped
and started again on the same data (an etcd outage), or frozen.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lbd.lab.backend import die_with_parent
from lbd.lab.netlab import Lab

ROOT = Path(__file__).resolve().parents[2]
# The lab's timings (the issue's): a 1 s lease is granted as asked (etcd raises TTLs below
# 1.5 x its election timeout).
FAST = ("--heartbeat-interval", "50", "--election-timeout", "500")
PORT = 2379
PEER_PORT = 2380
START_TIMEOUT = 20.0


def etcd_binary() -> str | None:
    for candidate in (os.environ.get("LBD_ETCD"), str(ROOT / ".venv/etcd/usr/bin/etcd"), shutil.which("etcd")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class LabEtcd:
    def __init__(self, lab: Lab, host: str = "client", *, extra: tuple[str, ...] = FAST) -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (scripts/setup.sh installs etcd-server)")
        self.binary = binary
        self.lab = lab
        self.host = host
        self.extra = extra
        self.dir = lab.tmpdir / f"etcd-{host}"
        self.dir.mkdir(parents=True, exist_ok=True)
        ip = lab.ip(host)
        self.url = f"http://{ip}:{PORT}"
        self.peer_url = f"http://{ip}:{PEER_PORT}"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> LabEtcd:
        argv = [self.binary, "--name", "lab", "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", f"lab={self.peer_url}", *self.extra]
        with open(self.dir / "etcd.log", "ab") as log:
            self.proc = self.lab.popen(self.host, argv, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.dir / 'etcd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy")
            time.sleep(0.1)
        return self

    def healthy(self) -> bool:
        """Asked from the host's namespace (the test process is outside the lab)."""
        out = self.lab.exec(self.host, ["curl", "-s", "--max-time", "1", self.url + "/health"], timeout=5)
        return b'"health":"true"' in out.stdout.encode().replace(b" ", b"")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def loopback_etcd(*extra: str, cpu: int | None = None) -> Iterator[tuple[str, int]]:
    """A throwaway one-member etcd on loopback ports of its own, for the benchmarks (optionally
    pinned to one CPU, so the clients measured get the other): (its URL, its client port) once
    it answers /health. Its data goes with it; it dies with its parent."""
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd is not installed (scripts/setup.sh installs etcd-server)")
    data = Path(tempfile.mkdtemp(prefix="lbd-etcd-"))
    port, peer = _free_port(), _free_port()
    url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    argv = [binary, "--name", "b", "--data-dir", str(data / "d"), "--listen-client-urls", url,
            "--advertise-client-urls", url, "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"b={peer_url}", *extra]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    with open(data / "etcd.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(url):
            if proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(data / 'etcd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy")
            time.sleep(0.1)
        yield url, port
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as answer:
            return b'"health":"true"' in answer.read().replace(b" ", b"")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
