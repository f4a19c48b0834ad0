"""What an address may be: `check` refuses what `run` could not serve, with the reason.

Also the pool overlap check at scale (it was quadratic: 33 s for 10,000 pools).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lbd.config import ConfigError, ConfigInvalid, load


def errors_of(path: Path) -> list[ConfigError]:
    with pytest.raises(ConfigInvalid) as caught:
        load([path])
    return caught.value.errors


def only(errors: list[ConfigError]) -> ConfigError:
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("0.0.0.0/30", "contains 0.0.0.0: the unspecified address"),
        ("::/127", "contains ::: the unspecified address"),
        ("224.0.0.10-224.0.0.20", "contains 224.0.0.0/4: multicast addresses"),
        ("ff02::1/128", "contains ff00::/8: multicast addresses"),
        ("255.255.255.254/31", "contains 255.255.255.255: the broadcast address"),
        ("169.254.10.0/24", "contains 169.254.0.0/16: link-local addresses"),
        ("fe80::/64", "contains fe80::/10: link-local addresses"),
        ("::ffff:192.0.2.0/120", "contains ::ffff:0:0/96: IPv4-mapped addresses"),
        ("10.0.0.0/8", None),
        ("2001:db8::/64", None),
        ("127.0.0.240-127.0.0.250", None),  # a loopback pool: local.yaml's
        ("::1/128", None),
    ],
)
def test_pool_addresses_that_cannot_be_vips(config_file, entry: str, reason: str | None) -> None:
    path = config_file(f'pools: [{{name: p, addresses: ["{entry}"]}}]')
    if reason is None:
        assert load([path]).model.pools[0].name == "p"
        return
    error = only(errors_of(path))
    assert (error.obj, error.field) == ("IPAddressPool p", "pools[0].addresses[0]")
    assert error.message.startswith(f"{entry!r} {reason}")
    assert error.message.endswith("a VIP must be a unicast address clients can reach")


def test_the_same_rules_hold_for_ipaddresspool_manifests(config_file) -> None:
    path = config_file("""
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: bad}
        spec: {addresses: [0.0.0.0/32]}
    """)
    error = only(errors_of(path))
    assert (error.obj, error.field) == ("IPAddressPool bad", "spec.addresses[0]")
    assert "the unspecified address" in error.message


def test_loopback_only_in_a_pool_of_its_own(config_file) -> None:
    path = config_file("""
        pools:
          - {name: mixed, addresses: [192.0.2.0/28, 127.0.0.240/29]}
          - {name: straddle, addresses: [126.255.255.250-127.0.0.5]}
    """)
    errors = errors_of(path)
    assert [(e.field, e.message) for e in errors] == [
        ("pools[0].addresses[1]", "'127.0.0.240/29' is loopback, in a pool with routable addresses: a loopback "
         "VIP is reachable from this host only; put loopback ranges in a pool of their own"),
        ("pools[1].addresses[0]", "'126.255.255.250-127.0.0.5' mixes loopback and other addresses; split it at "
         "the loopback block (127.0.0.0/8, ::1) and put the loopback part in a pool of its own"),
    ]


def test_an_address_run_refused_is_never_handed_to_a_service(config_file) -> None:
    # The defect: 0.0.0.0 passed `check`, then went to the first service, which failed at bind.
    path = config_file("""
        pools: [{name: p, addresses: [0.0.0.0/31]}]
        services: [{name: web, ports: [{port: 80}], endpoints: [192.0.2.10]}]
    """)
    assert "unspecified" in only(errors_of(path)).message


def test_ipv6_with_a_port_must_be_bracketed(config_file) -> None:
    path = config_file('services: [{name: web, ports: [{port: 80}], endpoints: ["::1:80", "[::1]:81", "[::1:82]"]}]')
    error = only(errors_of(path))
    assert error.field == "services[0].endpoints[0]"
    assert error.message == "'::1:80' is ambiguous: write '[::1]:80' for port 80 of ::1, or '[::1:80]' for the IPv6 address ::1:80"


def test_unambiguous_ipv6_endpoints_still_read(config_file) -> None:
    path = config_file("""
        pools: [{name: p, addresses: [192.0.2.0/28]}]
        services: [{name: web, ports: [{port: 80}], endpoints: ["fd00::80", "2001:db8:1:2:3:4:5:80", "[::1]:8080"]}]
    """)
    endpoints = load([path]).model.services[0].endpoints
    assert [(str(e.address), e.port) for e in endpoints] == [("fd00::80", None), ("2001:db8:1:2:3:4:5:80", None), ("::1", 8080)]


def test_overlaps_are_found_in_n_log_n(config_file) -> None:
    lines = ["pools:"]
    for i in range(10_000):
        lines.append(f"  - {{name: p{i}, addresses: [10.{i // 256}.{i % 256}.0/28]}}")
    lines.append("  - {name: late, addresses: [10.39.15.8/29, 10.0.0.100-10.0.1.3]}")
    path = config_file("\n".join(lines) + "\n")
    started = time.perf_counter()
    errors = errors_of(path)
    elapsed = time.perf_counter() - started
    assert [e.message.split(";")[0] for e in errors] == [
        f"'10.39.15.8/29' overlaps '10.39.15.0/28' of IPAddressPool p9999 ({path} line 10001)",
        f"'10.0.0.100-10.0.1.3' overlaps '10.0.1.0/28' of IPAddressPool p1 ({path} line 3)",
    ]
    assert elapsed < 5.0  # the quadratic check took ~33 s on this size


def test_every_overlap_is_reported_once_at_the_later_entry(config_file) -> None:
    path = config_file("""
        pools:
          - {name: a, addresses: [10.0.0.0/24]}
          - {name: b, addresses: [10.0.1.0/24, 10.0.0.5-10.0.0.6]}
          - {name: c, addresses: [10.0.0.0/16]}
    """)
    errors = errors_of(path)
    assert sorted((e.field, e.obj) for e in errors) == [
        ("pools[1].addresses[1]", "IPAddressPool b"),
        ("pools[2].addresses[0]", "IPAddressPool c"),
    ]
