"""readinessProbe with Kubernetes' defaults, for native services and workloads.

httpGet and tcpSocket run as written. exec and grpc cannot run from a load balancer (no shell
in the pod; no gRPC health client in lbd): they are accepted with a warning and checked as a
TCP connect instead, grpc on its own port, exec on the service's first targetPort (the port
traffic goes to). The model records what the TCP check stands in for, so `lbd check` says so.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

from lbd.config.reading import Fields, Loc
from lbd.config.values import port_or_name
from lbd.model import HTTPGetAction, Probe, ServicePort, TCPSocketAction

PROBE_FIELDS = (
    "httpGet", "tcpSocket", "initialDelaySeconds", "timeoutSeconds", "periodSeconds",
    "successThreshold", "failureThreshold",
)
# Valid in Kubernetes, but lbd cannot run them from outside: each becomes a TCP connect.
UNSUPPORTED_PROBE_ACTIONS = ("exec", "grpc")
ACTIONS = ("httpGet", "tcpSocket", *UNSUPPORTED_PROBE_ACTIONS)
# An exec probe's stand-in port until the probe meets its service (for_service fills it in);
# 0 is never a valid port, so it cannot be mistaken for one the user wrote.
_TRAFFIC_PORT = 0
HTTP_GET_FIELDS = ("path", "port", "host", "scheme", "httpHeaders")
_SCHEMES = {"HTTP": "HTTP", "HTTPS": "HTTPS"}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token

# Kubernetes defaults a 0 to these (SetDefaults_Probe), so 0 means "default" here too.
_PROBE_DEFAULTED = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}


def probe(
    value: Any,
    loc: Loc,
    resolve_port: Callable[[str], int | None],
    unresolved: str,
    *,
    ignored: Collection[str] = (),
) -> Probe | None:
    """A readinessProbe. Named ports go through `resolve_port`; `unresolved` explains a miss.

    An exec or grpc probe is a warning, not an error (a real cluster's manifests are valid; lbd
    just cannot run that check) and becomes a TCP connect: call `for_service` once the
    service's ports are known.
    """
    f = Fields(value, loc, (*PROBE_FIELDS, *UNSUPPORTED_PROBE_ACTIONS), ignored=ignored)
    if not f.valid:
        return None
    actions = [k for k in ACTIONS if k in f]
    if len(actions) != 1:
        which = "none" if not actions else ", ".join(actions)
        loc.error(f"a probe needs exactly one of httpGet, tcpSocket, grpc or exec (found {which})")
        return None
    action_name = actions[0]

    def probe_port(g: Fields) -> int | None:
        if not g.require("port"):
            return None
        given = port_or_name(g.get("port"), g.at("port"))
        if isinstance(given, str):
            resolved = resolve_port(given)
            if resolved is None:
                g.at("port").error(f"named port {given!r} is not resolved: {unresolved}")
            return resolved
        return given

    action: HTTPGetAction | TCPSocketAction | None
    if action_name == "httpGet":
        g = f.sub("httpGet", HTTP_GET_FIELDS)
        number = probe_port(g)
        path = g.string("path", default="/") or "/"
        # The kubelet joins host and path with '/', so 'health' means '/health'.
        path = path if path.startswith("/") else f"/{path}"
        headers: list[tuple[str, str]] = []
        for _, header, where in g.items("httpHeaders"):
            h = Fields(header, where, ("name", "value"))
            header_name = h.string("name", required=True)
            if header_name is not None and not _HEADER_NAME.fullmatch(header_name):
                h.at("name").error(f"{header_name!r} is not an HTTP header name")
                header_name = None
            header_value = h.string("value", default="")
            if header_value is not None and any(c in header_value for c in "\r\n\0"):
                h.at("value").error("a header value cannot hold a line break or NUL")
                header_value = None
            if header_name is not None and header_value is not None:
                headers.append((header_name, header_value))
        scheme = g.choice("scheme", _SCHEMES, "HTTP")
        host = g.string("host")
        action = None if number is None else HTTPGetAction(number, path, scheme, host or None, tuple(headers))
    elif action_name == "tcpSocket":
        g = f.sub("tcpSocket", ("port",))
        number = probe_port(g)
        action = None if number is None else TCPSocketAction(number)
    elif action_name == "grpc":
        g = f.sub("grpc", ("port", "service"))
        number = probe_port(g)
        action = None if number is None else TCPSocketAction(number, "grpc")
        if action is not None:
            f.key_at("grpc").warn(
                f"grpc probes cannot run from lbd (it has no gRPC health client): it checks a TCP "
                f"connect to port {number} instead"
            )
    else:
        f.sub("exec", ("command",))
        action = TCPSocketAction(_TRAFFIC_PORT, "exec")
        f.key_at("exec").warn(
            "exec probes cannot run from a load balancer: lbd checks a TCP connect to the "
            "service's first targetPort instead"
        )

    timings = {
        key: f.integer(key, minimum=0, default=0) or _PROBE_DEFAULTED[key] for key in _PROBE_DEFAULTED
    }
    initial_delay = f.integer("initialDelaySeconds", 0, minimum=0) or 0
    if action is None:
        return None
    return Probe(
        action,
        period_seconds=timings["periodSeconds"],
        timeout_seconds=timings["timeoutSeconds"],
        success_threshold=timings["successThreshold"],
        failure_threshold=timings["failureThreshold"],
        initial_delay_seconds=initial_delay,
    )


def for_service(probe: Probe | None, ports: Sequence[ServicePort]) -> Probe | None:
    """The probe as the service's endpoints run it: an exec stand-in gets the traffic port."""
    if probe is None or not isinstance(probe.action, TCPSocketAction) or probe.action.port != _TRAFFIC_PORT:
        return probe
    if not ports:
        return None  # nothing to connect to; the service has no port either
    return dataclasses.replace(probe, action=TCPSocketAction(ports[0].target_port, "exec"))
