"""What the exposition says, to the byte where MetalLB's dashboards care: MetalLB's counters
under their exact names (no `_total`), no `_created` series, the announced gauge and the config
gauges; and the per-endpoint books: flushed as deltas, renamed, dropped with their endpoint."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from lbd import metrics
from lbd.relay.books import EndpointBooks

LAYER2 = ("metallb_layer2_requests_received", "metallb_layer2_responses_sent", "metallb_layer2_gratuitous_sent")


def test_metallb_layer2_counters_keep_their_exact_names() -> None:
    metrics.requests_received_total.labels("198.18.0.9").inc(3)
    text = metrics.exposition().decode()
    for name in LAYER2:
        assert f"# TYPE {name} counter\n" in text
        assert re.search(rf"^# HELP {name} ", text, re.M)
        assert f"{name}_total" not in text
    assert 'metallb_layer2_requests_received{ip="198.18.0.9"} 3.0\n' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in LAYER2:
        assert families[name].type == "counter"
    # prometheus-client's parser reads a Go-style counter back with `_total` on its samples
    # (parser.py build_metric); Prometheus keeps the names as sent, checked above on the text.
    assert [s.name for s in families["metallb_layer2_requests_received"].samples if s.labels["ip"] == "198.18.0.9"] \
        == ["metallb_layer2_requests_received_total"]
    metrics.forget_vip("198.18.0.9")


def test_no_created_series_anywhere() -> None:
    metrics.probe_duration.labels("tcp").observe(0.01)
    metrics.probes_total.labels("tcp", "success").inc()
    text = metrics.exposition().decode()
    assert "lbd_probes_total{" in text and "lbd_probe_duration_seconds_bucket{" in text
    assert "_created" not in text


def test_a_plain_counter_is_unchanged_by_the_header_fix() -> None:
    registry = CollectorRegistry()
    Counter("lbd_x_total", "x", registry=registry).inc()
    assert metrics.exposition(registry) == b"# HELP lbd_x_total x\n# TYPE lbd_x_total counter\nlbd_x_total 1.0\n"


def test_speaker_announced_follows_the_served_set() -> None:
    def exported() -> set[tuple[str, ...]]:
        return set(metrics.speaker_announced._metrics)

    metrics.set_announced("node-a", [("default/web", "198.18.0.1"), ("default/dns", "198.18.0.1")])
    assert exported() == {("default/web", "layer2", "node-a", "198.18.0.1"),
                          ("default/dns", "layer2", "node-a", "198.18.0.1")}
    assert metrics.REGISTRY.get_sample_value(
        "metallb_speaker_announced",
        {"service": "default/web", "protocol": "layer2", "node": "node-a", "ip": "198.18.0.1"}) == 1
    metrics.set_announced("node-a", [("default/web", "198.18.0.2")])
    assert exported() == {("default/web", "layer2", "node-a", "198.18.0.2")}
    metrics.set_announced("node-a", [])
    assert exported() == set()


def test_config_gauges() -> None:
    def value(name: str, **labels: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, labels)

    failures = value("lbd_config_reloads_total", result="failure") or 0
    metrics.config_applied(True, now=lambda: 1000.0)
    metrics.config_applied(False, now=lambda: 2000.0)
    assert value("lbd_config_stale_bool") == 1
    assert value("lbd_config_reloads_total", result="failure") == failures + 1
    assert value("lbd_config_last_reload_success_timestamp_seconds") == 1000.0  # only success moves it
    metrics.config_applied(True, now=lambda: 3000.0)
    assert value("lbd_config_stale_bool") == 0
    assert value("lbd_config_last_reload_success_timestamp_seconds") == 3000.0


# ---- books ---------------------------------------------------------------------------------------

def books(registry: CollectorRegistry) -> EndpointBooks:
    labels = ["service", "port", "endpoint"]
    families = (Gauge("active", "a", labels, registry=registry), Counter("opened", "o", labels, registry=registry),
                Counter("bytes", "b", [*labels, "direction"], registry=registry))
    return EndpointBooks(families, "default/web", "http")


def values(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    return {(s.name, s.labels["port"], s.labels.get("direction", "")): s.value
            for f in registry.collect() for s in f.samples if not s.name.endswith("_created")}


def test_books_flush_deltas_and_drop_an_idle_endpoint_that_left() -> None:
    registry = CollectorRegistry()
    b = books(registry)
    a, gone = ("10.0.0.1", 80), ("10.0.0.2", 80)
    for target in (a, gone):
        b.of(target).opened += 1
    b.of(a).bytes_up += 100
    ready = {a, gone}
    assert b.flush(ready.__contains__) is True
    assert values(registry)[("active", "http", "")] == 1  # per endpoint; two series
    assert b.flush(ready.__contains__) is False  # nothing changed, nothing pushed
    c = b.of(a)
    c.closed += 1
    c.bytes_down += 7
    b.flush(ready.__contains__)
    series = {(s.name, s.labels["endpoint"], s.labels.get("direction")): s.value
              for f in registry.collect() for s in f.samples if not s.name.endswith("_created")}
    assert series[("active", "10.0.0.1:80", None)] == 0
    assert series[("opened_total", "10.0.0.1:80", None)] == 1
    assert series[("bytes_total", "10.0.0.1:80", "client_to_endpoint")] == 100
    assert series[("bytes_total", "10.0.0.1:80", "endpoint_to_client")] == 7
    # `gone` leaves the ready set while it still carries a connection: its series stay...
    ready.discard(gone)
    b.retire({gone})
    b.flush(ready.__contains__)
    assert ("default/web", "http", "10.0.0.2:80") in b.families[0]._metrics
    # ...until the connection ended.
    b.of(gone).closed += 1
    b.flush(ready.__contains__)
    assert {k[2] for f in b.families for k in f._metrics} == {"10.0.0.1:80"}
    assert gone not in b.counts
    # An idle endpoint that leaves goes at once.
    b.retire({a})
    assert not b.counts and not any(f._metrics for f in b.families)


def test_books_rename_moves_the_open_connections() -> None:
    registry = CollectorRegistry()
    b = books(registry)
    c = b.of(("10.0.0.1", 80))
    c.opened += 2
    c.closed += 1
    b.flush(lambda _: True)
    b.rename("web")
    c.opened += 1
    b.flush(lambda _: True)
    v = values(registry)
    assert v[("active", "http", "")] == 0 and v[("active", "web", "")] == 2
    assert v[("opened_total", "http", "")] == 2 and v[("opened_total", "web", "")] == 1
