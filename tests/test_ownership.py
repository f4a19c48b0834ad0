"""The ownership gate, without an event loop: the single-node gate owns every served VIP,
except a Local one with no ready endpoint on this node."""

from __future__ import annotations

import ipaddress

from lbd.model import Endpoint, Service, ServicePort, TrafficPolicy
from lbd.ownership import Ownership, OwnershipGate, OwnershipReason, SingleNodeGate
from lbd.readiness import assess

VIP = ipaddress.ip_address("198.18.1.200")
OWNED = Ownership(True, OwnershipReason.SINGLE_NODE, "node-a")


def local(name: str, *endpoints: Endpoint) -> Service:
    return Service(name, ports=(ServicePort("http", 81, 80),), external_traffic_policy=TrafficPolicy.LOCAL,
                   endpoints=endpoints)


def test_single_node_owns_whatever_the_readiness_of_a_cluster_service() -> None:
    gate: OwnershipGate = SingleNodeGate("node-a")
    ready = Service("web", ports=(ServicePort("http", 80, 80),), endpoints=(Endpoint(ipaddress.ip_address("198.18.1.11")),))
    nothing_ready = Service("db", ports=(ServicePort("pg", 5432, 5432),),
                            endpoints=(Endpoint(ipaddress.ip_address("198.18.1.12"), ready=False, serving=False),))
    for service in (ready, nothing_ready):
        readiness = {service.key: assess(service, "node-a")}
        # With no other node to take over, keeping the VIP turns "no endpoint" into a fast
        # refusal for clients rather than an ARP timeout.
        assert gate.decide(VIP, [service], readiness) == OWNED
    assert gate.decide(VIP, [], {}).owner


def test_a_local_service_is_held_only_with_a_ready_endpoint_on_this_node() -> None:
    gate = SingleNodeGate("node-a")
    here = Endpoint(ipaddress.ip_address("198.18.1.13"), node_name="node-a")
    elsewhere = Endpoint(ipaddress.ip_address("198.18.1.14"), node_name="node-b")
    not_ready_here = Endpoint(ipaddress.ip_address("198.18.1.15"), node_name="node-a", ready=False, serving=False)
    for endpoints, owner in [((here,), True), ((elsewhere, here), True), ((elsewhere,), False),
                             ((not_ready_here, elsewhere), False), ((), False)]:
        service = local("web", *endpoints)
        decided = gate.decide(VIP, [service], {service.key: assess(service, "node-a")})
        assert decided.owner is owner, endpoints
        if not owner:
            assert decided == Ownership(False, OwnershipReason.NO_LOCAL_ENDPOINT)
            assert "no ready endpoint on this node" in decided.reason.text


def test_a_vip_shared_with_a_cluster_service_stays_held() -> None:
    gate = SingleNodeGate("node-a")
    elsewhere = local("local", Endpoint(ipaddress.ip_address("198.18.1.14"), node_name="node-b"))
    cluster = Service("web", ports=(ServicePort("http", 80, 80),), endpoints=())
    readiness = {s.key: assess(s, "node-a") for s in (elsewhere, cluster)}
    assert gate.decide(VIP, [elsewhere, cluster], readiness) == OWNED
