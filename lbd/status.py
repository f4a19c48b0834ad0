"""What `lbd check` and `lbd get services` show: service status objects and the kubectl-style table.

Pure: status objects are plain dicts (the admin API's JSON), built from the model, the
allocation and an optional readiness view; the table renders those dicts, so the CLI draws
the same table from a config file (`check`) and from the running daemon (`get`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lbd.allocator import Assignment
from lbd.model import Endpoint, Service

StatusDict = dict[str, Any]
# (service, endpoint) -> ready; the daemon folds in passive (later: active) health.
ReadyView = Callable[[Service, Endpoint], bool]


def _model_ready(service: Service, endpoint: Endpoint) -> bool:
    return endpoint.ready


def service_status(
    service: Service, assignment: Assignment | None, ready: ReadyView = _model_ready
) -> StatusDict:
    """One service as the admin API and `-o json` show it."""
    ports = [
        {"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": str(p.protocol)}
        for p in service.ports
    ]
    first_port = service.ports[0] if service.ports else None
    endpoints = [
        {
            "address": str(ep.address),
            "port": ep.target_port(first_port) if first_port else ep.port,
            "ready": ready(service, ep),
            "nodeName": ep.node_name,
        }
        for ep in service.endpoints
    ]
    if not service.exposed:
        pending_reason = None
        note = "not exposed (type %s%s)" % (service.type, ", headless" if service.headless else "")
    else:
        pending_reason = assignment.pending_reason if assignment else "not allocated yet"
        note = None
    return {
        "name": service.name,
        "namespace": service.namespace,
        "type": str(service.type),
        "externalIP": str(assignment.ip) if assignment and assignment.ip else None,
        "pool": assignment.pool if assignment else None,
        "pending_reason": pending_reason if not (assignment and assignment.ip) else None,
        "note": note,
        "sessionAffinity": str(service.session_affinity),
        "externalTrafficPolicy": str(service.external_traffic_policy),
        "ports": ports,
        "endpoints": endpoints,
    }


def statuses(
    services: Iterable[Service],
    assignments: Mapping[str, Assignment],
    ready: ReadyView = _model_ready,
) -> list[StatusDict]:
    return [service_status(s, assignments.get(s.key), ready) for s in services]


def _ports_cell(status: StatusDict) -> str:
    cells = []
    for p in status["ports"]:
        arrow = "" if p["targetPort"] == p["port"] else f"->{p['targetPort']}"
        cells.append(f"{p['port']}{arrow}/{p['protocol']}")
    return ",".join(cells) or "<none>"


def _external_ip_cell(status: StatusDict) -> str:
    if status["externalIP"]:
        return status["externalIP"]
    return "<pending>" if status["type"] == "LoadBalancer" and not status["note"] else "<none>"


def render_table(rows: list[StatusDict]) -> str:
    """kubectl-style columns; reasons for <pending> and not-exposed services follow the table."""
    show_ns = any(r["namespace"] != "default" for r in rows)
    header = (["NAMESPACE"] if show_ns else []) + ["NAME", "TYPE", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS", "AFFINITY"]
    table = [header]
    for r in rows:
        ready = sum(1 for e in r["endpoints"] if e["ready"])
        line = [r["namespace"]] if show_ns else []
        line += [
            r["name"],
            r["type"],
            _external_ip_cell(r),
            _ports_cell(r),
            f"{ready}/{len(r['endpoints'])}",
            r["sessionAffinity"],
        ]
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = ["   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    for r in rows:
        key = f"{r['namespace']}/{r['name']}"
        if r["pending_reason"]:
            out.append(f"{key}: <pending>: {r['pending_reason']}")
        elif r["note"]:
            out.append(f"{key}: {r['note']}")
    return "\n".join(out)
