"""The metrics registry: one place that names every counter and gauge lbd exports.

Parts of lbd import the metric they update from here; `--metrics-address` serves REGISTRY
in Prometheus text format. Names follow MetalLB where MetalLB has one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

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


class MetricsServer:
    """Serves REGISTRY over HTTP (prometheus-client's threaded server), started and stopped with lbd."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server: Any = None

    async def start(self) -> None:
        self._server, _ = start_http_server(self.port, addr=self.host, registry=REGISTRY)
        structlog.get_logger("lbd.metrics").info("metrics_listening", address=f"{self.host}:{self.port}")

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)  # waits for serve_forever's poll (<= 0.5 s)
            server.server_close()
