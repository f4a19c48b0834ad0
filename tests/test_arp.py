"""The ARP codec and the gratuitous-ARP schedule: pure, no root, cross-checked against scapy."""

from __future__ import annotations

import ast
import itertools
import ipaddress
from pathlib import Path

import pytest

from lbd.net import arp
from lbd.net.arp import ArpDecodeError, ArpFrame, ArpOp, Sighting

MAC = bytes.fromhex("02aabbccdd01")
OTHER_MAC = bytes.fromhex("02aabbccdd99")
VIP = ipaddress.IPv4Address("198.18.1.200")
CLIENT = ipaddress.IPv4Address("198.18.1.100")


@pytest.fixture(scope="module")
def scapy():  # type: ignore[no-untyped-def]
    import scapy.all

    return scapy.all


def request_from_client(target: ipaddress.IPv4Address = VIP, eth_dst: bytes = arp.BROADCAST_MAC) -> bytes:
    return arp.encode(ArpFrame(eth_dst, OTHER_MAC, ArpOp.REQUEST, OTHER_MAC, CLIENT, arp.ZERO_MAC, target))


def test_pure_module_imports_no_io() -> None:
    tree = ast.parse(Path(arp.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"asyncio", "socket", "pyroute2", "scapy"}


def test_gratuitous_request_exact_bytes() -> None:
    frame = arp.gratuitous(MAC, VIP, ArpOp.REQUEST)
    assert frame == bytes.fromhex(
        "ffffffffffff" "02aabbccdd01" "0806"  # broadcast, from us, ARP
        "0001" "0800" "06" "04" "0001"  # Ethernet, IPv4, 6, 4, request
        "02aabbccdd01" "c61201c8"  # sender: our MAC, the VIP (198.18.1.200)
        "000000000000" "c61201c8"  # target: zero MAC, the VIP
    )
    assert len(frame) == arp.FRAME_LEN == 42


def test_gratuitous_reply_targets_own_mac() -> None:
    decoded = arp.decode(arp.gratuitous(MAC, VIP, ArpOp.REPLY))
    assert decoded.op is ArpOp.REPLY
    assert decoded.eth_dst == arp.BROADCAST_MAC
    assert decoded.sender_mac == decoded.target_mac == MAC  # Linux only takes a GARP reply so
    assert decoded.sender_ip == decoded.target_ip == VIP
    assert decoded.is_gratuitous


def test_gratuitous_pair_matches_scapy(scapy) -> None:  # type: ignore[no-untyped-def]
    request, reply = arp.gratuitous_pair(MAC, VIP)
    mac, ip = arp.format_mac(MAC), str(VIP)
    expected_request = scapy.Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / scapy.ARP(
        op=1, hwsrc=mac, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip
    )
    expected_reply = scapy.Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / scapy.ARP(
        op=2, hwsrc=mac, psrc=ip, hwdst=mac, pdst=ip
    )
    assert request == bytes(expected_request)
    assert reply == bytes(expected_reply)


def test_decode_scapy_request(scapy) -> None:  # type: ignore[no-untyped-def]
    raw = bytes(
        scapy.Ether(dst="ff:ff:ff:ff:ff:ff", src=arp.format_mac(OTHER_MAC))
        / scapy.ARP(op="who-has", hwsrc=arp.format_mac(OTHER_MAC), psrc=str(CLIENT), pdst=str(VIP))
    )
    frame = arp.decode(raw + b"\x00" * 18)  # NIC padding to 60 bytes is ignored
    assert frame == ArpFrame(arp.BROADCAST_MAC, OTHER_MAC, ArpOp.REQUEST, OTHER_MAC, CLIENT, arp.ZERO_MAC, VIP)
    assert not frame.is_gratuitous and not frame.is_probe


@pytest.mark.parametrize("op", list(ArpOp))
def test_round_trip(op: ArpOp) -> None:
    frame = ArpFrame(MAC, OTHER_MAC, op, OTHER_MAC, CLIENT, MAC, VIP)
    assert arp.decode(arp.encode(frame)) == frame


def test_reply_answers_request(scapy) -> None:  # type: ignore[no-untyped-def]
    request = arp.decode(request_from_client())
    answer = arp.reply(request, MAC)
    assert arp.decode(answer) == ArpFrame(OTHER_MAC, MAC, ArpOp.REPLY, MAC, VIP, OTHER_MAC, CLIENT)
    parsed = scapy.Ether(answer)
    assert parsed[scapy.ARP].op == 2 and parsed[scapy.ARP].psrc == str(VIP)
    assert parsed[scapy.ARP].hwsrc == arp.format_mac(MAC) and parsed.dst == arp.format_mac(OTHER_MAC)
    with pytest.raises(ValueError):
        arp.reply(arp.decode(answer), MAC)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff" * 41,  # one byte short
        request_from_client()[:12] + b"\x08\x00" + request_from_client()[14:],  # IPv4, not ARP
        request_from_client()[:14] + b"\x00\x06" + request_from_client()[16:],  # htype 6 (IEEE 802)
        request_from_client()[:16] + b"\x86\xdd" + request_from_client()[18:],  # ptype IPv6
        request_from_client()[:18] + b"\x10" + request_from_client()[19:],  # hlen 16
        request_from_client()[:20] + b"\x00\x03" + request_from_client()[22:],  # RARP request
        bytes(range(60)),  # garbage
    ],
)
def test_rejects_short_and_garbage(data: bytes) -> None:
    with pytest.raises(ArpDecodeError):
        arp.decode(data)


def test_encode_rejects_bad_mac() -> None:
    with pytest.raises(ValueError):
        arp.encode(ArpFrame(MAC, MAC[:5], ArpOp.REQUEST, MAC, VIP, MAC, VIP))


def test_mac_text_round_trip() -> None:
    assert arp.format_mac(MAC) == "02:aa:bb:cc:dd:01"
    assert arp.parse_mac("02:AA:bb:cc:dd:01") == MAC
    for bad in ("02:aa:bb:cc:dd", "02aabbccdd01", "zz:aa:bb:cc:dd:01"):
        with pytest.raises(ValueError):
            arp.parse_mac(bad)


# ---- observe: what the announcer counts ----------------------------------------------------------


def test_observe_incoming_request_for_vip() -> None:
    seen = arp.observe(request_from_client(), outgoing=False, mac=MAC)
    assert [(s.kind, s.ip, s.mac) for s in seen if s.ip == VIP] == [(Sighting.REQUEST, VIP, OTHER_MAC)]


def test_observe_unicast_request_to_someone_else_is_not_a_question() -> None:
    seen = arp.observe(request_from_client(eth_dst=OTHER_MAC), outgoing=False, mac=MAC)
    assert not [s for s in seen if s.kind is Sighting.REQUEST]
    seen = arp.observe(request_from_client(eth_dst=MAC), outgoing=False, mac=MAC)
    assert [s.kind for s in seen if s.ip == VIP] == [Sighting.REQUEST]


def test_observe_probe_counts_as_request_not_conflict() -> None:
    probe = arp.encode(
        ArpFrame(arp.BROADCAST_MAC, OTHER_MAC, ArpOp.REQUEST, OTHER_MAC, arp.UNSPECIFIED_IPV4, arp.ZERO_MAC, VIP)
    )
    assert [(s.kind, s.ip) for s in arp.observe(probe, outgoing=False, mac=MAC)] == [(Sighting.REQUEST, VIP)]


def test_observe_outgoing_kernel_reply_is_a_response() -> None:
    kernel_reply = arp.reply(arp.decode(request_from_client()), MAC)
    assert [(s.kind, s.ip) for s in arp.observe(kernel_reply, outgoing=True, mac=MAC)] == [(Sighting.RESPONSE, VIP)]


def test_observe_own_gratuitous_frames_count_nothing() -> None:
    for frame in arp.gratuitous_pair(MAC, VIP):
        assert arp.observe(frame, outgoing=True, mac=MAC) == []
        assert arp.observe(frame, outgoing=False, mac=MAC) == []  # e.g. looped back by a switch


def test_observe_other_mac_claiming_vip_is_a_conflict() -> None:
    for frame in arp.gratuitous_pair(OTHER_MAC, VIP):
        seen = arp.observe(frame, outgoing=False, mac=MAC)
        assert [(s.kind, s.ip, s.mac) for s in seen] == [(Sighting.CONFLICT, VIP, OTHER_MAC)]


def test_observe_ignores_non_arp() -> None:
    assert arp.observe(b"\x00" * 60, outgoing=False, mac=MAC) == []
    assert arp.observe(b"", outgoing=True, mac=MAC) == []


# ---- schedule -------------------------------------------------------------------------------------


def test_garp_delays_default_is_metallb_burst() -> None:
    delays = list(arp.garp_delays(arp.DEFAULT_GARP_ROUNDS, arp.DEFAULT_GARP_INTERVAL, None))
    assert delays == [0.0, 1.1, 1.1, 1.1, 1.1]
    assert sum(delays) < 5.0  # all inside MetalLB's 5 s window


def test_garp_delays_refresh_continues() -> None:
    delays = list(itertools.islice(arp.garp_delays(2, 0.5, 30.0), 5))
    assert delays == [0.0, 0.5, 30.0, 30.0, 30.0]


def test_garp_delays_refresh_only_and_none() -> None:
    assert list(itertools.islice(arp.garp_delays(0, 1.0, 10.0), 2)) == [10.0, 10.0]
    assert list(arp.garp_delays(0, 1.0, None)) == []


@pytest.mark.parametrize("args", [(-1, 1.0, None), (1, 0.0, None), (1, 1.0, 0.0)])
def test_garp_delays_rejects_nonsense(args: tuple[int, float, float | None]) -> None:
    with pytest.raises(ValueError):
        next(arp.garp_delays(*args))
