#!/usr/bin/env python3
"""lbd's side-by-side L4 benchmark on loopback: lbd vs HAProxy vs nginx stream vs direct.

Run from the repository root (root is needed only when haproxy/nginx/iperf3/wrk must be installed):

    .venv/bin/python bench/bench.py                                   # everything, 3 reps (~8 min)
    .venv/bin/python bench/bench.py --targets direct,haproxy,nginx --reps 1 --wrk-secs 3 --iperf-secs 2
    .venv/bin/python bench/bench.py --only http,conn --md bench/RESULTS.md --json /tmp/bench.json
    .venv/bin/python bench/bench.py --lbd 'python3 -m lbd run --config {config} --state-dir {rundir}/st ...'

Backends: nginx serving a 1 KiB file (127.0.0.1:24080) and `iperf3 -s` (127.0.0.1:24201).
Targets: direct (client to backend), haproxy (mode tcp, one thread), nginx (stream, one worker),
lbd (bench/lbd-bench.yaml). --pin split: proxies on CPU 1, backends and load generators on CPU 0.
Each workload visits every target in turn, start rotated per rep; the report gives medians, the
ratios lbd/haproxy and lbd/direct, and each proxy's CPU cost per unit of work. All traffic stays
on 127.0.0.1, every load is bounded in time, and every process started here is stopped by its
process group at the end, also on error or Ctrl-C.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = ("direct", "haproxy", "nginx", "nginx-flow", "lbd")
WORKLOADS = ("http", "conn", "bulk1", "bulk4", "udp", "udpflood", "mem")
BACKEND = {"http": 24080, "iperf": 24201, "udp": 24053}
PORTS = {   # front ports per target; lbd's must match bench/lbd-bench.yaml
    "direct": BACKEND,
    "haproxy": {"http": 24081, "iperf": 24202},  # HAProxy 2.6 has no UDP
    "nginx": {"http": 24082, "iperf": 24203, "udp": 24084},  # UDP with proxy_responses 1
    "nginx-flow": {"udp": 24086},  # nginx UDP in flow mode (no proxy_responses)
    "lbd": {"http": 24083, "iperf": 24204, "udp": 24085},
}
SERVICE_OF = {"http": "http", "conn": "http", "bulk1": "iperf", "bulk4": "iperf", "udp": "udp", "udpflood": "udp",
              "mem": "http"}
RATIO_AGAINST = ("haproxy", "nginx", "nginx-flow", "direct")
WIRE = REPO / "lbd" / "lab" / "wire.py"   # its udp-flood sends from many sources over a raw socket
FLOOD_SOURCES = 100_000
FLOOD_RATE = 20_000  # datagrams per second: what lbd's and nginx's single core can take in
NOFILE_WANTED = 262_144  # lbd's default UDP cap (65,536 flows) needs one fd per flow
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
_VENV_LBD = REPO / ".venv" / "bin" / "lbd"
DEFAULT_LBD = (f"{_VENV_LBD if _VENV_LBD.exists() else 'lbd'} run --config {{config}} --state-dir {{rundir}}/state "
               "--admin-socket {rundir}/admin.sock --log-format json --drain-timeout 1")
NAN = float("nan")
Result = dict[str, float | str]
Results = dict[str, dict[str, list[Result]]]     # target -> workload -> one Result per rep
Popen = subprocess.Popen


def ensure_tools() -> None:
    """apt-get install what is missing, without letting Debian start the packaged services."""
    have = {"haproxy": shutil.which("haproxy"), "nginx": shutil.which("nginx"), "iperf3": shutil.which("iperf3"),
            "wrk": shutil.which("wrk"), "libnginx-mod-stream": STREAM_MODULE.exists()}
    missing = [pkg for pkg, ok in have.items() if not ok]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {' '.join(missing)}: run as root, or apt-get install -y {' '.join(missing)}")
    policy = Path("/usr/sbin/policy-rc.d")    # exit 101 = "don't start services" (see invoke-rc.d)
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


# ---- processes ----------------------------------------------------------------------------------
class Procs:
    """Every long-running process started here: each leads its own session, stopped by group."""

    def __init__(self, rundir: Path, pin: str) -> None:
        self.rundir, self.pin = rundir, pin
        self.started: list[Popen[bytes]] = []
        self.iperf: Popen[bytes] | None = None

    def taskset(self, role: str) -> list[str]:
        return ["taskset", "-c", "1" if role == "proxy" else "0"] if self.pin == "split" else []

    def start(self, name: str, argv: list[str], role: str) -> Popen[bytes]:
        with open(self.rundir / f"{name}.log", "wb") as log:    # the child keeps its own copy of the fd
            p = subprocess.Popen(self.taskset(role) + argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(p)
        return p

    def stop(self, p: Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if p.poll() is None:        # not yet reaped, so its pid (= group id) is still ours
            os.killpg(p.pid, sig)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.started.remove(p)

    def stop_all(self) -> None:
        for p in list(self.started):
            self.stop(p)


def run_load(argv: list[str], timeout: float) -> str:
    """Runs a load generator to completion; it is killed on timeout and on Ctrl-C."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        return p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        return f"[killed after {timeout:.0f}s]"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def sh(cmd: str) -> str:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
    return (r.stdout + r.stderr).strip()


def wait_for(cond: Callable[[], bool], timeout: float = 15) -> bool:
    end = time.monotonic() + timeout
    while not (ok := cond()) and time.monotonic() < end:
        time.sleep(0.2)
    return ok


# ---- /proc ----------------------------------------------------------------------------------------
def tcp_count(port: int, state: str) -> int:
    """IPv4 sockets on 127.0.0.1:port in a state (0A listen, 01 established), from /proc: a probe
    connection would count as a test at iperf3 and reach the backend through a proxy."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f if line.split()[1:4:2] == [want, state])


def listening(port: int) -> bool:
    return tcp_count(port, "0A") > 0


def udp_alive(port: int) -> bool:
    """An echo through the port: proves the target relays UDP both ways."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        s.connect(("127.0.0.1", port))
        for _ in range(4):
            with suppress(OSError):
                s.send(b"ping")
                if s.recv(64) == b"ping":
                    return True
    return False


def tree_sum(pid: int, read: Callable[[int], float]) -> float:
    """read(p) summed over the process tree of pid (nginx: master and worker)."""
    total, kids = 0.0, []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):
            kids += f.read_text().split()
    with suppress(OSError, IndexError, TypeError):      # the process may exit meanwhile
        total += read(pid)
    return total + sum(tree_sum(int(k), read) for k in kids)


def cpu_seconds(pid: int) -> float:
    """utime+stime: the CPU the proxy spent."""
    def one(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return tree_sum(pid, one)


def rss_mib(pid: int) -> float:
    return tree_sum(pid, lambda p: int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())[1]) / 1024)


# ---- backends and targets -------------------------------------------------------------------------
WRK_THREADS = 1
WORKERS = 1  # --workers: HAProxy nbthread, nginx worker_processes, lbd --workers (and the backend's nginx)


def render(template: str, rundir: Path, **values: object) -> Path:
    text = Template((HERE / "conf" / f"{template}.in").read_text()).substitute(
        rundir=rundir, workers=WORKERS, http_backend=BACKEND["http"], iperf_backend=BACKEND["iperf"], udp_backend=BACKEND["udp"],
        **values)
    out = rundir / (f"{values['name']}.conf" if "name" in values else template)
    out.write_text(text)
    return out


def start_backends(procs: Procs) -> None:
    procs.rundir.chmod(0o755)       # nginx workers run as www-data when started by root
    (procs.rundir / "www").mkdir()
    (procs.rundir / "www" / "1k.bin").write_bytes(b"x" * 1023 + b"\n")
    procs.start("backend-nginx", ["nginx", "-c", str(render("nginx-backend.conf", procs.rundir))], "load")
    start_iperf_server(procs)
    procs.start("backend-udp-echo", [sys.executable, str(HERE / "udp_echo.py"), f"127.0.0.1:{BACKEND['udp']}"], "load")
    tcp = [BACKEND["http"], BACKEND["iperf"]]
    if not all(wait_for(lambda: listening(p)) for p in tcp) or not wait_for(lambda: udp_alive(BACKEND["udp"])):
        raise SystemExit(f"backends did not start (logs in {procs.rundir})")


def start_iperf_server(procs: Procs) -> None:
    """(Re)starts iperf3 -s: a failed test can leave it busy, refusing every later client."""
    if procs.iperf:
        procs.stop(procs.iperf, signal.SIGKILL)
    argv = ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(BACKEND["iperf"])]
    procs.iperf = procs.start("backend-iperf3", argv, "load")
    wait_for(lambda: listening(BACKEND["iperf"]))


def start_target(name: str, procs: Procs, lbd_cmd: str) -> Popen[bytes] | None:
    ports = {f"{k}_port": v for k, v in PORTS[name].items()}
    if name == "haproxy":
        return procs.start(name, ["haproxy", "-db", "-f", str(render("haproxy.cfg", procs.rundir, **ports))], "proxy")
    if name == "nginx":
        conf = render("nginx-stream.conf", procs.rundir, name=name, udp_opts="proxy_responses 1;", **ports)
        return procs.start(name, ["nginx", "-c", str(conf)], "proxy")
    if name == "nginx-flow":
        return procs.start(name, ["nginx", "-c", str(render("nginx-udpflow.conf", procs.rundir, name=name, **ports))],
                           "proxy")
    if name == "lbd":
        cmd = lbd_cmd.format(config=HERE / "lbd-bench.yaml", rundir=procs.rundir)
        if WORKERS > 1:
            cmd += f" --workers {WORKERS}"
        return procs.start(name, shlex.split(cmd), "proxy")
    return None     # direct


def http_ok(port: int) -> bool:
    """One GET /1k.bin through the port: proves the target relays, not just listens."""
    data = b""
    with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /1k.bin HTTP/1.0\r\nHost: bench\r\n\r\n")
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200") and len(body) == 1024


def ready(name: str, proc: Popen[bytes] | None, rundir: Path) -> bool:
    ports = PORTS[name]
    ok = all(wait_for(lambda: listening(p)) for svc, p in ports.items() if svc != "udp")
    ok = ok and ("http" not in ports or http_ok(ports["http"]))
    ok = ok and ("udp" not in ports or wait_for(lambda: udp_alive(ports["udp"]), 10))
    if not ok:
        state = f"exited {proc.returncode}" if proc and proc.poll() is not None else "running"
        print(f"{name}: not ready ({state}), skipped; log: {rundir / (name + '.log')}", file=sys.stderr)
    return ok


# ---- workloads ------------------------------------------------------------------------------------
def wrk(procs: Procs, port: int, secs: int, conns: int, close: bool) -> Result:
    hdr = ["-H", "Connection: close"] if close else []
    out = run_load(procs.taskset("load") + ["wrk", f"-t{WRK_THREADS}", f"-c{conns}", f"-d{secs}s", "--latency", *hdr,
                                            f"http://127.0.0.1:{port}/1k.bin"], secs + 30)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)$", out, re.M)     # from --latency's distribution
    if not rate:
        return {"v": NAN, "p99": NAN, "err": "wrk: " + out[-200:]}
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return {"v": float(rate[1]), "p99": float(p99[1]) * scale[p99[2]] if p99 else NAN,
            "err": "; ".join(re.findall(r"Socket errors: .*|Non-2xx or 3xx responses: \d+", out))}


def iperf(procs: Procs, port: int, secs: int, streams: int) -> Result:
    out = run_load(procs.taskset("load") + ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs),
                                            "-P", str(streams), "-J"], secs + 30)
    try:
        data = json.loads(out)
        return {"v": data["end"]["sum_received"]["bits_per_second"] / 1e9, "err": data.get("error", "")}
    except (ValueError, KeyError, TypeError):
        return {"v": NAN, "err": "iperf3: " + out[-200:].replace("\n", " ")}


def udp_load(procs: Procs, port: int, secs: int, outstanding: int) -> Result:
    """Request/response datagrams through the port, `outstanding` in flight: replies per second."""
    out = run_load(procs.taskset("load") + [sys.executable, str(HERE / "udp_load.py"), "127.0.0.1", str(port),
                                            str(outstanding), str(secs)], secs + 30)
    try:
        return {"v": float(out.split()[0]), "err": ""}
    except (ValueError, IndexError):
        return {"v": NAN, "err": "udp_load: " + out[-200:]}


def udp_flood(procs: Procs, port: int, pid: int) -> Result:
    """RSS of the proxy before and after one datagram from each of FLOOD_SOURCES distinct sources."""
    if os.geteuid() != 0:
        return {"err": "udpflood needs root (a raw socket sends from many source ports)"}
    before = rss_mib(pid)
    out = run_load(procs.taskset("load") + [sys.executable, str(WIRE), "udp-flood", "127.0.0.1", str(port),
                                            "--sources", str(FLOOD_SOURCES), "--extra-ips", "127.0.0.2",
                                            "--rate", str(FLOOD_RATE)], FLOOD_SOURCES / FLOOD_RATE + 60)
    time.sleep(1)
    after = rss_mib(pid)
    return {"before": before, "after": after, "growth": after - before, "err": "" if "sent" in out else out[-200:]}


def measure(procs: Procs, wl: str, port: int, pid: int | None, a: argparse.Namespace) -> Result:
    """One load run, with the proxy's CPU time over it and its cost per unit of work."""
    c0, w0 = (cpu_seconds(pid) if pid else 0.0), time.monotonic()
    if wl in ("http", "conn"):
        r, secs = wrk(procs, port, a.wrk_secs, a.conns, wl == "conn"), a.wrk_secs
    elif wl == "udp":
        r, secs = udp_load(procs, port, a.udp_secs, a.outstanding), a.udp_secs
    else:
        r, secs = iperf(procs, port, a.iperf_secs, int(wl[-1])), a.iperf_secs
        if r["err"]:
            start_iperf_server(procs)
        time.sleep(0.5)     # let the iperf3 server finish the test before the next one
    if pid:
        used, v = cpu_seconds(pid) - c0, float(r["v"])
        r["cpu_pct"] = 100 * used / (time.monotonic() - w0)
        units = v * secs / 8 if wl.startswith("bulk") else v * secs / 1e6     # GB, or 1e6 requests
        r["cost"] = used / units if units else NAN                             # s/GB, or us/request (reply)
    return r


def mem(pid: int, port: int, hold: int, settle: float = 20) -> Result:
    """RSS of the proxy idle, then with `hold` idle client connections held through it. Relayed =
    established at the backend, so a proxy that only accepts does not pass for one that relays."""
    established = lambda: tcp_count(BACKEND["http"], "01")     # noqa: E731
    idle, before = rss_mib(pid), established()
    socks: list[socket.socket] = []
    try:
        with suppress(OSError):
            for _ in range(hold):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        wait_for(lambda: established() - before >= len(socks), settle)
        time.sleep(1)       # let lazily allocated buffers settle
        # min(): /proc/net/tcp is not read atomically, a busy table can list a socket twice
        relayed, held = min(established() - before, len(socks)), rss_mib(pid)
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: established() <= before, settle)       # drained before the next target
    return {"idle": idle, "held": held, "growth": held - idle, "open": len(socks), "relayed": relayed,
            "per_conn": (held - idle) * 1024 / relayed if relayed > 0 else NAN}


# ---- report ---------------------------------------------------------------------------------------
ROWS = [("http", "keep-alive req/s", "v", "{:.0f}"), ("http", "p99 ms", "p99", "{:.2f}"),
        ("conn", "new conn/s", "v", "{:.0f}"), ("conn", "p99 ms", "p99", "{:.2f}"),
        ("bulk1", "Gbit/s, 1 stream", "v", "{:.1f}"), ("bulk4", "Gbit/s, 4 streams", "v", "{:.1f}"),
        ("udp", "UDP req/resp per s", "v", "{:.0f}"),
        ("udpflood", "RSS before 100k-source flood MiB", "before", "{:.1f}"),
        ("udpflood", "RSS growth in the flood MiB", "growth", "{:.1f}"),
        ("mem", "RSS idle MiB", "idle", "{:.1f}"), ("mem", "RSS with {hold} idle conns MiB", "held", "{:.1f}"),
        ("mem", "RSS growth MiB", "growth", "{:.1f}"), ("mem", "KiB per relayed conn", "per_conn", "{:.1f}"),
        ("mem", "conns relayed", "relayed", "{:.0f}")]
COST = {"http": "us/request", "conn": "us/connection", "bulk1": "s/GB", "bulk4": "s/GB", "udp": "us/reply"}


def med(runs: list[Result], key: str) -> float:
    vals = [float(r[key]) for r in runs if key in r and float(r[key]) == float(r[key])]
    return statistics.median(vals) if vals else NAN


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a == a and b == b and b else "-"


def fmt(v: float, f: str) -> str:
    return f.format(v) if v == v else "-"


def results_table(res: Results, names: list[str], hold: int) -> list[str]:
    others = [o for o in RATIO_AGAINST if o in names]
    lines = ["| workload | metric | " + " | ".join(names) + " | " + " | ".join(f"lbd/{o}" for o in others) + " |",
             "|---|---|" + "---|" * (len(names) + len(others))]
    for wl, label, key, f in ROWS:
        if not any(wl in res[n] for n in names):
            continue
        vals = {n: med(res[n].get(wl, []), key) for n in names}
        lbd = vals.get("lbd", NAN) if key != "relayed" else NAN
        cells = [fmt(vals[n], f) for n in names] + [ratio(lbd, vals.get(o, NAN)) for o in others]
        lines.append(f"| {wl} | {label.format(hold=hold)} | " + " | ".join(cells) + " |")
    return lines


def cost_table(res: Results, names: list[str]) -> list[str]:
    proxies = [n for n in names if n != "direct"]
    others = [o for o in RATIO_AGAINST if o in proxies]
    lines = ["| workload | unit | " + " | ".join(proxies) + " | " + " | ".join(f"lbd/{o}" for o in others) + " |",
             "|---|---|" + "---|" * (len(proxies) + len(others))]
    for wl, unit in COST.items():
        if not any(wl in res[n] for n in proxies):
            continue
        cost = {n: med(res[n].get(wl, []), "cost") for n in proxies}
        pct = {n: med(res[n].get(wl, []), "cpu_pct") for n in proxies}
        cells = [f"{fmt(cost[n], '{:.2f}')} ({fmt(pct[n], '{:.0f}')}% CPU)" for n in proxies]
        cells += [ratio(cost.get("lbd", NAN), cost.get(o, NAN)) for o in others]
        lines.append(f"| {wl} | {unit} | " + " | ".join(cells) + " |")
    return lines


def per_rep(res: Results, names: list[str]) -> list[str]:
    lines = []
    for n in names:
        for wl, runs in res[n].items():
            if wl not in ("mem", "udpflood"):
                errs = sorted({str(r["err"]) for r in runs if r.get("err")})
                lines.append(f"- {n} {wl}: " + ", ".join(fmt(float(r["v"]), "{:.1f}") for r in runs)
                             + (f"  errors: {'; '.join(errs)[:300]}" if errs else ""))
    return lines


def lbd_python(lbd_cmd: str) -> str:
    """The interpreter lbd runs under (`python -m lbd`, or its script's shebang), for its uvloop."""
    exe = shutil.which(shlex.split(lbd_cmd)[0]) or sys.executable
    if Path(exe).name.startswith("python"):
        return exe
    with open(exe, "rb") as f:
        shebang = f.readline().decode(errors="replace")
    return shebang[2:].split()[0] if shebang.startswith("#!") and "python" in shebang else sys.executable


def versions(lbd_cmd: str) -> str:
    tools = {"HAProxy": ("haproxy -v", r"version (\S+)"), "nginx": ("nginx -v", r"nginx/(\S+)"),
             "iperf3": ("iperf3 -v", r"iperf (\S+)"), "wrk": ("wrk -v", r"wrk (\S+)")}
    found = [f"{name} {m[1] if (m := re.search(pat, sh(cmd))) else '?'}" for name, (cmd, pat) in tools.items()]
    py = shlex.quote(lbd_python(lbd_cmd))
    uvloop = sh(f"{py} -c 'import uvloop; print(uvloop.__version__)' 2>/dev/null") or "absent"
    commit = sh(f"git -C {REPO} rev-parse --short HEAD")
    commit += "+dirty" if sh(f"git -C {REPO} status --porcelain -- lbd") else ""
    return (", ".join(found) + f", lbd {commit} on python {sh(py + ' -V').split()[-1]} with uvloop {uvloop}; "
            f"harness python {platform.python_version()}")


def report(a: argparse.Namespace, started: str, res: Results, names: list[str]) -> str:
    cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    pin = {"split": "proxies on CPU 1 (taskset -c 1), backends and load generators on CPU 0 (taskset -c 0)",
           "none": "none (no taskset)"}[a.pin]
    return "\n".join([
        f"## {a.title}", "", f"- date: {started}", f"- command: `{shlex.join(sys.argv)}`",
        f"- machine: Linux {platform.release()}, {os.cpu_count()} CPUs, {cpu[1] if cpu else '?'}",
        f"- versions: {versions(a.lbd)}", f"- pinning: {pin}",
        f"- workers: {a.workers} (HAProxy nbthread, nginx worker_processes, lbd --workers; the backend nginx "
        f"too)", f"- reps: {a.reps}, target order rotated per rep, medians; wrk -t{a.workers} -c{a.conns} -d{a.wrk_secs}s "
        f"(1 KiB body); iperf3 -t {a.iperf_secs}; UDP {a.udp_secs} s with {a.outstanding} requests in flight "
        f"(64 B, connected sockets)" + (f"; mem holds {a.hold} idle connections" if "mem" in a.only else "")
        + (f"; udpflood sends one datagram from each of {FLOOD_SOURCES:,} sources at {FLOOD_RATE:,}/s"
           if "udpflood" in a.only else ""),
        "",
        "Ratios are lbd's value over the other's (for p99, RSS and cost, lower is better).", "",
        *results_table(res, names, a.hold), "",
        "Proxy CPU cost per unit of work (utime+stime of its process tree during the run) and its CPU use "
        "in % of one core:", "", *cost_table(res, names), "", "Per-rep values:", "", *per_rep(res, names), ""])


# ---- main -----------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma list of " + ",".join(TARGETS))
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma list of " + ",".join(WORKLOADS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pin", choices=("split", "none"), default="split")
    ap.add_argument("--wrk-secs", type=int, default=8)
    ap.add_argument("--iperf-secs", type=int, default=5)
    ap.add_argument("--udp-secs", type=int, default=8)
    ap.add_argument("--outstanding", type=int, default=32, help="UDP requests in flight")
    ap.add_argument("--conns", type=int, default=50, help="wrk -c")
    ap.add_argument("--hold", type=int, default=5000, help="idle connections for the mem workload")
    ap.add_argument("--workers", type=int, default=1,
                    help="threads/processes per proxy: HAProxy nbthread, nginx worker_processes, lbd --workers "
                         "(use with --pin none); wrk gets as many threads")
    ap.add_argument("--lbd", default=DEFAULT_LBD, help="lbd command; {config} and {rundir} are filled in")
    ap.add_argument("--md", help="append the markdown report to this file")
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--title", default="lbd benchmark")
    a = ap.parse_args()
    a.targets = [t for t in TARGETS if t in a.targets.split(",")]      # fixed order: direct first
    a.only = [w for w in WORKLOADS if w in a.only.split(",")]
    global WORKERS, WRK_THREADS
    WORKERS = WRK_THREADS = a.workers
    return a


def run_all(a: argparse.Namespace, procs: Procs, t0: float) -> tuple[Results, list[str]]:
    start_backends(procs)
    started: dict[str, Popen[bytes] | None] = {}
    for n in a.targets:
        try:
            started[n] = start_target(n, procs, a.lbd)
        except OSError as e:        # e.g. no lbd on PATH: the other targets still run
            print(f"{n}: cannot start: {e}; skipped", file=sys.stderr)
    names = [n for n in started if ready(n, started[n], procs.rundir)]
    if not names:
        raise SystemExit(f"no target is ready (logs in {procs.rundir})")
    pids = {n: p.pid if (p := started[n]) else None for n in names}
    res: Results = {n: {} for n in names}
    for n in names:     # warm-up, not recorded
        if "http" in PORTS[n]:
            wrk(procs, PORTS[n]["http"], 1, a.conns, False)
    log = lambda what: print(f"[{time.monotonic() - t0:4.0f}s] {what}", file=sys.stderr, flush=True)  # noqa: E731
    for rep in range(a.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for wl in (w for w in a.only if w not in ("mem", "udpflood")):
            for n in order:
                port = PORTS[n].get(SERVICE_OF[wl])
                if port is None:
                    continue    # e.g. HAProxy has no UDP, nginx-flow serves only UDP
                log(f"rep {rep + 1}/{a.reps} {wl} {n}")
                res[n].setdefault(wl, []).append(measure(procs, wl, port, pids[n], a))
    for n in names:
        if "udpflood" in a.only and (pid := pids[n]) and "udp" in PORTS[n]:
            log(f"udpflood {n}")
            res[n]["udpflood"] = [udp_flood(procs, PORTS[n]["udp"], pid)]
    for n in names:
        if "mem" in a.only and (pid := pids[n]) and "http" in PORTS[n]:
            log(f"mem {n}")
            res[n]["mem"] = [mem(pid, PORTS[n]["http"], a.hold)]
    return res, names


def main() -> None:
    a = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # so `finally` stops our processes,
    signal.signal(signal.SIGINT, signal.default_int_handler)     # also when started in the background
    ensure_tools()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < NOFILE_WANTED:
        with suppress(ValueError, OSError):     # root may raise the hard limit (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_WANTED, NOFILE_WANTED))
            hard = NOFILE_WANTED
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))     # inherited by every child
    if "mem" in a.only and hard != resource.RLIM_INFINITY and hard < 2 * a.hold + 1000:
        print(f"warning: RLIMIT_NOFILE {hard} is low for --hold {a.hold} (2 fds per proxied conn)", file=sys.stderr)
    if busy := [p for ports in PORTS.values() for p in ports.values() if listening(p)]:
        raise SystemExit(f"ports {busy} already in use (another bench running?)")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    procs, t0 = Procs(Path(tempfile.mkdtemp(prefix="lbd-bench-")), a.pin), time.monotonic()
    try:
        res, names = run_all(a, procs, t0)
    finally:
        procs.stop_all()
    text = report(a, started, res, names)
    text += f"\nWall time {time.monotonic() - t0:.0f} s; configs and logs in {procs.rundir}\n"
    print(text)
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n" + text)
    if a.json:
        raw = {"started": started, "argv": sys.argv, "pin": a.pin, "results": res}
        Path(a.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process started was stopped")
