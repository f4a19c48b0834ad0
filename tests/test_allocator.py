"""Unit tests for lbd.allocator: one test per MetalLB rule, plus stickiness and scale."""

from __future__ import annotations

import ast
import ipaddress
import time
from pathlib import Path

import pytest

import lbd.allocator
from lbd.allocator import Allocation, Assignment, allocate, usable_addresses
from lbd.model import (
    AddressRange,
    IPAddress,
    Pool,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def rng(first: str, last: str | None = None) -> AddressRange:
    return AddressRange(ip(first), ip(last or first))


def cidr(text: str) -> AddressRange:
    net = ipaddress.ip_network(text)
    return AddressRange(net[0], net[-1])


def pool(name: str, *ranges: AddressRange, auto: bool = True, buggy: bool = False) -> Pool:
    return Pool(name=name, ranges=ranges, auto_assign=auto, avoid_buggy_ips=buggy)


def port(number: int, proto: Protocol = Protocol.TCP) -> ServicePort:
    return ServicePort(name=f"{proto.lower()}-{number}", port=number, target_port=number, protocol=proto)


def svc(name: str, *ports: ServicePort, **kw: object) -> Service:
    return Service(name=name, ports=ports or (port(80),), **kw)  # type: ignore[arg-type]


DEFAULT = pool("default", rng("192.168.1.200", "192.168.1.210"))


def ips(allocation: Allocation) -> dict[str, str]:
    return {key: str(a.ip) for key, a in allocation.assignments.items() if a.ip is not None}


def reason(allocation: Allocation, key: str) -> str:
    a = allocation.assignments[key]
    assert a.ip is None and a.pool is None
    assert a.pending_reason is not None
    return a.pending_reason


# --- explicit requests ------------------------------------------------------------------------


def test_explicit_ip_is_honoured_before_automatic_assignment() -> None:
    services = [svc("auto"), svc("web", requested_ips=(ip("192.168.1.200"),))]
    result = allocate([DEFAULT], services, {})
    # "default/auto" sorts first, but the explicit request is placed before automatic ones.
    assert ips(result) == {"default/web": "192.168.1.200", "default/auto": "192.168.1.201"}
    assert result.assignments["default/web"] == Assignment("default/web", ip("192.168.1.200"), "default", None)


def test_explicit_ip_may_come_from_a_pool_without_auto_assign() -> None:
    reserved = pool("reserved", rng("10.0.0.1", "10.0.0.5"), auto=False)
    result = allocate([DEFAULT, reserved], [svc("web", requested_ips=(ip("10.0.0.3"),))], {})
    assert result.assignments["default/web"].ip == ip("10.0.0.3")
    assert result.assignments["default/web"].pool == "reserved"


def test_explicit_ip_outside_every_pool_is_pending() -> None:
    result = allocate([DEFAULT], [svc("web", requested_ips=(ip("192.168.1.5"),)), svc("other")], {})
    assert reason(result, "default/web") == "requested IP 192.168.1.5 is not in any pool"
    assert result.ip_of("default/other") == ip("192.168.1.200")


def test_explicit_ip_in_another_pool_than_the_annotation_is_pending() -> None:
    other = pool("other", rng("10.0.0.1", "10.0.0.5"))
    web = svc("web", requested_ips=(ip("10.0.0.1"),), address_pool="default")
    result = allocate([DEFAULT, other], [web], {})
    assert reason(result, "default/web") == 'requested IP 10.0.0.1 is not in pool "default"'


def test_explicit_ip_in_the_annotated_pool_is_assigned() -> None:
    other = pool("other", rng("10.0.0.1", "10.0.0.5"), auto=False)
    web = svc("web", requested_ips=(ip("10.0.0.4"),), address_pool="other")
    assert allocate([DEFAULT, other], [web], {}).ip_of("default/web") == ip("10.0.0.4")


def test_explicit_ip_with_unknown_pool_annotation_is_pending() -> None:
    web = svc("web", requested_ips=(ip("192.168.1.201"),), address_pool="nope")
    assert reason(allocate([DEFAULT], [web], {}), "default/web") == 'pool "nope" does not exist'


def test_explicit_ip_already_taken_without_sharing_is_pending() -> None:
    services = [
        svc("web", requested_ips=(ip("192.168.1.205"),)),
        svc("api", requested_ips=(ip("192.168.1.205"),)),
    ]
    result = allocate([DEFAULT], services, {})
    assert result.ip_of("default/api") == ip("192.168.1.205")  # sorted by key: api first
    assert reason(result, "default/web") == (
        "192.168.1.205 is already in use by default/api "
        "(sharing not allowed: this service has no allow-shared-ip key)"
    )


def test_refused_request_names_every_holder_whatever_the_placement_order() -> None:
    # Found by hypothesis: "a" (requested) and "b" (automatic, same key) share .205; "x" asks
    # for .205 without a key. Fresh, x was refused before b joined; from the state file b is
    # placed first. The reason must not depend on that (a restart is a no-op, invariant I4).
    one = pool("one", rng("192.168.1.205"))
    services = [
        svc("a", port(80), requested_ips=(ip("192.168.1.205"),), allow_shared_ip="k"),
        svc("b", port(81), allow_shared_ip="k"),
        svc("x", port(82), requested_ips=(ip("192.168.1.205"),)),
    ]
    fresh = allocate([one], services, {})
    assert reason(fresh, "default/x") == (
        "192.168.1.205 is already in use by default/a, default/b "
        "(sharing not allowed: this service has no allow-shared-ip key)"
    )
    assert allocate([one], services, fresh.sticky()) == fresh


def test_explicit_buggy_ip_in_avoid_buggy_pool_is_pending() -> None:
    buggy = pool("b", cidr("10.0.0.0/24"), buggy=True)
    result = allocate([buggy], [svc("web", requested_ips=(ip("10.0.0.255"),))], {})
    assert "avoidBuggyIPs" in reason(result, "default/web")


def test_explicit_request_picks_the_family_asked_for() -> None:
    v6 = pool("v6", cidr("fd00::/120"))
    both = (ip("192.168.1.203"), ip("fd00::7"))
    services = [
        svc("default-family", requested_ips=both),
        svc("six", requested_ips=both, ip_family=6),
        svc("mismatch", requested_ips=(ip("192.168.1.204"),), ip_family=6),
    ]
    result = allocate([DEFAULT, v6], services, {})
    assert result.ip_of("default/default-family") == ip("192.168.1.203")
    assert result.ip_of("default/six") == ip("fd00::7")
    assert reason(result, "default/mismatch") == "requested IP 192.168.1.204 is not IPv6 as ipFamilies asks"


def test_explicit_request_falls_back_to_ipv6_when_the_ipv4_one_is_unavailable() -> None:
    v6 = pool("v6", cidr("fd00::/120"))
    services = [svc("web", requested_ips=(ip("10.9.9.9"), ip("fd00::7")))]
    assert allocate([DEFAULT, v6], services, {}).ip_of("default/web") == ip("fd00::7")


# --- pool annotation and autoAssign -----------------------------------------------------------


def test_pool_annotation_uses_only_that_pool_even_without_auto_assign() -> None:
    reserved = pool("reserved", rng("10.0.0.1", "10.0.0.5"), auto=False)
    result = allocate([DEFAULT, reserved], [svc("web", address_pool="reserved"), svc("auto")], {})
    assert result.ip_of("default/web") == ip("10.0.0.1")
    assert result.assignments["default/web"].pool == "reserved"
    assert result.ip_of("default/auto") == ip("192.168.1.200")


def test_unknown_pool_annotation_is_pending() -> None:
    result = allocate([DEFAULT], [svc("web", address_pool="x")], {})
    assert reason(result, "default/web") == 'pool "x" does not exist'


def test_auto_assign_false_blocks_only_automatic_assignment() -> None:
    reserved = pool("reserved", rng("10.0.0.1", "10.0.0.5"), auto=False)
    services = [
        svc("auto"),
        svc("annotated", address_pool="reserved"),
        svc("requested", requested_ips=(ip("10.0.0.5"),)),
    ]
    result = allocate([reserved], services, {})
    assert reason(result, "default/auto") == "no pool has autoAssign enabled"
    assert result.ip_of("default/annotated") == ip("10.0.0.1")
    assert result.ip_of("default/requested") == ip("10.0.0.5")


def test_automatic_assignment_follows_pool_declaration_order() -> None:
    first = pool("first", rng("10.0.0.1"))
    second = pool("second", rng("10.0.0.100", "10.0.0.101"))
    result = allocate([first, second], [svc("a"), svc("b"), svc("c")], {})
    assert ips(result) == {"default/a": "10.0.0.1", "default/b": "10.0.0.100", "default/c": "10.0.0.101"}


def test_lowest_free_address_wins() -> None:
    previous = {"default/a": ip("192.168.1.200"), "default/c": ip("192.168.1.202")}
    result = allocate([DEFAULT], [svc("a"), svc("c"), svc("new")], previous)
    assert result.ip_of("default/new") == ip("192.168.1.201")


def test_lowest_free_walks_ranges_in_order() -> None:
    two = pool("two", rng("10.0.0.9"), rng("10.0.0.1", "10.0.0.2"))
    result = allocate([two], [svc("a"), svc("b"), svc("c")], {})
    assert ips(result) == {"default/a": "10.0.0.9", "default/b": "10.0.0.1", "default/c": "10.0.0.2"}


def test_avoid_buggy_ips_skips_last_octet_0_and_255() -> None:
    buggy = pool("b", rng("10.0.0.254", "10.0.1.1"), buggy=True)
    result = allocate([buggy], [svc("a"), svc("b"), svc("c")], {})
    assert ips(result) == {"default/a": "10.0.0.254", "default/b": "10.0.1.1"}
    assert reason(result, "default/c") == "no pool with autoAssign has a free IPv4 or IPv6 address"
    assert usable_addresses(buggy) == 2


def test_without_avoid_buggy_ips_0_and_255_are_used() -> None:
    plain = pool("p", rng("10.0.0.255", "10.0.1.0"))
    assert set(ips(allocate([plain], [svc("a"), svc("b")], {})).values()) == {"10.0.0.255", "10.0.1.0"}


def test_usable_addresses_counts_buggy_ips_exactly() -> None:
    assert usable_addresses(pool("p", cidr("10.0.0.0/16"), buggy=True)) == 65536 - 2 * 256
    assert usable_addresses(pool("p", cidr("10.0.0.0/16"))) == 65536
    assert usable_addresses(pool("p", rng("10.0.0.1", "10.0.0.254"), cidr("fd00::/126"), buggy=True)) == 258


def test_previous_buggy_ip_is_dropped_when_the_pool_starts_avoiding_it() -> None:
    buggy = pool("b", rng("10.0.0.255", "10.0.1.1"), buggy=True)
    result = allocate([buggy], [svc("a")], {"default/a": ip("10.0.0.255")})
    assert result.ip_of("default/a") == ip("10.0.1.1")


# --- families ---------------------------------------------------------------------------------


def test_ipv6_pool() -> None:
    v6 = pool("v6", cidr("2001:db8::/64"))
    result = allocate([v6], [svc("a"), svc("b")], {})
    assert ips(result) == {"default/a": "2001:db8::", "default/b": "2001:db8::1"}


def test_family_selection_prefers_ipv4_then_falls_back_to_ipv6() -> None:
    mixed = pool("mixed", rng("10.0.0.1"), cidr("fd00::/127"))
    services = [svc("a"), svc("b"), svc("six", ip_family=6), svc("four", ip_family=4)]
    result = allocate([mixed], services, {})
    assert result.ip_of("default/a") == ip("10.0.0.1")
    assert result.ip_of("default/b") == ip("fd00::")
    assert result.ip_of("default/six") == ip("fd00::1")
    assert reason(result, "default/four") == "no pool with autoAssign has a free IPv4 address"


def test_ipv4_in_a_later_pool_beats_ipv6_in_an_earlier_one() -> None:
    v6 = pool("v6", cidr("fd00::/120"))
    v4 = pool("v4", rng("10.0.0.1"))
    assert allocate([v6, v4], [svc("a")], {}).ip_of("default/a") == ip("10.0.0.1")


def test_annotated_pool_without_the_family_is_pending() -> None:
    v6 = pool("v6", cidr("fd00::/120"))
    result = allocate([v6], [svc("a", address_pool="v6", ip_family=4)], {})
    assert reason(result, "default/a") == 'pool "v6" has no IPv4 addresses'


def test_previous_ip_of_the_wrong_family_is_reassigned() -> None:
    mixed = pool("mixed", rng("10.0.0.1"), cidr("fd00::/127"))
    result = allocate([mixed], [svc("a", ip_family=6)], {"default/a": ip("10.0.0.1")})
    assert result.ip_of("default/a") == ip("fd00::")


# --- sharing ----------------------------------------------------------------------------------

DNS = (port(53, Protocol.TCP), port(53, Protocol.UDP))


def test_same_key_and_disjoint_ports_share_one_ip() -> None:
    services = [svc("http", port(80), allow_shared_ip="k"), svc("https", port(443), allow_shared_ip="k")]
    result = allocate([DEFAULT], services, {})
    assert result.ip_of("default/http") == result.ip_of("default/https") == ip("192.168.1.200")
    assert result.services_on(ip("192.168.1.200")) == ("default/http", "default/https")
    assert result.services_on("192.168.1.200") == ("default/http", "default/https")
    assert result.in_use("default") == 1


def test_tcp_53_and_udp_53_share() -> None:
    services = [
        svc("dns-tcp", port(53, Protocol.TCP), allow_shared_ip="dns"),
        svc("dns-udp", port(53, Protocol.UDP), allow_shared_ip="dns"),
    ]
    result = allocate([DEFAULT], services, {})
    assert result.ip_of("default/dns-tcp") == result.ip_of("default/dns-udp")


def test_sharing_prefers_an_ip_already_used_by_the_key_over_the_lowest_free() -> None:
    previous = {"default/dns-tcp": ip("192.168.1.205")}
    services = [
        svc("dns-tcp", port(53, Protocol.TCP), allow_shared_ip="dns"),
        svc("dns-udp", port(53, Protocol.UDP), allow_shared_ip="dns"),
    ]
    result = allocate([DEFAULT], services, previous)
    assert result.ip_of("default/dns-udp") == ip("192.168.1.205")


def test_overlapping_ports_do_not_share() -> None:
    services = [
        svc("a", port(80), allow_shared_ip="k", requested_ips=(ip("192.168.1.205"),)),
        svc("b", port(80), port(443), allow_shared_ip="k", requested_ips=(ip("192.168.1.205"),)),
    ]
    result = allocate([DEFAULT], services, {})
    assert result.ip_of("default/a") == ip("192.168.1.205")
    assert reason(result, "default/b") == (
        "192.168.1.205 is already in use by default/a (sharing not allowed: TCP/80 also used by default/a)"
    )


def test_overlapping_ports_auto_assigned_get_different_ips() -> None:
    services = [svc("a", port(80), allow_shared_ip="k"), svc("b", port(80), allow_shared_ip="k")]
    result = allocate([DEFAULT], services, {})
    assert ips(result) == {"default/a": "192.168.1.200", "default/b": "192.168.1.201"}


def test_different_keys_do_not_share() -> None:
    services = [
        svc("a", port(80), allow_shared_ip="k1", requested_ips=(ip("192.168.1.205"),)),
        svc("b", port(443), allow_shared_ip="k2", requested_ips=(ip("192.168.1.205"),)),
    ]
    result = allocate([DEFAULT], services, {})
    assert 'sharing key "k2" differs from "k1" of default/a' in reason(result, "default/b")


def test_a_service_without_key_never_shares() -> None:
    services = [
        svc("a", port(80), allow_shared_ip="k", requested_ips=(ip("192.168.1.205"),)),
        svc("b", port(443), requested_ips=(ip("192.168.1.205"),)),
        svc("c", port(8080), allow_shared_ip="", requested_ips=(ip("192.168.1.205"),)),
    ]
    result = allocate([DEFAULT], services, {})
    assert "this service has no allow-shared-ip key" in reason(result, "default/b")
    assert "this service has no allow-shared-ip key" in reason(result, "default/c")


def test_a_service_cannot_join_a_holder_without_key() -> None:
    previous = {"default/a": ip("192.168.1.205")}
    services = [svc("a", port(80)), svc("b", port(443), allow_shared_ip="k", requested_ips=(ip("192.168.1.205"),))]
    result = allocate([DEFAULT], services, previous)
    assert "default/a has no allow-shared-ip key" in reason(result, "default/b")


def test_local_and_cluster_do_not_share() -> None:
    shared = {"allow_shared_ip": "k", "selector": (("app", "x"),), "requested_ips": (ip("192.168.1.205"),)}
    services = [
        svc("a", port(80), external_traffic_policy=TrafficPolicy.LOCAL, **shared),
        svc("b", port(443), **shared),
    ]
    result = allocate([DEFAULT], services, {})
    assert "externalTrafficPolicy Cluster differs from Local of default/a" in reason(result, "default/b")


def test_local_with_different_selectors_do_not_share() -> None:
    local = TrafficPolicy.LOCAL
    services = [
        svc("a", port(80), allow_shared_ip="k", external_traffic_policy=local, selector=(("app", "x"),)),
        svc("b", port(443), allow_shared_ip="k", external_traffic_policy=local, selector=(("app", "y"),)),
    ]
    result = allocate([DEFAULT], services, {})
    assert result.ip_of("default/a") != result.ip_of("default/b")


def test_local_with_identical_selectors_share() -> None:
    local = TrafficPolicy.LOCAL
    services = [
        svc("a", port(80), allow_shared_ip="k", external_traffic_policy=local, selector=(("app", "x"), ("t", "1"))),
        svc("b", port(443), allow_shared_ip="k", external_traffic_policy=local, selector=(("t", "1"), ("app", "x"))),
    ]
    result = allocate([DEFAULT], services, {})
    assert result.ip_of("default/a") == result.ip_of("default/b") == ip("192.168.1.200")


def test_sharing_services_use_shared_ip_when_pool_is_full() -> None:
    tiny = pool("tiny", rng("10.0.0.1"))
    services = [svc("a", *DNS[:1], allow_shared_ip="dns"), svc("b", *DNS[1:], allow_shared_ip="dns")]
    result = allocate([tiny], services, {})
    assert result.ip_of("default/a") == result.ip_of("default/b") == ip("10.0.0.1")


# --- exhaustion, deletion, stickiness -------------------------------------------------------


def test_exhausted_pool_leaves_only_the_excess_pending() -> None:
    small = pool("default", rng("10.0.0.1", "10.0.0.2"))
    services = [svc("a"), svc("b"), svc("c"), svc("d", address_pool="default")]
    result = allocate([small], services, {})
    # The annotated service is placed before automatic ones.
    assert ips(result) == {"default/d": "10.0.0.1", "default/a": "10.0.0.2"}
    assert reason(result, "default/b") == "no pool with autoAssign has a free IPv4 or IPv6 address"
    assert reason(result, "default/c") == "no pool with autoAssign has a free IPv4 or IPv6 address"
    assert result.pending() == {
        "default/b": "no pool with autoAssign has a free IPv4 or IPv6 address",
        "default/c": "no pool with autoAssign has a free IPv4 or IPv6 address",
    }
    assert result.in_use("default") == 2


def test_exhausted_annotated_pool_reason() -> None:
    small = pool("default", rng("10.0.0.1"))
    result = allocate([small], [svc("a", address_pool="default"), svc("b", address_pool="default")], {})
    assert reason(result, "default/b") == 'no available IPs in pool "default"'


def test_deleting_a_service_frees_its_ip_for_a_pending_one() -> None:
    small = pool("default", rng("10.0.0.1"))
    first = allocate([small], [svc("a"), svc("b")], {})
    assert first.ip_of("default/a") == ip("10.0.0.1")
    assert first.ip_of("default/b") is None
    second = allocate([small], [svc("b")], first.sticky())
    assert second.ip_of("default/b") == ip("10.0.0.1")
    assert second.sticky() == {"default/b": ip("10.0.0.1")}


def test_sticky_previous_ip_is_kept_even_when_a_lower_one_is_free() -> None:
    result = allocate([DEFAULT], [svc("web")], {"default/web": ip("192.168.1.207")})
    assert result.ip_of("default/web") == ip("192.168.1.207")


def test_sticky_holders_are_placed_before_new_requests() -> None:
    services = [svc("new", requested_ips=(ip("192.168.1.207"),)), svc("old")]
    result = allocate([DEFAULT], services, {"default/old": ip("192.168.1.207")})
    assert result.ip_of("default/old") == ip("192.168.1.207")
    assert "already in use by default/old" in reason(result, "default/new")


def test_previous_ip_from_a_removed_pool_is_reassigned() -> None:
    result = allocate([DEFAULT], [svc("web")], {"default/web": ip("10.0.0.1")})
    assert result.ip_of("default/web") == ip("192.168.1.200")


def test_previous_ip_is_dropped_when_the_request_changes() -> None:
    web = svc("web", requested_ips=(ip("192.168.1.203"),))
    result = allocate([DEFAULT], [web], {"default/web": ip("192.168.1.200")})
    assert result.ip_of("default/web") == ip("192.168.1.203")


def test_previous_ip_is_dropped_when_the_pool_annotation_changes() -> None:
    other = pool("other", rng("10.0.0.1", "10.0.0.5"))
    web = svc("web", address_pool="other")
    result = allocate([DEFAULT, other], [web], {"default/web": ip("192.168.1.200")})
    assert result.ip_of("default/web") == ip("10.0.0.1")


def test_previous_ip_in_a_pool_that_lost_auto_assign_is_reassigned() -> None:
    reserved = pool("reserved", rng("10.0.0.1", "10.0.0.5"), auto=False)
    result = allocate([reserved, DEFAULT], [svc("web")], {"default/web": ip("10.0.0.2")})
    assert result.ip_of("default/web") == ip("192.168.1.200")


def test_conflicting_previous_holders_keep_the_first_by_key() -> None:
    previous = {"default/a": ip("192.168.1.200"), "default/b": ip("192.168.1.200")}
    result = allocate([DEFAULT], [svc("a"), svc("b")], previous)
    assert ips(result) == {"default/a": "192.168.1.200", "default/b": "192.168.1.201"}


def test_previous_entries_for_unknown_services_are_ignored() -> None:
    result = allocate([DEFAULT], [svc("web")], {"default/gone": ip("192.168.1.200")})
    assert result.ip_of("default/web") == ip("192.168.1.200")
    assert result.ip_of("default/gone") is None


def test_non_exposed_services_are_ignored() -> None:
    services = [
        svc("cluster", type=ServiceType.CLUSTER_IP),
        svc("nodeport", type=ServiceType.NODE_PORT),
        svc("headless", headless=True),
        svc("web"),
    ]
    result = allocate([DEFAULT], services, {"default/cluster": ip("192.168.1.200")})
    assert list(result.assignments) == ["default/web"]
    assert result.ip_of("default/web") == ip("192.168.1.200")


def test_no_pools_leaves_everything_pending() -> None:
    result = allocate([], [svc("web")], {})
    assert reason(result, "default/web") == (
        "no address pool is configured: add an IPAddressPool (native format: `pools:`)")


def test_duplicate_service_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="default/web"):
        allocate([DEFAULT], [svc("web"), svc("web")], {})


def test_allocation_helpers() -> None:
    result = allocate([DEFAULT], [svc("web"), svc("x", address_pool="nope")], {})
    assert result.ip_of("default/missing") is None
    assert result.ip_of("default/x") is None
    assert result.sticky() == {"default/web": ip("192.168.1.200")}
    assert result.in_use("nope") == 0
    assert result.services_on(ip("192.168.1.201")) == ()


# --- scale and purity -------------------------------------------------------------------------


def test_large_pools_are_never_materialised() -> None:
    huge_v6 = pool("v6", cidr("2001:db8::/64"))
    big_v4 = pool("v4", cidr("10.0.0.0/16"), buggy=True)
    services = [svc(f"s{i:04d}") for i in range(2000)] + [svc(f"six{i:04d}", ip_family=6) for i in range(500)]
    previous = {f"default/s{i:04d}": ipaddress.IPv4Address(int(ip("10.0.0.1")) + 2 * i) for i in range(0, 2000, 2)}
    start = time.perf_counter()
    result = allocate([big_v4, huge_v6], services, previous)
    elapsed = time.perf_counter() - start
    assert len(result.sticky()) == 2500
    assert result.in_use("v4") == 2000
    assert result.ip_of("default/six0000") == ip("2001:db8::")
    assert all(not str(a).endswith((".0", ".255")) for a in result.sticky().values())
    assert elapsed < 2.0


def test_allocator_stays_pure() -> None:
    tree = ast.parse(Path(lbd.allocator.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "pyroute2", "time", "os", "structlog"}
