"""Per-endpoint readiness: EndpointSlice conditions, externalTrafficPolicy Local, kube-proxy's fallback."""

from __future__ import annotations

import ipaddress

from lbd.model import Endpoint, Model, Service, ServicePort, TrafficPolicy
from lbd.readiness import EndpointReason, assess, assess_model

HTTP = ServicePort("http", 80, 8080)
METRICS = ServicePort("metrics", 9100, 9100)


def ep(last: int, **kwargs: object) -> Endpoint:
    return Endpoint(ipaddress.ip_address(f"198.18.0.{last}"), **kwargs)  # type: ignore[arg-type]


def svc(*endpoints: Endpoint, policy: TrafficPolicy = TrafficPolicy.CLUSTER) -> Service:
    return Service("web", ports=(HTTP, METRICS), endpoints=endpoints, external_traffic_policy=policy)


def reasons(service: Service, node: str = "node-a") -> list[EndpointReason]:
    return [s.reason for s in assess(service, node).endpoints]


def test_ready_endpoints_are_the_set_in_configured_order() -> None:
    readiness = assess(svc(ep(12), ep(11), ep(13, ready=False, serving=False)), "node-a")
    assert readiness.targets(HTTP) == (("198.18.0.12", 8080), ("198.18.0.11", 8080))
    assert readiness.ready_count == 2
    assert [s.ready for s in readiness.endpoints] == [True, True, False]
    assert readiness.endpoints[2].reason is EndpointReason.NOT_READY


def test_each_port_gets_its_own_targets_and_endpoint_ports_override() -> None:
    readiness = assess(svc(ep(11), ep(12, port=7000)), "node-a")
    assert readiness.targets(HTTP) == (("198.18.0.11", 8080), ("198.18.0.12", 7000))
    assert readiness.targets(METRICS) == (("198.18.0.11", 9100), ("198.18.0.12", 7000))


def test_terminating_endpoints_sit_out_while_any_endpoint_is_ready() -> None:
    service = svc(ep(11), ep(12, ready=False, serving=True, terminating=True))
    assert reasons(service) == [EndpointReason.READY, EndpointReason.TERMINATING]


def test_serving_terminating_endpoints_take_over_when_nothing_is_ready() -> None:
    # kube-proxy's fallback: a rolling update that left only terminating pods still serves.
    service = svc(
        ep(11, ready=False, serving=False),
        ep(12, ready=False, serving=True, terminating=True),
        ep(13, ready=False, serving=False, terminating=True),
    )
    assert reasons(service) == [
        EndpointReason.NOT_READY,
        EndpointReason.SERVING_TERMINATING,
        EndpointReason.TERMINATING,
    ]
    assert assess(service, "node-a").targets(HTTP) == (("198.18.0.12", 8080),)


def test_ready_but_terminating_counts_as_terminating() -> None:
    service = svc(ep(11, ready=True, terminating=True), ep(12))
    assert reasons(service) == [EndpointReason.TERMINATING, EndpointReason.READY]


def test_local_policy_keeps_this_nodes_endpoints_and_unknown_nodes() -> None:
    service = svc(
        ep(11, node_name="node-a"), ep(12, node_name="node-b"), ep(13), policy=TrafficPolicy.LOCAL
    )
    assert reasons(service) == [EndpointReason.READY, EndpointReason.OTHER_NODE, EndpointReason.READY]
    # Cluster policy ignores nodes.
    assert reasons(svc(*service.endpoints)) == [EndpointReason.READY] * 3


def test_local_fallback_looks_at_local_endpoints_only() -> None:
    service = svc(
        ep(11, node_name="node-b"),  # ready, but elsewhere: does not stop the local fallback
        ep(12, node_name="node-a", ready=False, serving=True, terminating=True),
        policy=TrafficPolicy.LOCAL,
    )
    assert reasons(service) == [EndpointReason.OTHER_NODE, EndpointReason.SERVING_TERMINATING]


def test_duplicate_targets_collapse() -> None:
    assert assess(svc(ep(11), ep(11)), "n").targets(HTTP) == (("198.18.0.11", 8080),)


def test_assess_model_covers_every_service() -> None:
    model = Model(services=(svc(ep(11)), Service("db", ports=(HTTP,))))
    result = assess_model(model, "node-a")
    assert set(result) == {"default/web", "default/db"}
    assert result["default/db"].targets(HTTP) == ()
