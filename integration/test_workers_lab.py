"""`lbd run --workers 2` on the lab's node: VIPs bound and announced once, relayed by two workers.

The client namespace gets extra lab addresses, so its connections come from several sources,
which the steering program spreads over the workers. Each source keeps its backend (ClientIP
affinity, one table per worker); SIGTERM releases every VIP and ends every worker.
"""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbd.lab.netlab import Lab
from lbd.lab.node import LbdNode
from lbd.workers.steering import slot

HTTP = 8080  # lbd/lab/backend.py's ports
WORKERS = 2


def config(lab: Lab) -> str:
    first, last = lab.vip_range(4)
    backends = ", ".join(str(lab.ip(b)) for b in lab.backends)
    return textwrap.dedent(f"""
        interfaces: [eth0]
        pools:
          - name: v4
            addresses: [{first}-{last}]
        services:
          - name: sticky
            sessionAffinity: ClientIP
            ports: [{{name: http, port: 80, targetPort: {HTTP}}}]
            endpoints: [{backends}]
    """)


@pytest.fixture
def node(lab: Lab) -> Iterator[LbdNode]:
    lab.start_backends()
    lbd = LbdNode(lab, config(lab), name=f"lbd-{time.monotonic_ns()}")
    yield lbd
    if lbd.proc is not None and lbd.proc.poll() is None:
        lbd.stop(signal.SIGKILL)


def test_two_workers_serve_a_vip_with_affinity_per_client(node: LbdNode) -> None:
    lab = node.lab
    sources = [str(lab.subnet4[i]) for i in range(101, 109)]
    for source in sources:
        lab.exec("client", ["ip", "addr", "add", f"{source}/{lab.subnet4.prefixlen}", "dev", "eth0"], check=True)
    assert {slot(s, WORKERS) for s in sources} == {0, 1}  # both workers get clients
    node.start("--workers", str(WORKERS))
    assert node.proc is not None
    workers = [int(p) for p in Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()]
    assert len(workers) == WORKERS
    (vip,) = [row["externalIP"] for row in node.services()]
    seen: dict[str, set[str]] = {}
    for source in sources:
        for _ in range(3):
            out = lab.exec("client", ["curl", "-s", "--max-time", "3", "--interface", source, f"http://{vip}/"],
                           timeout=10)
            assert out.returncode == 0, f"curl from {source} failed ({out.returncode}): {out.stderr}"
            seen.setdefault(source, set()).add(out.stdout.strip())
    assert all(len(names) == 1 for names in seen.values()), seen
    assert node.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert str(vip) not in {a["local"] for a in lab.addresses("node")}
