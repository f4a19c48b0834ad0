"""kubectl-style views (pure): tables, wide, yaml/json, describe, AGE."""

from __future__ import annotations

import json

import yaml

from lbd import views

NOW = 1_800_000_000.0
CREATED = "2027-01-15T08:00:00Z"  # 1,800,000,000 - 3,600 s: an hour before NOW


def service(**over: object) -> dict:
    row = {
        "name": "web", "namespace": "default", "type": "LoadBalancer", "state": "Serving", "reason": None,
        "externalIP": "198.18.1.200", "pool": "lab", "pending_reason": None, "note": None,
        "sessionAffinity": "None", "externalTrafficPolicy": "Cluster", "readinessProbe": None,
        "creationTimestamp": "2027-01-15T07:00:00Z",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "served": True, "active": 2}],
        "endpoints": [
            {"address": "198.18.1.11", "port": 8080, "ready": True, "reason": "ready", "code": "Ready",
             "lastProbe": {"result": "success", "detail": "HTTP 200", "latencyMs": 1.25}, "nodeName": None,
             "serving": True, "terminating": False},
            {"address": "198.18.1.12", "port": 8080, "ready": False, "reason": "probe failed: HTTP 503",
             "code": "ProbeFailed", "lastProbe": None, "nodeName": "node-b", "serving": True, "terminating": False},
        ],
    }
    row.update(over)
    return row


def test_age_is_kubectls() -> None:
    assert [views.age(s) for s in (5, 119, 120, 3599, 7200, 90000, None)] == [
        "5s", "119s", "2m", "59m", "2h", "1d", "<unknown>",
    ]
    assert views.since("2027-01-15T07:00:00Z", NOW) == "1h"


def test_services_table_and_wide() -> None:
    pending = service(name="db", externalIP=None, state="Pending", pending_reason="no pool has a free IPv4 address",
                      creationTimestamp=CREATED, endpoints=[])
    text = views.services_table([service(), pending], NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS", "AGE"]
    assert lines[1].split() == ["web", "LoadBalancer", "198.18.1.200", "80->8080/TCP", "1/2", "1h"]
    assert lines[2].split()[:5] == ["db", "LoadBalancer", "<pending>", "80->8080/TCP", "0/0"]
    assert "default/db: <pending>: no pool has a free IPv4 address" in text
    empty = views.services_table([service(endpoints=[])], NOW)
    assert "default/web: 0/0: no endpoints: they come from `endpoints:`" in empty
    wide = views.services_table([service()], NOW, wide=True).splitlines()
    assert wide[0].split()[-3:] == ["AFFINITY", "POLICY", "POOL"] and wide[1].split()[-3:] == ["None", "Cluster", "lab"]


def test_no_age_column_when_nothing_runs() -> None:
    assert "AGE" not in views.services_table([service(creationTimestamp=None)], NOW)


def test_endpoints_pools_events_tables() -> None:
    rows = [{"service": "default/web", **e} for e in service()["endpoints"]]
    lines = views.endpoints_table(rows).splitlines()
    assert lines[0].split()[:4] == ["SERVICE", "ENDPOINT", "READY", "REASON"]
    assert "198.18.1.11:8080" in lines[1] and "HTTP 200 (1.2 ms)" in lines[1]
    assert "probe failed: HTTP 503" in lines[2] and " false " in lines[2]
    assert "node-b" in views.endpoints_table(rows, wide=True)
    drained = dict(rows[0], ready=False, code="Draining", reason="draining (lbd drain)")
    assert views.endpoints_table([drained]).splitlines()[1].split()[2] == "DRAINING"
    pools = views.pools_table([{"name": "lab", "addresses": ["198.18.1.200-198.18.1.220"], "used": 3, "total": 21,
                                "autoAssign": True, "avoidBuggyIPs": False}])
    assert pools.splitlines()[1].split() == ["lab", "198.18.1.200-198.18.1.220", "3/21", "true"]
    events = views.events_table([{"time": NOW - 30, "type": "Warning", "reason": "EndpointNotReady",
                                  "service": "default/web", "subject": "198.18.1.12", "message": "HTTP 503"}], NOW)
    assert events.splitlines()[1].split()[:4] == ["30s", "Warning", "EndpointNotReady", "service/default/web"]


def test_json_and_yaml_dump_the_rows_as_they_are() -> None:
    rows = [service()]
    assert json.loads(views.dump(rows, "json")) == rows
    assert yaml.safe_load(views.dump(rows, "yaml")) == rows


def test_describe_reads_like_kubectl() -> None:
    events = [{"time": NOW - 90, "type": "Normal", "reason": "IPAllocated", "service": "default/web",
               "subject": "198.18.1.200", "message": 'Assigned IP ["198.18.1.200"] from pool lab'}]
    text = views.describe_service(service(readinessProbe="http-get http://:8080/health"), events, NOW)
    assert "Name:" in text and "LoadBalancer Ingress:" in text and "198.18.1.200" in text
    assert "TargetPort:" in text and "8080/TCP  2 open" in text
    assert "Readiness Probe:" in text and "http-get" in text
    endpoints = text.split("Endpoints:\n", 1)[1].split("Events:", 1)[0]
    assert endpoints.splitlines()[0].split()[0] == "ENDPOINT" and "probe failed: HTTP 503" in endpoints
    assert "IPAllocated" in text.split("Events:\n", 1)[1]
    empty = views.describe_service(service(endpoints=[]), [], NOW)
    assert "EndpointSlice" in empty and "Events:\n  <none>" in empty
