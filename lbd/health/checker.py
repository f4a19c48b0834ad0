"""The health checker: runs every endpoint's readinessProbe on the event loop, keeps the verdicts.

The reconciler hands it the plan's `probes_start`/`probes_stop`; it keeps one ProbeState per
ProbeSpec (an endpoint's address and its service's probe: service ports and services sharing
an endpoint and a probe share one state, so nothing is probed twice). When a verdict changes
it calls `on_change` (the reconciler's mark_dirty): the next pass, milliseconds later, updates
the routers' target sets in place.

Nothing here blocks the loop: one timer per endpoint, armed for its next probe, and one probe
in flight at most per endpoint (lbd.health.prober: non-blocking, bounded by its timeout).
A reload keeps the state of every unchanged endpoint; a probe whose timings or thresholds
changed keeps its state too (retuned); only a new check (another port, path, kind) starts
from "no probe result yet".
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import structlog

from lbd import metrics
from lbd.health.probe import (
    ProbeResult,
    ProbeSpec,
    ProbeState,
    ProbeVerdict,
    probe_kind,
    stable_phase,
)
from lbd.health.prober import Done, ProbeRun, start_probe

log = structlog.get_logger("lbd.health")

# A timer may fire this early (uvloop counts in milliseconds) and still start its probe.
EARLY_TOLERANCE = 0.002
# How often first_results looks again (it runs once, at start-up).
FIRST_RESULTS_POLL = 0.05

StartProbe = Callable[[asyncio.AbstractEventLoop, ProbeSpec, Callable[[], float], Done], ProbeRun]
_Check = tuple[Any, Any]  # (address, action): what is probed, whatever the timings


def _check(spec: ProbeSpec) -> _Check:
    return (spec.address, spec.probe.action)


class _Endpoint:
    """One probed endpoint: its state, its timer, its probe in flight."""

    __slots__ = ("spec", "state", "timer", "run", "fire", "done")

    def __init__(self, spec: ProbeSpec, state: ProbeState) -> None:
        self.spec = spec
        self.state = state
        self.timer: asyncio.TimerHandle | None = None
        self.run: ProbeRun | None = None
        self.fire: Callable[[], None] = lambda: None
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
        prober: StartProbe = start_probe,
    ) -> None:
        self.on_change = on_change
        self._clock = clock
        self._prober = prober
        self._endpoints: dict[ProbeSpec, _Endpoint] = {}
        self._by_check: dict[_Check, ProbeSpec] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._m_results: dict[tuple[str, str], Any] = {}
        self._m_latency: dict[str, Any] = {}
        self.verdicts: Mapping[ProbeSpec, ProbeVerdict] = Verdicts(self)

    # ---- lifecycle (a daemon component) --------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = False

    async def stop(self) -> None:
        """Cancel every timer and every probe in flight; later `apply` calls run nothing."""
        self._stopped = True
        for ep in list(self._endpoints.values()):
            self._drop(ep)
        self._endpoints.clear()
        self._by_check.clear()

    # ---- what the reconciler and the routers call ----------------------------------------------

    def apply(self, start: Iterable[ProbeSpec], stop: Iterable[ProbeSpec]) -> None:
        """Start and stop probes (a plan's probes_start/probes_stop); everything else keeps its state."""
        if self._stopped:
            return
        loop = self._loop = self._loop or asyncio.get_running_loop()
        now = self._clock()
        stop = [spec for spec in stop if spec in self._endpoints]
        retiring = {_check(spec): spec for spec in stop}
        for spec in start:
            if spec in self._endpoints:
                continue
            old = retiring.pop(_check(spec), None)
            if old is not None:  # same check, new timings: the state moves over
                ep = self._endpoints.pop(old)
                ep.spec = spec
                ep.state.retune(spec.probe, now)
            else:
                twin = self._endpoints.get(self._by_check.get(_check(spec)))  # type: ignore[arg-type]
                state = (
                    twin.state.copy_for(spec.probe, now) if twin is not None  # what Verdicts already said
                    else ProbeState(spec.probe, now, stable_phase(spec))
                )
                ep = _Endpoint(spec, state)
                ep.fire = functools.partial(self._fire, ep)
                ep.done = functools.partial(self._done, ep)
            self._endpoints[spec] = ep
            self._by_check[_check(spec)] = spec
            self._arm(ep, now, loop)
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

    def _arm(self, ep: _Endpoint, now: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if ep.timer is not None:
            ep.timer.cancel()
        ep.timer = (loop or self._loop).call_later(max(0.0, ep.state.next_due - now), ep.fire)  # type: ignore[union-attr]

    def _fire(self, ep: _Endpoint) -> None:
        ep.timer = None
        if self._endpoints.get(ep.spec) is not ep or ep.state.pending:
            return  # gone; or a probe still runs: its end arms the next
        now = self._clock()
        if now < ep.state.next_due - EARLY_TOLERANCE:
            self._arm(ep, now)
            return
        ep.state.start(now)
        assert self._loop is not None
        ep.run = self._prober(self._loop, ep.spec, self._clock, ep.done)

    def _done(self, ep: _Endpoint, result: ProbeResult) -> None:
        ep.run = None
        if self._endpoints.get(ep.spec) is not ep:
            return
        now = self._clock()
        change = ep.state.finish(result, now)
        self._count(ep.spec, result)
        self._arm(ep, now)
        if change is not None:
            self.on_change()

    def _drop(self, ep: _Endpoint) -> None:
        if ep.timer is not None:
            ep.timer.cancel()
            ep.timer = None
        if ep.run is not None:
            ep.run.cancel()
            ep.run = None

    def _count(self, spec: ProbeSpec, result: ProbeResult) -> None:
        kind = probe_kind(spec.probe)
        key = (kind, str(result.outcome))
        counter = self._m_results.get(key)
        if counter is None:
            counter = self._m_results[key] = metrics.probes_total.labels(*key)
        counter.inc()
        latency = self._m_latency.get(kind)
        if latency is None:
            latency = self._m_latency[kind] = metrics.probe_duration.labels(kind)
        latency.observe(result.latency)
