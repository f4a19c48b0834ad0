"""The validated, immutable model every part of lbd consumes.

Built once by `lbd.config.load` from native YAML or Kubernetes/MetalLB manifests; nothing
downstream re-reads YAML. Field names follow Kubernetes and MetalLB; defaults are theirs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Kubernetes' defaults (core/v1 types.go); the affinity ceiling is kube-proxy's.
DEFAULT_AFFINITY_TIMEOUT_SECONDS = 10800
MAX_AFFINITY_TIMEOUT_SECONDS = 86400
DEFAULT_NAMESPACE = "default"
# A UDP flow ends after this long without a datagram either way: kube-proxy's conntrack UDP
# timeout (it sets nf_conntrack_udp_timeout to 30 s).
DEFAULT_UDP_FLOW_TIMEOUT = 30.0
# Flows per UDP service port. Each flow holds one socket (an fd) to its endpoint; a flood of
# spoofed sources evicts the least recently used flows instead of growing past this.
DEFAULT_UDP_MAX_FLOWS = 65536
MAX_UDP_MAX_FLOWS = 1 << 20


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"


class SessionAffinity(StrEnum):
    NONE = "None"
    CLIENT_IP = "ClientIP"


class TrafficPolicy(StrEnum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


class ServiceType(StrEnum):
    LOAD_BALANCER = "LoadBalancer"
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive range of addresses of one family (a CIDR is stored as its first..last)."""

    first: IPAddress
    last: IPAddress

    def __contains__(self, ip: object) -> bool:
        return (
            isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address))
            and ip.version == self.first.version
            and self.first <= ip <= self.last
        )

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def overlaps(self, other: AddressRange) -> bool:
        return self.version == other.version and self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}" if self.first != self.last else str(self.first)


@dataclass(frozen=True, slots=True)
class Pool:
    """MetalLB IPAddressPool: where VIPs come from."""

    name: str
    ranges: tuple[AddressRange, ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False

    def __contains__(self, ip: object) -> bool:
        return any(ip in r for r in self.ranges)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.ranges)


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of a Service; `target_port` is already resolved to a number."""

    name: str
    port: int
    target_port: int
    protocol: Protocol = Protocol.TCP


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A backend address. `port` overrides the service's targetPort (single-port services only).

    The conditions are discovery/v1 EndpointConditions': `ready` (serving and not terminating),
    `serving` (answering, terminating or not) and `terminating`. Absent, `ready` and `serving`
    are true and `terminating` false, as discovery/v1 and kube-proxy read them.
    """

    address: IPAddress
    port: int | None = None
    node_name: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    def target_port(self, service_port: ServicePort) -> int:
        return self.port if self.port is not None else service_port.target_port


@dataclass(frozen=True, slots=True)
class HTTPGetAction:
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TCPSocketAction:
    port: int
    # "exec" or "grpc": the probe lbd cannot run from outside, checked as a TCP connect instead.
    stands_in_for: str | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    """A Kubernetes readinessProbe with its defaults."""

    action: HTTPGetAction | TCPSocketAction
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    initial_delay_seconds: int = 0


@dataclass(frozen=True, slots=True)
class Service:
    """A Service as lbd serves it: what to expose, how to balance, where to send."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    type: ServiceType = ServiceType.LOAD_BALANCER
    ports: tuple[ServicePort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()
    # Explicit IP requests: loadBalancerIP or metallb.io/loadBalancerIPs (at most one per family).
    requested_ips: tuple[IPAddress, ...] = ()
    address_pool: str | None = None  # metallb.io/address-pool
    allow_shared_ip: str | None = None  # metallb.io/allow-shared-ip
    ip_family: int | None = None  # 4 or 6 from spec.ipFamilies[0]; None = IPv4 first, then IPv6
    session_affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout_seconds: int = DEFAULT_AFFINITY_TIMEOUT_SECONDS
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    readiness_probe: Probe | None = None
    idle_timeout_seconds: float | None = None  # lbd.io/idle-timeout; None = tunnel, never idle out
    udp_flow_timeout_seconds: float = DEFAULT_UDP_FLOW_TIMEOUT  # lbd.io/udp-flow-timeout
    udp_max_flows: int = DEFAULT_UDP_MAX_FLOWS  # lbd.io/udp-max-flows, per UDP service port
    headless: bool = False  # clusterIP: None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def exposed(self) -> bool:
        """Only LoadBalancer services get a VIP (ClusterIP/NodePort are listed, not served)."""
        return self.type is ServiceType.LOAD_BALANCER and not self.headless

    @property
    def port_keys(self) -> frozenset[tuple[Protocol, int]]:
        return frozenset((p.protocol, p.port) for p in self.ports)


@dataclass(frozen=True, slots=True)
class Model:
    """Everything one configuration says: announce interfaces, pools and services."""

    interfaces: tuple[str, ...] = ()
    pools: tuple[Pool, ...] = ()
    services: tuple[Service, ...] = field(default=())

    def service(self, key: str) -> Service | None:
        return next((s for s in self.services if s.key == key), None)
