"""Syscalls per relayed connection, lbd beside HAProxy, counted with `strace -c`.

    .venv/bin/python bench/syscalls.py                      # lbd and haproxy, 5 s of wrk each
    .venv/bin/python bench/syscalls.py --targets lbd --secs 3 --md /tmp/syscalls.md

Each target runs alone (pinned as bench.py pins: proxy on CPU 1, load on CPU 0) under
`strace -c -f -p PID` while wrk opens new connections (`Connection: close`, 1 KiB body). A
count is divided by the connections the proxy relayed (its upstream `socket()` calls: one per
connection for both). strace stops the traced process at every syscall, so rates under it mean
nothing; the counts are exact. Everything started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def ensure_strace() -> None:
    if subprocess.run(["sh", "-c", "command -v strace"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "strace"], check=True, capture_output=True)


def parse(text: str) -> dict[str, int]:
    counts = {}
    for line in text.splitlines():
        m = STRACE_LINE.match(line)
        if m and m[2] != "total":
            counts[m[2]] = int(m[1])
    return counts


def count(target: str, secs: int, conns: int, lbd_cmd: str) -> tuple[dict[str, int], int]:
    procs = B.Procs(Path(tempfile.mkdtemp(prefix="lbd-syscalls-")), "split")
    try:
        B.start_backends(procs)
        proc = B.start_target(target, procs, lbd_cmd)
        if proc is None or not B.ready(target, proc, procs.rundir):
            raise SystemExit(f"{target} did not start (logs in {procs.rundir})")
        time.sleep(1)
        out = procs.rundir / f"{target}.strace"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(proc.pid), "-o", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(1.5)  # attached to every thread
            text = B.run_load(procs.taskset("load") + ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "-H",
                                                       "Connection: close", f"http://127.0.0.1:{B.PORTS[target]['http']}/1k.bin"],
                              secs + 60)
            time.sleep(0.5)
        finally:
            os.kill(tracer.pid, signal.SIGINT)
            tracer.wait(120)
        counts = parse(out.read_text())
        done = re.search(r"(\d+) requests in", text)
        return counts, int(done[1]) if done else 0
    finally:
        procs.stop_all()


def table(results: dict[str, tuple[dict[str, int], int]]) -> list[str]:
    names = list(results)
    per = {n: {k: v / max(1, c.get("socket", 0)) for k, v in c.items()} for n, (c, _) in results.items()}
    calls = sorted({k for p in per.values() for k, v in p.items() if v >= 0.01},
                   key=lambda k: -max(p.get(k, 0) for p in per.values()))
    lines = ["| syscall | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for call in calls:
        lines.append(f"| {call} | " + " | ".join(f"{per[n].get(call, 0):.2f}" for n in names) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(per[n].values()):.2f}**" for n in names) + " |")
    lines.append("| connections relayed (wrk completed) | " + " | ".join(
        f"{results[n][0].get('socket', 0)} ({results[n][1]})" for n in names) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="haproxy,lbd")
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--lbd", default=B.DEFAULT_LBD)
    ap.add_argument("--md", help="append the table here")
    a = ap.parse_args()
    B.ensure_tools()
    ensure_strace()
    results = {t: count(t, a.secs, a.conns, a.lbd) for t in a.targets.split(",")}
    lines = [f"Syscalls per relayed connection (`{' '.join(sys.argv)}`; strace -c -f, wrk -t1 -c{a.conns} "
             f"-d{a.secs}s Connection: close):", "", *table(results), ""]
    print("\n".join(lines))
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
