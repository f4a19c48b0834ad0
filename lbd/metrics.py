"""The metrics registry: one place that names every counter and gauge lbd exports.

Parts of lbd import the metric they update from here; `--metrics-address` serves REGISTRY
in Prometheus text format. Names follow MetalLB where MetalLB has one. Series of what goes
away (a service port, an endpoint, a pool, a VIP) are removed with it (`forget_*`), so churn
never grows the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import Callable, Collection
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lbd.errors import CannotStart

REGISTRY = CollectorRegistry(auto_describe=True)

# Allocator (MetalLB's names).
addresses_in_use = Gauge(
    "metallb_allocator_addresses_in_use_total", "IP addresses in use, by pool", ["pool"], registry=REGISTRY
)
addresses_total = Gauge(
    "metallb_allocator_addresses_total", "IP addresses usable, by pool", ["pool"], registry=REGISTRY
)

# Services by condition (lbd.status.ServiceState: the words logs and `lbd get` use).
services = Gauge("lbd_services", "Services by state (Serving, Pending, Failed, ...)", ["state"], registry=REGISTRY)

# TCP data plane.
connections_total = Counter(
    "lbd_connections_total", "Client connections accepted", ["service", "port"], registry=REGISTRY
)
connections_active = Gauge(
    "lbd_connections_active", "Client connections open now", ["service", "port"], registry=REGISTRY
)
connect_failures_total = Counter(
    "lbd_upstream_connect_failures_total",
    "Failed connection attempts to an endpoint (each is retried on the next endpoint)",
    ["service", "port", "endpoint", "reason"],
    registry=REGISTRY,
)
no_endpoint_resets_total = Counter(
    "lbd_no_endpoint_resets_total",
    "Client connections reset because no endpoint accepted",
    ["service", "port"],
    registry=REGISTRY,
)
local_resource_failures_total = Counter(
    "lbd_local_resource_failures_total",
    "Client connections reset because lbd itself ran out of a resource (errno: EMFILE, ENFILE, "
    "ENOBUFS, ENOMEM); no endpoint is blamed",
    ["errno"],
    registry=REGISTRY,
)
bytes_total = Counter(
    "lbd_bytes_total",
    "Bytes relayed; direction is client_to_endpoint or endpoint_to_client",
    ["service", "port", "direction"],
    registry=REGISTRY,
)

# UDP data plane.
udp_flows_active = Gauge("lbd_udp_flows_active", "UDP flows open now", ["service", "port"], registry=REGISTRY)
udp_flows_total = Counter(
    "lbd_udp_flows_total", "UDP flows by event: created, expired, evicted", ["service", "port", "event"], registry=REGISTRY
)
udp_datagrams_total = Counter(
    "lbd_udp_datagrams_total",
    "UDP datagrams relayed; direction is client_to_endpoint or endpoint_to_client",
    ["service", "port", "direction"],
    registry=REGISTRY,
)
udp_bytes_total = Counter(
    "lbd_udp_bytes_total", "UDP payload bytes relayed, by direction", ["service", "port", "direction"], registry=REGISTRY
)
udp_drops_total = Counter(
    "lbd_udp_drops_total",
    "UDP datagrams dropped: no_endpoint, would_block, flow_evicted, too_large, local_error",
    ["service", "port", "reason"],
    registry=REGISTRY,
)

# Active health checks (lbd.health): readiness by endpoint, probes by result, probe latency.
endpoint_ready = Gauge(
    "lbd_endpoint_ready",
    "1 when the endpoint is in its service's ready set (gets new connections), else 0",
    ["service", "endpoint"],
    registry=REGISTRY,
)
probes_total = Counter(
    "lbd_probes_total",
    "readinessProbe runs by kind (http, https, tcp) and result (success, failure, timeout, refused, error)",
    ["kind", "result"],
    registry=REGISTRY,
)
probe_duration = Histogram(
    "lbd_probe_duration_seconds",
    "readinessProbe latency, from connect to the answer (or the timeout)",
    ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)

# Layer 2 announcer (MetalLB's names).
gratuitous_sent_total = Counter(
    "metallb_layer2_gratuitous_sent_total", "Gratuitous ARP/NA packets sent, by VIP", ["ip"], registry=REGISTRY
)
requests_received_total = Counter(
    "metallb_layer2_requests_received_total", "ARP/NDP requests seen for a VIP", ["ip"], registry=REGISTRY
)
responses_sent_total = Counter(
    "metallb_layer2_responses_sent_total", "ARP/NDP answers sent for a VIP", ["ip"], registry=REGISTRY
)
# lbd's own: MetalLB has no such counter.
layer2_conflicts_total = Counter(
    "lbd_layer2_conflicts_total",
    "ARP/NA frames from another MAC claiming a VIP this node announces",
    ["ip"],
    registry=REGISTRY,
)


LISTENER_METRICS = (connections_total, connections_active, connect_failures_total, no_endpoint_resets_total,
                    bytes_total, udp_flows_active, udp_flows_total, udp_datagrams_total, udp_bytes_total,
                    udp_drops_total)
LAYER2_METRICS = (gratuitous_sent_total, requests_received_total, responses_sent_total, layer2_conflicts_total)
POOL_METRICS = (addresses_in_use, addresses_total)


def forget(metric: Any, keep: Callable[[dict[str, str]], bool] | None = None, **match: str) -> int:
    """Remove the children of `metric` whose labels include `match` (and that `keep` does not
    keep): the series of a removed service, endpoint, pool or VIP. Returns how many went."""
    names = list(metric._labelnames)
    positions = [(names.index(name), value) for name, value in match.items()]
    with metric._lock:  # prometheus-client's own: a scrape may be walking the children
        doomed = [
            key for key in metric._metrics
            if all(key[i] == value for i, value in positions) and not (keep and keep(dict(zip(names, key))))
        ]
    for key in doomed:
        with contextlib.suppress(KeyError):
            metric.remove(*key)
    return len(doomed)


def forget_listener(service: str, port: str) -> None:
    """A service port no listener serves any more: every series of it goes."""
    for metric in LISTENER_METRICS:
        forget(metric, service=service, port=port)


def forget_endpoint(service: str, port: str, endpoint: str) -> None:
    forget(connect_failures_total, service=service, port=port, endpoint=endpoint)


def forget_vip(ip: str) -> None:
    for metric in LAYER2_METRICS:
        forget(metric, ip=ip)


def keep_pools(names: Collection[str]) -> None:
    """Drop the series of pools that are not in the config any more."""
    for metric in POOL_METRICS:
        forget(metric, keep=lambda labels: labels["pool"] in names)


# ---- the exposition server ---------------------------------------------------------------------

# A scrape must send its request within this; idle and slow clients are cut off (prometheus-
# client's server kept one thread per idle connection, with no timeout: 2,961 threads seen).
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 8192
# Connections served at once; more are closed at once (Prometheus scrapes with one).
MAX_CLIENTS = 32
# Scrapes within this many seconds of the last exposition get the same bytes: back-to-back
# scrapes cost one rendering per second at most (rendering runs in a worker thread).
CACHE_SECONDS = 1.0


class MetricsServer:
    """Serves REGISTRY over HTTP from the event loop: no thread per connection, read and write
    timeouts, a cap on clients, and the exposition rendered off the loop at most once a second."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
        self.host, self.port = host, port
        self.registry = registry
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._render_lock: asyncio.Lock | None = None
        self._cached: tuple[float, bytes] | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._render_lock = asyncio.Lock()
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_REQUEST_BYTES, reuse_address=True
            )
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise CannotStart(f"cannot serve metrics on {self.address}: {why}; choose another --metrics-address") from exc
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        structlog.get_logger("lbd.metrics").info("metrics_listening", address=self.address)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CLIENTS:
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
            status, body = await self._answer(method, urllib.parse.urlsplit(target).path)
            header = (f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(header if method == "HEAD" else header + body)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
                UnicodeDecodeError, OSError):
            writer.transport.abort()  # idle, slow, malformed or gone: no answer is owed
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, method: str, path: str) -> tuple[str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n"
        if path not in ("/metrics", "/"):
            return "404 Not Found", b"metrics are at /metrics\n"
        return "200 OK", await self._exposition()

    async def _exposition(self) -> bytes:
        assert self._render_lock is not None
        async with self._render_lock:  # one rendering at a time; the others get its bytes
            loop = asyncio.get_running_loop()
            if self._cached is None or loop.time() - self._cached[0] >= CACHE_SECONDS:
                body = await asyncio.to_thread(generate_latest, self.registry)
                self._cached = (loop.time(), body)
            return self._cached[1]
