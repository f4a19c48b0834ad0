"""Per-endpoint readiness: which endpoints a service port may send new traffic to, and why (pure).

One place combines what decides readiness into a ready set with a reason per endpoint:
- EndpointSlice conditions (`ready`, `serving`, `terminating`, kept in the model);
- `externalTrafficPolicy: Local`: only this node's endpoints (an endpoint with no nodeName
  counts as local: the native format often has none);
- (next) active probe results.

kube-proxy's rule (pkg/proxy/topology.go CategorizeEndpoints) picks the set: the ready
endpoints; if none is ready, the endpoints that are still serving while terminating, so a
rolling update that leaves only terminating pods does not black-hole the service.

Hard readiness (this module: an endpoint out of the set gets no new traffic) and soft
ejection (lbd.health.passive: refused connects, tried last) stay two inputs: readiness feeds
the routers' target sets, the routers keep their ejections, and the status view shows both.

Invariants:
- an endpoint is in the ready set iff its `reason` is READY or SERVING_TERMINATING;
- SERVING_TERMINATING appears only when no eligible endpoint is READY;
- targets keep the configured endpoint order (round-robin order is stable across reloads).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from lbd.balancer import Target
from lbd.model import Endpoint, Model, Service, ServicePort, TrafficPolicy


class EndpointReason(StrEnum):
    """Why an endpoint is or is not in its service's ready set: a status field and a log field."""

    READY = "Ready"
    SERVING_TERMINATING = "ServingTerminating"  # in the set: nothing is ready, it still serves
    NOT_READY = "NotReady"  # conditions.ready false
    TERMINATING = "Terminating"  # terminating, and ready endpoints exist (or it no longer serves)
    OTHER_NODE = "OtherNode"  # externalTrafficPolicy Local and the endpoint is on another node

    @property
    def in_ready_set(self) -> bool:
        return self in (EndpointReason.READY, EndpointReason.SERVING_TERMINATING)


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One endpoint of a service and its verdict."""

    endpoint: Endpoint
    reason: EndpointReason

    @property
    def ready(self) -> bool:
        return self.reason.in_ready_set

    def target(self, port: ServicePort) -> Target:
        return (str(self.endpoint.address), self.endpoint.target_port(port))


@dataclass(frozen=True, slots=True)
class ServiceReadiness:
    """Every endpoint of one service with its verdict, in configured order."""

    endpoints: tuple[EndpointStatus, ...] = ()

    def targets(self, port: ServicePort) -> tuple[Target, ...]:
        """The ready set as the targets of one service port (endpoints may override the port)."""
        return tuple(dict.fromkeys(s.target(port) for s in self.endpoints if s.ready))

    @property
    def ready_count(self) -> int:
        return sum(1 for s in self.endpoints if s.ready)


Readiness = Mapping[str, ServiceReadiness]  # service key -> its endpoints' verdicts


def is_local(endpoint: Endpoint, node: str) -> bool:
    """Whether `endpoint` runs on `node` (unknown nodeName counts as local)."""
    return endpoint.node_name is None or endpoint.node_name == node


def assess(service: Service, node: str) -> ServiceReadiness:
    """The verdict for every endpoint of `service` as seen from `node`."""
    local_only = service.external_traffic_policy is TrafficPolicy.LOCAL
    eligible = [not local_only or is_local(ep, node) for ep in service.endpoints]
    any_ready = any(ok and ep.ready and not ep.terminating for ep, ok in zip(service.endpoints, eligible))
    verdicts = []
    for endpoint, ok in zip(service.endpoints, eligible):
        verdicts.append(EndpointStatus(endpoint, _reason(endpoint, ok, any_ready)))
    return ServiceReadiness(tuple(verdicts))


def assess_model(model: Model, node: str) -> dict[str, ServiceReadiness]:
    """`assess` for every service of the model, by service key."""
    return {service.key: assess(service, node) for service in model.services}


def _reason(endpoint: Endpoint, eligible: bool, any_ready: bool) -> EndpointReason:
    if not eligible:
        return EndpointReason.OTHER_NODE
    if endpoint.terminating:
        if endpoint.serving and not any_ready:
            return EndpointReason.SERVING_TERMINATING
        return EndpointReason.TERMINATING
    return EndpointReason.READY if endpoint.ready else EndpointReason.NOT_READY
