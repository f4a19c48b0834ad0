"""The L2 presence in a lab (claim, announce, withdraw, release): it runs in the node namespace,
the client watches the wire.

Every frame is decoded with scapy here, not with lbd's codec, so the codec is checked too.
Timings are small (3 rounds 0.2 s apart) to keep the module to a few seconds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from integration.announcer_driver import AnnouncerProcess
from lbd.lab.netlab import ETH_P_ARP, ETH_P_IPV6, Lab

ROUNDS, INTERVAL = 3, 0.2
BURST_SECONDS = ROUNDS * INTERVAL + 0.3  # the whole burst plus scheduling slack
LBD_ADDR_PROTO = 0xBD


@pytest.fixture
def driver(lab: Lab) -> Iterator[AnnouncerProcess]:
    proc = AnnouncerProcess(lab, garp_rounds=ROUNDS, garp_interval=INTERVAL)
    yield proc
    with contextlib.suppress(Exception):
        proc.call("reconcile", wanted=[])  # next test starts without our addresses
    proc.close()


def eventually(check: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def gratuitous_arps(frames: list[bytes], vip: ipaddress.IPv4Address) -> list[Any]:
    packets = [Ether(f) for f in frames]
    return [p for p in packets if ARP in p and p[ARP].psrc == p[ARP].pdst == str(vip)]


def events(driver: AnnouncerProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in driver.logs() if e.get("event") == name]


def test_claim_adds_marked_address_and_sets_arp_sysctls(lab: Lab, driver: AnnouncerProcess) -> None:
    vip, vip6 = lab.vip(0), lab.vip(0, 6)
    assert driver.call("claim", ip=vip) == "eth0"
    assert driver.call("claim", ip=vip) == "eth0"  # idempotent
    assert driver.call("claim", ip=vip6) == "eth0"
    on_node = {a["local"]: a for a in lab.addresses("node")}
    assert on_node[str(vip)]["prefixlen"] == 32 and on_node[str(vip)]["label"] == "eth0:lbd"
    assert on_node[str(vip6)]["prefixlen"] == 128 and on_node[str(vip6)].get("nodad")
    marked = {m["ip"]: m for m in driver.call("marked")}
    assert marked[str(vip)]["proto"] == marked[str(vip6)]["proto"] == LBD_ADDR_PROTO
    for key, value in (("arp_ignore", "1"), ("arp_announce", "2")):
        assert lab.exec("node", ["cat", f"/proc/sys/net/ipv4/conf/eth0/{key}"]).stdout.strip() == value
    bound = events(driver, "vip_bound")
    assert [e["outcome"] for e in bound] == ["added", "kept", "added"]
    assert {(e["ip"], e["interface"], e["mac"]) for e in bound} == {
        (str(vip), "eth0", lab.mac("node")), (str(vip6), "eth0", lab.mac("node"))
    }


def test_gratuitous_arp_on_the_wire_moves_the_client(lab: Lab, driver: AnnouncerProcess) -> None:
    vip, node_mac = lab.vip(1), lab.mac("node")
    driver.call("claim", ip=vip)
    lab.set_neigh("client", vip, "02:00:00:00:00:99")  # the VIP's previous owner, as after a failover
    with lab.capture("client", ethertypes=(ETH_P_ARP,)) as capture:
        driver.call("announce", ip=vip)
        time.sleep(BURST_SECONDS)
    garps = gratuitous_arps(capture.frames, vip)
    assert sorted(p[ARP].op for p in garps) == [1] * ROUNDS + [2] * ROUNDS  # a request and a reply per round
    assert all(p.dst == "ff:ff:ff:ff:ff:ff" and p.src == p[ARP].hwsrc == node_mac for p in garps)
    assert all(p[ARP].hwdst == node_mac for p in garps if p[ARP].op == 2)
    # The client learnt the new MAC from the GARPs alone: it sent no request.
    assert lab.neigh_mac("client", vip) == node_mac
    assert not [p for p in map(Ether, capture.frames) if ARP in p and p[ARP].psrc == str(lab.ip("client"))]
    assert driver.call("metrics", ip=vip)["gratuitous"] == 2 * ROUNDS
    sent = events(driver, "garp_sent")
    assert [e["round"] for e in sent if e["ip"] == str(vip)] == list(range(1, ROUNDS + 1))
    assert all(e["mac"] == node_mac and e["interface"] == "eth0" for e in sent)
    assert events(driver, "vip_announced")[0]["mac"] == node_mac


def test_requests_are_answered_with_node_mac_and_counted(lab: Lab, driver: AnnouncerProcess) -> None:
    vip, node_mac = lab.vip(2), lab.mac("node")
    driver.call("claim", ip=vip)
    driver.call("announce", ip=vip)
    lab.flush_neigh("client")
    with lab.capture("client", ethertypes=(ETH_P_ARP,)) as capture:
        assert lab.ping("client", vip)
    assert lab.neigh_mac("client", vip) == node_mac
    replies = [p for p in map(Ether, capture.frames) if ARP in p and p[ARP].op == 2 and p.dst == lab.mac("client")]
    assert [(p[ARP].psrc, p[ARP].hwsrc) for p in replies] == [(str(vip), node_mac)]  # one answer, not two
    counters = eventually(lambda: (c := driver.call("metrics", ip=vip))["responses"] >= 1 and c)
    assert counters["requests"] >= 1 and counters["responses"] >= 1
    # Announcing again (after the first burst) starts a new burst and keeps watching.
    assert eventually(lambda: driver.call("metrics", ip=vip)["gratuitous"] == 2 * ROUNDS)
    driver.call("announce", ip=vip)
    assert eventually(lambda: driver.call("metrics", ip=vip)["gratuitous"] == 4 * ROUNDS)
    lab.flush_neigh("client")
    assert lab.ping("client", vip)
    assert eventually(lambda: driver.call("metrics", ip=vip)["responses"] > counters["responses"])


def test_ipv6_unsolicited_advertisements_and_neighbour(lab: Lab, driver: AnnouncerProcess) -> None:
    vip6, node_mac = lab.vip(3, 6), lab.mac("node")
    driver.call("claim", ip=vip6)
    with lab.capture("client", ethertypes=(ETH_P_IPV6,)) as capture:
        driver.call("announce", ip=vip6)
        time.sleep(BURST_SECONDS)
    adverts = [p for p in map(Ether, capture.frames) if ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt == str(vip6)]
    assert len(adverts) == ROUNDS
    for p in adverts:
        assert p[IPv6].dst == "ff02::1" and p[IPv6].hlim == 255 and p.dst == "33:33:00:00:00:01"
        assert p[ICMPv6ND_NA].O == 1 and p[ICMPv6ND_NA].S == 0 and p[ICMPv6ND_NA].R == 0
        assert p[ICMPv6NDOptDstLLAddr].lladdr == node_mac
    assert lab.ping("client", vip6)
    assert lab.neigh_mac("client", vip6) == node_mac
    counters = eventually(lambda: (c := driver.call("metrics", ip=vip6))["responses"] >= 1 and c)
    assert counters["gratuitous"] == ROUNDS and counters["requests"] >= 1


def test_withdraw_then_release_stops_everything(lab: Lab) -> None:
    vip, node_mac = lab.vip(4), lab.mac("node")
    # One round, then a refresh every 0.15 s until withdraw.
    with AnnouncerProcess(lab, garp_rounds=1, garp_interval=INTERVAL, refresh_interval=0.15) as driver:
        driver.call("claim", ip=vip)
        with lab.capture("client", ethertypes=(ETH_P_ARP,)) as announcing:
            driver.call("announce", ip=vip)
            time.sleep(0.5)
        assert len(gratuitous_arps(announcing.frames, vip)) >= 2 * 3  # the first round and refreshes
        assert lab.ping("client", vip)
        driver.call("withdraw", ip=vip)
        driver.call("release", ip=vip)
        assert str(vip) not in {a["local"] for a in lab.addresses("node")}
        lab.flush_neigh("client")
        with lab.capture("client", ethertypes=(ETH_P_ARP,)) as after:
            assert not lab.ping("client", vip, timeout=0.5)
            time.sleep(0.3)
        from_node = [p for p in map(Ether, after.frames) if ARP in p and p[ARP].hwsrc == node_mac]
        assert from_node == []  # no refresh, no answer
        assert lab.neigh_mac("client", vip) in (None, "")  # INCOMPLETE/FAILED: nobody answered
        assert [e["ip"] for e in events(driver, "vip_withdrawn")] == [str(vip)]
        assert [e["ip"] for e in events(driver, "vip_unbound")] == [str(vip)]


def test_reconcile_after_crash_removes_stale_keeps_wanted(lab: Lab) -> None:
    kept, stale, foreign = lab.vip(5), lab.vip(6), lab.vip(7)
    crashed = AnnouncerProcess(lab, garp_rounds=1, garp_interval=INTERVAL)
    crashed.call("claim", ip=kept)
    crashed.call("claim", ip=stale)
    crashed.call("announce", ip=kept)
    crashed.kill()  # SIGKILL: its addresses stay behind
    lab.exec("node", ["ip", "addr", "add", f"{foreign}/32", "dev", "eth0"], check=True)  # not lbd's
    try:
        with AnnouncerProcess(lab, garp_rounds=1, garp_interval=INTERVAL) as driver:
            before = {m["ip"]: m for m in driver.call("marked")}
            assert set(before) == {str(kept), str(stale)}
            assert driver.call("reconcile", wanted=[str(kept)]) == [str(stale)]
            after = {m["ip"]: m for m in driver.call("marked")}
            assert set(after) == {str(kept)}
            assert after[str(kept)]["created"] == before[str(kept)]["created"]  # kept, never re-added
            assert str(foreign) in {a["local"] for a in lab.addresses("node")}  # unmarked: left alone
            assert lab.ping("client", kept)
            removed = events(driver, "stale_vip_removed")
            assert [(e["ip"], e["interface"], e["mac"]) for e in removed] == [(str(stale), "eth0", lab.mac("node"))]
            # The kept address is adopted: release removes it like one this process added.
            driver.call("release", ip=kept)
            assert driver.call("marked") == []
    finally:
        lab.exec("node", ["ip", "addr", "del", f"{foreign}/32", "dev", "eth0"])


def test_long_interface_name_is_marked_by_address_protocol(lab: Lab) -> None:
    # 12 chars: "<if>:lbd" is 16. Its subnet is in 198.18.0.0/15 like the lab's, but no lab's /24.
    ifname, vip = "lbdlongname0", ipaddress.ip_address("198.19.0.200")
    lab.exec("node", ["ip", "link", "add", ifname, "type", "veth", "peer", "name", "lbdlongname1"], check=True)
    try:
        lab.exec("node", ["ip", "link", "set", ifname, "up"], check=True)
        lab.exec("node", ["ip", "addr", "add", "198.19.0.1/24", "dev", ifname], check=True)
        with AnnouncerProcess(lab, interfaces=(ifname,), garp_rounds=1, garp_interval=INTERVAL) as driver:
            assert driver.call("claim", ip=vip) == ifname
            address = {a["local"]: a for a in lab.addresses("node", ifname)}[str(vip)]
            assert address["label"] == ifname  # no room for ":lbd"
            assert [(m["ip"], m["proto"]) for m in driver.call("marked")] == [(str(vip), LBD_ADDR_PROTO)]
            assert driver.call("reconcile", wanted=[]) == [str(vip)]
            assert str(vip) not in {a["local"] for a in lab.addresses("node", ifname)}
    finally:
        lab.exec("node", ["ip", "link", "del", ifname])


def test_another_mac_claiming_the_vip_is_counted_as_conflict(lab: Lab, driver: AnnouncerProcess) -> None:
    vip, client_mac = lab.vip(8), lab.mac("client")
    driver.call("claim", ip=vip)
    driver.call("announce", ip=vip)
    claim = (
        "import socket, sys\n"
        "from scapy.layers.l2 import ARP, Ether\n"
        "mac, ip = sys.argv[1], sys.argv[2]\n"
        "frame = bytes(Ether(dst='ff:ff:ff:ff:ff:ff', src=mac) / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=mac, pdst=ip))\n"
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
        "s.bind(('eth0', 0))\n"
        "s.send(frame)\n"
    )
    lab.exec("client", [sys.executable, "-c", claim, client_mac, str(vip)], check=True, timeout=30)
    assert eventually(lambda: driver.call("metrics", ip=vip)["conflicts"] >= 1)
    conflict = events(driver, "vip_conflict")
    assert [(e["ip"], e["other_mac"], e["mac"]) for e in conflict] == [(str(vip), client_mac, lab.mac("node"))]


def test_claim_errors_and_choice_by_subnet(lab: Lab) -> None:
    # Loopback VIPs never reach the presence: the VIP lifecycle skips them (tests/test_vips.py).
    with AnnouncerProcess(lab, interfaces=(), garp_rounds=1, garp_interval=INTERVAL) as driver:
        reply = driver.try_call("claim", ip="198.19.255.10")  # in no subnet of the node's
        assert not reply["ok"] and reply["error"].startswith("NoInterfaceError")
        assert "198.19.255.10" in reply["error"] and "interfaces" in reply["error"]
        reply = driver.try_call("announce", ip=lab.vip(9))
        assert not reply["ok"] and "claim it first" in reply["error"]
        assert driver.call("claim", ip=lab.vip(9)) == "eth0"  # chosen by subnet
        driver.call("release", ip=lab.vip(9))
        assert driver.call("marked") == []
