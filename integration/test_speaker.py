"""lbd as a MetalLB speaker + proxy, end to end: `lbd run` on the lab's node, curl and nc on the client.

Everything crosses the lab's bridge with real ARP: the client reaches a VIP only because the
node bound it and announced it.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.l2 import ARP, Ether

from lbd.lab.netlab import ETH_P_ARP, Lab
from lbd.lab.node import LbdNode

HTTP = 8080  # lbd/lab/backend.py's ports
TCP_STREAM = 9000
GARP_INTERVAL = 0.2
GARP_ROUNDS = 3
METRICS_PORT = 9464  # inside the node's namespace


def config(lab: Lab, *, with_sticky: bool = True, with_stream: bool = True, v6: bool = True) -> str:
    first, last = lab.vip_range(4)
    first6, last6 = lab.vip_range(6)
    backends = ", ".join(str(lab.ip(b)) for b in lab.backends)
    backends6 = ", ".join(f'"[{lab.ip(b, 6)}]:{HTTP}"' for b in lab.backends)
    text = f"""
interfaces: [eth0]
pools:
  - name: v4
    addresses: [{first}-{last}]
  - name: v6
    addresses: [{first6}-{last6}]
services:
  - name: web
    ports: [{{name: http, port: 80, targetPort: {HTTP}}}]
    endpoints: [{backends}]
"""
    if with_stream:
        text += f"""
  - name: stream
    ports: [{{name: tcp, port: 7000, targetPort: {TCP_STREAM}}}]
    endpoints: [{backends}]
"""
    if with_sticky:
        text += f"""
  - name: sticky
    sessionAffinity: ClientIP
    ports: [{{name: http, port: 80, targetPort: {HTTP}}}]
    endpoints: [{backends}]
"""
    if v6:
        text += f"""
  - name: web6
    ipFamilies: [IPv6]
    ports: [{{name: http, port: 80}}]
    endpoints: [{backends6}]
"""
    return text


def curl(lab: Lab, url: str, *extra: str) -> str:
    out = lab.exec("client", ["curl", "-s", "--max-time", "3", *extra, url], timeout=10)
    assert out.returncode == 0, f"curl {url} failed ({out.returncode}): {out.stderr}"
    return out.stdout.strip()


def reachable(lab: Lab, ip: str, port: int) -> bool:
    return lab.exec("client", ["nc", "-z", "-w", "2", ip, str(port)], timeout=10).returncode == 0


def node_addresses(lab: Lab) -> set[str]:
    return {a["local"] for a in lab.addresses("node")}


@pytest.fixture(scope="module")
def lab_with_backends(lab: Lab) -> Lab:
    lab.start_backends()
    return lab


@pytest.fixture
def node(lab_with_backends: Lab) -> Iterator[LbdNode]:
    lab = lab_with_backends
    lbd = LbdNode(lab, config(lab), name=f"lbd-{time.monotonic_ns()}")
    yield lbd
    if lbd.proc is not None and lbd.proc.poll() is None:
        lbd.stop(signal.SIGKILL)
    # Whatever a test did, the next one starts from a node without VIPs.
    for addr in lab.addresses("node"):
        if addr.get("local") and addr["local"] != str(lab.ip("node")) and addr["local"] != str(lab.ip("node", 6)) \
                and not addr["local"].startswith("fe80"):
            lab.exec("node", ["ip", "addr", "del", f"{addr['local']}/{addr['prefixlen']}", "dev", "eth0"])
    lab.flush_neigh("client")


def vips(lbd: LbdNode) -> dict[str, str]:
    return {row["name"]: row["externalIP"] for row in lbd.services()}


def test_tcp_through_vips_round_robin_and_affinity(node: LbdNode) -> None:
    lab = node.lab
    node.start("--garp-interval", str(GARP_INTERVAL))
    ips = vips(node)
    assert ips["web"] in node_addresses(lab)
    answers = [curl(lab, f"http://{ips['web']}/") for _ in range(6)]
    assert Counter(answers) == {b: 2 for b in lab.backends}
    assert answers[:3] == answers[3:]
    sticky = {curl(lab, f"http://{ips['sticky']}/") for _ in range(5)}
    assert len(sticky) == 1
    assert reachable(lab, ips["stream"], 7000)
    # A raw TCP stream through the VIP: the backend names itself, then echoes.
    out = lab.exec("client", ["sh", "-c", f"printf 'hello\\n' | nc -q 1 -w 3 {ips['stream']} 7000"], timeout=10)
    lines = out.stdout.splitlines()
    assert lines[0] in lab.backends and lines[1] == "hello"
    # IPv6 VIP from the v6 pool, relayed to v6 endpoints.
    assert ":" in ips["web6"]
    assert curl(lab, f"http://[{ips['web6']}]/", "-g") in lab.backends
    assert node.stop() == 0


def test_gratuitous_arp_and_neighbour_entry_hold_node_mac(node: LbdNode) -> None:
    lab = node.lab
    lab.flush_neigh("client")
    with lab.capture("client", ethertypes=(ETH_P_ARP,)) as capture:
        node.start("--garp-interval", str(GARP_INTERVAL), "--garp-rounds", str(GARP_ROUNDS))
        time.sleep(GARP_INTERVAL * GARP_ROUNDS + 0.5)
    node_mac = lab.mac("node")
    ips = vips(node)
    frames = [Ether(f) for f in capture.frames]
    for name in ("web", "stream", "sticky"):
        garps = [p for p in frames if ARP in p and p[ARP].psrc == p[ARP].pdst == ips[name]]
        assert len(garps) >= 2 * GARP_ROUNDS, f"no gratuitous ARPs for {name} {ips[name]}"
        assert all(p.src == p[ARP].hwsrc == node_mac and p.dst == "ff:ff:ff:ff:ff:ff" for p in garps)
    curl(node.lab, f"http://{ips['web']}/")
    assert lab.neigh_mac("client", ips["web"]) == node_mac
    assert node.stop() == 0


def scrape(lab: Lab) -> str:
    out = lab.exec("node", ["curl", "-s", "--max-time", "3", f"http://127.0.0.1:{METRICS_PORT}/metrics"], timeout=10)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_metallb_layer2_and_speaker_metrics_count_on_the_wire(node: LbdNode) -> None:
    lab = node.lab
    lab.flush_neigh("client")
    node.start("--garp-interval", str(GARP_INTERVAL), "--garp-rounds", str(GARP_ROUNDS),
               "--metrics-address", f"127.0.0.1:{METRICS_PORT}")
    ips = vips(node)
    curl(lab, f"http://{ips['web']}/")  # the client ARPs for the VIP: a request seen, an answer sent
    time.sleep(GARP_INTERVAL * GARP_ROUNDS + 0.5)  # every burst sent
    text = scrape(lab)
    # MetalLB's exact names (Go's client: no `_total` on counters), no `_created` series.
    assert "_created" not in text
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    web = f'{{ip="{ips["web"]}"}}'
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}
    assert values[f"metallb_layer2_requests_received{web}"] >= 1
    assert values[f"metallb_layer2_responses_sent{web}"] >= 1
    assert values[f"metallb_layer2_gratuitous_sent{web}"] >= 2 * GARP_ROUNDS  # a pair per round
    assert not any("metallb_layer2_" in line.split("{")[0] and "_total" in line.split("{")[0] for line in lines)
    announced = {
        (s.labels["service"], s.labels["ip"]): (s.labels["protocol"], s.labels["node"], s.value)
        for f in text_string_to_metric_families(text) if f.name == "metallb_speaker_announced" for s in f.samples
    }
    assert announced == {(f"default/{name}", ip): ("layer2", "node", 1.0) for name, ip in ips.items()}
    # A withdrawn service's series go with it.
    node.config.write_text(config(lab, with_sticky=False))
    node.reload()
    deadline = time.monotonic() + 10
    while f'service="default/sticky"' in scrape(lab) and time.monotonic() < deadline:
        time.sleep(0.2)
    text = scrape(lab)
    assert 'service="default/sticky"' not in text and f'ip="{ips["sticky"]}"' not in text
    assert node.stop() == 0


def test_reload_removes_deleted_services_and_keeps_others(node: LbdNode) -> None:
    lab = node.lab
    node.start("--garp-interval", str(GARP_INTERVAL))
    before = vips(node)
    assert reachable(lab, before["sticky"], 80)
    node.config.write_text(config(lab, with_sticky=False, with_stream=False))  # two VIPs go at once
    node.reload()
    gone = {before["sticky"], before["stream"]}
    deadline = time.monotonic() + 10
    while gone & node_addresses(lab) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not gone & node_addresses(lab)
    assert not reachable(lab, before["sticky"], 80)
    assert not reachable(lab, before["stream"], 7000)
    after = vips(node)
    assert after == {k: v for k, v in before.items() if k not in ("sticky", "stream")}
    assert curl(lab, f"http://{after['web']}/") in lab.backends
    started = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - started < 5


def test_broken_config_on_reload_keeps_serving(node: LbdNode) -> None:
    lab = node.lab
    node.start()
    ips = vips(node)
    node.config.write_text(config(lab).replace("port: 80,", "port: 70000,", 1))
    node.reload()
    deadline = time.monotonic() + 10
    while not any(e.get("event") == "reload_rejected" for e in node.events()) and time.monotonic() < deadline:
        time.sleep(0.1)
    errors = [e["error"] for e in node.events() if e.get("event") == "config_error"]
    assert any("70000 is not a port" in e and "Service default/web" in e for e in errors)
    assert curl(lab, f"http://{ips['web']}/") in lab.backends
    assert vips(node) == ips
    assert node.stop() == 0


def test_sigterm_removes_every_vip_and_restart_keeps_them(node: LbdNode) -> None:
    lab = node.lab
    node.start()
    first = vips(node)
    assert set(first.values()) <= node_addresses(lab)
    assert node.stop(signal.SIGTERM) == 0
    assert not set(first.values()) & node_addresses(lab)
    assert not reachable(lab, first["web"], 80)
    # Same state dir: the same VIPs, even with the services listed in another order.
    head, services = config(lab).split("services:\n")
    blocks = services.rstrip("\n").split("\n  - name: ")
    blocks = [blocks[0].removeprefix("  - name: "), *blocks[1:]]
    node.config.write_text(head + "services:\n" + "".join(f"  - name: {b}\n" for b in reversed(blocks)))
    node.start()
    assert vips(node) == first
    assert curl(lab, f"http://{first['web']}/") in lab.backends
    assert node.stop() == 0


def test_crash_leftovers_are_reconciled_on_start(node: LbdNode) -> None:
    lab = node.lab
    node.start()
    first = vips(node)
    node.stop(signal.SIGKILL)  # a crash: the VIPs stay on the interface
    assert set(first.values()) <= node_addresses(lab)
    # Restart without "sticky": its stale address goes, the others are kept and serve.
    node.config.write_text(config(lab, with_sticky=False))
    node.start()
    assert first["sticky"] not in node_addresses(lab)
    assert first["web"] in node_addresses(lab)
    assert any(e.get("event") == "stale_vip_removed" for e in node.events())
    assert curl(lab, f"http://{first['web']}/") in lab.backends
    assert node.stop() == 0


def test_local_service_without_a_ready_local_endpoint_is_not_announced(node: LbdNode) -> None:
    lab = node.lab
    backends = lab.backends

    def local(*on_node: str) -> str:
        endpoints = ", ".join(f'{{address: "{lab.ip(b)}", nodeName: {n}}}' for b, n in zip(backends, on_node))
        return f"""
interfaces: [eth0]
pools: [{{name: v4, addresses: ["{lab.vip_range(4)[0]}-{lab.vip_range(4)[1]}"]}}]
services:
  - name: local
    externalTrafficPolicy: Local
    ports: [{{name: http, port: 80, targetPort: {HTTP}}}]
    endpoints: [{endpoints}]
"""

    node.config.write_text(local("elsewhere", "elsewhere"))
    node.start()
    (row,) = node.services()
    # Not bound, so nobody answers ARP for it: no black hole that accepts and resets.
    assert row["state"] == "Standby" and row["node"] is None
    assert "no ready endpoint on this node" in row["reason"]
    assert row["externalIP"] not in node_addresses(lab)
    assert not reachable(lab, row["externalIP"], 80)
    # A ready endpoint here: announced and served, by this node.
    node.config.write_text(local("elsewhere", "node"))
    node.reload()
    deadline = time.monotonic() + 10
    while node.services()[0]["state"] != "Serving" and time.monotonic() < deadline:
        time.sleep(0.1)
    (row,) = node.services()
    assert row["state"] == "Serving" and row["node"] == "node"
    assert row["externalIP"] in node_addresses(lab)
    assert curl(lab, f"http://{row['externalIP']}/") == backends[1]
    assert node.stop() == 0
