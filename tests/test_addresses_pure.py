"""Interface choice and lbd's address mark (pure), and the L2 announcer's argument checks."""

from __future__ import annotations

import ipaddress

import pytest

from lbd.net import addresses
from lbd.net.addresses import LBD_ADDR_PROTO, Address, Link, Snapshot
from lbd.net.l2 import L2Announcer

ip = ipaddress.ip_address
MAC = bytes.fromhex("02aabbccdd01")

LO = Link(1, "lo", b"\x00" * 6, loopback=True)
ETH0 = Link(2, "eth0", MAC)
ETH1 = Link(3, "eth1", bytes.fromhex("02aabbccdd02"))
PORT = Link(4, "veth-port", bytes.fromhex("02aabbccdd03"), enslaved=True)
DOWN = Link(5, "eth2", bytes.fromhex("02aabbccdd04"), up=False)
LONG = Link(6, "enp129s0f1np1", bytes.fromhex("02aabbccdd05"))  # 13 chars: no room for ":lbd"

SNAP = Snapshot(
    links=(LO, ETH0, ETH1, PORT, DOWN, LONG),
    addresses=(
        Address(ip("127.0.0.1"), 8, LO.index),
        Address(ip("198.18.1.2"), 24, ETH0.index),
        Address(ip("2001:db8:0:1::2"), 64, ETH0.index),
        Address(ip("198.18.0.2"), 16, ETH1.index),  # a wider subnet holding 198.18.1.0/24 too
        Address(ip("198.19.88.2"), 24, PORT.index),
        Address(ip("198.19.99.2"), 24, DOWN.index),
        Address(ip("198.19.16.2"), 24, LONG.index),
        Address(ip("198.19.66.200"), 32, ETH1.index, label="eth1:lbd"),  # a VIP: connects nothing
    ),
)


def test_label_fits_ifnamsiz() -> None:
    assert addresses.label_for("eth0") == "eth0:lbd"
    assert addresses.label_for("enp129s0f1n") == "enp129s0f1n:lbd"  # 15 characters: fits
    assert addresses.label_for("enp129s0f1np1") is None


def test_mark_is_proto_or_label() -> None:
    assert addresses.is_marked(Address(ip("198.18.0.1"), 32, 2, proto=LBD_ADDR_PROTO), "eth0")
    assert addresses.is_marked(Address(ip("2001:db8::1"), 128, 2, proto=LBD_ADDR_PROTO), "eth0")
    assert addresses.is_marked(Address(ip("198.18.0.1"), 32, 2, label="eth0:lbd"), "eth0")
    assert not addresses.is_marked(Address(ip("198.18.0.1"), 32, 2, label="eth0"), "eth0")
    assert not addresses.is_marked(Address(ip("198.18.0.1"), 32, 2, proto=4), "eth0")
    assert not addresses.is_marked(Address(ip("198.18.0.1"), 32, 2, label="eth0:lbd"), "eth1")


def test_snapshot_finds_marked_and_copies() -> None:
    assert [(a.ip, link.name) for a, link in SNAP.marked()] == [(ip("198.19.66.200"), "eth1")]
    assert [link.name for _, link in SNAP.find(ip("198.18.1.2"))] == ["eth0"]


@pytest.mark.parametrize(
    ("vip", "expected"),
    [
        ("198.18.1.200", "eth0"),  # /24 on eth0 beats /16 on eth1
        ("198.18.9.200", "eth1"),  # only eth1's /16 holds it
        ("2001:db8:0:1::200", "eth0"),
        ("198.19.16.200", "enp129s0f1np1"),
        ("198.19.88.200", None),  # a bridge port is not an announce interface
        ("198.19.99.200", None),  # down
        ("127.0.0.200", None),  # loopback never
        ("198.19.255.1", None),  # nobody's subnet
        ("198.19.66.201", None),  # another VIP's /32 is no subnet
    ],
)
def test_choose_interface_automatic(vip: str, expected: str | None) -> None:
    assert addresses.choose_interface(ip(vip), SNAP) == expected


def test_choose_interface_configured() -> None:
    # Among configured interfaces the subnet match wins, else the first configured one.
    assert addresses.choose_interface(ip("198.18.1.200"), SNAP, ("eth1", "eth0")) == "eth0"
    assert addresses.choose_interface(ip("198.19.255.1"), SNAP, ("eth1", "eth0")) == "eth1"
    assert addresses.choose_interface(ip("198.19.255.1"), SNAP, ("nope", "eth2")) == "eth2"  # operator's word
    assert addresses.choose_interface(ip("198.19.255.1"), SNAP, ("nope",)) is None


def test_no_interface_message_names_the_fix() -> None:
    message = addresses.no_interface_message(ip("198.19.255.1"), SNAP, ())
    assert "198.19.255.1" in message and "interfaces" in message and "eth0" in message
    message = addresses.no_interface_message(ip("198.19.255.1"), SNAP, ("nope",))
    assert "nope" in message and "configuration" in message


def test_l2_announcer_rejects_bad_timings() -> None:
    for kwargs in ({"garp_rounds": -1}, {"garp_interval": 0}, {"refresh_interval": 0.0}):
        with pytest.raises(ValueError):
            L2Announcer(**kwargs)  # type: ignore[arg-type]
