"""The daemon: wires model -> allocator -> announcer -> listeners -> routers, and keeps them in step.

`Daemon.apply(model)` is the one entry point that moves the running daemon to a new model
(start-up, SIGHUP reload). It diffs against what runs: unchanged services keep their listeners
and established connections, endpoint and affinity changes apply in place, removed services
stop accepting, drain and release their VIP. Release order is MetalLB's: stop announcing, let
established connections finish, then remove the address.

Invariants (all changes happen under `_lock`):
- a VIP is in `_bound` from `announcer.bind` until `announcer.unbind`; it is announced only while
  some ServiceRuntime uses it and its listeners are open;
- at most one release task per VIP; it re-checks under the lock that nobody wants the VIP again
  before withdrawing and before unbinding;
- a failure to serve one service (no interface, port in use) marks that service failed and
  never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from lbd import config, metrics, state
from lbd.admin import AdminServer, Handler
from lbd.allocator import Allocation, Assignment, allocate, usable_addresses
from lbd.balancer import Balancer, Target
from lbd.config.errors import ConfigInvalid
from lbd.health.passive import PassiveHealth
from lbd.model import Endpoint, IPAddress, Model, Protocol, Service, ServicePort, TrafficPolicy
from lbd.net.announcer import Announcer
from lbd.relay import RelayOptions
from lbd.relay.tcp import TcpListener
from lbd.routing import ServiceRouter
from lbd.status import StatusDict, statuses

log = structlog.get_logger()

DEFAULT_STATE_DIR = Path("/var/lib/lbd")
DEFAULT_DRAIN_TIMEOUT = 30.0  # seconds; Kubernetes' default terminationGracePeriodSeconds

PortKey = tuple[Protocol, int]


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
    affinity: tuple[str, int]


@dataclass(slots=True)
class ServiceRuntime:
    service: Service
    ip: IPAddress
    ports: dict[PortKey, PortRuntime] = field(default_factory=dict)


class Daemon:
    """Holds the running state; only `apply`, `reload` and `shutdown` change it."""

    def __init__(self, options: DaemonOptions, announcer: Announcer) -> None:
        self.options = options
        self.model = Model()
        self.allocation: Allocation | None = None
        self.services: dict[str, ServiceRuntime] = {}
        self.failed: dict[str, str] = {}  # service key -> why it is not served
        self.announcer = announcer
        self._bound: set[IPAddress] = set()
        self._announced: set[IPAddress] = set()
        self._drains: dict[IPAddress, set[asyncio.Task[int]]] = {}
        self._releases: dict[IPAddress, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._closing = False
        self._admin: AdminServer | None = None
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
        """SIGTERM: stop accepting, stop announcing, drain, then remove every VIP."""
        log.info("shutdown_started", drain_timeout=self.options.drain_timeout)
        async with self._lock:
            self._closing = True  # no apply after this point can bind or announce
            listeners = [pr.listener for rt in self.services.values() for pr in rt.ports.values()]
            for listener in listeners:
                listener.stop_accepting()
            for ip in list(self._announced):
                await self._withdraw(ip)
        aborted = await asyncio.gather(*(ls.drain(self.options.drain_timeout) for ls in listeners))
        pending = [*self._releases.values(), *(t for tasks in self._drains.values() for t in tasks)]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        async with self._lock:
            for ip in list(self._bound):
                await self._unbind(ip)
        await self.announcer.close()
        if self._admin is not None:
            await self._admin.close()
        log.info("shutdown_complete", aborted_connections=sum(aborted))

    async def reload(self) -> bool:
        """Re-read the config; an invalid one is logged in full and the old one keeps running."""
        if self._closing:
            return False
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
        log.info("reload_applied", services=len(loaded.model.services), failed=sorted(self.failed))
        return True

    # ---- the one entry point that changes what runs ----------------------------------------

    async def apply(self, model: Model, allocation: Allocation | None = None) -> None:
        async with self._lock:
            if self._closing:
                return
            if allocation is None:
                previous = self.allocation.sticky() if self.allocation else state.load_assignments(self.options.state_dir)
                allocation = allocate(model.pools, model.services, previous)
            self.model, self.allocation = model, allocation
            try:
                state.save_assignments(self.options.state_dir, allocation.sticky())
            except OSError as exc:  # keep serving; stickiness across restarts is what is lost
                log.error("state_write_failed", state_dir=str(self.options.state_dir), error=str(exc))
            self._update_pool_metrics(model, allocation)
            self.announcer.interfaces = tuple(model.interfaces)

            # 1. Release services that are gone or moved to another VIP.
            for key, runtime in list(self.services.items()):
                service = model.service(key)
                new_ip = allocation.ip_of(key) if service is not None and service.exposed else None
                if new_ip != runtime.ip:
                    del self.services[key]
                    self._close_ports(runtime, list(runtime.ports))
                    log.info("service_released", service=key, ip=str(runtime.ip))
            self.failed = {k: v for k, v in self.failed.items() if model.service(k) is not None}

            # 2. Bring up or update what is wanted; one service's failure stays its own.
            for service in model.services:
                if not service.exposed:
                    continue
                ip = allocation.ip_of(service.key)
                if ip is None:
                    self._log_pending(service.key, allocation.assignments.get(service.key))
                    continue
                self._pending_logged.pop(service.key, None)
                try:
                    await self._ensure_service(service, ip)
                    self.failed.pop(service.key, None)
                except (OSError, RuntimeError) as exc:
                    self._fail_service(service.key, ip, exc)

            # 3. Announce VIPs whose listeners are open; release VIPs nobody uses any more.
            wanted = self._wanted_vips()
            for ip in wanted - self._announced:
                if not is_loopback(ip):
                    try:
                        await self.announcer.announce(ip)
                        self._announced.add(ip)
                    except (OSError, RuntimeError) as exc:
                        log.error("announce_failed", ip=str(ip), error=str(exc))
            for ip in (self._announced | self._bound) - wanted:
                if ip not in self._releases:
                    self._releases[ip] = asyncio.get_running_loop().create_task(self._release_vip(ip))

    async def _ensure_service(self, service: Service, ip: IPAddress) -> None:
        runtime = self.services.get(service.key)
        if runtime is None:
            if ip not in self._bound and not is_loopback(ip):
                interface = await self.announcer.bind(ip)
                self._bound.add(ip)
                log.info("vip_acquired", service=service.key, ip=str(ip), interface=interface)
            runtime = ServiceRuntime(service, ip)
            self.services[service.key] = runtime
            log.info("service_serving", service=service.key, ip=str(ip))
        runtime.service = service
        wanted: dict[PortKey, ServicePort] = {}
        for port in service.ports:
            if port.protocol is Protocol.UDP:
                if service.key not in self._udp_warned:
                    log.warning("udp_not_served_yet", service=service.key, port=port.port)
                    self._udp_warned.add(service.key)
                continue
            wanted[(port.protocol, port.port)] = port
        self._close_ports(runtime, [k for k in runtime.ports if k not in wanted])
        options = RelayOptions(connect_timeout=self.options.connect_timeout, idle_timeout=service.idle_timeout_seconds)
        affinity = (str(service.session_affinity), service.affinity_timeout_seconds)
        for port_key, port in wanted.items():
            targets = self._targets(service, port)
            existing = runtime.ports.get(port_key)
            if existing is not None:
                if existing.affinity != affinity:
                    # A new policy starts a fresh table; the listener and its connections stay.
                    existing.router.balancer = Balancer(service.session_affinity, service.affinity_timeout_seconds)
                    existing.affinity = affinity
                existing.router.update(targets)  # keeps round-robin position and affinities
                existing.listener.set_options(options)
                continue
            balancer = Balancer(service.session_affinity, service.affinity_timeout_seconds)
            router = ServiceRouter(balancer, PassiveHealth(), service=service.key, port=port.port)
            router.update(targets)
            listener = TcpListener(
                str(ip), port.port, router, options, service=service.key, port_name=port.name or str(port.port)
            )
            await listener.start()
            runtime.ports[port_key] = PortRuntime(listener, router, affinity)
            log.info("listener_open", service=service.key, address=f"{ip}:{port.port}", protocol="TCP",
                     endpoints=len(targets))

    def _targets(self, service: Service, port: ServicePort) -> list[Target]:
        """Ready endpoints for one service port (externalTrafficPolicy Local: this node's only)."""
        local_only = service.external_traffic_policy is TrafficPolicy.LOCAL
        return [
            (str(ep.address), ep.target_port(port))
            for ep in service.endpoints
            if ep.ready and (not local_only or ep.node_name in (None, self.options.node_name))
        ]

    def _fail_service(self, key: str, ip: IPAddress, exc: BaseException) -> None:
        runtime = self.services.pop(key, None)
        if runtime is not None:
            self._close_ports(runtime, list(runtime.ports))
        reason = f"cannot serve {ip}: {exc}"
        if self.failed.get(key) != reason:
            log.error("service_failed", service=key, ip=str(ip), error=str(exc))
        self.failed[key] = reason

    def _log_pending(self, key: str, assignment: Assignment | None) -> None:
        reason = (assignment.pending_reason if assignment else None) or "not allocated"
        if self._pending_logged.get(key) != reason:
            log.warning("AllocationFailed", service=key, reason=reason)  # MetalLB's event name
            self._pending_logged[key] = reason

    def _wanted_vips(self) -> set[IPAddress]:
        return {rt.ip for rt in self.services.values()}

    def _close_ports(self, runtime: ServiceRuntime, keys: Iterable[PortKey]) -> None:
        """Stop accepting now; established connections drain in the background, tracked per VIP."""
        for key in list(keys):
            listener = runtime.ports.pop(key).listener
            listener.stop_accepting()
            task = asyncio.get_running_loop().create_task(listener.drain(self.options.drain_timeout))
            drains = self._drains.setdefault(runtime.ip, set())
            drains.add(task)
            task.add_done_callback(drains.discard)

    async def _release_vip(self, ip: IPAddress) -> None:
        """Withdraw, wait for this VIP's connections to drain, then remove the address."""
        try:
            async with self._lock:
                if ip in self._wanted_vips():
                    return
                await self._withdraw(ip)
            drains = list(self._drains.get(ip, ()))
            if drains:
                await asyncio.gather(*drains, return_exceptions=True)
            async with self._lock:
                if ip not in self._wanted_vips():  # wanted again meanwhile: apply re-announces it
                    await self._unbind(ip)
        finally:
            self._releases.pop(ip, None)

    async def _withdraw(self, ip: IPAddress) -> None:
        if ip in self._announced:
            self._announced.discard(ip)
            try:
                await self.announcer.withdraw(ip)
            except (OSError, RuntimeError) as exc:
                log.error("withdraw_failed", ip=str(ip), error=str(exc))

    async def _unbind(self, ip: IPAddress) -> None:
        if ip in self._bound:
            self._bound.discard(ip)
            try:
                await self.announcer.unbind(ip)
                log.info("vip_released", ip=str(ip))
            except (OSError, RuntimeError) as exc:
                log.error("unbind_failed", ip=str(ip), error=str(exc))

    def _update_pool_metrics(self, model: Model, allocation: Allocation) -> None:
        for pool in model.pools:
            metrics.addresses_total.labels(pool.name).set(usable_addresses(pool))
            metrics.addresses_in_use.labels(pool.name).set(allocation.in_use(pool.name))

    # ---- admin API -------------------------------------------------------------------------

    def _routes(self) -> dict[tuple[str, str], Handler]:
        async def get_services() -> list[StatusDict]:
            return self.service_statuses()

        async def post_reload() -> dict[str, object]:
            return {"applied": await self.reload()}

        return {("GET", "/v1/services"): get_services, ("POST", "/v1/reload"): post_reload}

    def service_statuses(self) -> list[StatusDict]:
        assignments = dict(self.allocation.assignments) if self.allocation else {}
        for key, reason in self.failed.items():
            held = assignments.get(key)
            assignments[key] = Assignment(key, None, held.pool if held else None, reason)
        now = time.monotonic()

        def ready(service: Service, endpoint: Endpoint) -> bool:
            runtime = self.services.get(service.key)
            if not endpoint.ready or runtime is None or not service.ports:
                return endpoint.ready
            first = service.ports[0]
            port_runtime = runtime.ports.get((first.protocol, first.port))
            if port_runtime is None:
                return endpoint.ready
            return (str(endpoint.address), endpoint.target_port(first)) not in port_runtime.router.passive.ejected(now)

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
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(daemon.reload())
        reloads.add(task)  # keep a reference; a failure is logged, never lost

        def done(t: asyncio.Task[bool]) -> None:
            reloads.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("reload_failed", error=repr(t.exception()))

        task.add_done_callback(done)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await daemon.start(loaded.model)
    except Exception as exc:  # anything at start-up: clean up what was bound, then exit non-zero
        log.error("start_failed", error=str(exc), exc_info=True)
        with contextlib.suppress(Exception):
            await daemon.shutdown()
        return 1
    log.info("ready", services=len(daemon.services), failed=sorted(daemon.failed), node=options.node_name)
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    await daemon.shutdown()
    return 0


def parse_host_port(value: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT; raises ValueError with the reason."""
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    ipaddress.ip_address(host)
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"{number} is not a port (1-65535)")
    return host, number
