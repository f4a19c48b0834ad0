"""The NDP codec (unsolicited neighbour advertisements, solicitations seen on the wire).

Cross-checked against scapy, which computes the ICMPv6 checksum itself. The L2 announcer's BPF
filter (which frames reach the codecs at all) is checked here too, with a tiny cBPF interpreter.
"""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest

from lbd.net import arp, ndp
from lbd.net.arp import Sighting
from lbd.net.ndp import NdpDecodeError, NdpFrame, NdpType

MAC = bytes.fromhex("02aabbccdd01")
OTHER_MAC = bytes.fromhex("02aabbccdd99")
VIP = ipaddress.IPv6Address("2001:db8:0:1::200")
CLIENT = ipaddress.IPv6Address("2001:db8:0:1::100")


@pytest.fixture(scope="module")
def scapy():  # type: ignore[no-untyped-def]
    import scapy.all

    return scapy.all


def solicitation(target: ipaddress.IPv6Address = VIP, src: ipaddress.IPv6Address = CLIENT) -> bytes:
    group = ndp.solicited_node(target)
    return ndp.encode(
        NdpFrame(
            eth_dst=ndp.multicast_mac(group),
            eth_src=OTHER_MAC,
            src_ip=src,
            dst_ip=group,
            type=NdpType.NEIGHBOR_SOLICITATION,
            target=target,
            source_lladdr=OTHER_MAC if not src.is_unspecified else None,
        )
    )


def test_pure_module_imports_no_io() -> None:
    tree = ast.parse(Path(ndp.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"asyncio", "socket", "pyroute2", "scapy"}


def test_unsolicited_advertisement_matches_scapy(scapy) -> None:  # type: ignore[no-untyped-def]
    frame = ndp.unsolicited_advertisement(MAC, VIP)
    mac = arp.format_mac(MAC)
    expected = (
        scapy.Ether(dst="33:33:00:00:00:01", src=mac)
        / scapy.IPv6(src=str(VIP), dst="ff02::1", hlim=255)
        / scapy.ICMPv6ND_NA(tgt=str(VIP), R=0, S=0, O=1)
        / scapy.ICMPv6NDOptDstLLAddr(lladdr=mac)
    )
    assert frame == bytes(expected)  # includes scapy's own checksum
    parsed = scapy.Ether(frame)
    assert parsed[scapy.ICMPv6ND_NA].O == 1 and parsed[scapy.ICMPv6ND_NA].S == 0
    assert parsed[scapy.IPv6].hlim == 255 and parsed[scapy.IPv6].dst == "ff02::1"


def test_checksum_agrees_with_scapy_on_solicitation(scapy) -> None:  # type: ignore[no-untyped-def]
    raw = solicitation()
    parsed = scapy.Ether(raw)
    ours = parsed[scapy.ICMPv6ND_NS].cksum
    del parsed[scapy.ICMPv6ND_NS].cksum  # let scapy recompute
    assert scapy.Ether(bytes(parsed))[scapy.ICMPv6ND_NS].cksum == ours


def test_decode_scapy_solicitation(scapy) -> None:  # type: ignore[no-untyped-def]
    group = str(ndp.solicited_node(VIP))
    raw = bytes(
        scapy.Ether(dst="33:33:ff:00:02:00", src=arp.format_mac(OTHER_MAC))
        / scapy.IPv6(src=str(CLIENT), dst=group, hlim=255)
        / scapy.ICMPv6ND_NS(tgt=str(VIP))
        / scapy.ICMPv6NDOptSrcLLAddr(lladdr=arp.format_mac(OTHER_MAC))
    )
    frame = ndp.decode(raw)
    assert frame.type is NdpType.NEIGHBOR_SOLICITATION
    assert frame.target == VIP and frame.src_ip == CLIENT and frame.dst_ip == ipaddress.IPv6Address(group)
    assert frame.source_lladdr == OTHER_MAC and frame.target_lladdr is None
    assert frame.eth_dst == ndp.multicast_mac(ndp.solicited_node(VIP)) == bytes.fromhex("3333ff000200")


def test_round_trip_solicited_advertisement() -> None:
    frame = NdpFrame(
        eth_dst=OTHER_MAC,
        eth_src=MAC,
        src_ip=VIP,
        dst_ip=CLIENT,
        type=NdpType.NEIGHBOR_ADVERTISEMENT,
        target=VIP,
        flags=ndp.FLAG_SOLICITED | ndp.FLAG_OVERRIDE,
        target_lladdr=MAC,
    )
    decoded = ndp.decode(ndp.encode(frame))
    assert decoded == frame and decoded.solicited and decoded.override


def test_solicited_node_group() -> None:
    assert ndp.solicited_node(ipaddress.IPv6Address("2001:db8::1:2345:6789")) == ipaddress.IPv6Address(
        "ff02::1:ff45:6789"
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f[:40],  # short
        lambda f: f[:12] + b"\x08\x00" + f[14:],  # not IPv6
        lambda f: f[:14] + b"\x45" + f[15:],  # IP version 4 in an IPv6 frame
        lambda f: f[:20] + b"\x11" + f[21:],  # next header UDP
        lambda f: f[:54] + b"\x80" + f[55:],  # echo request, not NDP
        lambda f: f[:56] + bytes([f[56] ^ 0xFF]) + f[57:],  # checksum broken
        lambda f: f[:18] + b"\x00\xff" + f[20:],  # payload length beyond the frame
        lambda f: f[:79] + b"\x00" + f[80:],  # option length 0 (checksum fixed below)
    ],
)
def test_rejects_malformed(mutate) -> None:  # type: ignore[no-untyped-def]
    bad = mutate(ndp.unsolicited_advertisement(MAC, VIP))
    if len(bad) > 80 and bad[79] == 0:  # make only the option wrong, not the checksum
        body = bad[54:56] + b"\x00\x00" + bad[58:]
        checksum = ndp.icmpv6_checksum(VIP, ndp.ALL_NODES, body)
        bad = bad[:56] + checksum.to_bytes(2, "big") + bad[58:]
    with pytest.raises(NdpDecodeError):
        ndp.decode(bad)


def test_rejects_garbage() -> None:
    with pytest.raises(NdpDecodeError):
        ndp.decode(bytes(range(100)))


# ---- observe ----------------------------------------------------------------------------------------


def test_observe_incoming_solicitation_is_a_request() -> None:
    seen = ndp.observe(solicitation(), outgoing=False, mac=MAC)
    assert [(s.kind, s.ip, s.mac) for s in seen] == [(Sighting.REQUEST, VIP, OTHER_MAC)]
    dad = solicitation(src=ipaddress.IPv6Address("::"))  # someone probing the VIP
    assert [s.kind for s in ndp.observe(dad, outgoing=False, mac=MAC)] == [Sighting.REQUEST]


def test_observe_outgoing_solicited_advertisement_is_a_response() -> None:
    answer = ndp.encode(
        NdpFrame(OTHER_MAC, MAC, VIP, CLIENT, NdpType.NEIGHBOR_ADVERTISEMENT, VIP,
                 flags=ndp.FLAG_SOLICITED | ndp.FLAG_OVERRIDE, target_lladdr=MAC)
    )
    assert [(s.kind, s.ip) for s in ndp.observe(answer, outgoing=True, mac=MAC)] == [(Sighting.RESPONSE, VIP)]


def test_observe_own_unsolicited_advertisement_counts_nothing() -> None:
    frame = ndp.unsolicited_advertisement(MAC, VIP)
    assert ndp.observe(frame, outgoing=True, mac=MAC) == []
    assert ndp.observe(frame, outgoing=False, mac=MAC) == []


def test_observe_other_mac_advertising_vip_is_a_conflict() -> None:
    frame = ndp.unsolicited_advertisement(OTHER_MAC, VIP)
    assert [(s.kind, s.mac) for s in ndp.observe(frame, outgoing=False, mac=MAC)] == [
        (Sighting.CONFLICT, OTHER_MAC)
    ]


def test_observe_drops_forwarded_ndp() -> None:
    frame = NdpFrame(ndp.multicast_mac(ndp.solicited_node(VIP)), OTHER_MAC, CLIENT, ndp.solicited_node(VIP),
                     NdpType.NEIGHBOR_SOLICITATION, VIP, source_lladdr=OTHER_MAC, hop_limit=64)
    assert ndp.observe(ndp.encode(frame), outgoing=False, mac=MAC) == []


# ---- the announcer's kernel filter ----------------------------------------------------------------


def run_cbpf(program: tuple[tuple[int, int, int, int], ...], packet: bytes) -> int:
    """Just enough of classic BPF (ldh/ldb absolute, jeq, ret) to run ARP_NDP_FILTER."""
    pc, accumulator = 0, 0
    for _ in range(len(program) + 1):
        code, jt, jf, k = program[pc]
        if code == 0x28:  # ldh [k]; out of bounds drops the packet, as in the kernel
            if k + 2 > len(packet):
                return 0
            accumulator, pc = int.from_bytes(packet[k : k + 2], "big"), pc + 1
        elif code == 0x30:  # ldb [k]
            if k + 1 > len(packet):
                return 0
            accumulator, pc = packet[k], pc + 1
        elif code == 0x15:  # jeq #k
            pc = pc + 1 + (jt if accumulator == k else jf)
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("program did not return")


def test_bpf_filter_keeps_arp_and_ndp_only(scapy) -> None:  # type: ignore[no-untyped-def]
    from lbd.net.l2 import ARP_NDP_FILTER, SNAPLEN

    keep = [
        *arp.gratuitous_pair(MAC, ipaddress.IPv4Address("198.18.1.200")),
        ndp.unsolicited_advertisement(MAC, VIP),
        solicitation(),
    ]
    drop = [
        bytes(scapy.Ether() / scapy.IP(dst="198.18.1.200") / scapy.TCP()),
        bytes(scapy.Ether() / scapy.IPv6(dst=str(VIP)) / scapy.ICMPv6EchoRequest()),
        bytes(scapy.Ether() / scapy.IPv6(dst=str(VIP)) / scapy.UDP()),
        bytes(scapy.Ether() / scapy.IPv6(dst="ff02::16") / scapy.IPv6ExtHdrHopByHop() / scapy.ICMPv6MLReport2()),
        b"\x00" * 10,
    ]
    assert [run_cbpf(ARP_NDP_FILTER, p) for p in keep] == [SNAPLEN] * len(keep)
    assert [run_cbpf(ARP_NDP_FILTER, p) for p in drop] == [0] * len(drop)
