"""readinessProbe (httpGet or tcpSocket) with Kubernetes' defaults, for native services and workloads."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from lbd.config.reading import Fields, Loc
from lbd.config.values import port_or_name
from lbd.model import HTTPGetAction, Probe, TCPSocketAction

PROBE_FIELDS = (
    "httpGet", "tcpSocket", "initialDelaySeconds", "timeoutSeconds", "periodSeconds",
    "successThreshold", "failureThreshold",
)
# Valid in Kubernetes, but lbd can only run httpGet and tcpSocket checks from outside.
UNSUPPORTED_PROBE_ACTIONS = ("exec", "grpc")
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
    unsupported_is_error: bool = True,
) -> Probe | None:
    """A readinessProbe. Named ports go through `resolve_port`; `unresolved` explains a miss.

    An exec/grpc probe is an error when `unsupported_is_error` (native format) and a warning
    otherwise (a real cluster's manifests are valid, lbd just cannot run that check).
    """
    f = Fields(value, loc, (*PROBE_FIELDS, *UNSUPPORTED_PROBE_ACTIONS), ignored=ignored)
    if not f.valid:
        return None
    actions = [k for k in ("httpGet", "tcpSocket", *UNSUPPORTED_PROBE_ACTIONS) if k in f]
    if len(actions) != 1:
        which = "none" if not actions else ", ".join(actions)
        loc.error(f"a probe needs exactly one of httpGet or tcpSocket (found {which})")
        return None
    action_name = actions[0]
    if action_name in UNSUPPORTED_PROBE_ACTIONS:
        message = f"{action_name} probes are not supported by lbd; use httpGet or tcpSocket"
        if unsupported_is_error:
            f.key_at(action_name).error(message)
        else:
            f.key_at(action_name).warn(message + " (this probe is ignored)")
        return None

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
            if header_name is not None and header_value is not None:
                headers.append((header_name, header_value))
        scheme = g.choice("scheme", _SCHEMES, "HTTP")
        host = g.string("host")
        action = None if number is None else HTTPGetAction(number, path, scheme, host or None, tuple(headers))
    else:
        g = f.sub("tcpSocket", ("port",))
        number = probe_port(g)
        action = None if number is None else TCPSocketAction(number)

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
