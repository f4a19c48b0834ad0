"""The IP allocator: which VIP each exposed service gets, with MetalLB's rules (pure, sans-IO).

`allocate(pools, services, previous)` is a function of its arguments only: no sockets, no
clocks, no asyncio. The daemon calls it on every config change and persists `sticky()`.

Rules, per service, in order (MetalLB's):
  1. `requested_ips` (loadBalancerIP / metallb.io/loadBalancerIPs): the requested IP of the
     service's family must lie in some pool (in `address_pool` if that is set too); the pool's
     autoAssign does not matter.
  2. `address_pool` (metallb.io/address-pool): that pool only; autoAssign does not matter.
  3. Otherwise automatic: pools with autoAssign, in declaration order.
  Within a pool the lowest free address wins; avoidBuggyIPs skips IPv4 addresses whose last
  octet is 0 or 255 (also for explicit requests, as MetalLB's `poolFor` does). A service with
  a sharing key first tries IPs that compatible services with the same key already hold.

Family: `ip_family` if set, else IPv4 first and IPv6 if no IPv4 address is available to the
service. Single-stack only: dual-stack (one IPv4 and one IPv6 VIP per service) is out of scope.

Invariants (tests/test_allocator_properties.py checks them):
  I1. Several services hold one IP only if all have the same non-empty sharing key, pairwise
      disjoint (protocol, port) sets, and either none uses externalTrafficPolicy Local or all
      do with identical selectors.
  I2. An assigned IP lies in `Assignment.pool`, which the service may use: its requested IP,
      its annotated pool, or else an autoAssign pool; of its family; never a buggy IP in an
      avoidBuggyIPs pool.
  I3. Sticky: every service whose `previous` IP is still valid for it keeps it; all such
      services are placed before any new assignment, so adding or removing another service
      never moves an assigned one.
  I4. Deterministic: the result depends on the pools, the *set* of services and `previous`,
      not on the order of services. New assignments are made most constrained first
      (explicit requests, then pool annotations, then automatic), by service key.
  I5. Every exposed service has exactly one Assignment: an IP and its pool, or a pending
      reason a human can act on. Services that are not exposed get nothing.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lbd.model import IPAddress, Pool, Service, TrafficPolicy

# MetalLB's ipConfusesBuggyFirmwares: smurf protection on some CPE firmwares drops traffic to
# IPv4 addresses ending in .0 or .255 even when they are not a network or broadcast address.
_BUGGY_LAST_OCTETS = (0, 255)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The outcome for one exposed service: an IP from a pool, or pending with a reason."""

    service: str  # service key "ns/name"
    ip: IPAddress | None  # None while pending
    pool: str | None
    pending_reason: str | None


@dataclass(frozen=True, slots=True)
class Allocation:
    """Every exposed service's Assignment, by service key. Built once, never mutated."""

    assignments: Mapping[str, Assignment]
    # Derived index for services_on(); not part of equality.
    _by_ip: Mapping[IPAddress, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_ip: dict[IPAddress, list[str]] = {}
        for key in sorted(self.assignments):
            ip = self.assignments[key].ip
            if ip is not None:
                by_ip.setdefault(ip, []).append(key)
        object.__setattr__(self, "_by_ip", {ip: tuple(keys) for ip, keys in by_ip.items()})

    def ip_of(self, key: str) -> IPAddress | None:
        assignment = self.assignments.get(key)
        return assignment.ip if assignment is not None else None

    def sticky(self) -> dict[str, IPAddress]:
        """What to persist and pass back as `previous`: key -> IP of every assigned service."""
        return {key: a.ip for key, a in self.assignments.items() if a.ip is not None}

    def pending(self) -> dict[str, str]:
        """Key -> reason of every service still waiting for an IP."""
        return {
            key: a.pending_reason
            for key, a in self.assignments.items()
            if a.ip is None and a.pending_reason is not None
        }

    def in_use(self, pool: str) -> int:
        """Distinct IPs in use in `pool` (metallb_allocator_addresses_in_use_total)."""
        return self.in_use_by_pool().get(pool, 0)

    def in_use_by_pool(self) -> dict[str, int]:
        """Distinct IPs in use, for every pool that has one: one pass, however many pools."""
        ips: dict[str, set[IPAddress]] = {}
        for a in self.assignments.values():
            if a.pool is not None and a.ip is not None:
                ips.setdefault(a.pool, set()).add(a.ip)
        return {pool: len(held) for pool, held in ips.items()}

    def services_on(self, ip: IPAddress | str) -> tuple[str, ...]:
        """Keys of the services holding `ip`, sorted."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(ip)
        return self._by_ip.get(ip, ())


def allocate(
    pools: Sequence[Pool],
    services: Sequence[Service],
    previous: Mapping[str, IPAddress],
    *,
    hold_new: str | None = None,
) -> Allocation:
    """Give every exposed service a VIP (or a pending reason), keeping still-valid previous IPs.

    `previous` is the last Allocation's `sticky()` (or the state file); entries for unknown
    services are ignored. Service keys must be unique. With `hold_new` (the sticky state was
    lost), only previous IPs and explicit requests are given; every other service is pending
    with `hold_new` as the reason.
    """
    exposed = sorted((s for s in services if s.exposed), key=lambda s: s.key)
    _check_unique_keys(exposed)
    ledger = _Ledger(pools)
    results: dict[str, Assignment] = {}

    # Sticky first: a service that holds a valid IP must never lose it to a newcomer.
    for service in exposed:
        ip = previous.get(service.key)
        if ip is None:
            continue
        pool = ledger.pool_of(ip)
        if pool is not None and _may_hold(service, ip, pool) and ledger.conflict(service, ip) is None:
            results[service.key] = ledger.place(service, ip, pool)

    # Most constrained first, so an automatic service cannot take the one IP another requested.
    newcomers = sorted((s for s in exposed if s.key not in results), key=lambda s: (_rank(s), s.key))
    for service in newcomers:
        if hold_new is not None and not service.requested_ips:
            results[service.key] = _pending(service, hold_new)
            continue
        results[service.key] = _assign_new(service, ledger)

    # A refused request names who holds the IP. Say it as of the final ledger, so the reason
    # does not depend on the order services were placed in (I4): holders only ever join.
    for service in newcomers:
        if results[service.key].ip is None and service.requested_ips:
            results[service.key] = _pending(service, _request_refusal(service, ledger))

    return Allocation({key: results[key] for key in sorted(results)})


def usable_addresses(pool: Pool) -> int:
    """How many addresses the pool can hand out (metallb_allocator_addresses_total)."""
    total = 0
    for r in pool.ranges:
        total += r.size
        if pool.avoid_buggy_ips and r.version == 4:
            first, last = int(r.first), int(r.last)
            total -= sum(_count_congruent(first, last, octet, 256) for octet in _BUGGY_LAST_OCTETS)
    return total


# --- rules -----------------------------------------------------------------------------------


def _families(service: Service) -> tuple[int, ...]:
    return (service.ip_family,) if service.ip_family is not None else (4, 6)


def _family_text(families: Iterable[int]) -> str:
    return " or ".join(f"IPv{f}" for f in families)


def _rank(service: Service) -> int:
    if service.requested_ips:
        return 0
    if service.address_pool is not None:
        return 1
    return 2


def _is_buggy(ip: IPAddress) -> bool:
    return ip.version == 4 and int(ip) & 0xFF in _BUGGY_LAST_OCTETS


def _may_hold(service: Service, ip: IPAddress, pool: Pool) -> bool:
    """Whether a previous IP is still one this service could be given (ignoring other services)."""
    if pool.avoid_buggy_ips and _is_buggy(ip):
        return False
    if service.ip_family is not None and ip.version != service.ip_family:
        return False
    if service.address_pool is not None and pool.name != service.address_pool:
        return False
    if service.requested_ips:
        return ip in service.requested_ips
    # An annotated pool may have autoAssign off; automatic assignment may not use such a pool.
    return service.address_pool is not None or pool.auto_assign


def _sharing_key(service: Service) -> str | None:
    return service.allow_shared_ip or None  # "" means no key, as in MetalLB


def _sharing_conflict(new: Service, holders: Sequence[Service]) -> str | None:
    """Why `new` may not join `holders` on one IP, or None if it may (MetalLB's sharingOK)."""
    key = _sharing_key(new)
    if key is None:
        return "this service has no allow-shared-ip key"
    for holder in holders:
        holder_key = _sharing_key(holder)
        if holder_key is None:
            return f"{holder.key} has no allow-shared-ip key"
        if holder_key != key:
            return f'sharing key "{key}" differs from "{holder_key}" of {holder.key}'
        # MetalLB's backend key: Local services answer only where their pods are, so an IP
        # shared by Local services must lead to the same pods.
        local = TrafficPolicy.LOCAL
        if local in (new.external_traffic_policy, holder.external_traffic_policy):
            if new.external_traffic_policy != holder.external_traffic_policy:
                return (
                    f"externalTrafficPolicy {new.external_traffic_policy} differs from "
                    f"{holder.external_traffic_policy} of {holder.key}"
                )
            if sorted(new.selector) != sorted(holder.selector):
                return f"externalTrafficPolicy Local needs identical selectors, {holder.key} selects other pods"
        overlap = new.port_keys & holder.port_keys
        if overlap:
            ports = ", ".join(f"{proto}/{port}" for proto, port in sorted(overlap))
            return f"{ports} also used by {holder.key}"
    return None


def _pending(service: Service, reason: str) -> Assignment:
    return Assignment(service=service.key, ip=None, pool=None, pending_reason=reason)


def _assign_new(service: Service, ledger: _Ledger) -> Assignment:
    if service.requested_ips:
        return _assign_requested(service, ledger)
    if service.address_pool is not None:
        pool = ledger.pool_named(service.address_pool)
        if pool is None:
            return _pending(service, f'pool "{service.address_pool}" does not exist')
        return _assign_from_pools(service, ledger.only(pool), ledger)
    return _assign_from_pools(service, ledger.auto_pools, ledger)


def _requested_candidates(service: Service) -> list[IPAddress]:
    # At most one request per family; in family preference order.
    families = _families(service)
    return [ip for family in families for ip in dict.fromkeys(service.requested_ips) if ip.version == family]


def _assign_requested(service: Service, ledger: _Ledger) -> Assignment:
    for ip in _requested_candidates(service):
        if _request_problem(service, ip, ledger) is None:
            pool = ledger.pool_of(ip)
            assert pool is not None  # _request_problem checked it
            return ledger.place(service, ip, pool)
    return _pending(service, _request_refusal(service, ledger))


def _request_refusal(service: Service, ledger: _Ledger) -> str:
    """Why none of the service's requested IPs can be given to it now."""
    candidates = _requested_candidates(service)
    if not candidates:
        asked = ", ".join(str(ip) for ip in service.requested_ips)
        return f"requested IP {asked} is not {_family_text(_families(service))} as ipFamilies asks"
    return "; ".join(problem for ip in candidates if (problem := _request_problem(service, ip, ledger)) is not None)


def _request_problem(service: Service, ip: IPAddress, ledger: _Ledger) -> str | None:
    pool = ledger.pool_of(ip)
    if service.address_pool is not None:
        if ledger.pool_named(service.address_pool) is None:
            return f'pool "{service.address_pool}" does not exist'
        if pool is None or pool.name != service.address_pool:
            return f'requested IP {ip} is not in pool "{service.address_pool}"'
    if pool is None:
        return f"requested IP {ip} is not in any pool"
    if pool.avoid_buggy_ips and _is_buggy(ip):
        return f'requested IP {ip} ends in .0 or .255, which pool "{pool.name}" avoids (avoidBuggyIPs)'
    return ledger.conflict(service, ip)


def _assign_from_pools(service: Service, pools: tuple[Pool, ...], ledger: _Ledger) -> Assignment:
    families = _families(service)
    for family in families:
        eligible = ledger.of_family(pools, family)
        ip = ledger.shared_ip(service, eligible, family)
        if ip is None:
            ip = ledger.first_free(eligible, family)
        if ip is not None:
            pool = ledger.pool_of(ip)
            assert pool is not None  # found in one of `pools`
            return ledger.place(service, ip, pool)

    wanted = _family_text(families)
    if service.address_pool is not None:
        (pool,) = pools
        if not any(r.version in families for r in pool.ranges):
            return _pending(service, f'pool "{pool.name}" has no {wanted} addresses')
        suffix = f" (service asks for {wanted})" if service.ip_family is not None else ""
        return _pending(service, f'no available IPs in pool "{pool.name}"{suffix}')
    if not ledger.pools:  # "no pool has autoAssign enabled" would send the user looking for a flag
        return _pending(service, "no address pool is configured: add an IPAddressPool (native format: `pools:`)")
    if not pools:
        return _pending(service, "no pool has autoAssign enabled")
    return _pending(service, f"no pool with autoAssign has a free {wanted} address")


# --- bookkeeping for one allocate() call ---------------------------------------------------


class _Ledger:
    """Who holds which IP during one allocate() call. It only grows: nothing is ever freed."""

    def __init__(self, pools: Sequence[Pool]) -> None:
        self.pools = tuple(pools)
        self.auto_pools = tuple(p for p in self.pools if p.auto_assign)
        self._order = {p.name: i for i, p in enumerate(self.pools)}
        self._index = _PoolIndex(self.pools)
        # Pools of one family, per pool list asked about (keyed by identity: the lists are
        # the ledger's own auto_pools or one-pool tuples), and how many of them are full.
        self._family_pools: dict[tuple[int, int], tuple[Pool, ...]] = {}
        self._keep: list[tuple[Pool, ...]] = []  # keeps keyed lists alive, so ids stay unique
        self._full_prefix: dict[tuple[int, int], int] = {}
        self._singles: dict[str, tuple[Pool]] = {}
        self._holders: dict[IPAddress, list[Service]] = {}
        self._used: dict[int, list[int]] = {4: [], 6: []}  # held addresses as sorted ints
        self._by_sharing_key: dict[str, list[IPAddress]] = {}
        # (pool, range index) -> every address below this one is used or buggy. Valid because
        # the ledger only grows, so lowest-free searches never restart from the range start.
        self._cursor: dict[tuple[str, int], int] = {}

    def only(self, pool: Pool) -> tuple[Pool]:
        """`(pool,)`, the same tuple every time (so per-list caches hit)."""
        single = self._singles.get(pool.name)
        if single is None:
            single = self._singles[pool.name] = (pool,)
        return single

    def pool_named(self, name: str) -> Pool | None:
        index = self._order.get(name)
        return self.pools[index] if index is not None else None

    def pool_of(self, ip: IPAddress) -> Pool | None:
        return self._index.pool_of(ip)

    def of_family(self, pools: tuple[Pool, ...], family: int) -> tuple[Pool, ...]:
        """The pools of `pools` with addresses of `family`, in order (computed once per list)."""
        key = (id(pools), family)
        found = self._family_pools.get(key)
        if found is None:
            self._keep.append(pools)
            found = tuple(p for p in pools if any(r.version == family for r in p.ranges))
            self._family_pools[key] = found
            self._keep.append(found)
        return found

    def first_free(self, pools: tuple[Pool, ...], family: int) -> IPAddress | None:
        """The lowest free address of the first pool that has one. Pools found full stay full
        (the ledger only grows), so each is skipped for good: N services over P pools cost
        O(N + P) pool visits, not O(N x P)."""
        key = (id(pools), family)
        start = self._full_prefix.get(key, 0)
        for position in range(start, len(pools)):
            ip = self.lowest_free(pools[position], family)
            if ip is not None:
                self._full_prefix[key] = position
                return ip
        self._full_prefix[key] = len(pools)
        return None

    def conflict(self, service: Service, ip: IPAddress) -> str | None:
        holders = self._holders.get(ip)
        if not holders:
            return None
        holders = sorted(holders, key=lambda h: h.key)
        reason = _sharing_conflict(service, holders)
        if reason is None:
            return None
        names = ", ".join(h.key for h in holders)
        return f"{ip} is already in use by {names} (sharing not allowed: {reason})"

    def place(self, service: Service, ip: IPAddress, pool: Pool) -> Assignment:
        holders = self._holders.setdefault(ip, [])
        if not holders:
            bisect.insort(self._used[ip.version], int(ip))
            key = _sharing_key(service)
            if key is not None:
                self._by_sharing_key.setdefault(key, []).append(ip)
        holders.append(service)
        return Assignment(service=service.key, ip=ip, pool=pool.name, pending_reason=None)

    def shared_ip(self, service: Service, pools: tuple[Pool, ...], family: int) -> IPAddress | None:
        """The first IP (pool order, then lowest) that compatible services with its key hold."""
        key = _sharing_key(service)
        if key is None or not pools:
            return None
        allowed = {p.name for p in pools}
        best: tuple[int, int, IPAddress] | None = None
        for ip in self._by_sharing_key.get(key, ()):
            if ip.version != family or self.conflict(service, ip) is not None:
                continue
            pool = self.pool_of(ip)
            if pool is None or pool.name not in allowed:
                continue
            rank = (self._order[pool.name], int(ip), ip)
            if best is None or rank[:2] < best[:2]:
                best = rank
        return best[2] if best is not None else None

    def lowest_free(self, pool: Pool, family: int) -> IPAddress | None:
        for index, r in enumerate(pool.ranges):
            if r.version != family:
                continue
            ip = self._lowest_free_in_range(pool, index)
            if ip is not None:
                return ip
        return None

    def _lowest_free_in_range(self, pool: Pool, index: int) -> IPAddress | None:
        # Walk the sorted used addresses inside the range instead of the range itself, so a
        # /16 or an IPv6 /64 costs O(addresses in use), never O(range size).
        r = pool.ranges[index]
        first, last = int(r.first), int(r.last)
        skip_buggy = pool.avoid_buggy_ips and r.version == 4
        used = self._used[r.version]
        candidate = max(self._cursor.get((pool.name, index), first), first)
        pos = bisect.bisect_left(used, candidate)
        while candidate <= last:
            if skip_buggy and candidate & 0xFF in _BUGGY_LAST_OCTETS:
                candidate += 1
                continue
            while pos < len(used) and used[pos] < candidate:
                pos += 1
            if pos < len(used) and used[pos] == candidate:
                candidate += 1
                continue
            self._cursor[(pool.name, index)] = candidate
            return _address(r.version, candidate)
        self._cursor[(pool.name, index)] = candidate
        return None


class _PoolIndex:
    """Which pool holds an address: binary search over the ranges sorted by first address.

    Config guarantees pools do not overlap. Should they (a caller outside config), the search
    could pick a later pool than the first match, so the index then falls back to a scan.
    """

    def __init__(self, pools: tuple[Pool, ...]) -> None:
        self._pools = pools
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._spans: dict[int, list[tuple[int, int, Pool]]] = {4: [], 6: []}
        spans = sorted(
            ((r.version, int(r.first), int(r.last), order) for order, p in enumerate(pools) for r in p.ranges)
        )
        self._overlapping = False
        for version, first, last, order in spans:
            previous = self._spans[version]
            if previous and first <= previous[-1][1]:
                self._overlapping = True
            previous.append((first, last, pools[order]))
            self._starts[version].append(first)

    def pool_of(self, ip: IPAddress) -> Pool | None:
        if self._overlapping:
            return next((p for p in self._pools if ip in p), None)
        value = int(ip)
        position = bisect.bisect_right(self._starts[ip.version], value) - 1
        if position < 0:
            return None
        first, last, pool = self._spans[ip.version][position]
        return pool if value <= last else None


def _address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def _count_congruent(first: int, last: int, residue: int, modulus: int) -> int:
    """How many n in [first, last] have n % modulus == residue."""
    return (last - residue) // modulus - (first - 1 - residue) // modulus


def _check_unique_keys(services: Sequence[Service]) -> None:
    duplicates = sorted(key for key, n in Counter(s.key for s in services).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate services: {', '.join(duplicates)}")
