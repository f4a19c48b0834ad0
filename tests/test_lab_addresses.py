"""The lab never looks like a real network: every address it uses is in a never-routed range.

Lab addresses come only from 198.18.0.0/15 (RFC 2544, benchmarking) and 2001:db8::/32 (RFC 3849,
documentation), never from a private range a real network uses (10/8, 172.16/12, 192.168/16,
fc00::/7). Labs are constructed here but never built: `Lab.__init__` only computes names and
addresses, so this needs no root and touches nothing. The source scan keeps hard-coded addresses
in the lab, the demo and the integration tests to those ranges plus loopback.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbd import demo
from lbd.lab import netlab, teardown
from lbd.lab.netlab import VIP_FIRST, VIP_LAST, Lab

# Written out here rather than taken from netlab, so a change there cannot move the goalposts.
LAB_V4 = ipaddress.IPv4Network("198.18.0.0/15")
LAB_V6 = ipaddress.IPv6Network("2001:db8::/32")
ROOT = Path(__file__).resolve().parent.parent
SCANNED = [ROOT / "lbd" / "lab", ROOT / "lbd" / "demo.py", ROOT / "integration"]
IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")
# Colon-separated hex with at least two colons; what does not parse as IPv6 (MACs, times) is skipped.
IPV6 = re.compile(r"(?<![0-9A-Za-z:.])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})(?![0-9A-Za-z:])")

MAX_NODES, MAX_BACKENDS = 8, 50  # Lab's limits
SUBNETS = [0, 1, 2, 9, 10, 15, 16, 127, 128, 200, 253, 254, 255]
SIZES = [(1, 0), (1, 3), (MAX_NODES, MAX_BACKENDS)]
VIP_COUNT = VIP_LAST - VIP_FIRST + 1


def in_lab_ranges(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address in (LAB_V4 if address.version == 4 else LAB_V6)


def unbuilt(**kwargs: object) -> Lab:
    lab = Lab(run_id="unit-never-built", **kwargs)  # type: ignore[arg-type]
    # Never built: its teardown must not even look for namespaces (teardown.Resources.started).
    return lab


def every_address(lab: Lab) -> Iterator[tuple[str, ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    for host in lab.hosts.values():
        yield f"{host.name} ipv4", host.ipv4
        yield f"{host.name} ipv6", host.ipv6
        for version in (4, 6):
            yield f"{host.name} ip({version})", lab.ip(host.name, version)
    for version in (4, 6):
        first, last = lab.vip_range(version)
        yield f"vip_range({version})[0]", first
        yield f"vip_range({version})[1]", last
        for i in range(VIP_COUNT):
            yield f"vip({i}, {version})", lab.vip(i, version)
    yield "subnet4", lab.subnet4.network_address
    yield "subnet4 broadcast", lab.subnet4.broadcast_address
    yield "subnet6", lab.subnet6.network_address
    yield "subnet6 last", lab.subnet6.broadcast_address


@pytest.mark.parametrize(("nodes", "backends"), SIZES)
@pytest.mark.parametrize("subnet", [*SUBNETS, None])
def test_every_lab_address_is_in_the_benchmark_or_documentation_range(
    subnet: int | None, nodes: int, backends: int
) -> None:
    lab = unbuilt(subnet=subnet, nodes=nodes, backends=backends)
    assert lab.subnet4.subnet_of(LAB_V4) and lab.subnet6.subnet_of(LAB_V6)
    assert (lab.subnet4.prefixlen, lab.subnet6.prefixlen) == (24, 64)
    outside = [f"{what}: {address}" for what, address in every_address(lab) if not in_lab_ranges(address)]
    assert outside == []
    # ... and inside the lab's own subnet, each address used once (hosts and VIPs never collide).
    used = [a for h in lab.hosts.values() for a in (h.ipv4, h.ipv6)]
    used += [lab.vip(i, version) for i in range(VIP_COUNT) for version in (4, 6)]
    assert all(a in (lab.subnet4 if a.version == 4 else lab.subnet6) for a in used)
    assert len(used) == len(set(used)) == 2 * (2 + (nodes - 1) + backends + VIP_COUNT)


def test_address_plan() -> None:
    lab = unbuilt(subnet=4, nodes=3, backends=2)
    plan = {name: (str(h.ipv4), str(h.ipv6)) for name, h in lab.hosts.items()}
    assert plan == {
        "client": ("198.18.4.100", "2001:db8:0:4::100"),
        "node": ("198.18.4.2", "2001:db8:0:4::2"),
        "node-2": ("198.18.4.3", "2001:db8:0:4::3"),
        "node-3": ("198.18.4.4", "2001:db8:0:4::4"),
        "backend-1": ("198.18.4.11", "2001:db8:0:4::11"),
        "backend-2": ("198.18.4.12", "2001:db8:0:4::12"),
    }
    assert [str(a) for a in lab.vip_range(4)] == ["198.18.4.200", "198.18.4.220"]
    assert [str(a) for a in lab.vip_range(6)] == ["2001:db8:0:4::200", "2001:db8:0:4::220"]
    assert str(unbuilt(subnet=254).subnet6) == "2001:db8:0:fe::/64"  # N is hex in IPv6
    assert str(unbuilt(subnet=0).vip(0, 6)) == "2001:db8::200"


def test_random_subnet_index_stays_in_range() -> None:
    for _ in range(200):
        lab = unbuilt()
        assert 1 <= lab.subnet_index <= 254 and lab.subnet4.subnet_of(LAB_V4)


@pytest.mark.parametrize("subnet", [-1, 256, 1000])
def test_subnet_index_outside_the_range_is_refused(subnet: int) -> None:
    with pytest.raises(ValueError, match="subnet"):
        unbuilt(subnet=subnet)


def test_vip_index_past_the_pool_is_refused() -> None:
    with pytest.raises(IndexError):
        unbuilt().vip(VIP_COUNT)


def test_constructing_a_lab_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"Lab() ran a command: {args}")

    monkeypatch.setattr(netlab, "run_command", refuse)
    monkeypatch.setattr(teardown, "run_command", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    lab = unbuilt(nodes=MAX_NODES, backends=MAX_BACKENDS)
    assert not lab.closed
    described = list(literals(str(lab.describe())))  # describe() is pure too
    assert len(described) > 100 and all(in_lab_ranges(a) for a in described)


def test_demo_config_uses_lab_addresses_only() -> None:
    lab = unbuilt(backends=3)
    first, last = lab.vip_range(4)
    backends = ", ".join(str(lab.ip(b)) for b in lab.backends)
    config = demo.DEMO_CONFIG.format(first=first, last=last, backends=backends, http=demo.HTTP_PORT, udp=demo.UDP_PORT)
    found = [ipaddress.ip_address(a) for a in IPV4.findall(config)]
    assert found and all(a in LAB_V4 for a in found), config


# ---- hard-coded addresses in the lab, the demo and the integration tests -------------------------

ALLOWED_V4 = [LAB_V4, ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv4Network("0.0.0.0/32")]
ALLOWED_V6 = [
    LAB_V6,
    ipaddress.IPv6Network("::/112"),  # ::, ::1 and host-number suffixes like "::100" in comments
    ipaddress.IPv6Network("fe80::/10"),  # link-local
    ipaddress.IPv6Network("ff02::/16"),  # link-local multicast (all-nodes, solicited-node, MLD)
]


def allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.version == 4:
        if address.packed[0] == 255:  # a netmask
            return True
        return any(address in net for net in ALLOWED_V4)
    return any(address in net for net in ALLOWED_V6)


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for place in SCANNED:
        files += [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file())
    return [f for f in files if "__pycache__" not in f.parts]


def literals(line: str) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    for pattern in (IPV4, IPV6):
        for text in pattern.findall(line):
            try:
                yield ipaddress.ip_address(text)
            except ValueError:  # 300.1.1.1 (a test's deliberately bad address), a MAC, a time
                continue


def test_scan_finds_what_it_must_refuse() -> None:
    bad = "10.77.1.200 192.168.1.5 172.16.0.1 fd77:0:0:1::200 fd00::1 203.0.113.7 8.8.8.8 2001:4860::8888"
    assert sorted(str(a) for a in literals(bad) if not allowed(a)) == sorted(bad.split())
    good = "198.18.1.200 198.19.255.10 127.0.0.9 0.0.0.0 255.255.255.0 2001:db8:0:1::200 ::1 ff02::1 fe80::1"
    assert [str(a) for a in literals(good) if not allowed(a)] == []
    assert list(literals("33:33:00:00:00:01 12:30:45 300.1.1.1 v1.2.3")) == []


def test_no_hard_coded_address_outside_the_lab_ranges_and_loopback() -> None:
    files = scanned_files()
    assert ROOT / "lbd" / "lab" / "netlab.py" in files and ROOT / "lbd" / "demo.py" in files
    offending = [
        f"{path.relative_to(ROOT)}:{number}: {address}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for address in literals(line)
        if not allowed(address)
    ]
    assert offending == [], "addresses outside 198.18.0.0/15, 2001:db8::/32 and loopback:\n" + "\n".join(offending)


def test_demo_probe_constants_match_its_config() -> None:
    assert f"periodSeconds: {demo.PROBE_PERIOD}, failureThreshold: {demo.PROBE_FAILURES}" in demo.DEMO_CONFIG
