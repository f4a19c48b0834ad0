"""The ownership gate, without an event loop: the single-node gate owns every served VIP."""

from __future__ import annotations

import ipaddress

from lbd.model import Endpoint, Service, ServicePort, TrafficPolicy
from lbd.ownership import Ownership, OwnershipGate, OwnershipReason, SingleNodeGate
from lbd.readiness import assess

VIP = ipaddress.ip_address("198.18.1.200")


def test_single_node_owns_whatever_the_readiness() -> None:
    gate: OwnershipGate = SingleNodeGate()
    ready = Service("web", ports=(ServicePort("http", 80, 80),), endpoints=(Endpoint(ipaddress.ip_address("198.18.1.11")),))
    nothing_ready = Service("db", ports=(ServicePort("pg", 5432, 5432),),
                            endpoints=(Endpoint(ipaddress.ip_address("198.18.1.12"), ready=False, serving=False),))
    elsewhere = Service("local", ports=(ServicePort("http", 81, 80),), external_traffic_policy=TrafficPolicy.LOCAL,
                        endpoints=(Endpoint(ipaddress.ip_address("198.18.1.13"), node_name="node-b"),))
    for service in (ready, nothing_ready, elsewhere):
        readiness = {service.key: assess(service, "node-a")}
        # With no other node to take over, keeping the VIP turns "no endpoint" into a fast
        # refusal for clients rather than an ARP timeout.
        assert gate.decide(VIP, [service], readiness) == Ownership(True, OwnershipReason.SINGLE_NODE)
    assert gate.decide(VIP, [], {}).owner
