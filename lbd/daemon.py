"""The daemon: wiring and lifecycle. What runs is decided elsewhere and executed by one task.

    config -> model -> (lbd.reconcile: allocator, readiness, ownership gate, plan)
           -> lbd.vips (claim, announce, release) + lbd.listeners (open, update, close)

Components start in order and stop in reverse: the presence (addresses and ARP), the metrics
server, the admin API, the health checker (readinessProbes), the data plane (the reconcile
task, its listeners and VIPs), the tick.
The tick is the daemon's heartbeat: it retries services that could not be served and will
carry the systemd watchdog. Nothing here blocks the event loop: a reload's config is parsed in
a child process (lbd.config_process; start-up parses in a thread), state writes and netlink
calls run in worker threads, all with deadlines, and a reload holds off full garbage
collections (collector_paused). Before anything is opened, lbd.preflight checks the paths and
privileges; what lbd cannot start with (CannotStart) is one start_failed line.

Signals: SIGHUP reloads (an invalid config is logged in full and the running one stays);
SIGTERM/SIGINT stop accepting, withdraw, drain for --drain-timeout, then release every VIP; a
second SIGTERM/SIGINT cuts the drain short (connections are reset, VIPs still released).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from lbd import api, config, metrics, preflight
from lbd import log as lbd_log
from lbd.admin import AdminServer
from lbd.assignments import AssignmentStore, FileAssignmentStore
from lbd.cluster.assignments import EtcdAssignmentStore
from lbd.cluster.node import ClusterNode
from lbd.config import Attempt
from lbd.config_process import attempt_in_child
from lbd.errors import CannotStart
from lbd.events import EventLog
from lbd.health.checker import HealthChecker
from lbd.limits import LOW_CONNECTIONS, raise_nofile
from lbd.listeners import DataPlane, Listeners
from lbd.model import IPAddress, Model
from lbd.net.fence import remove_leftover
from lbd.net.presence import L2Presence, Presence
from lbd.options import DaemonOptions
from lbd.ownership import OwnershipGate, SingleNodeGate
from lbd.readiness import Drain
from lbd.reconcile import Reconciler, ShuttingDown
from lbd.relay import RelayOptions
from lbd.status import ServiceState
from lbd.systemd import Notifier
from lbd.vips import Vips
from lbd.workers.pool import WorkerPool

log = structlog.get_logger()

# The daemon's heartbeat (later also the systemd watchdog's).
TICK_SECONDS = 1.0
# How often services that could not be served (port in use, no interface) are tried again.
RETRY_BLOCKED_SECONDS = 10.0
# Parsing runs in a child process (a reload) or a thread (start-up); past this it is stopped
# (a 10,000-service config parses in a few seconds).
CONFIG_LOAD_TIMEOUT = 120.0
RELOAD_SWITCH_INTERVAL = 0.001  # seconds; see collector_paused
# `lbd drain` answers once the routers have it; a pass takes milliseconds, a huge one seconds.
DRAIN_APPLY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Component:
    """Something the daemon starts in order and stops in reverse."""

    name: str
    start: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """The answer to a reload: what changed, or why nothing did."""

    applied: bool
    summary: str | None = None
    changes: dict[str, list[str]] = field(default_factory=dict)  # added/removed/changed/unchanged
    failed: dict[str, str] = field(default_factory=dict)  # services that cannot be served, why
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "summary": self.summary,
            **self.changes,
            "failed": self.failed,
            "errors": self.errors,
            "warnings": self.warnings,
        }


def report_attempt(attempt: Attempt) -> None:
    """Log a config attempt's warnings and errors, one event each."""
    for warning in attempt.warnings:
        log.warning("config_warning", warning=str(warning))
    for error in attempt.errors:
        log.error("config_error", error=str(error))


async def read_config(paths: tuple[str, ...], *, isolated: bool = True) -> Attempt:
    """Parse off the event loop, so relaying goes on while a big config is read: in a child
    process (no shared GIL, no garbage-collection pauses), or in a thread before anything is
    served (start-up, where the child's start would only add time)."""
    if isolated:
        return await attempt_in_child(paths, CONFIG_LOAD_TIMEOUT)
    return await asyncio.wait_for(asyncio.to_thread(config.attempt, paths), CONFIG_LOAD_TIMEOUT)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic full garbage collection while a reload builds a new state; freeze what lives
    after it.

    A full collection walks every tracked object holding the GIL: with 10,000 services that is
    ~100 ms in which no connection is relayed, and a reload that adds them triggers several.
    Afterwards, gc.freeze() exempts what exists then (models, listeners, routers) from later
    collections, which then walk only what is new (relays cut their own cycles and are freed by
    reference counting). The cost: a cycle among frozen objects that later turns to garbage
    stays until exit; lbd's long-lived objects drop their cycles when they stop.
    """
    enabled, interval = gc.isenabled(), sys.getswitchinterval()
    gc.disable()
    # The reload's worker threads (unpickling, desire, plan) hand the GIL back this often, so a
    # connection waits at most this long per loop turn (Python's default is 5 ms).
    sys.setswitchinterval(RELOAD_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        gc.freeze()
        if enabled:
            gc.enable()


@contextlib.asynccontextmanager
async def _async_paused() -> AsyncIterator[None]:
    with collector_paused():
        yield


class Daemon:
    """Wires presence, VIP lifecycle, listeners and the reconciler; starts and stops them."""

    def __init__(
        self,
        options: DaemonOptions,
        presence: Presence,
        *,
        gate: OwnershipGate | None = None,
        store: AssignmentStore | None = None,
    ) -> None:
        self.options = options
        self.presence = presence
        self.vips = Vips(presence)
        self.health = HealthChecker()
        self.events = EventLog()
        self.workers: WorkerPool | None = None
        self.cluster: ClusterNode | None = None
        if options.etcd_endpoints:  # cluster mode: etcd decides which node holds each VIP
            self.cluster = ClusterNode(options.node_name, list(options.etcd_endpoints), prefix=options.etcd_prefix,
                                       lease_ttl=options.lease_ttl, peer_port=options.peer_port,
                                       on_change=lambda: self.reconciler.mark_dirty(),
                                       events=self.events)
            gate = gate or self.cluster.gate
            # The cluster's assignments, not this node's --state-dir: every node reads the same VIPs.
            store = store or EtcdAssignmentStore(self.cluster.client, options.etcd_prefix,
                                                 asyncio.get_running_loop())
        self.listeners: DataPlane
        if options.workers > 1:  # the data plane in N processes; this one keeps the control plane
            self.workers = WorkerPool(options.workers, options.drain_timeout, health=self.health,
                                      log_format=lbd_log.resolve(options.log_format))  # type: ignore[arg-type]
            self.listeners = self.workers
        else:
            self.listeners = Listeners(options.drain_timeout, health=self.health)
        self.reconciler = Reconciler(
            node=options.node_name,
            relay=RelayOptions(connect_timeout=options.connect_timeout, socket_buffer=options.socket_buffer or None),
            store=store or FileAssignmentStore(options.state_dir, reset=options.reset_state),
            gate=gate or SingleNodeGate(options.node_name),
            vips=self.vips,
            listeners=self.listeners,
            health=self.health,
            events=self.events,
        )
        self.notifier = Notifier()
        self.health.on_change = self.reconciler.mark_dirty  # a verdict changed: the next pass applies it
        self.aborted = 0  # connections cut at shutdown
        self._started: list[Component] = []
        self._closing = False
        self._force = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tick_task: asyncio.Task[None] | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def components(self, model: Model) -> list[Component]:
        parts = [Component("presence", self.presence.start, self.presence.close)]
        if self.options.metrics_address is not None:
            server = metrics.MetricsServer(*self.options.metrics_address)
            parts.append(Component("metrics", server.start, server.stop))
        if self.options.admin_socket is not None:
            admin = AdminServer(self.options.admin_socket, api.routes(self))
            parts.append(Component("admin", admin.start, admin.close))
        parts.append(Component("health", self.health.start, self.health.stop))
        if self.cluster is not None:  # before the data plane: its first pass needs the owners
            parts.append(Component("cluster", self.cluster.start, self.cluster.close))
        if self.workers is not None:
            parts.append(Component("workers", self.workers.start, self.workers.stop))
        parts.append(Component("dataplane", lambda: self._start_dataplane(model), self._stop_dataplane))
        parts.append(Component("tick", self._start_tick, self._stop_tick))
        return parts

    async def start(self, model: Model) -> None:
        """Start every component in order; on failure the caller runs `shutdown`.

        A component counts as started before its start returns, so one that fails half-way
        (a VIP claimed, then an error) is still stopped and leaves nothing bound.
        """
        for component in self.components(model):
            self._started.append(component)
            await component.start()

    async def shutdown(self) -> None:
        """Stop the started components in reverse order; one failing does not stop the others."""
        log.info("shutdown_started", drain_timeout=self.options.drain_timeout)
        self.notifier.stopping()
        self._closing = True
        while self._started:
            component = self._started.pop()
            try:
                await component.stop()
            except Exception as exc:
                log.exception("component_stop_failed", component=component.name, error=str(exc))
        log.info("shutdown_complete", aborted_connections=self.aborted)

    def force_stop(self) -> None:
        """A second SIGTERM: stop waiting for connections to drain."""
        self._force.set()

    async def _start_dataplane(self, model: Model) -> None:
        await self.reconciler.start(model)
        metrics.config_applied(True, reload=False)  # the start-up config runs: not stale, and its time

    async def _stop_dataplane(self) -> None:
        """Stop accepting, withdraw, drain (until the timeout or a forced stop), release VIPs."""
        await self.reconciler.stop()
        if self.cluster is not None:  # hand over first: the next owners answer while this one drains
            await self.cluster.handover()
        self.listeners.stop_accepting()
        await self.vips.withdraw_all()
        drain = asyncio.ensure_future(self.listeners.drain_all(self.options.drain_timeout))
        forced = asyncio.ensure_future(self._force.wait())
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        cut = 0
        if not drain.done():
            cut = self.listeners.cut_all()
            log.warning("shutdown_forced", connections_reset=cut)
        forced.cancel()
        self.aborted = await drain + cut
        await self.vips.close()

    async def _start_tick(self) -> None:
        self._tick_task = asyncio.get_running_loop().create_task(self._tick(), name="tick")

    async def _stop_tick(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task

    async def _tick(self) -> None:
        """The heartbeat: the systemd watchdog, STATUS=, and retries of what failed."""
        loop = asyncio.get_running_loop()
        last_retry = loop.time()
        period = min(TICK_SECONDS, self.notifier.watchdog_interval or TICK_SECONDS)
        status = ""
        while True:
            await asyncio.sleep(period)
            self.notifier.watchdog()  # from the loop itself: a wedged loop stops the pings
            if self.cluster is not None:
                self.cluster.refresh_owner_metric()
            if (now_status := self.summary()) != status:
                status = now_status
                self.notifier.status(status)
            now = loop.time()
            retry = self.reconciler.blocked or self.reconciler.pass_failed
            if retry and now - last_retry >= RETRY_BLOCKED_SECONDS:
                last_retry = now
                self.reconciler.mark_dirty(retry_blocked=True)

    # ---- reload --------------------------------------------------------------------------------

    async def reload(self, *, allow_empty: bool = False) -> ReloadResult:
        """Re-read the config; an invalid one is reported in full and the old one keeps running.

        A config that would stop every service lbd serves (a file truncated to its pools, say)
        is refused unless `allow_empty` (`lbd reload --allow-empty`). Reloads run one at a time,
        in the order asked, so an older config never lands last.
        """
        async with self._reload_lock, _async_paused():
            if self._closing:
                return ReloadResult(False, errors=["lbd is shutting down"])
            self.notifier.reloading()
            result: ReloadResult | None = None
            try:
                result = await self._reload(allow_empty)
                return result
            finally:
                if not self._closing:  # (a reload refused at shutdown leaves the metrics alone)
                    metrics.config_applied(result is not None and result.applied)  # a crash is a failure
                    self.notifier.ready(self.summary())

    async def _reload(self, allow_empty: bool) -> ReloadResult:
        attempt = await read_config(self.options.config_paths)
        report_attempt(attempt)
        warnings = [str(w) for w in attempt.warnings]
        if attempt.loaded is None:
            log.error("reload_rejected", errors=len(attempt.errors))
            self.events.record("ReloadRejected", "", "", f"{len(attempt.errors)} config error(s): "
                               + "; ".join(str(e) for e in attempt.errors[:3]), "Warning")
            return ReloadResult(False, errors=[str(e) for e in attempt.errors], warnings=warnings)
        refusal = None if allow_empty else _removes_everything(self.reconciler.model, attempt.loaded)
        if refusal is not None:
            log.error("reload_rejected", errors=1, reason=refusal)
            self.events.record("ReloadRejected", "", "", refusal, "Warning")
            return ReloadResult(False, errors=[refusal], warnings=warnings)
        try:
            applied = await self.reconciler.submit(attempt.loaded.model)
        except ShuttingDown as exc:
            return ReloadResult(False, errors=[str(exc)], warnings=warnings)
        plan = applied.plan
        log.info(
            "reload_applied",
            summary=plan.summary(),
            services=len(attempt.loaded.model.services),
            failed=sorted(applied.failed),
        )
        changes = {name: list(getattr(plan, name)) for name in ("added", "removed", "changed", "unchanged")}
        self.events.record("ReloadApplied", "", "", plan.summary())
        return ReloadResult(True, plan.summary(), changes, dict(applied.failed), warnings=warnings)

    # ---- status and the admin API --------------------------------------------------------------

    def serving(self) -> int:
        return sum(1 for c in self.reconciler.conditions.values() if c.state is ServiceState.SERVING)

    def summary(self) -> str:
        """One line for systemd's STATUS=: `12 services, 11 VIPs, 1 pending, 34/36 endpoints ready`."""
        r = self.reconciler
        states = [c.state for c in r.conditions.values()]
        waiting = sum(1 for state in states if state in (ServiceState.PENDING, ServiceState.FAILED))
        ready = sum(v.ready_count for v in r.readiness.values())
        total = sum(len(v.endpoints) for v in r.readiness.values())
        return (f"{len(states)} services, {len(self.vips.held())} VIPs, {waiting} pending, "
                f"{ready}/{total} endpoints ready")

    def vip_conflict(self, ip: IPAddress, other_mac: str) -> None:
        """Another host answers ARP/NDP for one of our VIPs: a Warning on every service using it."""
        for key, condition in self.reconciler.conditions.items():
            if condition.ip == ip:
                self.events.record("VIPConflict", key, str(ip), f"{other_mac} also claims {ip} on the wire",
                                   "Warning")

    async def set_drain(self, drain: Drain, on: bool) -> dict[str, Any]:
        """`lbd drain` / `lbd undrain` an endpoint: an event, a log line; answers once a pass applied it."""
        changed = self.reconciler.drain(drain) if on else self.reconciler.undrain(drain)
        if changed:
            reason = "EndpointDraining" if on else "EndpointUndrained"
            words = "draining: no new connections or flows" if on else "drain ended: back in rotation"
            log.info("endpoint_drain" if on else "endpoint_undrain", service=drain.service, endpoint=str(drain))
            self.events.record(reason, drain.service, str(drain.address), words)
        await asyncio.wait_for(self.reconciler.next_pass(), DRAIN_APPLY_TIMEOUT)
        return {"endpoint": str(drain), "draining": on, "changed": changed,
                "drains": sorted(str(d) for d in self.reconciler.drains)}


def _removes_everything(running: Model, loaded: config.Loaded) -> str | None:
    """Why a new config that exposes no service must not replace one that does, or None."""
    served = sum(1 for s in running.services if s.exposed)
    if served == 0 or any(s.exposed for s in loaded.model.services):
        return None
    return (f"{', '.join(loaded.sources)}: the new config exposes no service while {served} are served; "
            "not applied (was the file truncated?). To remove every service, run `lbd reload --allow-empty`")


def log_fd_limit() -> None:
    """Raise the descriptor limit and say how many connections it allows."""
    fds = raise_nofile()
    fields = dict(nofile=fds.now, raised_from=fds.before, hard_limit=fds.hard, connections=fds.connections)
    if fds.connections < LOW_CONNECTIONS:
        log.warning("fd_limit", **fields,
                    hint="each relayed connection needs 2 descriptors; raise LimitNOFILE (systemd) or `ulimit -Hn`")
    else:
        log.info("fd_limit", **fields)


async def run_daemon(options: DaemonOptions) -> int:
    """`lbd run`: load, start, serve until SIGTERM/SIGINT, reload on SIGHUP."""
    log_fd_limit()
    attempt = await read_config(options.config_paths, isolated=False)
    report_attempt(attempt)
    if attempt.loaded is None:
        return 1
    model = attempt.loaded.model
    try:  # before anything is opened: a missing privilege or an unsafe path is one line
        preflight.check_privileges(model)
        preflight.private_dir(options.state_dir, "--state-dir")
        if options.admin_socket is not None:
            preflight.private_dir(options.admin_socket.parent, "--admin-socket")
    except CannotStart as exc:
        log.error("start_failed", error=str(exc))
        return 1
    presence = L2Presence(
        model.interfaces,
        garp_rounds=options.garp_rounds,
        garp_interval=options.garp_interval,
        refresh_interval=options.garp_refresh,
    )
    daemon = Daemon(options, presence)
    presence.l2.on_conflict = daemon.vip_conflict
    if daemon.cluster is not None:
        presence.l2.may_announce = daemon.cluster.may_announce
    else:
        remove_leftover()  # a fence a cluster-mode run left would mute this node's VIPs
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[ReloadResult]] = set()

    def on_stop_signal() -> None:
        if stop.is_set():
            log.warning("second_stop_signal", hint="connections are reset now; VIPs are still released")
            daemon.force_stop()
        stop.set()

    def on_sighup() -> None:
        task = loop.create_task(daemon.reload())
        reloads.add(task)  # keep a reference; a failure is logged, never lost

        def done(t: asyncio.Task[ReloadResult]) -> None:
            reloads.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("reload_failed", error=repr(t.exception()))

        task.add_done_callback(done)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await daemon.start(model)
    except CannotStart as exc:  # an option to change: one line says which, no traceback
        log.error("start_failed", error=str(exc))
        with contextlib.suppress(Exception):
            await daemon.shutdown()
        return 1
    except Exception as exc:  # anything at start-up: clean up what was bound, then exit non-zero
        log.error("start_failed", error=str(exc), exc_info=True)
        with contextlib.suppress(Exception):
            await daemon.shutdown()
        return 1
    log.info("ready", services=daemon.serving(), failed=sorted(daemon.reconciler.blocked), node=options.node_name)
    daemon.notifier.ready(daemon.summary())  # every servable VIP is bound and its listeners open
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    await daemon.shutdown()
    return 0
