"""The metrics registry: one place that names every counter and gauge lbd exports.

Parts of lbd import the metric they update from here; `--metrics-address` serves REGISTRY
in Prometheus text format. Names follow MetalLB where MetalLB has one, exactly, so its
dashboards and alerts work unchanged: its counters carry no `_total` (Go's client adds no
suffix; prometheus-client's Counter does, see BareCounter), and no series has a `_created`
sibling. Series of what goes away (a service port, an endpoint, a pool, a VIP) are removed with
it (`forget_*`, lbd.relay.books), so churn never grows the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.samples import Sample

from lbd.errors import CannotStart

# `_created` series (a counter's or histogram's creation time, an OpenMetrics notion) double
# the series count and neither MetalLB nor any lbd dashboard reads them. Process-wide, read at
# every collection.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

# The names of BareCounters: their HELP and TYPE lines lose the `_total` generate_latest adds.
_BARE_COUNTERS: set[str] = set()


class BareCounter(Counter):
    """A Counter exposed under its exact name, as Go's client exposes MetalLB's: no `_total`.

    prometheus-client names a counter's sample `<name>_total` whatever the name; its text
    exposition also writes `<name>_total` in the HELP and TYPE lines, which `exposition()`
    puts right. (prometheus-client's own parser reads such a family back with `_total`
    appended to its samples; Prometheus keeps the names as they are.)
    """

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(name, documentation, labelnames, **kwargs)
        _BARE_COUNTERS.add(name)

    def _child_samples(self) -> Iterable[Sample]:
        return (Sample("", {}, self._value.get(), None, None),)


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

# The same per endpoint (`endpoint` is ip:port, as in lbd_upstream_connect_failures_total):
# plain ints in each listener's books (lbd.relay.books), flushed by its housekeeping.
endpoint_connections_active = Gauge(
    "lbd_endpoint_connections_active",
    "Relayed TCP connections open to the endpoint now",
    ["service", "port", "endpoint"],
    registry=REGISTRY,
)
endpoint_connections_total = Counter(
    "lbd_endpoint_connections_total",
    "TCP connections relayed to the endpoint (its connect succeeded)",
    ["service", "port", "endpoint"],
    registry=REGISTRY,
)
endpoint_bytes_total = Counter(
    "lbd_endpoint_bytes_total",
    "TCP bytes relayed to and from the endpoint, counted when the connection ends; direction is "
    "client_to_endpoint or endpoint_to_client",
    ["service", "port", "endpoint", "direction"],
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

# The same per endpoint.
endpoint_udp_flows_active = Gauge(
    "lbd_endpoint_udp_flows_active", "UDP flows open to the endpoint now", ["service", "port", "endpoint"],
    registry=REGISTRY,
)
endpoint_udp_flows_total = Counter(
    "lbd_endpoint_udp_flows_total", "UDP flows opened to the endpoint", ["service", "port", "endpoint"],
    registry=REGISTRY,
)
endpoint_udp_bytes_total = Counter(
    "lbd_endpoint_udp_bytes_total",
    "UDP payload bytes sent to and received from the endpoint, by direction",
    ["service", "port", "endpoint", "direction"],
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

# Layer 2 announcer: MetalLB's exact names, without `_total` (the Python names keep theirs, so
# lbd.net.l2 did not change).
gratuitous_sent_total = BareCounter(
    "metallb_layer2_gratuitous_sent", "Gratuitous ARP/NA packets sent, by VIP", ["ip"], registry=REGISTRY
)
requests_received_total = BareCounter(
    "metallb_layer2_requests_received", "ARP/NDP requests seen for a VIP", ["ip"], registry=REGISTRY
)
responses_sent_total = BareCounter(
    "metallb_layer2_responses_sent", "ARP/NDP answers sent for a VIP", ["ip"], registry=REGISTRY
)
# MetalLB's speaker gauge, its labels and meaning: 1 per service this node announces, by VIP.
speaker_announced = Gauge(
    "metallb_speaker_announced",
    "Services being announced from this node (1 per service and VIP; desired state: the ARP/NA "
    "may not have reached every neighbour)",
    ["service", "protocol", "node", "ip"],
    registry=REGISTRY,
)
LAYER2 = "layer2"  # MetalLB's protocol label value; lbd speaks no BGP
# lbd's own: MetalLB has no such counter.
layer2_conflicts_total = Counter(
    "lbd_layer2_conflicts_total",
    "ARP/NA frames from another MAC claiming a VIP this node announces",
    ["ip"],
    registry=REGISTRY,
)

# The running config. MetalLB's metallb_k8s_client_config_stale_bool says its Kubernetes client
# holds a config that failed to load; lbd has no such client (its config is a file, re-read on
# `lbd reload`/SIGHUP), so the name says what lbd means, in MetalLB's `_bool` style: alert on
# `lbd_config_stale_bool == 1` as on MetalLB's. The rest is what Prometheus' and Alertmanager's
# `*_config_last_reload_success_timestamp_seconds` users expect.
config_stale = Gauge(
    "lbd_config_stale_bool",
    "1 while lbd runs an older config because the last reload was rejected (the file's errors are in "
    "the log and in `lbd reload`'s answer); 0 once a config applied",
    registry=REGISTRY,
)
config_reloads_total = Counter(
    "lbd_config_reloads_total", "Config reloads by result: success (applied) or failure (rejected, old config kept)",
    ["result"], registry=REGISTRY,
)
config_last_success = Gauge(
    "lbd_config_last_reload_success_timestamp_seconds",
    "Unix time of the last config that applied (start-up included)",
    registry=REGISTRY,
)
for _result in ("success", "failure"):  # both series from the start: rate() and alerts see a 0
    config_reloads_total.labels(_result)


# Cluster mode (lbd.cluster): VIP ownership under etcd leases.
cluster_vip_transitions_total = Counter(
    "lbd_cluster_vip_transitions_total",
    "VIPs this node began or stopped answering for: acquired, released (handed over or not a candidate), "
    "fenced (its lease deadline passed, the lease or the key was lost)",
    ["event"], registry=REGISTRY,
)
cluster_failovers_total = Counter(
    "lbd_cluster_failovers_total", "VIPs this node took over after their owner's key went", registry=REGISTRY,
)
cluster_last_failover_seconds = Gauge(
    "lbd_cluster_last_failover_seconds",
    "The last takeover: seconds from seeing the previous owner's key deleted to answering here",
    registry=REGISTRY,
)
cluster_vip_owner = Gauge(
    "lbd_cluster_vip_owner", "1 per VIP and the node that holds it, as this node sees etcd", ["ip", "node"],
    registry=REGISTRY,
)
cluster_members = Gauge("lbd_cluster_members", "Nodes with a live lease and a membership record", registry=REGISTRY)
cluster_lease_ttl_seconds = Gauge(
    "lbd_cluster_lease_ttl_seconds", "This node's lease TTL as etcd granted it (0: no lease now)", registry=REGISTRY,
)
for _event in ("acquired", "released", "fenced"):
    cluster_vip_transitions_total.labels(_event)

TCP_ENDPOINT_METRICS = (endpoint_connections_active, endpoint_connections_total, endpoint_bytes_total)
UDP_ENDPOINT_METRICS = (endpoint_udp_flows_active, endpoint_udp_flows_total, endpoint_udp_bytes_total)
LISTENER_METRICS = (connections_total, connections_active, connect_failures_total, no_endpoint_resets_total,
                    bytes_total, udp_flows_active, udp_flows_total, udp_datagrams_total, udp_bytes_total,
                    udp_drops_total, *TCP_ENDPOINT_METRICS, *UDP_ENDPOINT_METRICS)
# What the data plane counts. With workers (lbd.workers) each process has its own and the
# control plane serves their sum, from one scrape.
DATAPLANE_METRICS = (*LISTENER_METRICS, local_resource_failures_total)
LAYER2_METRICS = (gratuitous_sent_total, requests_received_total, responses_sent_total, layer2_conflicts_total)
POOL_METRICS = (addresses_in_use, addresses_total)


def dataplane_names() -> frozenset[str]:
    """The family names of DATAPLANE_METRICS (a counter's without `_total`, as collected)."""
    return frozenset(family.name for metric in DATAPLANE_METRICS for family in metric.describe())


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


def config_applied(applied: bool, *, reload: bool = True, now: Callable[[], float] = time.time) -> None:
    """A config load's outcome: a reload's (success or rejection), or start-up's (not a reload)."""
    config_stale.set(0 if applied else 1)
    if reload:
        config_reloads_total.labels("success" if applied else "failure").inc()
    if applied:
        config_last_success.set(now())


def set_announced(node: str, services: Iterable[tuple[str, str]]) -> None:
    """metallb_speaker_announced: exactly these (service, VIP) pairs are announced from `node`.

    Only what changed is touched (prometheus-client is thread-safe: a reconcile pass calls this
    from a worker thread).
    """
    wanted = {(service, LAYER2, node, ip) for service, ip in services}
    with speaker_announced._lock:  # prometheus-client's own: a scrape may be walking the children
        exported = set(speaker_announced._metrics)
    for labels in exported - wanted:
        with contextlib.suppress(KeyError):
            speaker_announced.remove(*labels)
    for labels in wanted - exported:
        speaker_announced.labels(*labels).set(1)


def forget_vip(ip: str) -> None:
    for metric in LAYER2_METRICS:
        forget(metric, ip=ip)


def keep_pools(names: Collection[str]) -> None:
    """Drop the series of pools that are not in the config any more."""
    for metric in POOL_METRICS:
        forget(metric, keep=lambda labels: labels["pool"] in names)


# ---- the exposition server ---------------------------------------------------------------------

def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format, BareCounters' HELP and TYPE lines under their
    exact names (generate_latest writes every counter's as `<name>_total`)."""
    body = generate_latest(registry)
    for name in _BARE_COUNTERS:
        raw = name.encode()
        body = body.replace(b"# HELP " + raw + b"_total ", b"# HELP " + raw + b" ", 1)
        body = body.replace(b"# TYPE " + raw + b"_total counter\n", b"# TYPE " + raw + b" counter\n", 1)
    return body


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
                body = await asyncio.to_thread(exposition, self.registry)
                self._cached = (loop.time(), body)
            return self._cached[1]
