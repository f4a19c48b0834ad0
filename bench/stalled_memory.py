#!/usr/bin/env python3
"""Kernel socket memory per stalled relay: clients that stop reading while the endpoint sends.

Run from the repository root (no root needed: everything is on loopback):

    .venv/bin/python bench/stalled_memory.py                      # 50 stalled relays
    .venv/bin/python bench/stalled_memory.py --lbd-arg=--socket-buffer=0   # kernel autotuning
    PYTHONPATH=/tmp/lbd-old .venv/bin/python bench/stalled_memory.py  # an older tree (git archive)

A backend thread sends 64 KiB blocks as fast as each connection takes them. --clients clients
connect through lbd, read the first line, then never read again. Once lbd's socket memory stops
growing (or --settle seconds pass) it sums the kernel memory of lbd's own TCP sockets (`ss -tm`:
receive queue + write queue + forward allocation) and the host's TCP memory (/proc/net/sockstat,
which also counts the clients' and the backend's buffers), and divides by the number of relays.
Every process it starts is stopped at the end; every loop is bounded by --settle.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VIP, PORT = "127.15.1.1", 29998
BLOCK = b"x" * 65536
PAGE = os.sysconf("SC_PAGE_SIZE")
SKMEM = re.compile(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f(\d+),w(\d+),")


class Flood(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(60)
        try:
            self.request.sendall(b"hello\n")
            while not self.server.stop.is_set():  # type: ignore[attr-defined]
                self.request.sendall(BLOCK)
        except OSError:
            pass


class Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    stop: threading.Event


def lbd_socket_bytes(pid: int) -> tuple[int, int]:
    """(bytes, sockets) of kernel memory held by `pid`'s TCP sockets."""
    out = subprocess.run(["ss", "-tmnpH"], capture_output=True, text=True, timeout=30).stdout
    total = count = 0
    for block in re.split(r"\n(?=\S)", out):
        if f"pid={pid}," not in block:
            continue
        m = SKMEM.search(block)
        if m:
            forward = int(m[2])
            if forward >= 1 << 31:  # sk_forward_alloc is signed; ss prints it unsigned
                forward -= 1 << 32
            total += int(m[1]) + forward + int(m[3])
            count += 1
    return total, count


def host_tcp_bytes() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * PAGE
    return 0


def measure(clients: int, lbd_args: list[str], settle: float = 20.0) -> dict[str, float]:
    """Kernel TCP memory per stalled relay: lbd's own sockets, and the host's in all."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = threading.Event()
    backend = Backend(("127.0.0.1", 0), Flood)
    backend.stop = stop  # type: ignore[misc]
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    held: list[socket.socket] = []
    with tempfile.TemporaryDirectory(prefix="lbd-stalled-") as tmp:
        run = Path(tmp)
        config = run / "lbd.yaml"
        config.write_text(f"pools: [{{name: s, addresses: [{VIP}/32]}}]\n"
                          f"services: [{{name: flood, ports: [{{port: {PORT}}}], "
                          f"endpoints: ['127.0.0.1:{backend.server_address[1]}']}}]\n")
        log = run / "lbd.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbd", "run", "--config", str(config), "--state-dir", str(run / "state"),
             "--admin-socket", str(run / "admin.sock"), "--log-format", "json", "--drain-timeout", "1",
             *lbd_args],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while b'"ready"' not in log.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"lbd did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            idle_lbd, _ = lbd_socket_bytes(proc.pid)
            idle_host = host_tcp_bytes()
            for _ in range(clients):
                c = socket.create_connection((VIP, PORT), timeout=10)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a stalled reader: tiny window
                c.recv(6)
                held.append(c)
            last, deadline = -1, time.monotonic() + settle
            while time.monotonic() < deadline:
                time.sleep(1.0)
                now, _ = lbd_socket_bytes(proc.pid)
                if now == last:
                    break
                last = now
            held_lbd, sockets = lbd_socket_bytes(proc.pid)
            held_host = host_tcp_bytes()
        finally:
            stop.set()
            for c in held:
                c.close()
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            backend.shutdown()
            backend.server_close()
    return {"relays": clients, "lbd_sockets": sockets, "lbd_kib_per_relay": (held_lbd - idle_lbd) / clients / 1024,
            "host_kib_per_relay": (held_host - idle_host) / clients / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--settle", type=float, default=20.0, help="longest wait for memory to stop growing")
    ap.add_argument("--lbd-arg", action="append", default=[], help="extra `lbd run` argument (repeatable)")
    a = ap.parse_args()
    r = measure(a.clients, a.lbd_arg, a.settle)
    print(f"{a.clients} stalled relays, lbd args {a.lbd_arg or '(defaults)'}: lbd holds {r['lbd_sockets']} TCP sockets")
    print(f"  lbd's sockets: {r['lbd_kib_per_relay']:.0f} KiB per stalled relay")
    print(f"  host TCP memory (sockstat, clients and backend included): {r['host_kib_per_relay']:.0f} KiB per stalled relay")
    return 0


if __name__ == "__main__":
    sys.exit(main())
