#!/usr/bin/env python3
"""What a big reload costs an unchanged service: client latency before and during it.

Run from the repository root (no root needed: everything is on loopback):

    .venv/bin/python bench/reload_latency.py                          # 5,000 pools + 10,000 services
    .venv/bin/python bench/reload_latency.py --pools 500 --services 1000   # a quick look
    PYTHONPATH=/tmp/lbd-old .venv/bin/python bench/reload_latency.py  # an older tree (git archive)

lbd starts serving one service, `steady` (127.15.0.1:29999), relaying to a backend thread of
this script. Client threads connect through it, send a line and read the answer, each paced
every --pace seconds (latency counts from when a request was due, so a stall is not hidden by
requests sent late), for --baseline seconds. Then the config gains --pools pools and
--services services (bench/bigconfig.py: loopback pools, so nothing is bound or announced, but
every service opens a listener) and lbd gets SIGHUP; the clients go on until `reload_applied`
(or --timeout) and --after seconds more; then the same config is reloaded once more, unchanged.
It prints p50/p99/max of requests started before the first SIGHUP and of those started during
each reload, each reload's duration, failures, and how long `lbd check` takes on the big config. Every process it starts is stopped at the end; every loop
is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bigconfig import big_config  # noqa: E402

STEADY_IP, STEADY_PORT = "127.15.0.1", 29999
STEADY_POOL = "  - {name: steady, addresses: [127.15.0.0/29]}\n"


class Answer(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        if self.rfile.readline():
            self.wfile.write(b"ok\n")


class Backend(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def steady(backend_port: int) -> str:
    return (f"  - name: steady\n    loadBalancerIP: {STEADY_IP}\n"
            f"    ports: [{{name: tcp, port: {STEADY_PORT}}}]\n    endpoints: ['127.0.0.1:{backend_port}']\n")


def small_config(backend_port: int) -> str:
    return "pools:\n" + STEADY_POOL + "services:\n" + steady(backend_port)


def large_config(backend_port: int, pools: int, services: int) -> str:
    text = big_config(pools, services, backend_port, extra=steady(backend_port))
    return text.replace("pools:\n", "pools:\n" + STEADY_POOL, 1)


def one_request(timeout: float) -> float | None:
    started = time.perf_counter()
    try:
        with socket.create_connection((STEADY_IP, STEADY_PORT), timeout=timeout) as c:
            c.sendall(b"hi\n")
            if not c.makefile("rb").readline():
                return None
    except OSError:
        return None
    return time.perf_counter() - started


def client(pace: float, stop: threading.Event, samples: list[tuple[float, float | None]], timeout: float) -> None:
    """One paced client. Latency counts from when the request was due, not from when it could be
    sent: a client held up by a stalled lbd must not hide the stall by sending late (no
    coordinated omission, as wrk2 measures)."""
    due = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        took = one_request(timeout)
        samples.append((due, None if took is None else time.monotonic() - due))
        due += pace


def wait_for_log(log: Path, event: str, offset: int, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        for line in log.read_bytes()[offset:].decode(errors="replace").splitlines():
            if f'"event": "{event}"' in line or f'"event": "reload_rejected"' in line:
                return line
        time.sleep(0.05)
    return None


def summary(latencies: list[float | None]) -> dict[str, float]:
    ok = sorted(x for x in latencies if x is not None)
    if not ok:
        return {"n": 0, "failed": len(latencies)}
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))]
    return {"n": len(ok), "failed": len(latencies) - len(ok), "p50_ms": statistics.median(ok) * 1e3,
            "p99_ms": p99 * 1e3, "max_ms": ok[-1] * 1e3}


def measure(pools: int, services: int, *, clients: int = 4, pace: float = 0.02, baseline: float = 5.0,
            after: float = 1.0, timeout: float = 300.0, run: Path | None = None) -> dict[str, Any]:
    """Time `lbd check` of the big config, then serve `steady`, reload to the big config (grow)
    and reload it once more unchanged (same), with clients on `steady` throughout."""
    run = run or Path(tempfile.mkdtemp(prefix="lbd-reload-"))
    backend = Backend(("127.0.0.1", 0), Answer)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = backend.server_address[1]
    config, log, big = run / "lbd.yaml", run / "lbd.log", run / "big.yaml"
    config.write_text(small_config(port))
    big.write_text(large_config(port, pools, services))
    result: dict[str, Any] = {"pools": pools, "services": services}

    started = time.monotonic()
    checked = subprocess.run([sys.executable, "-m", "lbd", "check", "--config", str(big), "--state-dir",
                              str(run / "none")], capture_output=True, text=True, timeout=timeout)
    result["check_s"], result["check_exit"] = time.monotonic() - started, checked.returncode

    proc = subprocess.Popen(
        [sys.executable, "-m", "lbd", "run", "--config", str(config), "--state-dir", str(run / "state"),
         "--admin-socket", str(run / "admin.sock"), "--log-format", "json", "--drain-timeout", "1"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
    stop = threading.Event()
    samples: list[tuple[float, float | None]] = []
    threads = [threading.Thread(target=client, args=(pace, stop, samples, timeout), daemon=True)
               for _ in range(clients)]
    try:
        if wait_for_log(log, "ready", 0, time.monotonic() + 30) is None:
            raise RuntimeError(f"lbd did not start: {log.read_text()[-2000:]}")
        for t in threads:
            t.start()
        time.sleep(baseline)
        marks = [time.monotonic()]
        for phase in ("grow", "same"):
            offset = log.stat().st_size
            config.write_text(big.read_text())
            hup = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            line = wait_for_log(log, "reload_applied", offset, hup + timeout)
            applied = time.monotonic()
            result[phase] = {"reload_s": applied - hup, "outcome": json.loads(line)["event"] if line else "timeout",
                             "latency": summary([lat for at, lat in samples if hup <= at <= applied])}
            time.sleep(after)
            marks.append(applied)
        result["before"] = summary([lat for at, lat in samples if at < marks[0]])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        backend.shutdown()
        backend.server_close()
    return result


def report(result: dict[str, Any]) -> list[str]:
    def show(s: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())

    lines = [f"lbd check of {result['pools']} pools + {result['services']} services: {result['check_s']:.2f} s "
             f"(exit {result['check_exit']})", f"before: {show(result['before'])}"]
    for phase in ("grow", "same"):
        r = result[phase]
        lines.append(f"reload {phase}: {r['outcome']} after {r['reload_s']:.2f} s; during: {show(r['latency'])}")
        if "p99_ms" in r["latency"] and "p99_ms" in result["before"]:
            lines.append(f"  added p99: {r['latency']['p99_ms'] - result['before']['p99_ms']:.1f} ms (goal < 50 ms)")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pools", type=int, default=5000)
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=4, help="client threads")
    ap.add_argument("--pace", type=float, default=0.02, help="seconds between one client's requests")
    ap.add_argument("--baseline", type=float, default=5.0)
    ap.add_argument("--after", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=300.0, help="longest a reload may take")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.services + 2000
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {need}: every service opens a listener")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # older trees do not raise it themselves

    with tempfile.TemporaryDirectory(prefix="lbd-reload-") as tmp:
        result = measure(a.pools, a.services, clients=a.clients, pace=a.pace, baseline=a.baseline,
                         after=a.after, timeout=a.timeout, run=Path(tmp))
    print("\n".join(report(result)))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
