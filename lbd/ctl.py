"""`lbd get | describe | drain | undrain`: kubectl's habits over the admin socket.

    lbd get services|svc [NAME] [-n NS] [-o wide|json|yaml]
    lbd get endpoints|ep [SERVICE]      lbd get pools      lbd get events [SERVICE]      lbd get nodes
    lbd describe service|svc NAME [-n NS]
    lbd drain endpoint SERVICE ADDRESS[:PORT]      lbd undrain endpoint SERVICE ADDRESS[:PORT]

NAME may be NAMESPACE/NAME; -n picks the namespace otherwise (default: every namespace for
lists, `default` for one object). When no daemon answers, one line says so and the exit is 1.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbd.options import DEFAULT_ADMIN_SOCKET

RESOURCES = {  # kubectl's names and short names -> ours
    "services": "services", "service": "services", "svc": "services",
    "endpoints": "endpoints", "endpoint": "endpoints", "ep": "endpoints",
    "pools": "pools", "pool": "pools", "ipaddresspools": "pools", "ipaddresspool": "pools",
    "events": "events", "event": "events", "ev": "events",
    "nodes": "nodes", "node": "nodes", "no": "nodes",
}


def add_commands(sub: Any) -> None:
    """The parsers of get, describe, drain and undrain."""
    get = sub.add_parser("get", help="show what the running daemon serves: services, endpoints, pools, events")
    get.add_argument("resource", choices=sorted(RESOURCES), metavar="RESOURCE",
                     help="services (svc), endpoints (ep), pools, events (ev), nodes (no: cluster members)")
    get.add_argument("name", nargs="?", help="one service (NAME or NAMESPACE/NAME); for endpoints and events: "
                                             "the service whose endpoints or events to show")
    _common(get)
    get.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")

    describe = sub.add_parser("describe", help="one service in full: ports, VIP, probe, endpoints, recent events")
    describe.add_argument("resource", choices=["service", "services", "svc"], metavar="service")
    describe.add_argument("name", help="NAME or NAMESPACE/NAME")
    _common(describe)

    for verb, words in (("drain", "no new connections or flows to an endpoint; established ones finish"),
                        ("undrain", "end a drain: the endpoint is back in rotation")):
        cmd = sub.add_parser(verb, help=words)
        cmd.add_argument("resource", choices=["endpoint", "ep"], metavar="endpoint")
        cmd.add_argument("service", help="NAME or NAMESPACE/NAME")
        cmd.add_argument("endpoint", help="ADDRESS, ADDRESS:PORT or [IPv6]:PORT")
        _common(cmd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="the namespace (default: all for lists, `default` for one object)")
    p.add_argument("--admin-socket", default=str(DEFAULT_ADMIN_SOCKET))


def qualified(name: str, namespace: str | None) -> str:
    """NAMESPACE/NAME from NAME, -n NAMESPACE, or NAMESPACE/NAME."""
    return name if "/" in name else f"{namespace or 'default'}/{name}"


def ask(args: argparse.Namespace, method: str, route: str, **params: str | None) -> Any:
    from lbd.admin import request

    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return request(Path(args.admin_socket), method, route + (f"?{query}" if query else ""))


def _failing(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        from lbd.admin import AdminUnavailable

        try:
            return run(args)
        except AdminUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return wrapped


@_failing
def cmd_get(args: argparse.Namespace) -> int:
    from lbd import views

    resource, now = RESOURCES[args.resource], time.time()
    name = qualified(args.name, args.namespace) if args.name else None
    wide = args.output == "wide"
    if resource == "services":
        rows = ask(args, "GET", "/v1/services", name=name)
        if name is None and args.namespace:
            rows = [r for r in rows if r["namespace"] == args.namespace]
        if name is not None and not rows:
            print(f"error: no service {name}; `lbd get services` lists them", file=sys.stderr)
            return 1
        text = views.services_table(rows, now, wide=wide)
    elif resource == "endpoints":
        rows = ask(args, "GET", "/v1/endpoints", service=name)
        if name is None and args.namespace:
            rows = [r for r in rows if r["service"].startswith(f"{args.namespace}/")]
        text = views.endpoints_table(rows, wide=wide)
    elif resource == "pools":
        rows = ask(args, "GET", "/v1/pools")
        text = views.pools_table(rows, wide=wide)
    elif resource == "nodes":
        rows = ask(args, "GET", "/v1/nodes")
        text = views.nodes_table(rows, wide=wide)
    else:
        rows = ask(args, "GET", "/v1/events", service=name)
        text = views.events_table(rows, now)
    print(views.dump(rows, args.output) if args.output in ("json", "yaml") else text)
    return 0


@_failing
def cmd_describe(args: argparse.Namespace) -> int:
    from lbd import views

    name = qualified(args.name, args.namespace)
    rows = ask(args, "GET", "/v1/services", name=name)
    if not rows:
        print(f"error: no service {name}; `lbd get services` lists them", file=sys.stderr)
        return 1
    events = ask(args, "GET", "/v1/events", service=name)
    print(views.describe_service(rows[0], events, time.time()))
    return 0


@_failing
def cmd_drain(args: argparse.Namespace) -> int:
    route = "/v1/drain" if args.command == "drain" else "/v1/undrain"
    answer = ask(args, "POST", route, service=qualified(args.service, args.namespace), endpoint=args.endpoint)
    verb = "draining" if answer["draining"] else "undrained"
    note = "" if answer["changed"] else " (it already was)"
    print(f"endpoint {answer['endpoint']} {verb}{note}")
    return 0


HANDLERS = {"get": cmd_get, "describe": cmd_describe, "drain": cmd_drain, "undrain": cmd_drain}
