"""Per-endpoint readiness: EndpointSlice conditions, externalTrafficPolicy Local, kube-proxy's fallback."""

from __future__ import annotations

import dataclasses
import ipaddress

from lbd.health.probe import ProbeSpec, ProbeVerdict
from lbd.model import Endpoint, HTTPGetAction, Model, Probe, Service, ServicePort, TrafficPolicy
from lbd.readiness import EndpointReason, ReadinessChange, assess, assess_model, changes

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


# ---- active probe verdicts ---------------------------------------------------------------------

PROBE = Probe(HTTPGetAction(8080, "/health"))
PASSED = ProbeVerdict(True, "probe passed")
FAILED = ProbeVerdict(False, "probe failed: HTTP 503", failing=True)


def probed(*endpoints: Endpoint) -> Service:
    return dataclasses.replace(svc(*endpoints), readiness_probe=PROBE)


def verdicts(**by_last: ProbeVerdict) -> dict[ProbeSpec, ProbeVerdict]:
    return {ProbeSpec(ipaddress.ip_address(f"198.18.0.{k[1:]}"), PROBE): v for k, v in by_last.items()}


def test_a_probed_endpoint_is_ready_only_when_its_probe_passes() -> None:
    readiness = assess(probed(ep(11), ep(12), ep(13)), "node-a", verdicts(e11=PASSED, e12=FAILED))
    assert [(s.reason, s.text) for s in readiness.endpoints] == [
        (EndpointReason.READY, "probe passed"),
        (EndpointReason.PROBE_FAILED, "probe failed: HTTP 503"),
        (EndpointReason.PROBE_PENDING, "no probe result yet"),  # no state yet: waiting for its first probe
    ]
    assert readiness.targets(HTTP) == (("198.18.0.11", 8080),)


def test_waiting_reasons_initial_delay_and_successes_so_far() -> None:
    delayed = dataclasses.replace(probed(ep(11)), readiness_probe=Probe(PROBE.action, initial_delay_seconds=5))
    assert assess(delayed, "n", {}).endpoints[0].text == "initial delay"
    halfway = ProbeVerdict(False, "1 of 2 successes")
    status = assess(probed(ep(11)), "n", verdicts(e11=halfway)).endpoints[0]
    assert (status.reason, status.text) == (EndpointReason.PROBE_PENDING, "1 of 2 successes")


def test_slice_not_ready_wins_over_a_passing_probe() -> None:
    status = assess(probed(ep(11, ready=False, serving=False)), "n", verdicts(e11=PASSED)).endpoints[0]
    assert (status.reason, status.text) == (EndpointReason.NOT_READY, "slice not ready")


def test_without_verdicts_nothing_runs_probes_and_the_config_decides() -> None:
    assert reasons(probed(ep(11))) == [EndpointReason.READY]  # `lbd check`


def test_terminating_fallback_only_while_no_endpoint_passes_its_probe() -> None:
    service = probed(ep(11), ep(12, ready=False, serving=True, terminating=True))
    # The ready endpoint fails its probe: the serving terminating one takes over...
    fallback = assess(service, "n", verdicts(e11=FAILED, e12=PASSED))
    assert [s.reason for s in fallback.endpoints] == [EndpointReason.PROBE_FAILED, EndpointReason.SERVING_TERMINATING]
    # ...until the ready one passes again.
    back = assess(service, "n", verdicts(e11=PASSED, e12=PASSED))
    assert [s.reason for s in back.endpoints] == [EndpointReason.READY, EndpointReason.TERMINATING]
    # A terminating endpoint that fails its own probe is no fallback.
    none = assess(service, "n", verdicts(e11=FAILED, e12=FAILED))
    assert none.targets(HTTP) == () and none.endpoints[1].reason is EndpointReason.TERMINATING


def test_changes_report_flips_and_new_reasons_not_appearances() -> None:
    before = {"default/web": assess(probed(ep(11), ep(12)), "n", verdicts(e11=PASSED, e12=PASSED))}
    after = {"default/web": assess(probed(ep(11), ep(12), ep(13)), "n", verdicts(e11=FAILED, e12=PASSED))}
    assert changes(before, after) == [ReadinessChange("default/web", "198.18.0.11", False, "probe failed: HTTP 503", True)]
    refused = ProbeVerdict(False, "connect refused", failing=True)
    later = {"default/web": assess(probed(ep(11), ep(12)), "n", verdicts(e11=refused, e12=PASSED))}
    assert [c.reason for c in changes(after, later)] == ["connect refused"]
    assert changes(later, later) == [] and changes({}, later) == []


def test_a_drained_endpoint_leaves_the_ready_set_and_the_rest_stays() -> None:
    from lbd.readiness import Drain

    service = svc(ep(11), ep(12), ep(13, port=7000))
    drains = [Drain("default/web", ep(12).address)]
    assert reasons_with(service, drains) == [EndpointReason.READY, EndpointReason.DRAINING, EndpointReason.READY]
    # A port narrows it to the endpoint on that target port.
    assert reasons_with(service, [Drain("default/web", ep(13).address, 7000)])[2] is EndpointReason.DRAINING
    assert reasons_with(service, [Drain("default/web", ep(13).address, 8080)])[2] is EndpointReason.READY
    assert reasons_with(service, [Drain("default/other", ep(12).address)])[1] is EndpointReason.READY


def test_draining_every_ready_endpoint_lets_serving_terminating_ones_take_over() -> None:
    from lbd.readiness import Drain

    service = svc(ep(11), ep(12, ready=False, serving=True, terminating=True))
    assert reasons_with(service, [Drain("default/web", ep(11).address)]) == [
        EndpointReason.DRAINING, EndpointReason.SERVING_TERMINATING,
    ]


def reasons_with(service: Service, drains: list) -> list[EndpointReason]:  # type: ignore[type-arg]
    return [s.reason for s in assess(service, "node-a", None, drains).endpoints]


def test_a_drained_endpoint_is_in_the_draining_targets_of_each_port_not_the_ready_ones() -> None:
    from lbd.readiness import Drain

    service = svc(ep(11), ep(12))
    verdicts = assess(service, "node-a", None, [Drain("default/web", ep(12).address)])
    for port in service.ports:
        target = port.target_port
        assert verdicts.targets(port) == (("198.18.0.11", target),)
        assert verdicts.draining(port) == frozenset({("198.18.0.12", target)})
