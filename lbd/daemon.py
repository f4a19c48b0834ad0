"""The daemon: wires model -> allocator -> announcer -> listeners -> routers, and keeps them in step.

`Daemon.apply(model)` is the one entry point that moves the running daemon to a new model
(start-up, SIGHUP reload); it diffs against what runs: unchanged services keep their listeners
and established connections, endpoint changes apply in place, removed services stop accepting,
drain and release their VIP. Stop order on release is MetalLB's: stop announcing, then drain,
then remove the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from lbd import config, metrics, state
from lbd.admin import AdminServer
from lbd.allocator import Allocation, allocate, usable_addresses
from lbd.balancer import Balancer
from lbd.config.errors import ConfigInvalid
from lbd.health.passive import PassiveHealth
from lbd.model import IPAddress, Model, Protocol, Service, ServicePort, TrafficPolicy
from lbd.net.announcer import Announcer
from lbd.relay.tcp import RelayOptions, TcpListener
from lbd.routing import ServiceRouter
from lbd.status import statuses

log = structlog.get_logger()

DEFAULT_STATE_DIR = Path("/var/lib/lbd")
DEFAULT_DRAIN_TIMEOUT = 30.0  # seconds; Kubernetes' default terminationGracePeriodSeconds


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    config_paths: tuple[str, ...]
    node_name: str
    state_dir: Path = DEFAULT_STATE_DIR
    admin_socket: Path | None = None
    metrics_address: tuple[str, int] | None = None
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    connect_timeout: float = 2.0
    garp_rounds: int = 5
    garp_interval: float = 1.1
    garp_refresh: float | None = None


def is_loopback(ip: IPAddress) -> bool:
    """Loopback VIPs need no address and no ARP: the daemon is usable on 127.0.0.0/8 alone."""
    return ip.is_loopback


@dataclass(slots=True)
class PortRuntime:
    """One listening (VIP, port) and the router behind it."""

    listener: TcpListener
    router: ServiceRouter
    balancer: Balancer
    passive: PassiveHealth
    affinity: tuple[str, int]


@dataclass(slots=True)
class ServiceRuntime:
    service: Service
    ip: IPAddress
    ports: dict[tuple[Protocol, int], PortRuntime] = field(default_factory=dict)


class Daemon:
    """Holds the running state; only `apply`, `reload` and `shutdown` change it."""

    def __init__(self, options: DaemonOptions, announcer: Announcer) -> None:
        self.options = options
        self.model = Model()
        self.allocation: Allocation | None = None
        self.services: dict[str, ServiceRuntime] = {}
        self.announcer = announcer
        self._bound_vips: set[IPAddress] = set()
        self._announced_vips: set[IPAddress] = set()
        self._releases: set[asyncio.Task[None]] = set()
        self._apply_lock = asyncio.Lock()
        self._admin: AdminServer | None = None
        self._started_at = time.time()
        self._pending_logged: dict[str, str] = {}
        self._udp_warned: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, model: Model) -> None:
        await self.announcer.start()
        previous = state.load_assignments(self.options.state_dir)
        allocation = allocate(model.pools, model.services, previous)
        # Crash leftovers go before anything is bound; wanted addresses stay (no gap in service).
        wanted = {a.ip for a in allocation.assignments.values() if a.ip is not None and not is_loopback(a.ip)}
        await self.announcer.reconcile(wanted)  # logs stale_vip_removed per address
        await self.apply(model, allocation=allocation)
        if self.options.admin_socket is not None:
            self._admin = AdminServer(self.options.admin_socket, self._routes())
            await self._admin.start()
        if self.options.metrics_address is not None:
            from prometheus_client import start_http_server

            host, port = self.options.metrics_address
            start_http_server(port, addr=host, registry=metrics.REGISTRY)
            log.info("metrics_listening", address=f"{host}:{port}")

    async def shutdown(self) -> None:
        """SIGTERM: stop accepting, stop announcing, drain, then remove every VIP and exit."""
        log.info("shutdown_started", drain_timeout=self.options.drain_timeout)
        listeners = [pr.listener for rt in self.services.values() for pr in rt.ports.values()]
        for listener in listeners:
            listener.stop_accepting()
        for ip in list(self._announced_vips):
            await self._withdraw(ip)
        aborted = await asyncio.gather(*(ls.drain(self.options.drain_timeout) for ls in listeners))
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
        for ip in list(self._bound_vips):
            await self._unbind(ip)
        await self.announcer.close()
        if self._admin is not None:
            await self._admin.close()
        log.info("shutdown_complete", aborted_connections=sum(aborted))

    async def reload(self) -> bool:
        """Re-read the config; an invalid one is logged in full and the old one keeps running."""
        try:
            loaded = config.load(self.options.config_paths)
        except ConfigInvalid as exc:
            for err in exc.errors:
                log.error("config_error", error=str(err))
            log.error("reload_rejected", errors=len(exc.errors))
            return False
        for warning in loaded.warnings:
            log.warning("config_warning", warning=str(warning))
        await self.apply(loaded.model)
        log.info("reload_applied", services=len(loaded.model.services))
        return True

    # ---- the one entry point that changes what runs ----------------------------------------

    async def apply(self, model: Model, allocation: Allocation | None = None) -> None:
        async with self._apply_lock:
            previous = self.allocation.sticky() if self.allocation else state.load_assignments(self.options.state_dir)
            if allocation is None:
                allocation = allocate(model.pools, model.services, previous)
            self.model, self.allocation = model, allocation
            try:
                state.save_assignments(self.options.state_dir, allocation.sticky())
            except OSError as exc:  # keep serving; stickiness across restarts is what is lost
                log.error("state_write_failed", state_dir=str(self.options.state_dir), error=str(exc))
            self._update_pool_metrics(model, allocation)

            # 1. Release what is gone or moved.
            for key, runtime in list(self.services.items()):
                service = model.service(key)
                new_ip = allocation.ip_of(key) if service is not None and service.exposed else None
                if new_ip != runtime.ip:
                    del self.services[key]
                    self._release_ports(runtime, list(runtime.ports))
                    log.info("service_released", service=key, ip=str(runtime.ip))

            # 2. Bring up or update what is wanted.
            for service in model.services:
                if not service.exposed:
                    continue
                assignment = allocation.assignments.get(service.key)
                if assignment is None or assignment.ip is None:
                    reason = assignment.pending_reason if assignment else "not allocated"
                    if self._pending_logged.get(service.key) != reason:
                        log.warning("AllocationFailed", service=service.key, reason=reason)
                        self._pending_logged[service.key] = reason or ""
                    continue
                self._pending_logged.pop(service.key, None)
                await self._ensure_service(service, assignment.ip)

            # 3. Announce VIPs now that their listeners are open; drop VIPs nobody uses.
            wanted_vips = {rt.ip for rt in self.services.values()}
            for ip in wanted_vips - self._announced_vips:
                if not is_loopback(ip):
                    await self.announcer.announce(ip)
                    self._announced_vips.add(ip)
            for ip in (self._announced_vips | self._bound_vips) - wanted_vips:
                self._schedule_vip_release(ip)

    async def _ensure_service(self, service: Service, ip: IPAddress) -> None:
        runtime = self.services.get(service.key)
        if runtime is None:
            if ip not in self._bound_vips and not is_loopback(ip):
                interface = await self.announcer.bind(ip)
                self._bound_vips.add(ip)
                log.info("vip_acquired", service=service.key, ip=str(ip), interface=interface)
            runtime = ServiceRuntime(service, ip)
            self.services[service.key] = runtime
            log.info("service_serving", service=service.key, ip=str(ip))
        runtime.service = service
        wanted: dict[tuple[Protocol, int], ServicePort] = {}
        for port in service.ports:
            if port.protocol is Protocol.UDP:
                if service.key not in self._udp_warned:
                    log.warning("udp_not_served_yet", service=service.key, port=port.port)
                    self._udp_warned.add(service.key)
                continue
            wanted[(port.protocol, port.port)] = port
        gone = [k for k in runtime.ports if k not in wanted]
        self._release_ports(runtime, gone)
        for port_key, port in wanted.items():
            affinity = (str(service.session_affinity), service.affinity_timeout_seconds)
            existing = runtime.ports.get(port_key)
            if existing is not None and existing.affinity != affinity:
                self._release_ports(runtime, [port_key])  # a new balancing policy starts afresh
                existing = None
            targets = self._targets(service, port)
            options = RelayOptions(
                connect_timeout=self.options.connect_timeout, idle_timeout=service.idle_timeout_seconds
            )
            if existing is not None:
                existing.balancer.update(targets)  # in place: round-robin position and affinity survive
                existing.listener.set_options(options)
                continue
            balancer = Balancer(service.session_affinity, service.affinity_timeout_seconds)
            balancer.update(targets)
            passive = PassiveHealth()
            router = ServiceRouter(balancer, passive, service=service.key, port=port.port)
            listener = TcpListener(str(ip), port.port, router, options, service=service.key, port_name=port.name)
            await listener.start()
            runtime.ports[port_key] = PortRuntime(listener, router, balancer, passive, affinity)
            log.info("listener_open", service=service.key, address=f"{ip}:{port.port}", protocol="TCP",
                     endpoints=len(targets))

    def _targets(self, service: Service, port: ServicePort) -> list[tuple[str, int]]:
        """Ready endpoints for one service port (externalTrafficPolicy Local: this node's only)."""
        local_only = service.external_traffic_policy is TrafficPolicy.LOCAL
        return [
            (str(ep.address), ep.target_port(port))
            for ep in service.endpoints
            if ep.ready and (not local_only or ep.node_name in (None, self.options.node_name))
        ]

    def _release_ports(self, runtime: ServiceRuntime, keys: Sequence[tuple[Protocol, int]]) -> None:
        for key in keys:
            port_runtime = runtime.ports.pop(key)
            port_runtime.listener.stop_accepting()
            task = asyncio.get_running_loop().create_task(port_runtime.listener.drain(self.options.drain_timeout))
            self._track(task)

    def _schedule_vip_release(self, ip: IPAddress) -> None:
        async def release() -> None:
            await self._withdraw(ip)
            # Established connections of the released service drain before the address goes.
            draining = [t for t in self._releases if t is not asyncio.current_task()]
            if draining:
                await asyncio.gather(*draining, return_exceptions=True)
            if ip not in {rt.ip for rt in self.services.values()}:
                await self._unbind(ip)

        self._track(asyncio.get_running_loop().create_task(release()))

    def _track(self, task: asyncio.Task[object]) -> None:
        self._releases.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._releases.discard)  # type: ignore[arg-type]

    async def _withdraw(self, ip: IPAddress) -> None:
        if ip in self._announced_vips:
            self._announced_vips.discard(ip)
            await self.announcer.withdraw(ip)

    async def _unbind(self, ip: IPAddress) -> None:
        if ip in self._bound_vips:
            self._bound_vips.discard(ip)
            await self.announcer.unbind(ip)
            log.info("vip_released", ip=str(ip))

    def _update_pool_metrics(self, model: Model, allocation: Allocation) -> None:
        for pool in model.pools:
            metrics.addresses_total.labels(pool.name).set(usable_addresses(pool))
            metrics.addresses_in_use.labels(pool.name).set(allocation.in_use(pool.name))

    # ---- admin API -------------------------------------------------------------------------

    def _routes(self):  # type: ignore[no-untyped-def]
        async def get_services() -> list[dict[str, object]]:
            return self.service_statuses()

        async def post_reload() -> dict[str, object]:
            return {"applied": await self.reload()}

        return {("GET", "/v1/services"): get_services, ("POST", "/v1/reload"): post_reload}

    def service_statuses(self) -> list[dict[str, object]]:
        assignments = self.allocation.assignments if self.allocation else {}

        def ready(service: Service, endpoint) -> bool:  # type: ignore[no-untyped-def]
            if not endpoint.ready:
                return False
            runtime = self.services.get(service.key)
            if runtime is None or not service.ports:
                return endpoint.ready
            first = service.ports[0]
            port_runtime = runtime.ports.get((first.protocol, first.port))
            if port_runtime is None:
                return endpoint.ready
            target = (str(endpoint.address), endpoint.target_port(first))
            return target not in port_runtime.passive.ejected(time.monotonic())

        return statuses(self.model.services, assignments, ready)


async def run_daemon(options: DaemonOptions) -> int:
    """`lbd run`: load, start, serve until SIGTERM/SIGINT, reload on SIGHUP."""
    try:
        loaded = config.load(options.config_paths)
    except ConfigInvalid as exc:
        for err in exc.errors:
            log.error("config_error", error=str(err))
        return 1
    for warning in loaded.warnings:
        log.warning("config_warning", warning=str(warning))
    announcer = Announcer(
        loaded.model.interfaces,
        garp_rounds=options.garp_rounds,
        garp_interval=options.garp_interval,
        refresh_interval=options.garp_refresh,
    )
    daemon = Daemon(options, announcer)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(daemon.reload()))
    try:
        await daemon.start(loaded.model)
    except OSError as exc:
        log.error("start_failed", error=str(exc))
        with contextlib.suppress(Exception):
            await daemon.shutdown()
        return 1
    log.info("ready", services=len(daemon.services), node=options.node_name)
    await stop.wait()
    await daemon.shutdown()
    return 0


def parse_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    ipaddress.ip_address(host)
    return host, int(port)
