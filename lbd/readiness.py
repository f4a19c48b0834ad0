"""Per-endpoint readiness: which endpoints a service port may send new traffic to, and why (pure).

One place combines what decides readiness into a ready set with a reason per endpoint:
- EndpointSlice conditions (`ready`, `serving`, `terminating`, kept in the model);
- `externalTrafficPolicy: Local`: only this node's endpoints (an endpoint with no nodeName
  counts as local: the native format often has none);
- active probe results (lbd.health.probe verdicts, by ProbeSpec): an endpoint whose service
  has a readinessProbe is ready only while its probe says so; `conditions.ready: false` keeps
  it out whatever the probe says.

kube-proxy's rule (pkg/proxy/topology.go CategorizeEndpoints) picks the set: the ready
endpoints; if none is ready, the endpoints that are still serving while terminating, so a
rolling update that leaves only terminating pods does not black-hole the service.

Hard readiness (this module: an endpoint out of the set gets no new traffic) and soft
ejection (lbd.health.passive: refused connects, tried last) stay two inputs: readiness feeds
the routers' target sets, the routers keep their ejections, and the status view shows both.

Invariants:
- an endpoint is in the ready set iff its `reason` is READY or SERVING_TERMINATING;
- SERVING_TERMINATING appears only when no eligible endpoint is READY, and only for an
  endpoint whose probe (if any) passes;
- targets keep the configured endpoint order (round-robin order is stable across reloads).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from lbd.balancer import Target
from lbd.health.probe import ProbeSpec, ProbeVerdict
from lbd.model import Endpoint, IPAddress, Model, Service, ServicePort, TrafficPolicy


class EndpointReason(StrEnum):
    """Why an endpoint is or is not in its service's ready set: a status field and a log field."""

    READY = "Ready"
    SERVING_TERMINATING = "ServingTerminating"  # in the set: nothing is ready, it still serves
    NOT_READY = "NotReady"  # conditions.ready false
    TERMINATING = "Terminating"  # terminating, and ready endpoints exist (or it no longer serves)
    OTHER_NODE = "OtherNode"  # externalTrafficPolicy Local and the endpoint is on another node
    PROBE_PENDING = "ProbePending"  # initial delay, no result yet, or not enough successes yet
    PROBE_FAILED = "ProbeFailed"
    DRAINING = "Draining"  # `lbd drain endpoint`: no new connections or flows; established ones finish

    @property
    def in_ready_set(self) -> bool:
        return self in (EndpointReason.READY, EndpointReason.SERVING_TERMINATING)


# What `lbd get` shows as an endpoint's reason when the probe adds nothing more precise.
REASON_TEXT = {
    EndpointReason.READY: "ready",
    EndpointReason.SERVING_TERMINATING: "terminating, still serving (no endpoint is ready)",
    EndpointReason.NOT_READY: "slice not ready",
    EndpointReason.TERMINATING: "terminating",
    EndpointReason.OTHER_NODE: "on another node (externalTrafficPolicy Local)",
    EndpointReason.PROBE_PENDING: "no probe result yet",
    EndpointReason.DRAINING: "draining (lbd drain): established connections finish, no new ones",
    EndpointReason.PROBE_FAILED: "probe failed",
}

ProbeVerdicts = Mapping[ProbeSpec, ProbeVerdict]  # what the health checker says, by endpoint and probe


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One endpoint of a service and its verdict; `detail` is the probe's word when it decided."""

    endpoint: Endpoint
    reason: EndpointReason
    detail: str | None = None  # e.g. "probe failed: HTTP 503", "initial delay", "probe passed"

    @property
    def ready(self) -> bool:
        return self.reason.in_ready_set

    @property
    def text(self) -> str:
        """The reason in words: `probe failed: HTTP 503`, `slice not ready`, `ready`."""
        return self.detail or REASON_TEXT[self.reason]

    def target(self, port: ServicePort) -> Target:
        return (str(self.endpoint.address), self.endpoint.target_port(port))


@dataclass(frozen=True, slots=True)
class ServiceReadiness:
    """Every endpoint of one service with its verdict, in configured order."""

    endpoints: tuple[EndpointStatus, ...] = ()

    def targets(self, port: ServicePort) -> tuple[Target, ...]:
        """The ready set as the targets of one service port (endpoints may override the port)."""
        return tuple(dict.fromkeys(s.target(port) for s in self.endpoints if s.ready))

    def draining(self, port: ServicePort) -> frozenset[Target]:
        """Drained endpoints: out of the ready set, but an established UDP flow may stay on one."""
        return frozenset(s.target(port) for s in self.endpoints if s.reason is EndpointReason.DRAINING)

    @property
    def ready_count(self) -> int:
        return sum(1 for s in self.endpoints if s.ready)


Readiness = Mapping[str, ServiceReadiness]  # service key -> its endpoints' verdicts


@dataclass(frozen=True, slots=True)
class Drain:
    """An operator's `lbd drain endpoint SERVICE ADDRESS[:PORT]`, as HAProxy's `set server ... state drain`."""

    service: str  # "namespace/name"
    address: IPAddress
    port: int | None = None  # None: the endpoint on every port

    def matches(self, service: Service, endpoint: Endpoint) -> bool:
        if service.key != self.service or endpoint.address != self.address:
            return False
        return self.port is None or any(endpoint.target_port(p) == self.port for p in service.ports)

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.service} {host}" + (f":{self.port}" if self.port is not None else "")


def endpoint_label(endpoint: Endpoint) -> str:
    """What names an endpoint in logs, events and metric labels: its address, with its port when
    it overrides the service's (the native format lets one address serve as several endpoints)."""
    if endpoint.port is None:
        return str(endpoint.address)
    host = f"[{endpoint.address}]" if endpoint.address.version == 6 else str(endpoint.address)
    return f"{host}:{endpoint.port}"


def is_local(endpoint: Endpoint, node: str) -> bool:
    """Whether `endpoint` runs on `node` (unknown nodeName counts as local)."""
    return endpoint.node_name is None or endpoint.node_name == node


def assess(
    service: Service, node: str, probes: ProbeVerdicts | None = None, drains: Collection[Drain] = ()
) -> ServiceReadiness:
    """The verdict for every endpoint of `service` as seen from `node`.

    `probes` None: nothing runs probes (`lbd check`), the config's conditions decide alone.
    Otherwise a probed endpoint with no verdict yet is waiting for its first result. A drained
    endpoint is out of the ready set whatever else is said of it.
    """
    local_only = service.external_traffic_policy is TrafficPolicy.LOCAL
    drained = [any(d.matches(service, ep) for d in drains) for ep in service.endpoints] if drains else None
    eligible = [
        (not local_only or is_local(ep, node)) and not (drained and drained[i])
        for i, ep in enumerate(service.endpoints)
    ]
    said = [_probe_says(service, ep, probes) for ep in service.endpoints]
    any_ready = any(
        ok and ep.ready and not ep.terminating and (v is None or v.ready)
        for ep, ok, v in zip(service.endpoints, eligible, said)
    )
    verdicts = []
    for i, (endpoint, ok, verdict) in enumerate(zip(service.endpoints, eligible, said)):
        reason = EndpointReason.DRAINING if drained and drained[i] else _reason(endpoint, ok, any_ready, verdict)
        detail = verdict.reason if verdict is not None and reason in _PROBE_DECIDED else None
        verdicts.append(EndpointStatus(endpoint, reason, detail))
    return ServiceReadiness(tuple(verdicts))


def assess_model(
    model: Model, node: str, probes: ProbeVerdicts | None = None, drains: Collection[Drain] = ()
) -> dict[str, ServiceReadiness]:
    """`assess` for every service of the model, by service key."""
    return {service.key: assess(service, node, probes, drains) for service in model.services}


def _probe_says(service: Service, endpoint: Endpoint, probes: ProbeVerdicts | None) -> ProbeVerdict | None:
    probe = service.readiness_probe
    if probes is None or probe is None:
        return None
    return probes.get(ProbeSpec(endpoint.address, probe)) or ProbeVerdict.unknown(probe)


_PROBE_DECIDED = (EndpointReason.READY, EndpointReason.PROBE_PENDING, EndpointReason.PROBE_FAILED)


def _reason(endpoint: Endpoint, eligible: bool, any_ready: bool, probe: ProbeVerdict | None) -> EndpointReason:
    if not eligible:
        return EndpointReason.OTHER_NODE
    passes = probe is None or probe.ready
    if endpoint.terminating:
        if endpoint.serving and passes and not any_ready:
            return EndpointReason.SERVING_TERMINATING
        return EndpointReason.TERMINATING
    if not endpoint.ready:
        return EndpointReason.NOT_READY  # the slice says no: the probe cannot overrule it
    if probe is not None and not probe.ready:
        return EndpointReason.PROBE_FAILED if probe.failing else EndpointReason.PROBE_PENDING
    return EndpointReason.READY


@dataclass(frozen=True, slots=True)
class ReadinessChange:
    """Event: an endpoint of a service became ready or not ready, or stays out for another reason."""

    service: str
    endpoint: str  # the address
    ready: bool
    reason: str  # EndpointStatus.text
    was_ready: bool


def changes(before: Readiness, after: Readiness) -> list[ReadinessChange]:
    """What changed between two assessments; endpoints that appear or go are not changes."""
    out: list[ReadinessChange] = []
    for key, now in after.items():
        old = before.get(key)
        if old is None or old is now:
            continue
        previous = {endpoint_label(s.endpoint): s for s in old.endpoints}
        for status in now.endpoints:
            address = endpoint_label(status.endpoint)
            was = previous.get(address)
            if was is None or (was.ready, was.text) == (status.ready, status.text):
                continue
            out.append(ReadinessChange(key, address, status.ready, status.text, was.ready))
    return out
