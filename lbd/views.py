"""kubectl-style views of what the admin API answers: tables, `-o wide`, `-o json|yaml`, `describe` (pure).

The rows are the admin API's JSON objects (lbd.api, lbd.status), so `lbd check` (from a config
file) and `lbd get` (from the running daemon) draw the same tables. `now` is passed in (seconds
since the epoch) for AGE and LAST SEEN, so tests need no clock.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

import yaml

from lbd.status import UNSERVED_PORT_REASON

Row = dict[str, Any]

# Where endpoints come from, for a service that has none at all (a Deployment without a slice).
NO_ENDPOINTS = ("no endpoints: they come from `endpoints:` in the native format, or from an "
                "EndpointSlice labelled kubernetes.io/service-name (or an Endpoints object) in manifests")


def age(seconds: float | None) -> str:
    """kubectl's AGE: 45s, 12m, 5h, 3d (the largest whole unit), `<unknown>` without a time."""
    if seconds is None:
        return "<unknown>"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit == "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def since(timestamp: str | float | None, now: float) -> str:
    """AGE of an ISO-8601 UTC timestamp (or epoch seconds)."""
    if timestamp is None:
        return age(None)
    if isinstance(timestamp, str):
        parsed = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        timestamp = parsed.timestamp()
    return age(now - timestamp)


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns three spaces apart, as kubectl prints them."""
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return ["   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def dump(rows: Any, output: str) -> str:
    if output == "json":
        return json.dumps(rows, indent=2)
    return yaml.safe_dump(rows, sort_keys=False, default_flow_style=False).rstrip()


# ---- services -----------------------------------------------------------------------------------


def ports_cell(service: Row) -> str:
    cells = []
    for p in service["ports"]:
        arrow = "" if p["targetPort"] == p["port"] else f"->{p['targetPort']}"
        cells.append(f"{p['port']}{arrow}/{p['protocol']}")
    return ",".join(cells) or "<none>"


def external_ip_cell(service: Row) -> str:
    if service["externalIP"]:
        return str(service["externalIP"])
    return "<pending>" if service["type"] == "LoadBalancer" and not service["note"] else "<none>"


def ready_cell(service: Row) -> str:
    ready = sum(1 for e in service["endpoints"] if e["ready"])
    return f"{ready}/{len(service['endpoints'])}"


def services_table(rows: Sequence[Row], now: float, *, wide: bool = False, notes: bool = True) -> str:
    """NAME TYPE EXTERNAL-IP PORT(S) ENDPOINTS AGE (wide: AFFINITY POLICY POOL); reasons below."""
    show_ns = any(r["namespace"] != "default" for r in rows)
    show_age = any(r.get("creationTimestamp") for r in rows)  # `lbd check` runs nothing: no AGE
    header = (["NAMESPACE"] if show_ns else []) + ["NAME", "TYPE", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS"]
    header += ["AGE"] if show_age else []
    show_node = any(r.get("node") for r in rows)  # the running daemon: who holds each VIP
    header += ["NODE"] if show_node else []
    if wide:
        header += ["AFFINITY", "POLICY", "POOL"]
    lines = []
    for r in rows:
        line = [r["namespace"]] if show_ns else []
        line += [r["name"], r["type"], external_ip_cell(r), ports_cell(r), ready_cell(r)]
        line += [since(r.get("creationTimestamp"), now)] if show_age else []
        line += [r.get("node") or "<none>"] if show_node else []
        if wide:
            line += [r["sessionAffinity"], r["externalTrafficPolicy"], r.get("pool") or "<none>"]
        lines.append(line)
    out = columns(header, lines)
    if notes:
        out += service_notes(rows)
    return "\n".join(out)


def service_notes(rows: Sequence[Row]) -> list[str]:
    """Why a service is <pending>, not exposed or partly served, and its probe: under the table."""
    out = []
    for r in rows:
        key = f"{r['namespace']}/{r['name']}"
        if r["pending_reason"]:
            out.append(f"{key}: <pending>: {r['pending_reason']}")
        elif r["note"]:
            out.append(f"{key}: {r['note']}")
        elif r.get("state") == "Standby" and r.get("reason"):
            out.append(f"{key}: {r['reason']}")
        elif not r["endpoints"] and r.get("state") in ("Serving", "Allocated"):
            out.append(f"{key}: 0/0: {NO_ENDPOINTS}")
        elif r.get("state") == "Serving" and not all(p.get("served", True) for p in r["ports"]):
            unserved = ", ".join(f"{p['port']}/{p['protocol']}" for p in r["ports"] if not p.get("served", True))
            out.append(f"{key}: {unserved} not served: {UNSERVED_PORT_REASON}")
    for r in rows:
        if r.get("readinessProbe"):
            out.append(f"{r['namespace']}/{r['name']}: readiness {r['readinessProbe']}")
    return out


# ---- endpoints, pools, events -----------------------------------------------------------------


def endpoint_cell(endpoint: Row) -> str:
    address = str(endpoint["address"])
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{endpoint['port']}" if endpoint.get("port") is not None else host


def last_probe_cell(endpoint: Row) -> str:
    probe = endpoint.get("lastProbe")
    if not probe:
        return "-"
    latency = probe.get("latencyMs")
    detail = probe.get("detail") or probe.get("result") or "?"
    return f"{detail} ({latency:.1f} ms)" if isinstance(latency, (int, float)) else str(detail)


def ready_word(endpoint: Row) -> str:
    """true | false | DRAINING (an operator's drain shows as HAProxy shows it, not as a failure)."""
    if endpoint.get("code") == "Draining":
        return "DRAINING"
    return "true" if endpoint["ready"] else "false"


def endpoints_table(rows: Sequence[Row], *, wide: bool = False) -> str:
    """SERVICE ENDPOINT READY REASON LAST PROBE CONNECTIONS (wide: NODE SERVING TERMINATING)."""
    header = ["SERVICE", "ENDPOINT", "READY", "REASON", "LAST PROBE", "CONNECTIONS"]
    if wide:
        header += ["NODE", "SERVING", "TERMINATING"]
    lines = []
    for e in rows:
        connections = e.get("connections")
        line = [e["service"], endpoint_cell(e), ready_word(e), str(e.get("reason") or "-"),
                last_probe_cell(e), str(connections) if connections is not None else "-"]
        if wide:
            line += [e.get("nodeName") or "<none>", str(e.get("serving", True)).lower(),
                     str(e.get("terminating", False)).lower()]
        lines.append(line)
    return "\n".join(columns(header, lines))


def pools_table(rows: Sequence[Row], *, wide: bool = False) -> str:
    """NAME ADDRESSES USED/TOTAL AUTO-ASSIGN (wide: AVOID-BUGGY-IPS)."""
    header = ["NAME", "ADDRESSES", "USED/TOTAL", "AUTO-ASSIGN"] + (["AVOID-BUGGY-IPS"] if wide else [])
    lines = []
    for p in rows:
        line = [p["name"], ",".join(p["addresses"]) or "<none>", f"{p['used']}/{p['total']}",
                str(p["autoAssign"]).lower()]
        if wide:
            line.append(str(p["avoidBuggyIPs"]).lower())
        lines.append(line)
    return "\n".join(columns(header, lines))


def nodes_table(rows: Sequence[Row], *, wide: bool = False) -> str:
    """NAME LEASE-TTL CANDIDATE-FOR VIPS (wide: every VIP held); the node answering marked `*`."""
    header = ["NAME", "LEASE-TTL", "CANDIDATE-FOR", "VIPS"]
    lines = []
    for n in rows:
        ttl = f"{n['leaseTTL']}s" if n.get("leaseTTL") is not None else "<none>"
        held = ",".join(n["vips"]) if wide else str(len(n["vips"]))
        lines.append([n["name"] + (" *" if n.get("self") else ""), ttl, str(n["candidateFor"]), held or "-"])
    out = columns(header, lines)
    if not rows:
        out.append("(single node: started without --etcd-endpoints)")
    return "\n".join(out)


def event_object(event: Row) -> str:
    if not event["service"]:
        return "lbd"
    return f"service/{event['service']}" + (f" {event['subject']}" if event.get("subject") else "")


def events_table(rows: Sequence[Row], now: float) -> str:
    """LAST SEEN TYPE REASON OBJECT MESSAGE, oldest first (kubectl get events)."""
    header = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    lines = [[age(now - e["time"]), e.get("type", "Normal"), e["reason"], event_object(e), e["message"]] for e in rows]
    return "\n".join(columns(header, lines))


# ---- describe -----------------------------------------------------------------------------------


def describe_service(service: Row, events: Sequence[Row], now: float) -> str:
    """`lbd describe service NAME`, laid out as `kubectl describe service` prints it."""
    ports = service["ports"]
    lines = [
        ("Name:", service["name"]),
        ("Namespace:", service["namespace"]),
        ("Type:", service["type"]),
        ("State:", f"{service.get('state')}" + (f" ({service['reason']})" if service.get("reason") else "")),
        ("LoadBalancer Ingress:", external_ip_cell(service)),
        ("Pool:", service.get("pool") or "<none>"),
    ]
    for p in ports:
        name = p["name"] or "<unset>"
        lines.append(("Port:", f"{name}  {p['port']}/{p['protocol']}"))
        served = p.get("served")
        extra = "" if served in (None, True) else "  (not served)"
        active = p.get("active")
        count = f"  {active} open" if isinstance(active, int) else ""
        lines.append(("TargetPort:", f"{p['targetPort']}/{p['protocol']}{extra}{count}"))
    lines += [
        ("Session Affinity:", service["sessionAffinity"]),
        ("External Traffic Policy:", service["externalTrafficPolicy"]),
        ("Readiness Probe:", service.get("readinessProbe") or "<none>"),
        ("Created:", f"{service.get('creationTimestamp') or '<unknown>'} ({since(service.get('creationTimestamp'), now)} ago)"),
    ]
    width = max(len(k) for k, _ in lines) + 1
    out = [f"{k.ljust(width)}{v}" for k, v in lines]
    out.append("Endpoints:")
    endpoints = [{"service": "", **e} for e in service["endpoints"]]
    if endpoints:
        out += ["  " + line for line in _drop_first_column(endpoints_table(endpoints).splitlines())]
    else:
        out.append(f"  <none>  ({NO_ENDPOINTS})")
    out.append("Events:")
    if events:
        out += ["  " + line for line in events_table(events, now).splitlines()]
    else:
        out.append("  <none>")
    return "\n".join(out)


def _drop_first_column(lines: list[str]) -> list[str]:
    """The endpoints table without its SERVICE column (describe is about one service)."""
    if not lines:
        return lines
    start = lines[0].index("ENDPOINT")
    return [line[start:] for line in lines]

