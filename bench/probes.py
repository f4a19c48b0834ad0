#!/usr/bin/env python3
"""What active health checks cost: lbd probing N HTTP endpoints every second, beside HAProxy doing the same.

Run from the repository root (root is needed only when haproxy/nginx must be installed):

    .venv/bin/python bench/probes.py                                # 1,000 endpoints, 30 s each
    .venv/bin/python bench/probes.py --endpoints 100 --seconds 5    # smoke run, ~25 s
    .venv/bin/python bench/probes.py --md bench/RESULTS.md --json /tmp/probes.json

Backends: one nginx answering `GET /health` with 200 on N loopback addresses (127.1.x.y:24090,
one listen each). Targets, one at a time, pinned like bench.py (--pin split: target on CPU 1,
nginx on CPU 0):
- haproxy: one thread, a backend of N servers, `option httpchk GET /health`, `inter 1s`;
- lbd: one service with N endpoints and `readinessProbe: {httpGet: {path: /health}, periodSeconds: 1}`
  (its VIP is 127.0.0.1: nothing is bound or announced).
Each target runs --warmup seconds (lbd probes every endpoint before it serves; HAProxy spreads
its first checks over one interval), then --seconds are measured: the target's CPU
(utime+stime of its process tree) and the probes nginx answered (stub_status' request
counter). The report gives probes/s, CPU in % of one core and CPU per probe for each, and the
ratio lbd/haproxy. Everything stays on loopback; every process is stopped at the end, also on
error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench import DEFAULT_LBD, Procs, cpu_seconds, listening, lbd_python, sh, wait_for  # noqa: E402

HEALTH_PORT = 24090  # on every probed address
FRONTEND_PORT = 24091  # HAProxy's (unused) frontend
STATUS_PORT = 24092  # nginx stub_status
LBD_PORT = 24093  # lbd's (unused) service port on 127.0.0.1
GOAL_CORE_PCT = 10.0  # the goals: lbd under 10% of one core...
GOAL_RATIO = 1.5  # ...and CPU per probe within 1.5x HAProxy's


def ensure_tools() -> None:
    """apt-get install haproxy and nginx if missing, without starting the packaged services."""
    missing = [tool for tool in ("haproxy", "nginx") if not shutil.which(tool)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {' '.join(missing)}: run as root, or apt-get install -y {' '.join(missing)}")
    policy = Path("/usr/sbin/policy-rc.d")  # exit 101 = "don't start services" (see invoke-rc.d)
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)
    finally:
        if ours:
            policy.unlink()


def addresses(n: int) -> list[str]:
    """127.1.0.1, 127.1.0.2, ... : n loopback addresses, 250 per /24."""
    return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


def render(name: str, rundir: Path, **values: object) -> Path:
    text = Template((HERE / "conf" / f"{name}.in").read_text()).substitute(rundir=rundir, **values)
    out = rundir / name
    out.write_text(text)
    return out


def lbd_config(rundir: Path, endpoints: list[str]) -> Path:
    out = rundir / "lbd-probes.yaml"
    out.write_text(
        "# bench/probes.py: one service, every endpoint probed every second.\n"
        "pools:\n  - name: bench\n    addresses: [127.0.0.1/32]\n"
        "services:\n  - name: probed\n"
        f"    loadBalancerIP: 127.0.0.1\n    ports: [{{name: http, port: {LBD_PORT}, targetPort: {HEALTH_PORT}}}]\n"
        f"    endpoints: [{', '.join(endpoints)}]\n"
        f"    readinessProbe: {{httpGet: {{path: /health, port: {HEALTH_PORT}}}, periodSeconds: 1, timeoutSeconds: 1}}\n"
    )
    return out


def answered() -> int:
    """Requests nginx has answered so far (stub_status); each read adds one, which is subtracted."""
    with socket.create_connection(("127.0.0.1", STATUS_PORT), timeout=5) as s:
        s.sendall(b"GET /status HTTP/1.0\r\nHost: bench\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    match = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n", data)
    if not match:
        raise RuntimeError(f"no stub_status counters in {data[:200]!r}")
    return int(match[3])


def ready_count(target: str, rundir: Path, lbd_cmd: str) -> int:
    """Endpoints the target sees as up: lbd's admin API, HAProxy's stats socket."""
    if target == "lbd":
        exe = shlex.split(lbd_cmd)[0]
        out = subprocess.run([exe, "get", "services", "-o", "json", "--admin-socket", str(rundir / "admin.sock")],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return 0
        return sum(e["ready"] for row in json.loads(out.stdout) for e in row["endpoints"])
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(rundir / "haproxy.sock"))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = [line.split(",") for line in data.decode().splitlines() if line.startswith("probed,")]
    return sum(1 for r in rows if r[1] not in ("BACKEND", "FRONTEND") and r[17].startswith("UP"))


def start(target: str, procs: Procs, endpoints: list[str], lbd_cmd: str) -> subprocess.Popen[bytes]:
    rundir = procs.rundir
    if target == "haproxy":
        servers = "\n".join(f"  server s{i} {a}:{HEALTH_PORT}" for i, a in enumerate(endpoints))
        cfg = render("probes-haproxy.cfg", rundir, servers=servers, frontend_port=FRONTEND_PORT)
        return procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)], "proxy")
    cmd = lbd_cmd.format(config=lbd_config(rundir, endpoints), rundir=rundir)
    return procs.start("lbd", shlex.split(cmd), "proxy")


def measure(target: str, procs: Procs, a: argparse.Namespace, endpoints: list[str],
            log: Callable[[str], None]) -> dict[str, float]:
    proc = start(target, procs, endpoints, a.lbd)
    try:
        time.sleep(a.warmup)
        if proc.poll() is not None:
            raise SystemExit(f"{target} exited with {proc.returncode}; log: {procs.rundir / (target + '.log')}")
        up = ready_count(target, procs.rundir, a.lbd)
        log(f"{target}: {up}/{len(endpoints)} endpoints up after {a.warmup:g} s; measuring {a.seconds:g} s")
        cpu0, n0, t0 = cpu_seconds(proc.pid), answered(), time.monotonic()
        time.sleep(a.seconds)
        cpu1, n1, t1 = cpu_seconds(proc.pid), answered(), time.monotonic()
        up_after = ready_count(target, procs.rundir, a.lbd)
    finally:
        procs.stop(proc)
    probes = n1 - n0 - 1  # one of the counted requests is the stub_status read itself
    cpu, wall = cpu1 - cpu0, t1 - t0
    return {
        "endpoints_up": float(min(up, up_after)),
        "probes": float(probes),
        "probes_per_s": probes / wall,
        "cpu_s": cpu,
        "core_pct": 100 * cpu / wall,
        "us_per_probe": 1e6 * cpu / probes if probes > 0 else float("nan"),
    }


def report(a: argparse.Namespace, started: str, res: dict[str, dict[str, float]]) -> str:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    haproxy = res.get("haproxy", {}).get("us_per_probe", float("nan"))
    lines = [
        f"## {a.title}", "",
        f"- date: {started}", f"- command: `{shlex.join(sys.argv)}`",
        f"- machine: Linux {platform.release()}, {os.cpu_count()} CPUs, {cpu[1] if cpu else '?'}",
        f"- versions: {sh('haproxy -v').splitlines()[0] if shutil.which('haproxy') else 'haproxy ?'}; "
        f"lbd {sh(f'git -C {HERE.parent} rev-parse --short HEAD')} on "
        f"{sh(shlex.quote(lbd_python(a.lbd)) + ' -V')}",
        f"- {a.endpoints} HTTP endpoints on loopback, probed every 1 s (`GET /health`, 200 from nginx); "
        f"{a.warmup:g} s warm-up, then {a.seconds:g} s measured per target, one target at a time",
        f"- pinning: {'targets on CPU 1, nginx on CPU 0' if a.pin == 'split' else 'none'}",
        "",
        "| target | endpoints up | probes/s | CPU, % of one core | CPU per probe (us) | vs haproxy |",
        "|---|---|---|---|---|---|",
    ]
    for target, r in res.items():
        vs = f"{r['us_per_probe'] / haproxy:.2f}x" if haproxy == haproxy and haproxy else "-"
        lines.append(f"| {target} | {r['endpoints_up']:.0f}/{a.endpoints} | {r['probes_per_s']:.0f} | "
                     f"{r['core_pct']:.1f} | {r['us_per_probe']:.1f} | {vs} |")
    if "lbd" in res:
        lbd = res["lbd"]
        core_ok = lbd["core_pct"] < GOAL_CORE_PCT
        ratio = lbd["us_per_probe"] / haproxy if haproxy == haproxy and haproxy else float("nan")
        lines += ["", f"Goals: lbd under {GOAL_CORE_PCT:g}% of one core: {'yes' if core_ok else 'no'} "
                      f"({lbd['core_pct']:.1f}%); CPU per probe within {GOAL_RATIO}x HAProxy's: "
                      f"{'yes' if ratio <= GOAL_RATIO else 'no' if ratio == ratio else '-'} ({ratio:.2f}x)."]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured time per target")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds each target runs before measuring")
    ap.add_argument("--targets", default="haproxy,lbd", help="comma list of haproxy,lbd")
    ap.add_argument("--pin", choices=("split", "none"), default="split")
    ap.add_argument("--lbd", default=DEFAULT_LBD, help="lbd command; {config} and {rundir} are filled in")
    ap.add_argument("--md", help="append the markdown report to this file")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--title", default="Active health checks: probe cost")
    a = ap.parse_args()
    if not 1 <= a.endpoints <= 16000:
        ap.error("--endpoints must be 1-16000")
    a.targets = [t for t in ("haproxy", "lbd") if t in a.targets.split(",")]
    return a


def main() -> None:
    a = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops our processes
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ensure_tools()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # nginx holds one socket per address
    if busy := [p for p in (FRONTEND_PORT, STATUS_PORT, LBD_PORT) if listening(p)]:
        raise SystemExit(f"ports {busy} already in use (another bench running?)")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    procs, t0 = Procs(Path(tempfile.mkdtemp(prefix="lbd-probes-")), a.pin), time.monotonic()
    log = lambda what: print(f"[{time.monotonic() - t0:4.0f}s] {what}", file=sys.stderr, flush=True)  # noqa: E731
    endpoints = addresses(a.endpoints)
    res: dict[str, dict[str, float]] = {}
    try:
        procs.rundir.chmod(0o755)  # nginx workers run as www-data when started by root
        listens = "\n".join(f"    listen {addr}:{HEALTH_PORT} backlog=1024;" for addr in endpoints)
        cfg = render("probes-nginx.conf", procs.rundir, listens=listens, health_port=HEALTH_PORT, status_port=STATUS_PORT)
        procs.start("probes-backend", ["nginx", "-c", str(cfg)], "load")
        if not wait_for(lambda: listening(STATUS_PORT)):
            raise SystemExit(f"nginx did not start (logs in {procs.rundir})")
        for target in a.targets:
            res[target] = measure(target, procs, a, endpoints, log)
    finally:
        procs.stop_all()
    text = report(a, started, res) + f"\nWall time {time.monotonic() - t0:.0f} s; configs and logs in {procs.rundir}\n"
    print(text)
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n" + text)
    if a.json:
        Path(a.json).write_text(json.dumps({"started": started, "argv": sys.argv, "results": res}, indent=1))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process started was stopped")
