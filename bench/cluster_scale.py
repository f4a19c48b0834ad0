"""Cluster mode at scale: simulated nodes (the ownership core and member with the real etcd
client, no data plane) and many VIPs against one etcd member.

    .venv/bin/python bench/cluster_scale.py --nodes 50 --vips 5000 [--ttl 2] [--md bench/RESULTS.md]

Every node is a ClusterMember in this one process, each with its own EtcdClient (its own HTTP
connections, lease and watch), all candidates for every VIP; their Bind/Unbind actions are
recorded as who answers for what. Measured, in one run:
- cold convergence: from the first member starting to every VIP answered by exactly one node;
- failover: the node holding most VIPs stops dead (no handover): until every one of its VIPs is
  answered elsewhere;
- etcd requests per second at steady state (unary calls counted at the client), which should
  grow with nodes (keepalives), not VIPs (nothing per VIP while nothing changes);
- two owners of one VIP at any sample: must stay 0.
etcd runs pinned to CPU 0 and this process to CPU 1 (the machine has 2): on a real cluster each
node has its own CPU, so times here include one CPU doing the work of all the nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbd.cluster.etcd import EtcdClient  # noqa: E402
from lbd.cluster.fencing import Action, Bind, Unbind  # noqa: E402
from lbd.cluster.member import ClusterMember  # noqa: E402
from lbd.lab.etcd import FAST, loopback_etcd  # noqa: E402
from lbd.loop import run  # noqa: E402

CALLS: collections.Counter[str] = collections.Counter()


class CountingClient(EtcdClient):
    async def _call(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        CALLS[path] += 1
        return await super()._call(path, body, timeout)


async def bench(url: str, nodes: int, vips: int, ttl: int, limit: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    names = [f"node-{i:02d}" for i in range(nodes)]
    addresses = [f"198.19.{k // 250}.{k % 250 + 1}" for k in range(vips)]
    answering: dict[str, set[str]] = collections.defaultdict(set)  # VIP -> nodes answering
    double = 0

    def recorder(node: str):
        def record(actions: list[Action]) -> None:
            nonlocal double
            for a in actions:
                if isinstance(a, Bind):
                    answering[a.vip].add(node)
                    double += len(answering[a.vip]) > 1
                elif isinstance(a, Unbind):
                    answering[a.vip].discard(node)
        return record

    async def until(check, what: str) -> float:
        started = reported = loop.time()
        while not check():
            if loop.time() - started > limit:
                raise TimeoutError(f"{what}: not within {limit} s")
            await asyncio.sleep(0.05)
            if loop.time() - reported >= 10:
                reported = loop.time()
                print(f"{what}: {reported - started:.0f} s, {sum(len(a) == 1 for a in answering.values())} VIPs "
                      f"answered by one node, {sum(m.core.lease is not None for m in members)} leases, "
                      f"{sum(m.failsafe_active for m in members)} in failsafe, etcd calls {dict(CALLS)}", file=sys.stderr)
        return loop.time() - started

    prefix = f"/lbd-scale-{time.time_ns()}/".encode()
    members = [ClusterMember(CountingClient([url], timeout=5.0), n, recorder(n), prefix=prefix, ttl=ttl)
               for n in names]
    out: dict[str, float] = {}
    victim: ClusterMember | None = None
    started = loop.time()
    try:
        await asyncio.gather(*(m.start() for m in members))
        for m in members:
            m.want(addresses)
        try:
            out["converge_s"] = loop.time() - started + await until(
                lambda: all(len(answering[v]) == 1 for v in addresses), "convergence")
        except TimeoutError:
            orphans = [v for v in addresses if len(answering[v]) != 1]
            m = members[0]
            print("orphans", len(orphans), [(v, m.owners.get(v), sorted(answering[v]),
                                             [(x.node, x.core.lease, v in x.core.claiming) for x in members
                                              if x.node == m.owners.get(v)]) for v in orphans[:3]], file=sys.stderr)
            raise
        per_node = collections.Counter(next(iter(answering[v])) for v in addresses)
        out["vips_per_node_min"], out["vips_per_node_max"] = min(per_node.values()), max(per_node.values())

        await asyncio.sleep(ttl)  # let the claims' writes settle before counting
        CALLS.clear()
        window = 10.0
        await asyncio.sleep(window)
        out["etcd_requests_per_s"] = sum(CALLS.values()) / window
        out["keepalives_per_s"] = CALLS["/lease/keepalive"] / window

        victim_name, _ = per_node.most_common(1)[0]
        victim = next(m for m in members if m.node == victim_name)
        lost = {v for v in addresses if victim_name in answering[v]}
        out["failover_vips"] = len(lost)
        killed = loop.time()
        await victim.stop(handover=False)
        for v in lost:  # its fence runs out: the recorder forgets it at once (the worst case)
            answering[v].discard(victim_name)
        members.remove(victim)
        try:
            out["failover_s"] = await until(lambda: all(len(answering[v]) == 1 for v in lost), "failover")
        except TimeoutError:
            orphans = [v for v in lost if len(answering[v]) != 1]
            m = members[0]
            print("orphans", len(orphans), [(v, m.owners.get(v), sorted(answering[v]), sorted(m.index.get(v, ())))
                                             for v in orphans[:3]], file=sys.stderr)
            raise
        out["failover_from_kill_s"] = loop.time() - killed
    finally:
        for m in members:
            await m.stop(handover=True)
            await m.client.close()
        if victim is not None:
            await victim.client.close()
    out["double_owner_events"] = double
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--vips", type=int, default=5000)
    ap.add_argument("--ttl", type=int, default=2)
    ap.add_argument("--limit", type=float, default=300.0, help="seconds any phase may take")
    ap.add_argument("--md")
    a = ap.parse_args()
    import logging

    import structlog
    # A line per VIP and node would be the bench's main cost: warnings only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with loopback_etcd(*FAST, cpu=0) as (url, _):
        os.sched_setaffinity(0, {1})
        result = run(bench(url, a.nodes, a.vips, a.ttl, a.limit))
    lines = [f"cluster scale, one run (`{' '.join(sys.argv[1:])}`): {a.nodes} simulated nodes, {a.vips} VIPs, "
             f"lease TTL {a.ttl} s, one etcd member on CPU 0, every node in one process on CPU 1:", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.items()]
    print("\n".join(lines))
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
