"""The reload diff as data: plan(running, desired), driven with no event loop, socket or clock."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence

from lbd.allocator import allocate
from lbd.model import (
    AddressRange,
    Endpoint,
    HTTPGetAction,
    IPAddress,
    Model,
    Pool,
    Probe,
    Protocol,
    Service,
    ServicePort,
    SessionAffinity,
)
from lbd.ownership import Ownership, OwnershipReason, SingleNodeGate
from lbd.plan import Desired, ListenerKey, Plan, Running, desire, plan
from lbd.readiness import Readiness, assess_model
from lbd.relay import RelayOptions

POOL = Pool("lab", (AddressRange(ipaddress.ip_address("198.18.1.200"), ipaddress.ip_address("198.18.1.220")),))
VIP0, VIP1 = ipaddress.ip_address("198.18.1.200"), ipaddress.ip_address("198.18.1.201")
RELAY = RelayOptions(connect_timeout=2.0)


def endpoints(*lasts: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(ipaddress.ip_address(f"198.18.1.{n}")) for n in lasts)


WEB = Service("web", ports=(ServicePort("http", 80, 8080),), endpoints=endpoints(11, 12))
DNS = Service(
    "dns",
    ports=(ServicePort("dns", 53, 53, Protocol.UDP), ServicePort("dns-tcp", 53, 53)),
    endpoints=endpoints(13),
)


class DenyGate:
    """A gate that owns nothing (what a cluster gate says on a node that lost a VIP)."""

    def decide(self, vip: IPAddress, services: Sequence[Service], readiness: Readiness) -> Ownership:
        return Ownership(False, OwnershipReason.SINGLE_NODE)

    def decided(self) -> None:
        pass


def wanted(
    *services: Service,
    gate: object = SingleNodeGate("node-a"),
    blocked: Mapping[str, str] | None = None,
    protocols: tuple[Protocol, ...] = (Protocol.TCP,),
    previous: Desired | None = None,
) -> Desired:
    model = Model(pools=(POOL,), services=tuple(sorted(services, key=lambda s: s.key)))
    allocation = allocate(model.pools, model.services, previous.allocation.sticky() if previous else {})
    readiness = assess_model(model, "node-a")
    ownership = {
        ip: gate.decide(ip, [s for s in model.services if allocation.ip_of(s.key) == ip], readiness)  # type: ignore[attr-defined]
        for ip in {a.ip for a in allocation.assignments.values() if a.ip is not None}
    }
    return desire(
        model, allocation, readiness, ownership, node="node-a", relay=RELAY, protocols=protocols, blocked=blocked
    )


def running_after(desired: Desired) -> Running:
    """What an executor that carried out every step successfully would run."""
    return Running(
        services={s.key: s for s in desired.model.services},
        listeners=dict(desired.listeners),
        vips={ip: services for ip, services in desired.vips.items() if desired.owns(ip)},
        announced=frozenset(ip for ip in desired.vips if desired.owns(ip)),
        probes=desired.probes,
    )


def test_from_nothing_everything_is_opened_acquired_and_announced() -> None:
    desired = wanted(WEB)
    p = plan(Running(), desired)
    assert [s.key for s in p.open] == [ListenerKey(Protocol.TCP, VIP0, 80)]
    assert p.open[0].targets == (("198.18.1.11", 8080), ("198.18.1.12", 8080))
    assert [(c.ip, c.services) for c in p.acquire] == [(VIP0, ("default/web",))]
    assert p.announce == (VIP0,)
    assert p.added == ("default/web",) and p.summary() == "added 1, removed 0, changed 0, unchanged 0"


def test_unchanged_gives_an_empty_plan() -> None:
    desired = wanted(WEB, DNS)
    p = plan(running_after(desired), wanted(WEB, DNS))
    assert p.empty
    assert p == Plan(unchanged=("default/dns", "default/web"))
    assert p.summary() == "added 0, removed 0, changed 0, unchanged 2"


def test_endpoint_change_is_an_update_of_targets_only() -> None:
    running = running_after(wanted(WEB))
    changed = dataclasses.replace(WEB, endpoints=endpoints(11, 14))
    p = plan(running, wanted(changed))
    assert not (p.open or p.close or p.acquire or p.release or p.revoke or p.announce)
    (update,) = p.update
    assert (update.targets, update.balancer, update.options) == (True, False, False)
    assert update.spec.targets == (("198.18.1.11", 8080), ("198.18.1.14", 8080))
    assert p.changed == ("default/web",)


def test_not_ready_endpoint_leaves_the_targets() -> None:
    running = running_after(wanted(WEB))
    eps = (WEB.endpoints[0], dataclasses.replace(WEB.endpoints[1], ready=False, serving=False))
    (update,) = plan(running, wanted(dataclasses.replace(WEB, endpoints=eps))).update
    assert update.spec.targets == (("198.18.1.11", 8080),)


def test_affinity_change_swaps_the_balancer_and_keeps_the_listener() -> None:
    running = running_after(wanted(WEB))
    sticky = dataclasses.replace(WEB, session_affinity=SessionAffinity.CLIENT_IP)
    p = plan(running, wanted(sticky))
    assert not (p.open or p.close)
    (update,) = p.update
    assert (update.targets, update.balancer, update.options) == (False, True, False)
    assert update.spec.balancer.affinity is SessionAffinity.CLIENT_IP


def test_idle_timeout_change_updates_options() -> None:
    running = running_after(wanted(WEB))
    (update,) = plan(running, wanted(dataclasses.replace(WEB, idle_timeout_seconds=300.0))).update
    assert (update.targets, update.balancer, update.options) == (False, False, True)
    assert update.spec.options == RelayOptions(connect_timeout=2.0, idle_timeout=300.0)


def test_removed_service_closes_and_releases() -> None:
    before = wanted(WEB, DNS)
    dns_ip = before.allocation.ip_of("default/dns")
    assert dns_ip is not None
    p = plan(running_after(before), wanted(WEB, previous=before))  # sticky: web keeps its VIP
    assert p.close == (ListenerKey(Protocol.TCP, dns_ip, 53),)
    assert p.release == (dns_ip,)
    assert p.removed == ("default/dns",) and p.unchanged == ("default/web",)
    assert not (p.open or p.update or p.acquire or p.revoke)


def test_port_added_to_a_service_opens_only_that_listener() -> None:
    running = running_after(wanted(WEB))
    more = dataclasses.replace(WEB, ports=(*WEB.ports, ServicePort("https", 443, 8443)))
    p = plan(running, wanted(more))
    assert [s.key.port for s in p.open] == [443]
    assert not (p.close or p.update or p.acquire or p.release)


def test_renamed_port_is_renamed_in_place() -> None:
    running = running_after(wanted(WEB))
    renamed = dataclasses.replace(WEB, ports=(ServicePort("web", 80, 8080),))
    p = plan(running, wanted(renamed))
    assert not (p.open or p.close)
    (update,) = p.update
    assert update.renamed and not (update.targets or update.balancer or update.options)
    assert update.spec.port_name == "web"


def test_vip_moves_when_the_service_asks_for_another_ip() -> None:
    running = running_after(wanted(WEB))
    moved = dataclasses.replace(WEB, requested_ips=(VIP1,))
    p = plan(running, wanted(moved))
    assert p.close == (ListenerKey(Protocol.TCP, VIP0, 80),)
    assert [s.key for s in p.open] == [ListenerKey(Protocol.TCP, VIP1, 80)]
    assert p.release == (VIP0,)
    assert [c.ip for c in p.acquire] == [VIP1] and p.announce == (VIP1,)


def test_unrelayable_protocols_get_no_listener_but_the_vip() -> None:
    desired = wanted(DNS)
    assert list(desired.listeners) == [ListenerKey(Protocol.TCP, VIP0, 53)]
    assert list(desired.vips) == [VIP0]
    both = wanted(DNS, protocols=(Protocol.TCP, Protocol.UDP))
    assert sorted(k.protocol for k in both.listeners) == [Protocol.TCP, Protocol.UDP]


def test_shared_vip_is_counted_per_service() -> None:
    a = dataclasses.replace(WEB, allow_shared_ip="k")
    b = Service("api", ports=(ServicePort("http", 8000, 8000),), endpoints=endpoints(11), allow_shared_ip="k")
    desired = wanted(a, b)
    assert desired.vips == {VIP0: ("default/api", "default/web")}
    # One of the two goes: the VIP stays, its count changes, nothing is released.
    p = plan(running_after(desired), wanted(a))
    assert [(c.ip, c.services) for c in p.acquire] == [(VIP0, ("default/web",))]
    assert not p.release and p.close == (ListenerKey(Protocol.TCP, VIP0, 8000),)


def test_blocked_service_is_not_served_and_frees_its_vip() -> None:
    running = running_after(wanted(WEB))
    p = plan(running, wanted(WEB, blocked={"default/web": "port in use"}))
    assert p.close == (ListenerKey(Protocol.TCP, VIP0, 80),) and p.release == (VIP0,)
    assert p.unchanged == ("default/web",)  # the model did not change; serving it did


def test_lost_ownership_revokes_but_keeps_listeners() -> None:
    running = running_after(wanted(WEB))
    p = plan(running, wanted(WEB, gate=DenyGate()))
    assert p.revoke == (VIP0,)
    assert not (p.close or p.open or p.release or p.acquire or p.announce)


def test_non_owner_opens_listeners_but_never_binds() -> None:
    p = plan(Running(), wanted(WEB, gate=DenyGate()))
    assert [s.key for s in p.open] == [ListenerKey(Protocol.TCP, VIP0, 80)]
    assert not (p.acquire or p.announce or p.revoke)


def test_unannounced_vip_is_announced_again() -> None:
    desired = wanted(WEB)
    running = dataclasses.replace(running_after(desired), announced=frozenset())
    p = plan(running, desired)
    assert p.announce == (VIP0,) and not p.acquire


def test_probes_start_and_stop_once_per_endpoint_and_probe() -> None:
    probe = Probe(HTTPGetAction(8080, "/healthz"))
    probed = dataclasses.replace(WEB, readiness_probe=probe)
    twin = dataclasses.replace(probed, name="web-twin", ports=(ServicePort("http", 81, 8080),))
    desired = wanted(probed, twin)  # same endpoints, same probe: one probe each
    assert {(str(p.address), p.probe) for p in desired.probes} == {("198.18.1.11", probe), ("198.18.1.12", probe)}
    p = plan(Running(), desired)
    assert len(p.probes_start) == 2 and not p.probes_stop
    p = plan(running_after(desired), wanted(WEB))
    assert len(p.probes_stop) == 2 and not p.probes_start
