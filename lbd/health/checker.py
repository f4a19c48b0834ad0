"""The health checker: runs every endpoint's readinessProbe on the event loop, keeps the verdicts.

The reconciler hands it the plan's `probes_start`/`probes_stop`; it keeps one ProbeState per
ProbeSpec (an endpoint's address and its service's probe: service ports and services sharing
an endpoint and a probe share one state, so nothing is probed twice). When a verdict changes
it calls `on_change` (the reconciler's mark_dirty): the next pass, milliseconds later, updates
the routers' target sets in place.

Nothing here blocks the loop. Endpoints wait for their next probe in 10 ms slots behind one
loop timer (probes due in the same slot start together: at 1,000 probes/s that is a wakeup
per ten probes, not one per probe), and each has one probe in flight at most
(lbd.health.prober: non-blocking, bounded by its own timeout).
A reload keeps the state of every unchanged endpoint; a probe whose timings or thresholds
changed keeps its state too (retuned); only a new check (another port, path, kind) starts
from "no probe result yet".
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import structlog

from lbd import metrics
from lbd.health.probe import (
    ProbeResult,
    ProbeSpec,
    ProbeState,
    ProbeVerdict,
    stable_phase,
)
from lbd.health.prober import Done, Prober, ProbeRun, ProbeTarget, prepare

log = structlog.get_logger("lbd.health")

# Probes due within the same SLOT seconds start together, up to one slot late: far below any
# period (whole seconds) and the spread of first probes; a wakeup costs a context switch.
SLOT = 0.01
# A timer may fire this early (uvloop counts in milliseconds) and still start its slot.
EARLY_TOLERANCE = 0.002
# How often first_results looks again (it runs once, at start-up).
FIRST_RESULTS_POLL = 0.05


class ProbeStarter(Protocol):
    """What runs probes (lbd.health.prober.Prober; tests use fakes)."""

    def start(self, target: ProbeTarget, clock: Callable[[], float], done: Done) -> ProbeRun: ...

    def close(self) -> None: ...


_Check = tuple[Any, Any]  # (address, action): what is probed, whatever the timings


def _check(spec: ProbeSpec) -> _Check:
    return (spec.address, spec.probe.action)


class _Endpoint:
    """One probed endpoint: its state, the slot it waits in, its probe in flight."""

    __slots__ = ("spec", "target", "state", "slot", "run", "done", "counted")

    def __init__(self, spec: ProbeSpec, state: ProbeState) -> None:
        self.spec = spec
        self.target = prepare(spec)
        self.state = state
        self.counted: dict[str, Any] = {}  # outcome -> lbd_probes_total child, bound on first use
        self.slot: int | None = None  # waiting for this slot; an older slot's entry is stale
        self.run: ProbeRun | None = None
        self.done: Done = lambda result: None


class Verdicts(Mapping[ProbeSpec, ProbeVerdict]):
    """The checker's verdicts by spec. A spec not started yet reads the verdict of a running one
    for the same check (same endpoint, port and path; other timings), which is what `apply` will
    start it from: a reload that retunes a probe never shows its endpoints not ready for a pass."""

    def __init__(self, checker: HealthChecker) -> None:
        self._checker = checker

    def __getitem__(self, spec: ProbeSpec) -> ProbeVerdict:
        c = self._checker
        ep = c._endpoints.get(spec) or c._endpoints.get(c._by_check.get(_check(spec)))  # type: ignore[arg-type]
        if ep is None:
            raise KeyError(spec)
        return ep.state.verdict

    def __iter__(self) -> Iterator[ProbeSpec]:
        return iter(self._checker._endpoints)

    def __len__(self) -> int:
        return len(self._checker._endpoints)


class HealthChecker:
    """Runs the probes the reconciler asks for; `verdicts` is what readiness reads."""

    def __init__(
        self,
        on_change: Callable[[], None] = lambda: None,
        *,
        clock: Callable[[], float] = time.monotonic,
        prober: Callable[[asyncio.AbstractEventLoop], ProbeStarter] = Prober,
    ) -> None:
        self.on_change = on_change
        self._clock = clock
        self._make_prober = prober
        self._prober: ProbeStarter | None = None
        self._endpoints: dict[ProbeSpec, _Endpoint] = {}
        self._by_check: dict[_Check, ProbeSpec] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._slots: dict[int, list[_Endpoint]] = {}  # slot number (time // SLOT) -> who is due then
        self._heap: list[int] = []  # the slot numbers in _slots, earliest first
        self._tick: asyncio.TimerHandle | None = None
        self._tick_slot: int | None = None
        self._m_latency: dict[str, Any] = {}
        self.verdicts: Mapping[ProbeSpec, ProbeVerdict] = Verdicts(self)

    # ---- lifecycle (a daemon component) --------------------------------------------------------

    async def start(self) -> None:
        self._stopped = False
        self._running_loop()

    async def stop(self) -> None:
        """Cancel every timer and every probe in flight; later `apply` calls run nothing."""
        self._stopped = True
        for ep in list(self._endpoints.values()):
            self._drop(ep)
        self._endpoints.clear()
        self._by_check.clear()
        if self._tick is not None:
            self._tick.cancel()
        self._tick = self._tick_slot = None
        self._slots.clear()
        self._heap.clear()
        if self._prober is not None:
            self._prober.close()
            self._prober = None

    # ---- what the reconciler and the routers call ----------------------------------------------

    def apply(self, start: Iterable[ProbeSpec], stop: Iterable[ProbeSpec]) -> None:
        """Start and stop probes (a plan's probes_start/probes_stop); everything else keeps its state."""
        if self._stopped:
            return
        self._running_loop()
        now = self._clock()
        stop = [spec for spec in stop if spec in self._endpoints]
        retiring = {_check(spec): spec for spec in stop}
        for spec in start:
            if spec in self._endpoints:
                continue
            old = retiring.pop(_check(spec), None)
            if old is not None:  # same check, new timings: the state moves over
                ep = self._endpoints.pop(old)
                ep.spec, ep.target = spec, prepare(spec)
                ep.state.retune(spec.probe, now)
            else:
                twin = self._endpoints.get(self._by_check.get(_check(spec)))  # type: ignore[arg-type]
                state = (
                    twin.state.copy_for(spec.probe, now) if twin is not None  # what Verdicts already said
                    else ProbeState(spec.probe, now, stable_phase(spec))
                )
                ep = _Endpoint(spec, state)
                ep.done = functools.partial(self._done, ep)
            self._endpoints[spec] = ep
            self._by_check[_check(spec)] = spec
            if not ep.state.pending:
                self._arm(ep)
        for spec in stop:
            ep = self._endpoints.get(spec)
            if ep is not None and ep.spec == spec:
                del self._endpoints[spec]
                if self._by_check.get(_check(spec)) == spec:
                    del self._by_check[_check(spec)]
                self._drop(ep)

    async def first_results(self, specs: Iterable[ProbeSpec], timeout: float) -> int:
        """Wait, at most `timeout`, until every spec without an initial delay has had a probe
        answer; returns how many had not. At start-up this keeps a restart from resetting
        the clients of healthy endpoints while their first probes run."""
        waiting = [spec for spec in specs if spec.probe.initial_delay_seconds == 0]
        deadline = self._clock() + timeout
        while True:
            waiting = [s for s in waiting if (ep := self._endpoints.get(s)) is not None and ep.state.last is None]
            if not waiting or self._clock() >= deadline:
                return len(waiting)
            await asyncio.sleep(FIRST_RESULTS_POLL)

    def passive_failure(self, spec: ProbeSpec, reason: str) -> None:
        """Client traffic found the endpoint dead (refused, timed out): out now, a probe brings it back."""
        ep = self._endpoints.get(spec)
        if ep is None:
            return
        change = ep.state.passive_failure(reason)
        if change is not None:
            log.info("probe_passive_failure", endpoint=str(spec), reason=reason, ready=change.after.ready)
            self.on_change()

    def last_results(self) -> dict[ProbeSpec, ProbeResult]:
        """The newest result of every probe that has one (the status shows it with its latency)."""
        return {spec: ep.state.last for spec, ep in self._endpoints.items() if ep.state.last is not None}

    def __len__(self) -> int:
        return len(self._endpoints)

    # ---- the schedule --------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._prober is None:
            self._loop = asyncio.get_running_loop()
            self._prober = self._make_prober(self._loop)
        return self._loop

    def _arm(self, ep: _Endpoint) -> None:
        """Wait for the next probe in the slot it is due in (rounded up: never early)."""
        slot = math.ceil(ep.state.next_due / SLOT)
        ep.slot = slot
        waiting = self._slots.get(slot)
        if waiting is not None:
            waiting.append(ep)
            return
        self._slots[slot] = [ep]
        heapq.heappush(self._heap, slot)
        if self._tick_slot is None or slot < self._tick_slot:
            self._set_tick(slot)

    def _set_tick(self, slot: int) -> None:
        if self._tick is not None:
            self._tick.cancel()
        self._tick_slot = slot
        self._tick = self._loop.call_later(max(0.0, slot * SLOT - self._clock()), self._on_tick)  # type: ignore[union-attr]

    def _on_tick(self) -> None:
        self._tick = self._tick_slot = None
        now = self._clock()
        heap = self._heap
        while heap and heap[0] * SLOT <= now + EARLY_TOLERANCE:
            slot = heapq.heappop(heap)
            for ep in self._slots.pop(slot):
                if ep.slot == slot and self._endpoints.get(ep.spec) is ep:  # else re-armed or gone
                    ep.slot = None
                    self._fire(ep, now)
        if heap and (self._tick_slot is None or heap[0] < self._tick_slot):
            self._set_tick(heap[0])

    def _fire(self, ep: _Endpoint, now: float) -> None:
        if ep.state.pending:
            return  # a probe still runs: its end arms the next
        ep.state.start(now)
        assert self._prober is not None
        ep.run = self._prober.start(ep.target, self._clock, ep.done)

    def _done(self, ep: _Endpoint, result: ProbeResult) -> None:
        ep.run = None
        if self._endpoints.get(ep.spec) is not ep:
            return
        change = ep.state.finish(result, self._clock())
        self._count(ep, result)
        self._arm(ep)
        if change is not None:
            self.on_change()

    def _drop(self, ep: _Endpoint) -> None:
        ep.slot = None  # its slot entry is stale now
        if ep.run is not None:
            ep.run.cancel()
            ep.run = None

    def _count(self, ep: _Endpoint, result: ProbeResult) -> None:
        counter = ep.counted.get(result.outcome)
        if counter is None:
            counter = ep.counted[result.outcome] = metrics.probes_total.labels(ep.target.kind, str(result.outcome))
        counter.inc()
        latency = self._m_latency.get(ep.target.kind)
        if latency is None:
            latency = self._m_latency[ep.target.kind] = metrics.probe_duration.labels(ep.target.kind)
        latency.observe(result.latency)
