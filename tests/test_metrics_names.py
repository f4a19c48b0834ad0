"""What the exposition says, to the byte where MetalLB's dashboards care: MetalLB's counters
under their exact names (no `_total`), no `_created` series, the announced gauge and the config
gauges."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from lbd import metrics

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

