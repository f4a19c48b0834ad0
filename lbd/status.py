"""What `lbd check` and `lbd get services` show: each service's condition, endpoints, the table.

Pure. A service's condition (ServiceState and reason) is decided here once, from the model, the
allocation, why it could not be served and who owns its VIP; the daemon logs it on every change,
the admin API returns it, and metrics can label by it, in the same words. Status objects are
plain dicts (the admin API's JSON); the table renders those dicts, so the CLI draws the same
table from a config file (`check`) and from the running daemon (`get`).
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lbd.allocator import Assignment
from lbd.balancer import Target
from lbd.health.probe import ProbeResult, ProbeSpec, describe
from lbd.model import IPAddress, Protocol, Service, ServicePort
from lbd.ownership import Ownership
from lbd.readiness import ServiceReadiness, assess

StatusDict = dict[str, Any]

UNSERVED_PORT_REASON = "this version of lbd does not relay that protocol yet"


class ServiceState(StrEnum):
    """Where a service stands: a status field, a log event's subject and a metric label."""

    SERVING = "Serving"  # VIP bound here, listeners open
    ALLOCATED = "Allocated"  # `lbd check`: a VIP is assigned; nothing runs
    PENDING = "Pending"  # no VIP: the allocator says why
    FAILED = "Failed"  # a VIP, but it cannot be served here (port in use, no interface)
    STANDBY = "Standby"  # listeners open, the VIP is owned elsewhere (ownership gate)
    NOT_EXPOSED = "NotExposed"  # ClusterIP, NodePort, headless: listed, never served


@dataclass(frozen=True, slots=True)
class ServiceCondition:
    """A service's state with its reason, its VIP and the ports not relayed."""

    state: ServiceState
    reason: str | None = None
    ip: IPAddress | None = None
    unserved_ports: tuple[str, ...] = ()  # "53/UDP": protocols this build does not relay
    node: str | None = None  # the node holding the VIP (Serving: this one; Standby: a peer or none)


def condition_of(
    service: Service,
    assignment: Assignment | None,
    failure: str | None = None,
    ownership: Ownership | None = None,
    relayable: Collection[Protocol] | None = None,
) -> ServiceCondition:
    """The one place a service's state is decided. `relayable` None: nothing runs (`check`)."""
    if not service.exposed:
        headless = ", headless" if service.headless else ""
        return ServiceCondition(ServiceState.NOT_EXPOSED, f"not exposed (type {service.type}{headless})")
    if assignment is None or assignment.ip is None:
        reason = assignment.pending_reason if assignment is not None else None
        return ServiceCondition(ServiceState.PENDING, reason or "not allocated yet")
    if failure is not None:
        return ServiceCondition(ServiceState.FAILED, failure, assignment.ip)
    if relayable is None:
        return ServiceCondition(ServiceState.ALLOCATED, None, assignment.ip)
    unserved = tuple(f"{p.port}/{p.protocol}" for p in service.ports if p.protocol not in relayable)
    node = ownership.node if ownership is not None else None
    if ownership is not None and not ownership.owner:
        return ServiceCondition(ServiceState.STANDBY, ownership.reason.text, assignment.ip, unserved, node)
    return ServiceCondition(ServiceState.SERVING, None, assignment.ip, unserved, node)


@dataclass(frozen=True, slots=True)
class StatusView:
    """What is known beyond the config: conditions, readiness, and soft ejections right now."""

    conditions: Mapping[str, ServiceCondition] = field(default_factory=dict)
    readiness: Mapping[str, ServiceReadiness] = field(default_factory=dict)
    # (service key, port name) -> targets passive health ejects now (tried last).
    ejected: Mapping[tuple[str, str], frozenset[Target]] = field(default_factory=dict)
    # (service key, port name) -> connections (TCP) or flows (UDP) open now.
    active: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # The newest result of each running probe (the health checker's).
    probe_results: Mapping[ProbeSpec, ProbeResult] = field(default_factory=dict)
    # Service key -> when the running daemon first saw it (seconds since the epoch): AGE.
    first_seen: Mapping[str, float] = field(default_factory=dict)
    # (service key, target) -> connections (TCP) or flows (UDP) open to it now; None: nothing runs.
    connections: Mapping[tuple[str, Target], int] | None = None


def service_status(
    service: Service,
    assignment: Assignment | None,
    condition: ServiceCondition,
    readiness: ServiceReadiness,
    ejected: Mapping[tuple[str, str], frozenset[Target]] | None = None,
    active: Mapping[tuple[str, str], int] | None = None,
    probe_results: Mapping[ProbeSpec, ProbeResult] | None = None,
    connections: Mapping[tuple[str, Target], int] | None = None,
) -> StatusDict:
    """One service as the admin API and `-o json` show it."""
    ejected = ejected or {}
    active = active or {}
    probe_results = probe_results or {}
    probe = service.readiness_probe
    unserved = set(condition.unserved_ports)
    ports = [
        {
            "name": p.name,
            "port": p.port,
            "targetPort": p.target_port,
            "protocol": str(p.protocol),
            # None where nothing runs (`check`): it cannot say.
            "served": None if condition.state is ServiceState.ALLOCATED
            else condition.state is ServiceState.SERVING and f"{p.port}/{p.protocol}" not in unserved,
            # Connections (TCP) or flows (UDP) open now; None where nothing runs.
            "active": active.get((service.key, p.name or str(p.port))),
        }
        for p in service.ports
    ]
    first_port = service.ports[0] if service.ports else None
    endpoints = []
    for verdict in readiness.endpoints:
        ep = verdict.endpoint
        out_on = [p.name or str(p.port) for p in service.ports if _target(ep, p) in ejected.get((service.key, p.name or str(p.port)), ())]
        soft_ejected = verdict.ready and bool(out_on)
        last = probe_results.get(ProbeSpec(ep.address, probe)) if probe is not None else None
        endpoints.append(
            {
                "address": str(ep.address),
                "port": ep.target_port(first_port) if first_port else ep.port,
                "ready": verdict.ready and not out_on,
                # In words (`probe failed: HTTP 503`, `slice not ready`); `code` is the same as a word.
                "reason": f"ejected after failed connects on {', '.join(out_on)}" if soft_ejected else verdict.text,
                "code": "Ejected" if soft_ejected else str(verdict.reason),
                "ejectedOn": out_on,
                "serving": ep.serving,
                "terminating": ep.terminating,
                "nodeName": ep.node_name,
                # Open to it now over every port (a drained one shows what it still carries).
                "connections": None if connections is None else sum(
                    connections.get((service.key, t), 0) for t in {_target(ep, p) for p in service.ports}),
                "lastProbe": None if last is None else {
                    "result": str(last.outcome),
                    "detail": last.detail,
                    "latencyMs": round(last.latency * 1000, 3),
                },
            }
        )
    shown_ip = condition.ip if condition.state is not ServiceState.FAILED else None
    return {
        "name": service.name,
        "namespace": service.namespace,
        "type": str(service.type),
        "state": str(condition.state),
        "reason": condition.reason,
        "externalIP": str(shown_ip) if shown_ip is not None else None,
        "pool": assignment.pool if assignment else None,
        # The node holding the VIP (MetalLB's nodeAssigned); None when nobody does or nothing runs.
        "node": condition.node,
        "pending_reason": condition.reason if condition.state in (ServiceState.PENDING, ServiceState.FAILED) else None,
        "note": condition.reason if condition.state is ServiceState.NOT_EXPOSED else None,
        "sessionAffinity": str(service.session_affinity),
        "externalTrafficPolicy": str(service.external_traffic_policy),
        "readinessProbe": describe(probe) if probe is not None else None,
        "ports": ports,
        "endpoints": endpoints,
    }


def _target(endpoint: Any, port: ServicePort) -> Target:
    return (str(endpoint.address), endpoint.target_port(port))


def statuses(services: Iterable[Service], assignments: Mapping[str, Assignment], view: StatusView) -> list[StatusDict]:
    rows = []
    for service in services:
        assignment = assignments.get(service.key)
        condition = view.conditions.get(service.key) or condition_of(service, assignment)
        readiness = view.readiness.get(service.key) or assess(service, node="")
        row = service_status(service, assignment, condition, readiness, view.ejected, view.active, view.probe_results,
                             view.connections)
        seen = view.first_seen.get(service.key)
        # kubectl's metadata.creationTimestamp: here, when this daemon first served the object.
        row["creationTimestamp"] = (
            datetime.datetime.fromtimestamp(seen, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if seen is not None else None
        )
        rows.append(row)
    return rows


def check_view(services: Iterable[Service], assignments: Mapping[str, Assignment], node: str) -> StatusView:
    """What `lbd check` knows: the allocation and the config's readiness, seen from `node`."""
    services = list(services)
    return StatusView(
        conditions={s.key: condition_of(s, assignments.get(s.key)) for s in services},
        readiness={s.key: assess(s, node) for s in services},
    )
