"""Service spec and ports shared by native services and v1 Service, the model Service, duplicate checks."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from lbd.config.annotations import IPS_ANNOTATION, ServiceAnnotations
from lbd.config.reading import Fields, Loc, choice
from lbd.config.values import DNS1123_LABEL, ip_address, name, port, port_or_name
from lbd.config.yamlsrc import YSeq
from lbd.model import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    MAX_AFFINITY_TIMEOUT_SECONDS,
    Endpoint,
    IPAddress,
    Probe,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TrafficPolicy,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # an EndpointSlice's Service
# Said when an exposed service has no endpoint object at all: its table row shows `0/0`.
NO_ENDPOINTS_NATIVE = ("no endpoints: list the backends under `endpoints:` (e.g. [10.0.0.11, \"10.0.0.12:8080\"]); "
                       "until then every connection to its VIP is reset")


def no_endpoints_in_manifests(namespace: str, service: str, workload: str | None) -> str:
    """Where a Service's endpoints come from in manifests; `workload` is one its selector matches."""
    pods = (f" ({workload} matches its selector, but lbd cannot see pods: write their addresses "
            "in an EndpointSlice)" if workload else "")
    return (f"no endpoints: lbd takes them from EndpointSlices labelled {SERVICE_NAME_LABEL}={service} "
            f"in namespace {namespace}, or else from the Endpoints object {namespace}/{service}, and the "
            f"config has neither{pods}; until then every connection to its VIP is reset")


SERVICE_SPEC_FIELDS = (
    "type", "ports", "selector", "loadBalancerIP", "sessionAffinity", "sessionAffinityConfig",
    "externalTrafficPolicy", "ipFamilies", "clusterIP",
)
SERVICE_PORT_FIELDS = ("name", "port", "targetPort", "protocol")

SERVICE_TYPES = {t.value: t for t in ServiceType}
PROTOCOLS = {p.value: p for p in Protocol}
AFFINITIES = {a.value: a for a in SessionAffinity}
TRAFFIC_POLICIES = {p.value: p for p in TrafficPolicy}
IP_FAMILIES = {"IPv4": 4, "IPv6": 6}


@dataclass(frozen=True, slots=True)
class PortDraft:
    """A service port whose targetPort may still be a name."""

    name: str
    port: int
    target: int | str
    protocol: Protocol
    target_loc: Loc


@dataclass(frozen=True, slots=True)
class SpecDraft:
    """The spec part of a Service, validated; named target ports are resolved later."""

    type: ServiceType
    ports: tuple[PortDraft, ...]
    selector: tuple[tuple[str, str], ...]
    load_balancer_ip: IPAddress | None
    load_balancer_ip_loc: Loc
    session_affinity: SessionAffinity
    affinity_timeout_seconds: int
    external_traffic_policy: TrafficPolicy
    ip_family: int | None
    headless: bool


def _protocol(value: Any, loc: Loc) -> Protocol:
    if value == "SCTP":
        loc.error("SCTP is not supported by lbd (TCP or UDP)")
        return Protocol.TCP
    return choice(value, loc, PROTOCOLS, Protocol.TCP)


def service_ports(f: Fields, *, ignored: Collection[str], required: bool) -> tuple[PortDraft, ...]:
    """spec.ports with Kubernetes' rules: names unique and required when several; (protocol, port) unique."""
    entries = list(f.items("ports"))
    given = f.get("ports")
    if required and f.valid and (given is None or (isinstance(given, YSeq) and not given)):
        f.at("ports").error("a service needs at least one port")
    drafts: list[PortDraft] = []
    names: dict[str, int] = {}
    keys: dict[tuple[Protocol, int], int] = {}
    for position, item, where in entries:
        p = Fields(item, where, SERVICE_PORT_FIELDS, ignored=ignored)
        port_name = ""
        if "name" in p:
            port_name = name(p.get("name"), p.at("name"), DNS1123_LABEL, "port name") or ""
            if port_name in names:
                p.at("name").error(f"duplicate port name {port_name!r} (also ports[{names[port_name]}])")
            names.setdefault(port_name, position)
        elif len(entries) > 1:
            p.at("name").error("a port name is required when a service has more than one port")
        number = port(p.get("port"), p.at("port")) if p.require("port") else None
        protocol = _protocol(p.get("protocol"), p.at("protocol")) if "protocol" in p else Protocol.TCP
        target: int | str | None = number
        if "targetPort" in p:
            target = port_or_name(p.get("targetPort"), p.at("targetPort"))
        if number is None or target is None:
            continue
        if (protocol, number) in keys:
            p.at("port").error(f"duplicate port {number}/{protocol} (also ports[{keys[protocol, number]}])")
        keys.setdefault((protocol, number), position)
        drafts.append(PortDraft(port_name, number, target, protocol, p.at("targetPort")))
    return tuple(drafts)


def service_spec(f: Fields, default_type: ServiceType, *, port_ignored: Collection[str] = ()) -> SpecDraft:
    """The fields a native service and a v1 Service spec share, with Kubernetes' defaults.

    `default_type` differs: a native service is there to be load-balanced, while a v1 Service
    without spec.type is a ClusterIP one, as in Kubernetes.
    """
    kind = f.choice("type", SERVICE_TYPES, default_type)

    headless = False
    if "clusterIP" in f:
        cluster_ip = f.get("clusterIP")
        if cluster_ip == "None":
            headless = True
            if kind is not ServiceType.CLUSTER_IP:
                f.at("clusterIP").error(f"a {kind} service cannot be headless (clusterIP: None needs type ClusterIP)")
        elif cluster_ip != "":
            ip_address(cluster_ip, f.at("clusterIP"))  # checked, not used: lbd serves VIPs, not cluster IPs

    ports = service_ports(f, ignored=port_ignored, required=not headless)

    selector = f.string_map("selector")

    load_balancer_ip = None
    if f.get("loadBalancerIP") not in (None, ""):
        load_balancer_ip = ip_address(f.get("loadBalancerIP"), f.at("loadBalancerIP"))

    affinity = f.choice("sessionAffinity", AFFINITIES, SessionAffinity.NONE)
    timeout = DEFAULT_AFFINITY_TIMEOUT_SECONDS
    if "sessionAffinityConfig" in f:
        if affinity is SessionAffinity.NONE:
            f.at("sessionAffinityConfig").error("must not be set when sessionAffinity is None")
        config = f.sub("sessionAffinityConfig", ("clientIP",))
        client_ip = config.sub("clientIP", ("timeoutSeconds",))
        timeout = client_ip.integer(
            "timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT_SECONDS, minimum=1, maximum=MAX_AFFINITY_TIMEOUT_SECONDS
        ) or DEFAULT_AFFINITY_TIMEOUT_SECONDS

    policy = f.choice("externalTrafficPolicy", TRAFFIC_POLICIES, TrafficPolicy.CLUSTER)

    ip_family = None
    families = [choice(v, where, IP_FAMILIES, 0) for _, v, where in f.items("ipFamilies")]
    if len(families) > 2 or (len(families) == 2 and families[0] == families[1]):
        f.at("ipFamilies").error("expected [IPv4], [IPv6] or both families once each")
    elif families and families[0]:
        ip_family = families[0]

    return SpecDraft(
        kind, ports, tuple(sorted(selector.items())), load_balancer_ip, f.at("loadBalancerIP"),
        affinity, timeout, policy, ip_family, headless,
    )


def build_service(
    service_name: str,
    namespace: str,
    spec: SpecDraft,
    annotations: ServiceAnnotations,
    ports: tuple[ServicePort, ...],
    endpoints: tuple[Endpoint, ...],
    readiness_probe: Probe | None,
) -> Service:
    """The model Service, after checking what only the whole service can tell."""
    requested = annotations.requested_ips
    if spec.load_balancer_ip is not None:
        if annotations.requested_ips_loc is not None:
            spec.load_balancer_ip_loc.error(
                f"cannot be used together with the {IPS_ANNOTATION} annotation; keep only the annotation"
            )
        requested = (spec.load_balancer_ip,)
    return Service(
        name=service_name,
        namespace=namespace,
        type=spec.type,
        ports=ports,
        endpoints=endpoints,
        selector=spec.selector,
        requested_ips=requested,
        address_pool=annotations.address_pool,
        allow_shared_ip=annotations.allow_shared_ip,
        ip_family=spec.ip_family,
        session_affinity=spec.session_affinity,
        affinity_timeout_seconds=spec.affinity_timeout_seconds,
        external_traffic_policy=spec.external_traffic_policy,
        readiness_probe=readiness_probe,
        idle_timeout_seconds=annotations.idle_timeout_seconds,
        udp_flow_timeout_seconds=annotations.udp_flow_timeout_seconds,
        udp_max_flows=annotations.udp_max_flows,
        headless=spec.headless,
    )


@dataclass(frozen=True, slots=True)
class PlacedService:
    """A built Service and where its name was given, for duplicate errors."""

    service: Service
    name_loc: Loc


def check_services(services: list[PlacedService]) -> None:
    seen: dict[str, PlacedService] = {}
    for placed in services:
        first = seen.setdefault(placed.service.key, placed)
        if first is not placed:
            placed.name_loc.error(
                f"duplicate Service {placed.service.key} (first defined at {first.name_loc.where()})"
            )
