"""The Ethernet header codec and MAC text shared by the ARP and NDP codecs: pure, no root."""

from __future__ import annotations

import pytest

from lbd.net import arp, ethernet, ndp
from lbd.net.ethernet import EthernetDecodeError, EthernetHeader

MAC = bytes.fromhex("02aabbccdd01")
OTHER_MAC = bytes.fromhex("02aabbccdd99")


@pytest.mark.parametrize("ethertype", [ethernet.ETH_P_ARP, ethernet.ETH_P_IPV6, ethernet.ETH_P_IP, 0, 0xFFFF])
def test_round_trip(ethertype: int) -> None:
    header = ethernet.encode_header(ethernet.BROADCAST_MAC, MAC, ethertype)
    assert len(header) == ethernet.HEADER_LEN == 14
    assert ethernet.decode_header(header) == EthernetHeader(ethernet.BROADCAST_MAC, MAC, ethertype)
    assert ethernet.decode_header(header + b"payload and padding") == EthernetHeader(ethernet.BROADCAST_MAC, MAC, ethertype)


def test_exact_bytes() -> None:
    assert ethernet.encode_header(OTHER_MAC, MAC, ethernet.ETH_P_IPV6) == bytes.fromhex("02aabbccdd99" "02aabbccdd01" "86dd")
    assert (ethernet.ETH_P_IP, ethernet.ETH_P_ARP, ethernet.ETH_P_IPV6) == (0x0800, 0x0806, 0x86DD)
    assert ethernet.BROADCAST_MAC == b"\xff" * 6


@pytest.mark.parametrize("length", [0, 1, 13])
def test_short_frame_raises_a_clear_error(length: int) -> None:
    with pytest.raises(EthernetDecodeError, match=f"too short for an Ethernet header: {length} < 14 bytes"):
        ethernet.decode_header(bytes(length))
    assert issubclass(EthernetDecodeError, ValueError)


@pytest.mark.parametrize(("dst", "src"), [(MAC[:5], MAC), (MAC, MAC + b"\x00"), (MAC, b"")])
def test_encode_refuses_macs_that_are_not_six_bytes(dst: bytes, src: bytes) -> None:
    with pytest.raises(ValueError, match="MAC must be 6 bytes"):
        ethernet.encode_header(dst, src, ethernet.ETH_P_ARP)


def test_format_and_parse_mac() -> None:
    assert ethernet.format_mac(MAC) == "02:aa:bb:cc:dd:01"
    assert ethernet.format_mac(ethernet.BROADCAST_MAC) == "ff:ff:ff:ff:ff:ff"
    assert ethernet.parse_mac("02:AA:bb:cc:dd:01") == ethernet.parse_mac("02-aa-bb-cc-dd-01") == MAC
    assert ethernet.parse_mac(ethernet.format_mac(OTHER_MAC)) == OTHER_MAC
    for bad in ("02:aa:bb:cc:dd", "02aabbccdd01", "zz:aa:bb:cc:dd:01", "02:aa:bb:cc:dd: 1", "02:aa:bb:cc:dd:+1", ""):
        with pytest.raises(ValueError):
            ethernet.parse_mac(bad)


def test_arp_and_ndp_use_it_and_keep_their_names() -> None:
    # One implementation: the names arp and ndp always offered are this module's.
    assert arp.format_mac is ethernet.format_mac and arp.parse_mac is ethernet.parse_mac
    assert (arp.ETH_P_ARP, arp.ETH_P_IP, arp.BROADCAST_MAC) == (ethernet.ETH_P_ARP, ethernet.ETH_P_IP, ethernet.BROADCAST_MAC)
    assert ndp.ETH_P_IPV6 == ethernet.ETH_P_IPV6
    assert arp.ETHERNET_HEADER_LEN == ndp.ETHERNET_HEADER_LEN == ethernet.HEADER_LEN
    assert not hasattr(arp, "_ETHERNET") and not hasattr(ndp, "_ETHERNET")
    request, _ = arp.gratuitous_pair(MAC, arp.UNSPECIFIED_IPV4)
    assert ethernet.decode_header(request) == EthernetHeader(ethernet.BROADCAST_MAC, MAC, ethernet.ETH_P_ARP)
