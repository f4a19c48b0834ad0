"""The one reconcile task: every source of change marks the desired state dirty; this computes
the next plan (lbd.plan) and executes it.

Sources of change: a reload (a new model), the daemon tick (retrying services that could not
be served), probe verdicts (the health checker marks the state dirty), and later lease
events, operator drain and interface changes. They never touch listeners or VIPs themselves;
only a pass does, one at a time.

A pass: allocate (off the loop: the store writes and fsyncs), assess readiness (slice
conditions and the checker's probe verdicts), ask the ownership gate, build Desired, plan,
execute (the plan's probes_start/probes_stop go to the checker), report readiness changes.
A service whose listener cannot open (port in use) or whose VIP cannot be bound (no interface
fits) is blocked with the reason and the pass plans again without it, so its half-opened
listeners close and an unused VIP is released; one service's failure never stops the others.
Blocked services are retried on the next reload and by the daemon tick.

A pass never holds the event loop for long, however big the config (10,000 services): the pure
steps (readiness, desire, plan) run in a worker thread, and the steps that must run on the loop
(ownership, executing, reporting) give it back every SLICE_SECONDS, so relaying goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import structlog

from lbd import metrics
from lbd.allocator import Allocation, allocate, usable_addresses
from lbd.assignments import AssignmentStore, Committed, Stored, allocate_and_commit
from lbd.events import EventLog
from lbd.health.checker import HealthChecker
from lbd.health.probe import FIRST_PROBE_SPREAD, ProbeSpec, ProbeVerdict
from lbd.health.report import ReadinessReport
from lbd.listeners import DataPlane
from lbd.model import IPAddress, Model, Service
from lbd.ownership import Ownership, OwnershipGate
from lbd.plan import Desired, Plan, Running, desire, plan
from lbd.readiness import Drain, Readiness, ServiceReadiness, assess
from lbd.relay import RelayOptions
from lbd.status import (
    UNSERVED_PORT_REASON,
    ServiceCondition,
    ServiceState,
    condition_of,
)
from lbd.vips import PRESENCE_ERRORS, Vips

log = structlog.get_logger("lbd.reconcile")

# Seconds a store read or write may take (an fsync on a sick disk) before the pass goes on
# without it: the allocation is kept in memory and the write retried on the next pass.
STORE_TIMEOUT = 10.0
# Seconds shutdown waits for a pass under way (netlink calls have their own 5 s deadlines).
STOP_PASS_TIMEOUT = 10.0
# Seconds start-up waits for the first probe of every endpoint before serving: first probes
# are spread over FIRST_PROBE_SPREAD (1 s) and the default probe timeout is 1 s more.
FIRST_PROBES_WAIT = FIRST_PROBE_SPREAD + 1.5
# Store reads and writes run one at a time, in order, on their own thread: a write that
# outlived its deadline can never land after a newer one.
_STORE_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
# A pass works on the loop at most SLICE_SECONDS at a time, then lets the loop run alone for
# SLICE_PAUSE: a relayed connection needs several loop turns (accept, connect, data, close),
# so giving back a single turn (sleep(0)) still added a slice per turn, ~50 ms per request
# while 2,000 listeners opened. At half the loop, each turn waits at most ~2 ms.
SLICE_SECONDS = 0.002
SLICE_PAUSE = 0.002

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a pure step in a worker thread (its inputs are immutable or private to the pass)."""
    return await asyncio.to_thread(func, *args, **kwargs)


class Slicer:
    """Gives the loop back once SLICE_SECONDS of work went by (call `due()` between steps)."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.monotonic()

    async def due(self) -> None:
        if time.monotonic() - self._since >= SLICE_SECONDS:
            await asyncio.sleep(SLICE_PAUSE)
            self._since = time.monotonic()


class ShuttingDown(RuntimeError):
    """A configuration arrived after shutdown began; it was not applied."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one pass did: the plan (its summary answers a reload) and who could not be served."""

    plan: Plan
    failed: Mapping[str, str] = field(default_factory=dict)


class Reconciler:
    """Keeps what runs (listeners, VIPs) in step with what is wanted (model, readiness, ownership)."""

    def __init__(
        self,
        *,
        node: str,
        relay: RelayOptions,
        store: AssignmentStore,
        gate: OwnershipGate,
        vips: Vips,
        listeners: DataPlane,
        health: HealthChecker | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.node = node
        self.relay = relay
        self.store = store
        self.gate = gate
        self.vips = vips
        self.listeners = listeners
        self.health = health  # None: probes are not run and the config's conditions decide alone
        self.events = events if events is not None else EventLog()
        self.readiness_report = ReadinessReport(self.events)
        self.model = Model()
        self.allocation: Allocation | None = None
        self.readiness: Readiness = {}
        self.running = Running()
        self.blocked: dict[str, str] = {}  # service key -> why it is not served (until a retry)
        self.drains: set[Drain] = set()  # `lbd drain endpoint`: out of the ready set until undrained
        self.first_seen: dict[str, float] = {}  # service key -> when this daemon first saw it (AGE)
        self.conditions: dict[str, ServiceCondition] = {}
        self._stored: Stored | None = None
        self._pending_model: Model | None = None
        self._waiters: list[asyncio.Future[Applied]] = []
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._retry_blocked = False
        self.pass_failed = False  # the last pass raised: the daemon tick asks for another

    # ---- start, the loop, stop -----------------------------------------------------------------

    async def start(self, model: Model) -> Applied:
        """First pass, before the loop runs: adopt an earlier run's VIPs, then serve `model`."""
        self._stored = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(_STORE_THREAD, self.store.load), STORE_TIMEOUT
        )
        committed = await self._allocate(model)
        readiness = await self._assess(model, committed.allocation)
        ownership = await self._ownership(model, committed.allocation, readiness)
        # Leftovers of a crash go before anything is bound; owned ones stay (no gap in service).
        await self.vips.adopt([ip for ip, o in ownership.items() if o.owner])
        if self.health is not None:
            # Probe first, serve then: an endpoint is out until its first success, and without
            # this a restart would reset the clients of healthy endpoints for about a second.
            probes = (await self._desire(model, committed.allocation, readiness)).probes
            if probes:
                self.health.apply(probes, ())
                started = asyncio.get_running_loop().time()
                waiting = await self.health.first_results(probes, FIRST_PROBES_WAIT)
                log.info("first_probes", probes=len(probes), unanswered=waiting,
                         seconds=round(asyncio.get_running_loop().time() - started, 3))
        applied = await self._pass(model, committed)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="reconcile")
        return applied

    def submit(self, model: Model) -> asyncio.Future[Applied]:
        """Ask for `model` to be served; the future resolves with the pass that applied it."""
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        if self._stopping:
            future.set_exception(ShuttingDown("lbd is shutting down; the configuration was not applied"))
            return future
        self._pending_model = model
        self._retry_blocked = True  # a new config retries everything
        self._waiters.append(future)
        self._dirty.set()
        return future

    def drain(self, drain: Drain) -> bool:
        """Operator drain (kept across reloads, gone on restart); False if it was drained already."""
        if drain in self.drains:
            return False
        self.drains.add(drain)
        self.mark_dirty()
        return True

    def undrain(self, drain: Drain) -> bool:
        if drain not in self.drains:
            return False
        self.drains.discard(drain)
        self.mark_dirty()
        return True

    def next_pass(self) -> asyncio.Future[Applied]:
        """A pass of what is served now (after a drain, say); resolves when it has been applied."""
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        if self._stopping:
            future.set_exception(ShuttingDown("lbd is shutting down"))
            return future
        self._waiters.append(future)
        self._dirty.set()
        return future

    def mark_dirty(self, retry_blocked: bool = False) -> None:
        """Something the desired state depends on changed; `retry_blocked` unblocks failed services."""
        self._retry_blocked |= retry_blocked
        self._dirty.set()

    async def stop(self) -> None:
        """Let the pass under way finish (within STOP_PASS_TIMEOUT), then run no more (shutdown)."""
        self._stopping = True
        self._dirty.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=STOP_PASS_TIMEOUT)
            if not done:
                log.warning("reconcile_cancelled", hint="a pass outlived the shutdown's patience")
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        for future in self._waiters:
            if not future.done():
                future.set_exception(ShuttingDown("lbd is shutting down; the configuration was not applied"))
        self._waiters.clear()

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            if self._stopping:
                return
            self._dirty.clear()
            waiters, self._waiters = self._waiters, []
            model, self._pending_model = self._pending_model or self.model, None
            try:
                applied = await self._pass(model)
            except Exception as exc:  # a bug must not kill the loop: report it; the tick retries
                self.pass_failed = True
                log.exception("reconcile_failed", error=str(exc) or type(exc).__name__)
                for future in waiters:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for future in waiters:
                if not future.done():
                    future.set_result(applied)

    # ---- one pass ------------------------------------------------------------------------------

    async def _pass(self, model: Model, committed: Committed | None = None) -> Applied:
        if self._retry_blocked:
            self._retry_blocked = False
            self.blocked.clear()
        self.pass_failed = False
        if committed is None and (model is not self.model or self.allocation is None):
            committed = await self._allocate(model)
        allocation = committed.allocation if committed is not None else self.allocation
        assert allocation is not None
        readiness = await self._assess(model, allocation)
        before = self.readiness
        # The target from here on, even if executing it fails half-way: the next pass retries it.
        self.model, self.allocation, self.readiness = model, allocation, readiness
        self.vips.set_interfaces(model.interfaces)
        await self.vips.retry_unbinds()
        first: Plan | None = None
        failed: dict[str, str] = {}
        desired = await self._desire(model, allocation, readiness)
        # Each round blocks at least one more service, so this ends within len(services) rounds.
        for _ in range(len(model.services) + 1):
            steps = await off_loop(plan, self.running, desired)
            first = first or steps
            try:
                newly = await self._execute(steps)
            finally:  # whatever happened, `running` says what really runs now
                self.running = self._observe(desired)
            if not newly:
                break
            failed.update(newly)
            self.blocked.update(newly)
            desired = await self._desire(model, allocation, readiness)
        await self._report(desired)
        # Comparing every endpoint and keeping lbd_endpoint_ready in step costs ~0.25 s for
        # 10,000 services: a worker's job (the report is only ever used by one pass at a time).
        served = frozenset(spec.service for spec in desired.listeners.values())
        await off_loop(self.readiness_report.publish, before, readiness, served)
        assert first is not None
        return Applied(first, failed)

    async def _assess(self, model: Model, allocation: Allocation) -> Readiness:
        """Readiness with the probes' verdicts for the services lbd serves (and so probes); a
        service it does not serve (not exposed, no VIP, blocked) shows its config's view.

        The verdicts are copied on the loop (the checker changes them there), the rest runs in a
        worker thread: 10,000 services take tens of milliseconds.
        """
        served = frozenset(
            s.key for s in model.services
            if s.exposed and s.key not in self.blocked and allocation.ip_of(s.key) is not None
        )
        verdicts = self._verdicts(model, served)
        return await off_loop(_assess_all, model, self.node, served, verdicts, frozenset(self.drains))

    def _verdicts(self, model: Model, served: frozenset[str]) -> dict[ProbeSpec, ProbeVerdict] | None:
        """What the checker says now about every probed endpoint of a served service."""
        if self.health is None:
            return None
        verdicts = self.health.verdicts
        copied: dict[ProbeSpec, ProbeVerdict] = {}
        for service in model.services:
            probe = service.readiness_probe
            if probe is None or service.key not in served:
                continue
            for endpoint in service.endpoints:
                spec = ProbeSpec(endpoint.address, probe)
                verdict = verdicts.get(spec)
                if verdict is not None:
                    copied[spec] = verdict
        return copied

    async def _allocate(self, model: Model) -> Committed:
        """Allocate and store off the loop; a slow or failing store never stops serving."""
        if self.allocation is None or self._stored is None:
            previous = self._stored
        else:
            previous = Stored(self.allocation.sticky(), self._stored.revision, self._stored.hold_new)
        try:
            committed = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(
                    _STORE_THREAD,
                    functools.partial(allocate_and_commit, self.store, model.pools, model.services, previous),
                ),
                STORE_TIMEOUT,
            )
        except TimeoutError:
            stored = previous or Stored()
            allocation = await off_loop(
                functools.partial(allocate, model.pools, model.services, stored.assignments, hold_new=stored.hold_new)
            )
            committed = Committed(allocation, stored, f"the store did not answer within {STORE_TIMEOUT:g} s")
        self._stored = committed.stored
        if committed.store_error is not None:
            log.error("state_write_failed", error=committed.store_error,
                      hint="serving goes on; VIP assignments may move on the next restart")
        await off_loop(_pool_metrics, model, committed.allocation)
        return committed

    async def _ownership(
        self, model: Model, allocation: Allocation, readiness: Readiness
    ) -> dict[IPAddress, Ownership]:
        on_ip: defaultdict[IPAddress, list[Service]] = defaultdict(list)
        for service in model.services:
            ip = allocation.ip_of(service.key) if service.exposed else None
            if ip is not None and service.key not in self.blocked:
                on_ip[ip].append(service)
        # The gate is asked on the loop (a cluster gate may keep loop state), a slice at a time.
        decided: dict[IPAddress, Ownership] = {}
        slicer = Slicer()
        for ip, services in on_ip.items():
            decided[ip] = self.gate.decide(ip, services, readiness)
            await slicer.due()
        self.gate.decided()
        return decided

    async def _desire(self, model: Model, allocation: Allocation, readiness: Readiness) -> Desired:
        ownership = await self._ownership(model, allocation, readiness)
        return await off_loop(
            functools.partial(
                desire,
                model,
                allocation,
                readiness,
                ownership,
                node=self.node,
                relay=self.relay,
                protocols=self.listeners.protocols(),
                blocked=dict(self.blocked),
            )
        )

    async def _execute(self, steps: Plan) -> dict[str, str]:
        """Carry out a plan in its order; returns services that newly failed, with the reason."""
        failed: dict[str, str] = {}
        if self.health is not None:  # first: it cannot fail, so `running.probes` is always true
            self.health.apply(steps.probes_start, steps.probes_stop)
        slicer = Slicer()
        for key in steps.close:
            self.listeners.close(key)
            await slicer.due()
        for spec in steps.open:
            if spec.service in failed:
                continue
            try:
                await self.listeners.open(spec)
            except OSError as exc:
                failed[spec.service] = f"cannot serve {spec.key.ip}: {exc}"
            await slicer.due()
        for change in steps.update:
            self.listeners.update(change)
            await slicer.due()
        for ip in steps.revoke:
            await self.vips.revoke(ip)
        for ip in steps.release:
            await self.vips.release(ip, self.listeners.drains(ip))
            await slicer.due()
        for claim in steps.acquire:
            users = [s for s in claim.services if s not in failed]
            if not users:
                continue  # every service on it failed: the next plan releases it
            try:
                await self.vips.acquire(claim.ip, users)
            except PRESENCE_ERRORS as exc:
                failed.update({s: f"cannot serve {claim.ip}: {exc}" for s in users})
            await slicer.due()
        held = self.vips.held()
        for ip in steps.announce:
            if ip not in held or not any(s not in failed for s in held[ip]):
                continue
            try:
                await self.vips.announce(ip)
            except PRESENCE_ERRORS as exc:
                log.error("announce_failed", ip=str(ip), error=str(exc))
            await slicer.due()
        return failed

    def _observe(self, desired: Desired) -> Running:
        return Running(
            services={s.key: s for s in desired.model.services},
            listeners=self.listeners.specs(),
            vips=self.vips.held(),
            announced=self.vips.announced(),
            probes=desired.probes,  # handed to the health checker first thing in _execute
        )

    async def _report(self, desired: Desired) -> None:
        """Per-service conditions; log each change once, with the same words the status shows."""
        before, now = self.conditions, {}
        assert self.allocation is not None
        slicer = Slicer()
        for service in desired.model.services:
            await slicer.due()
            ip = self.allocation.ip_of(service.key)
            condition = condition_of(
                service,
                self.allocation.assignments.get(service.key),
                self.blocked.get(service.key),
                desired.ownership.get(ip) if ip is not None else None,
                desired.protocols,
            )
            now[service.key] = condition
            self.first_seen.setdefault(service.key, time.time())
            old = before.get(service.key)
            if old == condition:
                continue
            if old is not None and old.state is ServiceState.SERVING and old.ip != condition.ip:
                self._released(service.key, old)
            if condition.ip is not None and (old is None or old.ip != condition.ip):
                assignment = self.allocation.assignments.get(service.key)
                pool = assignment.pool if assignment is not None else None
                self.events.record("IPAllocated", service.key, str(condition.ip),
                                   f"Assigned IP [\"{condition.ip}\"] from pool {pool}")
            self._log_condition(service.key, condition)
        for key, old in before.items():
            if key not in now:
                self.first_seen.pop(key, None)
                if old.state is ServiceState.SERVING:
                    self._released(key, old)
        self.conditions = now
        counts = Counter(c.state for c in now.values())
        for state in ServiceState:
            metrics.services.labels(str(state)).set(counts.get(state, 0))
        await off_loop(_announced_metric, self.node, now, self.vips.announced())

    def _released(self, key: str, old: ServiceCondition) -> None:
        log.info("service_released", service=key, ip=str(old.ip))
        self.events.record("IPReleased", key, str(old.ip), f"Released IP {old.ip}")

    def _log_condition(self, key: str, condition: ServiceCondition) -> None:
        """A service's new condition: one log line and one event, in the words the status uses."""
        events, ip = self.events, str(condition.ip)
        if condition.state is ServiceState.SERVING:
            log.info("service_serving", service=key, ip=ip)
            # MetalLB's speaker event, same reason and message shape.
            events.record("nodeAssigned", key, ip, f'announcing from node "{self.node}" with protocol "layer2"')
            for port in condition.unserved_ports:
                log.warning("port_not_served", service=key, port=port, reason=UNSERVED_PORT_REASON)
        elif condition.state is ServiceState.PENDING:
            log.warning("allocation_failed", service=key, reason=condition.reason)
            events.record("AllocationFailed", key, "", str(condition.reason), "Warning")  # MetalLB's reason
        elif condition.state is ServiceState.FAILED:
            log.error("service_failed", service=key, ip=ip, reason=condition.reason)
            events.record("ServiceFailed", key, ip, str(condition.reason), "Warning")
        elif condition.state is ServiceState.STANDBY:
            log.info("service_standby", service=key, ip=ip, reason=condition.reason)
            events.record("Standby", key, ip, str(condition.reason))


def _pool_metrics(model: Model, allocation: Allocation) -> None:
    """Per-pool address gauges (prometheus-client is thread-safe: set from a worker thread)."""
    in_use = allocation.in_use_by_pool()
    metrics.keep_pools({pool.name for pool in model.pools})
    for pool in model.pools:
        metrics.addresses_total.labels(pool.name).set(usable_addresses(pool))
        metrics.addresses_in_use.labels(pool.name).set(in_use.get(pool.name, 0))


def _announced_metric(node: str, conditions: Mapping[str, ServiceCondition], announced: frozenset[IPAddress]) -> None:
    """metallb_speaker_announced: the services served here whose VIP this node announces."""
    metrics.set_announced(node, [(key, str(c.ip)) for key, c in conditions.items()
                                 if c.state is ServiceState.SERVING and c.ip in announced])


def _assess_all(
    model: Model,
    node: str,
    served: frozenset[str],
    verdicts: dict[ProbeSpec, ProbeVerdict] | None,
    drains: frozenset[Drain],
) -> dict[str, ServiceReadiness]:
    return {s.key: assess(s, node, verdicts if s.key in served else None, drains) for s in model.services}


