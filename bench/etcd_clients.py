"""Which etcd client for cluster mode: lbd's JSON-gateway client beside aetcd (grpc.aio), one run.

(An earlier version of lbd's client on httpx cost ~990 us of CPU per keepalive in the same
setup, against ~200 us on aiohttp: hence aiohttp.)

    python3 -m venv /tmp/aetcd-venv && /tmp/aetcd-venv/bin/pip install aetcd aiohttp uvloop structlog
    PYTHONPATH=. /tmp/aetcd-venv/bin/python bench/etcd_clients.py [--n 2000] [--md bench/RESULTS.md]

(aetcd is not one of lbd's dependencies, hence the separate venv.) One throwaway etcd member on
loopback (`.venv/etcd/usr/bin/etcd`, unpacked by scripts/setup.sh), pinned to CPU 0, the client
to CPU 1. For each client, in turn: N lease keepalives and N create-if-absent transactions on a
lease, one at a time (what a node's ownership loop does), then the client's CPU time per call
(process time), the call rate, the p99 latency, and the RSS the client's import and connection
add. Everything started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbd.lab.etcd import loopback_etcd  # noqa: E402


def rss_kib() -> int:
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:")))


async def gateway(url: str, n: int) -> dict[str, float]:
    from lbd.cluster.etcd import EtcdClient

    c = EtcdClient([url])
    lease, _ = await c.grant(10)
    out = await measure(n, lambda: c.keepalive(lease), lambda i: c.create(f"/b/g/{i}".encode(), b"node", lease))
    await c.revoke(lease)
    await c.close()
    return out


async def aetcd_client(port: int, n: int) -> dict[str, float]:
    import aetcd

    c = aetcd.Client("127.0.0.1", port)
    lease = await c.lease(10)

    async def create(i: int) -> bool:
        key = f"/b/a/{i}".encode()
        ok, _ = await c.transaction(compare=[c.transactions.create(key) == 0],
                                    success=[c.transactions.put(key, b"node", lease)], failure=[])
        return ok

    out = await measure(n, lambda: c.refresh_lease(lease.id), create)
    await c.revoke_lease(lease.id)
    await c.close()
    return out


async def measure(n: int, keepalive, create) -> dict[str, float]:
    results = {}
    for name, call in (("keepalive", lambda i: keepalive()), ("create", create)):
        for i in range(20):  # warm up the connection
            await call(-1 - i)
        lat = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            await call(i)
            lat.append(time.perf_counter() - t)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        lat.sort()
        results[f"{name} calls/s"] = n / wall
        results[f"{name} CPU us/call"] = 1e6 * cpu / n
        results[f"{name} p99 ms"] = 1e3 * lat[int(0.99 * n) - 1]
    return results


def child(which: str, url: str, port: int, n: int) -> None:
    """One client in a process of its own, pinned to CPU 1: its imports and RSS are its own."""
    os.sched_setaffinity(0, {1})
    before = rss_kib()
    out = asyncio.run(gateway(url, n) if which == "gateway" else aetcd_client(port, n))
    out["RSS added MiB"] = (rss_kib() - before) / 1024
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--md")
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], int(a.child[2]), a.n)
        return
    with loopback_etcd(cpu=0) as (url, port):
        results = {}
        for which in ("gateway", "aetcd"):
            out = subprocess.run([sys.executable, __file__, "--n", str(a.n), "--child", which, url, str(port)],
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                print(f"{which}: failed: {out.stderr[-500:]}", file=sys.stderr)
                continue
            results[which] = json.loads(out.stdout.strip().splitlines()[-1])
    names = list(results)
    metrics = list(next(iter(results.values())))
    lines = [f"etcd clients, one run (`{' '.join(sys.argv)}`, {a.n} sequential calls each, etcd on CPU 0, "
             f"client on CPU 1):", "", "| metric | " + " | ".join(names) + " | gateway/aetcd |",
             "|---|" + "---|" * (len(names) + 1)]
    for m in metrics:
        cells = [f"{results[n][m]:.2f}" for n in names]
        ratio = results["gateway"][m] / results["aetcd"][m] if len(names) == 2 and results["aetcd"][m] else float("nan")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    print("\n".join(lines))
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
