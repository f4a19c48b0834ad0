"""UDP through a VIP, end to end: `lbd run` on the node, clients in the client namespace.

The clients use connected sockets (`nc -u`, and lbd/lab/wire.py udp-ask), which the kernel only
lets replies from the VIP reach: an answer at all proves lbd replied from VIP:port.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbd.lab.netlab import Lab
from lbd.lab.node import LbdNode

WIRE = Path(__file__).resolve().parent.parent / "lbd" / "lab" / "wire.py"
UDP = 9001  # lbd/lab/backend.py: answers "<name>\n<datagram>"
HTTP = 8080
FLOOD_CAP = 2000  # flows per port in the flood test (the default, 65,536, needs as many fds)
METRICS_PORT = 9477  # on the node namespace's own loopback


def config(lab: Lab) -> str:
    first, last = lab.vip_range(4)
    backends = ", ".join(str(lab.ip(b)) for b in lab.backends)
    dead = f"{lab.ip(lab.backends[0])}:9"  # the discard port: nothing listens, ICMP unreachable
    alive = f"{lab.ip(lab.backends[1])}:{UDP}"
    return f"""
interfaces: [eth0]
pools:
  - name: v4
    addresses: [{first}-{last}]
services:
  - name: dns
    annotations: {{metallb.io/allow-shared-ip: dns, lbd.io/udp-flow-timeout: 1s}}
    ports: [{{name: dns, port: 53, targetPort: {UDP}, protocol: UDP}}]
    endpoints: [{backends}]
  - name: dns-tcp
    annotations: {{metallb.io/allow-shared-ip: dns}}
    ports: [{{name: dns-tcp, port: 53, targetPort: {HTTP}, protocol: TCP}}]
    endpoints: [{backends}]
  - name: sticky
    sessionAffinity: ClientIP
    ports: [{{name: echo, port: 5353, targetPort: {UDP}, protocol: UDP}}]
    endpoints: [{backends}]
  - name: half-dead
    ports: [{{name: echo, port: 5354, protocol: UDP}}]
    endpoints: ["{dead}", "{alive}"]
  - name: flood
    annotations: {{lbd.io/udp-max-flows: "{FLOOD_CAP}"}}
    ports: [{{name: echo, port: 7000, targetPort: {UDP}, protocol: UDP}}]
    endpoints: [{backends}]
"""


@pytest.fixture(scope="module")
def node(lab: Lab) -> Iterator[LbdNode]:
    lab.start_backends()
    started = LbdNode(lab, config(lab), name="lbd-udp").start(
        "--garp-interval", "0.2", "--metrics-address", f"127.0.0.1:{METRICS_PORT}"
    )
    yield started
    started.stop()


def vip_of(node: LbdNode, name: str) -> str:
    return next(r["externalIP"] for r in node.services() if r["name"] == name)


def ask(lab: Lab, vip: str, port: int, *extra: str, timeout: float = 30) -> list[dict[str, Any]]:
    out = lab.exec("client", [sys.executable, str(WIRE), "udp-ask", vip, str(port), *extra], timeout=timeout)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_replies_come_from_the_vip_and_new_flows_round_robin(lab: Lab, node: LbdNode) -> None:
    vip = vip_of(node, "dns")
    replies = ask(lab, vip, 53, "--count", "6", "--new-socket")
    assert all(r.get("source") == [vip, 53] for r in replies), replies
    assert Counter(r["first"] for r in replies) == {b: 2 for b in lab.backends}
    # nc -u with a connected socket, as users try it first.
    out = lab.exec("client", ["sh", "-c", f"echo hello | nc -u -w 1 {vip} 53"], timeout=10)
    assert out.stdout.split("\n")[0] in lab.backends and "hello" in out.stdout


def test_one_flow_keeps_its_backend(lab: Lab, node: LbdNode) -> None:
    replies = ask(lab, vip_of(node, "dns"), 53, "--count", "5")
    assert len({r["first"] for r in replies}) == 1 and len(replies) == 5


def test_client_ip_affinity_across_source_ports(lab: Lab, node: LbdNode) -> None:
    replies = ask(lab, vip_of(node, "sticky"), 5353, "--count", "6", "--new-socket")
    assert len({r["local_port"] for r in replies}) == 6 and len({r["first"] for r in replies}) == 1


def test_a_65000_byte_datagram_passes_intact(lab: Lab, node: LbdNode) -> None:
    (reply,) = ask(lab, vip_of(node, "dns"), 53, "--size", "65000")
    name = reply["first"]
    assert reply["size"] == len(name) + 1 + 65000  # "<name>\n" + the whole datagram back


def test_an_idle_flow_expires_and_picks_again(lab: Lab, node: LbdNode) -> None:
    vip = vip_of(node, "dns")
    script = (
        "import socket, sys, time\n"
        f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.connect(({vip!r}, 53))\n"
        "names = []\n"
        "for pause in (0, 0, 2.5):\n"  # the flow timeout is 1 s (annotation)
        "    time.sleep(pause); s.send(b'x'); names.append(s.recv(2048).split(b'\\n')[0].decode())\n"
        "print(' '.join(names))\n"
    )
    out = lab.exec("client", [sys.executable, "-c", script], timeout=20)
    first, same, after_idle = out.stdout.split()
    assert first == same and after_idle != first


def test_an_endpoint_answering_port_unreachable_is_skipped(lab: Lab, node: LbdNode) -> None:
    replies = ask(lab, vip_of(node, "half-dead"), 5354, "--count", "4", "--timeout", "0.5")
    answered = [r["first"] for r in replies if not r.get("timeout")]
    # The first datagram may go to the dead port and be lost; from then on the live one answers.
    assert len(answered) >= 3 and set(answered) == {lab.backends[1]}
    failures = [e for e in node.events() if e.get("event") == "endpoint_ejected" and e.get("reason") == "refused"]
    assert failures and failures[0]["target"].endswith(":9")


def test_tcp_and_udp_share_one_vip(lab: Lab, node: LbdNode) -> None:
    assert vip_of(node, "dns") == vip_of(node, "dns-tcp")
    vip = vip_of(node, "dns-tcp")
    out = lab.exec("client", ["curl", "-s", "--max-time", "3", f"http://{vip}:53/"], timeout=10)
    assert out.stdout.strip() in lab.backends
    assert ask(lab, vip, 53)[0]["source"] == [vip, 53]
    row = next(r for r in node.services() if r["name"] == "dns")
    assert [(p["port"], p["protocol"], p["served"]) for p in row["ports"]] == [(53, "UDP", True)]


def test_a_flood_of_distinct_sources_stays_at_the_cap(lab: Lab, node: LbdNode) -> None:
    vip = vip_of(node, "flood")
    subnet = lab.subnet4
    extra = [str(subnet.network_address + n) for n in (150, 151, 152)]  # more client addresses
    for address in extra:
        lab.exec("client", ["ip", "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0"], check=True)
    try:
        assert node.proc is not None
        before = rss_kib(node.proc.pid)
        out = lab.exec(
            "client",
            [sys.executable, str(WIRE), "udp-flood", vip, "7000", "--sources", "100000",
             "--extra-ips", ",".join(extra), "--rate", "20000"],  # what one core takes in (bench.py FLOOD_RATE)
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        time.sleep(0.5)
        after = rss_kib(node.proc.pid)
        flows = flow_gauge(node, "default/flood")
        events = flow_events(lab, "default/flood")
        print(f"UDP flood: 100,000 sources, cap {FLOOD_CAP}: {events} flows {flows:.0f}, lbd RSS "
              f"{before / 1024:.1f} -> {after / 1024:.1f} MiB (+{(after - before) / 1024:.1f})")
        assert flows <= FLOOD_CAP
        assert events.get("created", 0) > 50_000  # most sources got through the VIP socket
        assert events.get("created", 0) - events.get("evicted", 0) - events.get("expired", 0) == flows
        assert (after - before) / 1024 < 64
        # Still serving: a fresh client gets its answer from the VIP.
        assert ask(lab, vip, 7000)[0]["source"] == [vip, 7000]
    finally:
        for address in extra:
            lab.exec("client", ["ip", "addr", "del", f"{address}/{subnet.prefixlen}", "dev", "eth0"])


def flow_events(lab: Lab, service: str) -> dict[str, float]:
    """lbd_udp_flows_total by event, scraped inside the node's namespace (flushed once a second)."""
    time.sleep(1.2)
    out = lab.exec("node", ["curl", "-s", "--max-time", "3", f"http://127.0.0.1:{METRICS_PORT}/metrics"], timeout=10)
    events: dict[str, float] = {}
    for line in out.stdout.splitlines():
        if line.startswith("lbd_udp_flows_total{") and f'service="{service}"' in line:
            event = line.split('event="', 1)[1].split('"', 1)[0]
            events[event] = float(line.rsplit(" ", 1)[1])
    return events


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def flow_gauge(node: LbdNode, service: str) -> float:
    """Active flows from the daemon's status (the admin API), summed over the service's ports."""
    row = next(r for r in node.services() if f"{r['namespace']}/{r['name']}" == service)
    return float(sum(p["active"] or 0 for p in row["ports"]))
