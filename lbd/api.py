"""The admin API's routes: what `lbd get`, `describe`, `reload` and `drain` ask, answered as JSON.

The transport (a unix socket, HTTP/1.0) is lbd.admin; the words are lbd.status's. Every handler
reads the daemon's state as it is now; the only writes are a reload and drain/undrain, which
go through the reconciler like every other change.

    GET  /v1/services[?name=NS/NAME]       service status objects (`lbd get services -o json`)
    GET  /v1/endpoints[?service=NS/NAME]   one row per endpoint and its readiness
    GET  /v1/pools                         pools, their addresses and how many are in use
    GET  /v1/events[?service=NS/NAME]      recent events, oldest first
    GET  /v1/nodes                         cluster members, lease TTLs and the VIPs each holds
    POST /v1/reload[?allow_empty=true]     re-read the config; the answer says what changed
    POST /v1/drain?service=S&endpoint=A    no new connections or flows to A; `undrain` ends it
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any

from lbd.admin import AdminError, Handler, Request
from lbd.allocator import usable_addresses
from lbd.model import DEFAULT_NAMESPACE, Service
from lbd.readiness import Drain
from lbd.status import StatusDict, StatusView, statuses

if TYPE_CHECKING:
    from lbd.daemon import Daemon


def service_statuses(daemon: Daemon) -> list[StatusDict]:
    """Every service's status object, with what only the running daemon knows."""
    r = daemon.reconciler
    usage = daemon.listeners.usage(time.monotonic())
    assignments = r.allocation.assignments if r.allocation is not None else {}
    view = StatusView(r.conditions, r.readiness, usage.ejected, usage.active, daemon.health.last_results(),
                      r.first_seen, usage.connections)
    return statuses(r.model.services, assignments, view)


def endpoint_rows(rows: list[StatusDict]) -> list[dict[str, Any]]:
    """One row per endpoint of every service (`lbd get endpoints`)."""
    out = []
    for row in rows:
        for endpoint in row["endpoints"]:
            out.append({"service": f"{row['namespace']}/{row['name']}", **endpoint})
    return out


def pool_rows(daemon: Daemon) -> list[dict[str, Any]]:
    r = daemon.reconciler
    in_use = r.allocation.in_use_by_pool() if r.allocation is not None else {}
    return [
        {
            "name": pool.name,
            "addresses": [str(a) for a in pool.ranges],
            "used": in_use.get(pool.name, 0),
            "total": usable_addresses(pool),
            "autoAssign": pool.auto_assign,
            "avoidBuggyIPs": pool.avoid_buggy_ips,
        }
        for pool in r.model.pools
    ]


def find_service(daemon: Daemon, name: str | None) -> Service:
    """NS/NAME or NAME (namespace default), as kubectl takes it; 404 with the fix otherwise."""
    if not name:
        raise AdminError(400, "say which service: service=NAMESPACE/NAME")
    key = name if "/" in name else f"{DEFAULT_NAMESPACE}/{name}"
    service = daemon.reconciler.model.service(key)
    if service is None:
        raise AdminError(404, f"no service {key}; `lbd get services` lists them")
    return service


def parse_endpoint(service: Service, text: str | None) -> Drain:
    """ADDRESS, ADDRESS:PORT or [IPv6]:PORT of one of `service`'s endpoints."""
    if not text:
        raise AdminError(400, "say which endpoint: endpoint=ADDRESS[:PORT]")
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
        number = int(port) if port is not None else None
    except ValueError:
        raise AdminError(400, f"{text!r} is not ADDRESS[:PORT] (IPv6 with a port: [ADDRESS]:PORT)") from None
    drain = Drain(service.key, address, number)
    if not any(drain.matches(service, ep) for ep in service.endpoints):
        known = ", ".join(str(ep.address) for ep in service.endpoints) or "none"
        raise AdminError(404, f"{service.key} has no endpoint {text} (its endpoints: {known})")
    return drain


def routes(daemon: Daemon) -> dict[tuple[str, str], Handler]:
    async def get_services(request: Request) -> list[StatusDict]:
        rows = service_statuses(daemon)
        name = request.param("name")
        if name is not None:
            rows = [r for r in rows if name in (r["name"], f"{r['namespace']}/{r['name']}")]
        return rows

    async def get_endpoints(request: Request) -> list[dict[str, Any]]:
        rows = endpoint_rows(service_statuses(daemon))
        name = request.param("service")
        if name is not None:
            key = find_service(daemon, name).key
            rows = [r for r in rows if r["service"] == key]
        return rows

    async def get_pools(request: Request) -> list[dict[str, Any]]:
        return pool_rows(daemon)

    async def get_events(request: Request) -> list[dict[str, Any]]:
        name = request.param("service")
        key = find_service(daemon, name).key if name else None
        return [e.as_dict() for e in daemon.events.recent(key, limit=1000)]

    async def get_nodes(request: Request) -> list[dict[str, Any]]:
        return daemon.cluster.members() if daemon.cluster is not None else []

    async def post_reload(request: Request) -> dict[str, Any]:
        allow_empty = request.param("allow_empty", "false") in ("1", "true", "yes")
        return (await daemon.reload(allow_empty=allow_empty)).as_dict()

    async def post_drain(request: Request) -> dict[str, Any]:
        return await daemon.set_drain(parse_endpoint(find_service(daemon, request.param("service")),
                                                     request.param("endpoint")), True)

    async def post_undrain(request: Request) -> dict[str, Any]:
        return await daemon.set_drain(parse_endpoint(find_service(daemon, request.param("service")),
                                                     request.param("endpoint")), False)

    return {
        ("GET", "/v1/services"): get_services,
        ("GET", "/v1/endpoints"): get_endpoints,
        ("GET", "/v1/pools"): get_pools,
        ("GET", "/v1/events"): get_events,
        ("GET", "/v1/nodes"): get_nodes,
        ("POST", "/v1/reload"): post_reload,
        ("POST", "/v1/drain"): post_drain,
        ("POST", "/v1/undrain"): post_undrain,
    }
