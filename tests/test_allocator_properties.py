"""Property tests for lbd.allocator's invariants (I1-I5 at the top of lbd/allocator.py).

Pools are tiny (a few addresses per range) so that exhaustion, sharing and conflicts happen
in most examples.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections.abc import Sequence
from itertools import combinations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.allocator import Allocation, allocate
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

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

POOL_NAMES = ("a", "b", "c")
# Start octets near 0 and 255 so avoidBuggyIPs matters.
RANGE_STARTS = (0, 1, 10, 252)
PORTS = ((Protocol.TCP, 53), (Protocol.UDP, 53), (Protocol.TCP, 80), (Protocol.TCP, 443))
SELECTORS = ((("app", "x"),), (("app", "y"),))


def _address(pool_index: int, range_index: int, octet: int, version: int) -> IPAddress:
    # Every (pool, range) gets its own /24 (or /120), so ranges never overlap.
    if version == 4:
        return ipaddress.IPv4Address(f"10.{pool_index}.{range_index}.{octet}")
    return ipaddress.IPv6Address(f"fd00:{pool_index}:{range_index}::{octet:x}")


@st.composite
def pools_strategy(draw: st.DrawFn) -> tuple[Pool, ...]:
    count = draw(st.integers(min_value=1, max_value=3))
    pools = []
    auto_assign = st.sampled_from((True, True, True, False))
    for p in range(count):
        ranges = []
        for r in range(draw(st.integers(min_value=1, max_value=2))):
            version = draw(st.sampled_from((4, 4, 4, 6)))
            start = draw(st.sampled_from(RANGE_STARTS))
            length = draw(st.integers(min_value=1, max_value=4))
            last = start + length - 1
            ranges.append(AddressRange(_address(p, r, start, version), _address(p, r, last, version)))
        pools.append(
            Pool(
                name=POOL_NAMES[p],
                ranges=tuple(ranges),
                auto_assign=draw(auto_assign),
                avoid_buggy_ips=draw(st.booleans()),
            )
        )
    return tuple(pools)


@st.composite
def service_strategy(draw: st.DrawFn, name: str) -> Service:
    ports = draw(st.sets(st.sampled_from(PORTS), min_size=1, max_size=draw(st.sampled_from((1, 1, 2)))))
    requested: tuple[IPAddress, ...] = ()
    if draw(st.integers(0, 3)) == 0:
        # Mostly inside some pool's /24, sometimes not in any range at all.
        octet = draw(st.sampled_from((0, 1, 2, 11, 255)))
        family = draw(st.sampled_from((4, 4, 6)))
        requested = (_address(draw(st.integers(0, 2)), draw(st.integers(0, 1)), octet, family),)
    return Service(
        name=name,
        type=draw(st.sampled_from((ServiceType.LOAD_BALANCER,) * 5 + (ServiceType.CLUSTER_IP,))),
        ports=tuple(ServicePort(name=f"p{n}", port=n, target_port=n, protocol=proto) for proto, n in sorted(ports)),
        selector=draw(st.sampled_from(SELECTORS)),
        requested_ips=requested,
        address_pool=draw(st.sampled_from((None, None, None, None, "a", "b", "missing"))),
        allow_shared_ip=draw(st.sampled_from((None, "k1", "k1", "k1", "k2", ""))),
        ip_family=draw(st.sampled_from((None, None, None, 4, 6))),
        external_traffic_policy=draw(st.sampled_from((TrafficPolicy.CLUSTER,) * 2 + (TrafficPolicy.LOCAL,))),
    )


@st.composite
def services_strategy(draw: st.DrawFn, min_size: int = 0) -> tuple[Service, ...]:
    count = draw(st.integers(min_value=min_size, max_value=8))
    return tuple(draw(service_strategy(f"s{i}")) for i in range(count))


def _compatible(a: Service, b: Service) -> bool:
    if not a.allow_shared_ip or a.allow_shared_ip != b.allow_shared_ip:
        return False
    if a.port_keys & b.port_keys:
        return False
    if TrafficPolicy.LOCAL in (a.external_traffic_policy, b.external_traffic_policy):
        return a.external_traffic_policy == b.external_traffic_policy and sorted(a.selector) == sorted(b.selector)
    return True


def _is_buggy(ip: IPAddress) -> bool:
    return ip.version == 4 and int(ip) & 0xFF in (0, 255)


def _check_invariants(pools: Sequence[Pool], services: Sequence[Service], result: Allocation) -> None:
    by_key = {s.key: s for s in services}
    pool_by_name = {p.name: p for p in pools}
    exposed = {s.key for s in services if s.exposed}

    # I5: exactly the exposed services, each assigned or pending with a reason.
    assert set(result.assignments) == exposed
    for key, a in result.assignments.items():
        assert a.service == key
        assert (a.ip is None) == (a.pool is None) == (a.pending_reason is not None)

    # I1: sharing only between compatible services.
    holders: dict[IPAddress, list[Service]] = {}
    for key, a in result.assignments.items():
        if a.ip is not None:
            holders.setdefault(a.ip, []).append(by_key[key])
    for ip, group in holders.items():
        assert result.services_on(ip) == tuple(sorted(s.key for s in group))
        for x, y in combinations(group, 2):
            assert _compatible(x, y), f"{x.key} and {y.key} share {ip}"

    # I2: every IP comes from a pool the service may use.
    for key, a in result.assignments.items():
        if a.ip is None:
            continue
        service, pool = by_key[key], pool_by_name[a.pool]  # type: ignore[index]
        assert a.ip in pool
        assert not (pool.avoid_buggy_ips and _is_buggy(a.ip))
        if service.ip_family is not None:
            assert a.ip.version == service.ip_family
        if service.address_pool is not None:
            assert pool.name == service.address_pool
        if service.requested_ips:
            assert a.ip in service.requested_ips
        elif service.address_pool is None:
            assert pool.auto_assign

    # A pending automatic/annotated service really had no free address of its families.
    taken = set(result.sticky().values())
    for key, reason in result.pending().items():
        service = by_key[key]
        if service.requested_ips:
            continue
        if service.address_pool is not None:
            candidates = [p for p in pools if p.name == service.address_pool]
        else:
            candidates = [p for p in pools if p.auto_assign]
        families = (service.ip_family,) if service.ip_family else (4, 6)
        for p in candidates:
            for family in families:
                assert not _free_addresses(p, family, taken), f"{key} pending ({reason}) with free IPs in {p.name}"

    # in_use counts distinct IPs.
    for pool in pools:
        assert result.in_use(pool.name) == len({a.ip for a in result.assignments.values() if a.pool == pool.name})


def _free_addresses(pool: Pool, family: int, taken: set[IPAddress], buggy_too: bool = False) -> list[IPAddress]:
    free = []
    for r in pool.ranges:
        if r.version != family:
            continue
        for n in range(int(r.first), int(r.last) + 1):
            ip = ipaddress.ip_address(n) if family == 4 else ipaddress.IPv6Address(n)
            if ip not in taken and (buggy_too or not (pool.avoid_buggy_ips and _is_buggy(ip))):
                free.append(ip)
    return free


@SETTINGS
@given(pools=pools_strategy(), services=services_strategy(), seed=st.integers(0, 2**32 - 1))
def test_invariants_and_determinism(pools: tuple[Pool, ...], services: tuple[Service, ...], seed: int) -> None:
    result = allocate(pools, services, {})
    _check_invariants(pools, services, result)

    # (4) Same input, same output, whatever the order of services.
    shuffled = list(services)
    random.Random(seed).shuffle(shuffled)
    assert allocate(pools, shuffled, {}) == result
    assert allocate(pools, services, {}) == result
    # Feeding the result back changes nothing (a restart with the state file is a no-op).
    assert allocate(pools, shuffled, result.sticky()) == result


@SETTINGS
@given(pools=pools_strategy(), services=services_strategy(min_size=1), extra=service_strategy("x"), data=st.data())
def test_adding_or_removing_a_service_never_moves_another(
    pools: tuple[Pool, ...], services: tuple[Service, ...], extra: Service, data: st.DataObject
) -> None:
    before = allocate(pools, services, {})

    # (3a) Add one: its name decides where it sorts, so try both ends and the middle.
    newcomer = dataclasses.replace(extra, name=data.draw(st.sampled_from(("zz-new", "a-new", "s3x"))))
    grown = (*services, newcomer)
    after = allocate(pools, grown, before.sticky())
    _check_invariants(pools, grown, after)
    for key, held in before.sticky().items():
        assert after.ip_of(key) == held, f"adding {newcomer.key} moved {key} from {held} to {after.ip_of(key)}"

    # (3b) Remove one.
    gone = data.draw(st.integers(0, len(services) - 1))
    shrunk = services[:gone] + services[gone + 1 :]
    after = allocate(pools, shrunk, before.sticky())
    _check_invariants(pools, shrunk, after)
    for key, held in before.sticky().items():
        if key != services[gone].key:
            assert after.ip_of(key) == held, f"removing {services[gone].key} moved {key} from {held}"


@SETTINGS
@given(pools=pools_strategy(), services=services_strategy(), previous_ips=st.data())
def test_arbitrary_previous_state_is_validated(
    pools: tuple[Pool, ...], services: tuple[Service, ...], previous_ips: st.DataObject
) -> None:
    # A stale or hand-edited state file must never break the invariants.
    in_pools = [ip for p in pools for family in (4, 6) for ip in _free_addresses(p, family, set(), buggy_too=True)]
    addresses = in_pools + [_address(0, 0, 200, 4), _address(2, 1, 7, 6)]  # plus two outside every pool
    previous = {
        s.key: previous_ips.draw(st.sampled_from(addresses))
        for s in services
        if previous_ips.draw(st.booleans())
    }
    result = allocate(pools, services, previous)
    _check_invariants(pools, services, result)
