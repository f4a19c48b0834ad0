"""What `lbd get services` shows of probes: each endpoint's reason in words, its last probe, the probe."""

from __future__ import annotations

import ipaddress

from lbd.allocator import Assignment
from lbd.health.probe import Outcome, ProbeResult, ProbeSpec, ProbeVerdict
from lbd.model import Endpoint, HTTPGetAction, Probe, Service, ServicePort
from lbd.readiness import assess
from lbd.status import ServiceCondition, ServiceState, service_status
from lbd.views import services_table

PROBE = Probe(HTTPGetAction(8080, "/health"), period_seconds=2)
A, B = ipaddress.ip_address("198.18.0.11"), ipaddress.ip_address("198.18.0.12")
WEB = Service("web", ports=(ServicePort("http", 80, 8080),), endpoints=(Endpoint(A), Endpoint(B)), readiness_probe=PROBE)


def test_endpoints_show_reason_code_and_last_probe_and_the_table_counts_ready() -> None:
    verdicts = {ProbeSpec(A, PROBE): ProbeVerdict(True, "probe passed"),
                ProbeSpec(B, PROBE): ProbeVerdict(False, "probe failed: HTTP 503", failing=True)}
    results = {ProbeSpec(B, PROBE): ProbeResult(Outcome.FAILURE, "HTTP 503", 0.0042, 10.0)}
    condition = ServiceCondition(ServiceState.SERVING, ip=ipaddress.ip_address("198.18.0.200"))
    assignment = Assignment("default/web", ipaddress.ip_address("198.18.0.200"), "lab", None)
    row = service_status(WEB, assignment, condition, assess(WEB, "n", verdicts), probe_results=results)
    first, second = row["endpoints"]
    assert (first["ready"], first["reason"], first["code"], first["lastProbe"]) == (True, "probe passed", "Ready", None)
    assert (second["ready"], second["reason"], second["code"]) == (False, "probe failed: HTTP 503", "ProbeFailed")
    assert second["lastProbe"] == {"result": "failure", "detail": "HTTP 503", "latencyMs": 4.2}
    assert row["readinessProbe"].startswith("http-get http://:8080/health")
    table = services_table([row], now=0.0)
    assert table.splitlines()[1].split()[4] == "1/2"  # ENDPOINTS ready/total
    assert "default/web: readiness http-get http://:8080/health delay=0s timeout=1s period=2s" in table


def test_readiness_report_logs_changes_as_events_and_keeps_the_gauge_to_live_endpoints() -> None:
    from lbd import metrics
    from lbd.events import EventLog
    from lbd.health.report import ReadinessReport

    def gauge(address: str) -> float | None:
        return metrics.REGISTRY.get_sample_value("lbd_endpoint_ready", {"service": "default/web", "endpoint": address})

    events = EventLog(clock=lambda: 1.0)
    report = ReadinessReport(events)
    ready = {ProbeSpec(a, PROBE): ProbeVerdict(True, "probe passed") for a in (A, B)}
    first = {"default/web": assess(WEB, "n", ready)}
    report.publish({}, first, {"default/web"})
    assert (gauge(str(A)), gauge(str(B))) == (1.0, 1.0) and len(events) == 0  # appearing is no change
    failing = dict(ready) | {ProbeSpec(B, PROBE): ProbeVerdict(False, "connect refused", failing=True)}
    second = {"default/web": assess(WEB, "n", failing)}
    report.publish(first, second, {"default/web"})
    assert gauge(str(B)) == 0.0
    (event,) = events.recent("default/web")
    assert (event.reason, event.subject, event.message) == ("EndpointNotReady", str(B), "connect refused")
    # B leaves the service; then the service is no longer served at all.
    only_a = Service("web", ports=WEB.ports, endpoints=(Endpoint(A),), readiness_probe=PROBE)
    third = {"default/web": assess(only_a, "n", failing)}
    report.publish(second, third, {"default/web"})
    assert gauge(str(B)) is None and gauge(str(A)) == 1.0
    report.publish(third, {}, set())
    assert gauge(str(A)) is None
