"""The Service annotations lbd reads (metallb.io/*, legacy metallb.universe.tf/*, lbd.io/*)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lbd.config.reading import Loc, describe, did_you_mean, show
from lbd.config.values import duration, integer_text, ip_address
from lbd.config.yamlsrc import YMap
from lbd.model import DEFAULT_UDP_FLOW_TIMEOUT, DEFAULT_UDP_MAX_FLOWS, MAX_UDP_MAX_FLOWS, IPAddress

POOL_ANNOTATION = "metallb.io/address-pool"
IPS_ANNOTATION = "metallb.io/loadBalancerIPs"
SHARED_ANNOTATION = "metallb.io/allow-shared-ip"
IDLE_TIMEOUT_ANNOTATION = "lbd.io/idle-timeout"
UDP_FLOW_TIMEOUT_ANNOTATION = "lbd.io/udp-flow-timeout"
UDP_MAX_FLOWS_ANNOTATION = "lbd.io/udp-max-flows"
METALLB_PREFIX = "metallb.io/"
LEGACY_METALLB_PREFIX = "metallb.universe.tf/"  # MetalLB < 0.14 spelling, still accepted
KNOWN_ANNOTATIONS = (
    POOL_ANNOTATION,
    IPS_ANNOTATION,
    SHARED_ANNOTATION,
    IDLE_TIMEOUT_ANNOTATION,
    UDP_FLOW_TIMEOUT_ANNOTATION,
    UDP_MAX_FLOWS_ANNOTATION,
)
# Annotations MetalLB itself writes back on services: valid, not ours to read.
_METALLB_STATUS_ANNOTATIONS = ("metallb.io/ip-allocated-from-pool",)


@dataclass(frozen=True, slots=True)
class ServiceAnnotations:
    """The annotations lbd reads from a Service, already typed."""

    address_pool: str | None = None
    requested_ips: tuple[IPAddress, ...] = ()
    allow_shared_ip: str | None = None
    idle_timeout_seconds: float | None = None
    requested_ips_loc: Loc | None = None  # where loadBalancerIPs was given (None: it wasn't)
    udp_flow_timeout_seconds: float = DEFAULT_UDP_FLOW_TIMEOUT
    udp_max_flows: int = DEFAULT_UDP_MAX_FLOWS


def _requested_ips(value: str, loc: Loc) -> tuple[IPAddress, ...]:
    addresses: list[IPAddress] = []
    for part in value.split(","):
        address = ip_address(part.strip(), loc)
        if address is None:
            continue
        if any(a.version == address.version for a in addresses):
            loc.error(f"{value!r} has more than one IPv{address.version} address (at most one IPv4 and one IPv6)")
            continue
        addresses.append(address)
    return tuple(addresses)


def service_annotations(value: Any, loc: Loc) -> ServiceAnnotations:
    """Read the annotations lbd understands; others are kept out of the model, not rejected."""
    if value is None:
        return ServiceAnnotations()
    if not isinstance(value, YMap):
        loc.error(f"expected a mapping, got {describe(value)}")
        return ServiceAnnotations()
    # Fold legacy keys into the new ones (the new spelling wins when both are given).
    chosen: dict[str, tuple[Any, Loc]] = {}
    for key, item in value.items():
        where = loc.key(key, value.value_line(key))
        if not isinstance(key, str):
            where.error(f"an annotation key must be a string, got {describe(key)}")
            continue
        current = key
        if key.startswith(LEGACY_METALLB_PREFIX):
            current = METALLB_PREFIX + key.removeprefix(LEGACY_METALLB_PREFIX)
            if current in KNOWN_ANNOTATIONS:
                loc.key(key, value.key_line(key)).warn(
                    f"annotation {key!r} is deprecated; use {current!r}"
                )
                if current in value:
                    if value[current] != item:
                        where.error(f"conflicts with {current!r} ({show(value[current])}); keep only {current!r}")
                    continue
        if current in KNOWN_ANNOTATIONS:
            chosen[current] = (item, where)
        elif current.startswith(("lbd.io/", METALLB_PREFIX)) and current not in _METALLB_STATUS_ANNOTATIONS:
            hint = did_you_mean(current, KNOWN_ANNOTATIONS)
            if current.startswith("lbd.io/") or hint:  # lbd.io/ is ours: every key there must be known
                loc.key(key, value.key_line(key)).warn(f"unknown annotation {key!r} is ignored{hint}")

    def text(key: str) -> tuple[str | None, Loc | None]:
        if key not in chosen:
            return None, None
        item, where = chosen[key]
        if not isinstance(item, str) or not item.strip():
            where.error(f"expected a non-empty string, got {describe(item)}")
            return None, where
        return item.strip(), where

    pool, _ = text(POOL_ANNOTATION)
    shared, _ = text(SHARED_ANNOTATION)
    ips_text, ips_loc = text(IPS_ANNOTATION)
    requested = _requested_ips(ips_text, ips_loc) if ips_text and ips_loc else ()
    idle = None
    if IDLE_TIMEOUT_ANNOTATION in chosen:
        idle = duration(*chosen[IDLE_TIMEOUT_ANNOTATION])
    flow_timeout = DEFAULT_UDP_FLOW_TIMEOUT
    if UDP_FLOW_TIMEOUT_ANNOTATION in chosen:
        flow_timeout = duration(*chosen[UDP_FLOW_TIMEOUT_ANNOTATION]) or DEFAULT_UDP_FLOW_TIMEOUT
    max_flows = DEFAULT_UDP_MAX_FLOWS
    if UDP_MAX_FLOWS_ANNOTATION in chosen:
        item, where = chosen[UDP_MAX_FLOWS_ANNOTATION]
        max_flows = integer_text(item, where, minimum=1, maximum=MAX_UDP_MAX_FLOWS) or DEFAULT_UDP_MAX_FLOWS
    return ServiceAnnotations(pool, requested, shared, idle, ips_loc, flow_timeout, max_flows)
