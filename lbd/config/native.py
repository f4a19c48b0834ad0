"""lbd's own config format: one YAML document with `interfaces`, `pools` and `services`.

Field names and defaults are Kubernetes' and MetalLB's, flattened: a service carries its
ports, endpoints and readinessProbe itself, since there are no pods to look them up in.
"""

from __future__ import annotations

from typing import Any

from lbd.config import pools, probes
from lbd.config import values as v
from lbd.config.annotations import service_annotations
from lbd.config.collected import Collected
from lbd.config.reading import Fields, Loc, describe
from lbd.config.services import (
    NO_ENDPOINTS_NATIVE,
    SERVICE_SPEC_FIELDS,
    PlacedService,
    build_service,
    service_spec,
)
from lbd.config.yamlsrc import YMap, YSeq
from lbd.model import DEFAULT_NAMESPACE, Endpoint, IPAddress, ServicePort, ServiceType

TOP_FIELDS = ("interfaces", "pools", "services")
POOL_FIELDS = ("name", "addresses", "autoAssign", "avoidBuggyIPs")
SERVICE_FIELDS = ("name", "namespace", "annotations", "endpoints", "readinessProbe", *SERVICE_SPEC_FIELDS)
ENDPOINT_FIELDS = ("address", "port", "nodeName", "ready", "serving", "terminating")


def read(content: YMap, loc: Loc, into: Collected) -> None:
    """Add one native document's interfaces, pools and services to `into`."""
    f = Fields(content, loc, TOP_FIELDS)
    for _, item, where in f.items("interfaces"):
        interface = v.interface_name(item, where)
        if interface is not None:
            into.interfaces.append(interface)
    for position, item, where in f.items("pools"):
        _pool(item, where, position, into)
    for position, item, where in f.items("services"):
        _service(item, where, position, into)


def _raw(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, YMap) else None


def _pool(item: Any, where: Loc, position: int, into: Collected) -> None:
    given = _raw(item, "name")
    label = given if isinstance(given, str) else f"pools[{position}]"
    f = Fields(item, where.of(f"IPAddressPool {label}"), POOL_FIELDS)
    pool_name = v.name(f.get("name"), f.at("name"), v.DNS1123_SUBDOMAIN, "pool name") if f.require("name") else None
    draft = pools.pool(pool_name or "", f, f.at("name"))
    if pool_name is not None:
        into.pools.append(draft)


def _service(item: Any, where: Loc, position: int, into: Collected) -> None:
    given, given_ns = _raw(item, "name"), _raw(item, "namespace")
    namespace_text = given_ns if isinstance(given_ns, str) else DEFAULT_NAMESPACE
    label = f"{namespace_text}/{given}" if isinstance(given, str) else f"services[{position}]"
    f = Fields(item, where.of(f"Service {label}"), SERVICE_FIELDS)

    service_name = v.name(f.get("name"), f.at("name"), v.DNS1035_LABEL, "Service name") if f.require("name") else None
    namespace: str | None = DEFAULT_NAMESPACE
    if "namespace" in f:
        namespace = v.name(f.get("namespace"), f.at("namespace"), v.DNS1123_LABEL, "namespace")
    spec = service_spec(f, ServiceType.LOAD_BALANCER)
    annotations = service_annotations(f.get("annotations"), f.at("annotations"))

    ports: list[ServicePort] = []
    for draft in spec.ports:
        if isinstance(draft.target, str):
            draft.target_loc.error(
                f"named targetPort {draft.target!r} cannot be resolved in the native format "
                "(there are no pods to look it up in); give the port number"
            )
            continue
        ports.append(ServicePort(draft.name, draft.port, draft.target, draft.protocol))

    raw_ports = f.get("ports")
    endpoints = _endpoints(f, len(raw_ports) if isinstance(raw_ports, YSeq) else 0)

    probe = None
    if "readinessProbe" in f:
        # A named probe port means the service port of that name, i.e. its targetPort.
        by_name = {p.name: p.target_port for p in ports if p.name}
        probe = probes.probe(
            f.get("readinessProbe"), f.at("readinessProbe"), by_name.get,
            "no port of this service has that name (a named probe port uses that port's targetPort)",
        )
        probe = probes.for_service(probe, ports)

    if service_name is None or namespace is None:
        return
    service = build_service(service_name, namespace, spec, annotations, tuple(ports), endpoints, probe)
    if service.exposed and "endpoints" not in f:  # `endpoints: []` is meant; a missing list is a slip
        f.loc.warn(NO_ENDPOINTS_NATIVE)
    into.services.append(PlacedService(service, f.at("name")))


def _endpoints(f: Fields, port_count: int) -> tuple[Endpoint, ...]:
    """`endpoints`: 'IP', 'IP:PORT', '[IPv6]:PORT' or {address, port, nodeName, ready, serving, terminating}.

    The conditions default as in an EndpointSlice: ready true, serving true, terminating false.
    """
    endpoints: list[Endpoint] = []
    seen: dict[tuple[IPAddress, int | None], int] = {}
    for position, item, where in f.items("endpoints"):
        node_name, ready, serving, terminating, number = None, True, True, False, None
        if isinstance(item, str):
            parsed = v.endpoint_text(item, where)
            if parsed is None:
                continue
            address, number = parsed
        elif isinstance(item, YMap):
            e = Fields(item, where, ENDPOINT_FIELDS)
            address = v.endpoint_ip(e.get("address"), e.at("address")) if e.require("address") else None
            if "port" in e:
                number = v.port(e.get("port"), e.at("port"))
            node_name = e.string("nodeName")
            ready = e.boolean("ready", True)
            serving = e.boolean("serving", True)
            terminating = e.boolean("terminating", False)
            if address is None:
                continue
        else:
            where.error(f"expected an address ('10.0.0.1', '10.0.0.1:8080') or a mapping, got {describe(item)}")
            continue
        if number is not None and port_count != 1:
            # Which of several ports would the override replace? Kubernetes has no answer either.
            where.error(
                f"an endpoint port ({number}) is allowed only when the service has exactly one port "
                f"(it has {port_count}); set targetPort on the ports instead"
            )
        if (address, number) in seen:
            shown = item if isinstance(item, str) else address
            where.error(f"duplicate endpoint {shown} (also endpoints[{seen[address, number]}])")
            continue
        seen[address, number] = position
        endpoints.append(Endpoint(address, number, node_name, ready, serving, terminating))
    return tuple(endpoints)
