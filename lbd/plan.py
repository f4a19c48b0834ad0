"""The reload diff as data: `plan(running, desired) -> Plan` (pure).

*Desired* is the whole wanted state: the model, the allocation, per-endpoint readiness, the
ownership of each VIP, this node, and the services that cannot be served right now (a port in
use, no interface for the VIP). *Running* is what the daemon runs. The Plan lists what to do to
go from one to the other; the daemon only executes plans (lbd.reconcile), so every decision
here is tested without an event loop, a socket or a clock.

Listeners are keyed by (protocol, VIP, port). What a listener does is its ListenerSpec: the
service it serves, its balancer policy, its relay options and its ready targets. A spec that
differs only in targets, policy or options is an update in place (established connections
stay); a listener whose key or service changed is closed and another opened.

Invariants:
- plan(running, desired) is empty when running already is what desired describes;
- a key is in at most one of close/open/update, except close + open of the same key when the
  service behind it changed (executed in that order);
- release and revoke never name a VIP that is acquired in the same plan;
- acquire and announce name only VIPs this node owns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from lbd.allocator import Allocation
from lbd.balancer import Target
from lbd.health.probe import ProbeSpec
from lbd.model import IPAddress, Model, Probe, Protocol, Service, SessionAffinity
from lbd.ownership import Ownership
from lbd.readiness import Readiness, ServiceReadiness
from lbd.relay import RelayOptions, Tuning, UdpOptions


class ListenerKey(NamedTuple):
    """Where a listener listens."""

    protocol: Protocol
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        host = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        return f"{self.protocol} {host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BalancerSpec:
    """The balancing policy of a service port; a change starts a fresh affinity table."""

    affinity: SessionAffinity
    timeout_seconds: int


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """Everything one listener needs: what it serves, how it balances, where it sends."""

    key: ListenerKey
    service: str
    port_name: str
    balancer: BalancerSpec
    options: RelayOptions
    targets: tuple[Target, ...]
    tuning: Tuning | None = None  # the protocol's own settings (UDP: flow timeout and cap)
    probe: Probe | None = None  # the service's readinessProbe: a failed connect then counts as a failed probe
    draining: frozenset[Target] = frozenset()  # `lbd drain`: no new picks, established flows stay


@dataclass(frozen=True, slots=True)
class ListenerChange:
    """An update in place of a running listener; the flags say what changed."""

    spec: ListenerSpec
    targets: bool = False
    balancer: bool = False
    options: bool = False
    renamed: bool = False  # the port's name (its log and metric label) changed


@dataclass(frozen=True, slots=True)
class VipClaim:
    """A VIP this node holds and the services using it (counted per service, as MetalLB does)."""

    ip: IPAddress
    services: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Desired:
    """The whole wanted state; `desire()` builds it and derives listeners, VIPs and probes."""

    model: Model
    allocation: Allocation
    readiness: Readiness
    ownership: Mapping[IPAddress, Ownership]
    node: str
    relay: RelayOptions  # daemon-wide defaults (connect timeout); services add their idle timeout
    protocols: frozenset[Protocol]  # what this build can relay
    blocked: Mapping[str, str] = field(default_factory=dict)  # service key -> why it is not served now
    # Derived by desire():
    listeners: Mapping[ListenerKey, ListenerSpec] = field(default_factory=dict)
    vips: Mapping[IPAddress, tuple[str, ...]] = field(default_factory=dict)
    probes: frozenset[ProbeSpec] = frozenset()

    def owns(self, ip: IPAddress) -> bool:
        ownership = self.ownership.get(ip)
        return ownership is not None and ownership.owner


@dataclass(frozen=True, slots=True)
class Running:
    """What the daemon runs now, as data (built by the executor after every plan)."""

    services: Mapping[str, Service] = field(default_factory=dict)  # the applied model's services
    listeners: Mapping[ListenerKey, ListenerSpec] = field(default_factory=dict)
    vips: Mapping[IPAddress, tuple[str, ...]] = field(default_factory=dict)  # held, not being released
    announced: frozenset[IPAddress] = frozenset()
    probes: frozenset[ProbeSpec] = frozenset()


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do, in execution order: close, open, update, revoke, release, acquire, announce."""

    close: tuple[ListenerKey, ...] = ()
    open: tuple[ListenerSpec, ...] = ()
    update: tuple[ListenerChange, ...] = ()
    revoke: tuple[IPAddress, ...] = ()  # not owner any more: withdraw and unbind now
    release: tuple[IPAddress, ...] = ()  # no longer used: withdraw, drain, unbind
    acquire: tuple[VipClaim, ...] = ()  # bind (or just recount the services of a held VIP)
    announce: tuple[IPAddress, ...] = ()
    probes_start: tuple[ProbeSpec, ...] = ()
    probes_stop: tuple[ProbeSpec, ...] = ()
    # The service diff, for the answer to a reload.
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to execute (the service diff may still say what a reload found)."""
        return not (
            self.close or self.open or self.update or self.revoke or self.release or self.acquire
            or self.announce or self.probes_start or self.probes_stop
        )

    def summary(self) -> str:
        """What a reload answers: `added 1, removed 1, changed 2, unchanged 9`."""
        return (
            f"added {len(self.added)}, removed {len(self.removed)}, "
            f"changed {len(self.changed)}, unchanged {len(self.unchanged)}"
        )


def desire(
    model: Model,
    allocation: Allocation,
    readiness: Readiness,
    ownership: Mapping[IPAddress, Ownership],
    *,
    node: str,
    relay: RelayOptions,
    protocols: Iterable[Protocol],
    blocked: Mapping[str, str] | None = None,
) -> Desired:
    """Build the desired state and derive what it implies: listeners, VIPs, probes."""
    blocked = dict(blocked or {})
    relayable = frozenset(protocols)
    listeners: dict[ListenerKey, ListenerSpec] = {}
    vips: dict[IPAddress, list[str]] = {}
    probes: set[ProbeSpec] = set()
    for service in model.services:
        ip = allocation.ip_of(service.key) if service.exposed else None
        if ip is None or service.key in blocked:
            continue
        vips.setdefault(ip, []).append(service.key)
        verdicts = readiness.get(service.key, ServiceReadiness())
        options = dataclasses.replace(relay, idle_timeout=service.idle_timeout_seconds)
        balancer = BalancerSpec(service.session_affinity, service.affinity_timeout_seconds)
        for port in service.ports:
            if port.protocol not in relayable:
                continue
            key = ListenerKey(port.protocol, ip, port.port)
            tuning = (
                UdpOptions(service.udp_flow_timeout_seconds, service.udp_max_flows)
                if port.protocol is Protocol.UDP
                else None
            )
            listeners[key] = ListenerSpec(
                key, service.key, port.name or str(port.port), balancer, options, verdicts.targets(port), tuning,
                service.readiness_probe, verdicts.draining(port),
            )
        if service.readiness_probe is not None:
            probes.update(ProbeSpec(ep.address, service.readiness_probe) for ep in service.endpoints)
    return Desired(
        model=model,
        allocation=allocation,
        readiness=readiness,
        ownership=dict(ownership),
        node=node,
        relay=relay,
        protocols=relayable,
        blocked=blocked,
        listeners=listeners,
        vips={ip: tuple(sorted(keys)) for ip, keys in vips.items()},
        probes=frozenset(probes),
    )


def plan(running: Running, desired: Desired) -> Plan:
    """The steps that take `running` to `desired`."""
    close: list[ListenerKey] = []
    opening: list[ListenerSpec] = []
    update: list[ListenerChange] = []
    for key, old in running.listeners.items():
        new = desired.listeners.get(key)
        if new is None or _reopens(old, new):
            close.append(key)
    for key, new in desired.listeners.items():
        old = running.listeners.get(key)
        if old is None or _reopens(old, new):
            opening.append(new)
        elif old != new:
            update.append(
                ListenerChange(
                    new,
                    targets=old.targets != new.targets or old.draining != new.draining,
                    balancer=old.balancer != new.balancer,
                    options=old.options != new.options or old.tuning != new.tuning,
                    renamed=old.port_name != new.port_name,
                )
            )

    revoke = [ip for ip in running.vips if ip in desired.vips and not desired.owns(ip)]
    release = [ip for ip in running.vips if ip not in desired.vips]
    acquire = [
        VipClaim(ip, services)
        for ip, services in desired.vips.items()
        if desired.owns(ip) and running.vips.get(ip) != services
    ]
    announce = [ip for ip in desired.vips if desired.owns(ip) and ip not in running.announced]

    old_services = running.services
    new_services = {s.key: s for s in desired.model.services}
    return Plan(
        close=tuple(sorted(close, key=_key_order)),
        open=tuple(sorted(opening, key=lambda s: _key_order(s.key))),
        update=tuple(sorted(update, key=lambda c: _key_order(c.spec.key))),
        revoke=tuple(sorted(revoke, key=_ip_order)),
        release=tuple(sorted(release, key=_ip_order)),
        acquire=tuple(sorted(acquire, key=lambda c: _ip_order(c.ip))),
        announce=tuple(sorted(announce, key=_ip_order)),
        probes_start=tuple(sorted(desired.probes - running.probes, key=_probe_order)),
        probes_stop=tuple(sorted(running.probes - desired.probes, key=_probe_order)),
        added=tuple(sorted(new_services.keys() - old_services.keys())),
        removed=tuple(sorted(old_services.keys() - new_services.keys())),
        changed=tuple(sorted(k for k in new_services.keys() & old_services.keys() if new_services[k] != old_services[k])),
        unchanged=tuple(sorted(k for k in new_services.keys() & old_services.keys() if new_services[k] == old_services[k])),
    )


def _reopens(old: ListenerSpec, new: ListenerSpec) -> bool:
    """Another service on the same key: a new listener (the old one's connections drain)."""
    return old.service != new.service


def _ip_order(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))


def _key_order(key: ListenerKey) -> tuple[str, int, int, int]:
    return (str(key.protocol), key.ip.version, int(key.ip), key.port)


def _probe_order(spec: ProbeSpec) -> tuple[int, int, str]:
    return (spec.address.version, int(spec.address), repr(spec.probe))
