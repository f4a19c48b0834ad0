"""One endpoint's readinessProbe as a state machine: when to probe, and what the results mean (pure).

No I/O and no clock: callers pass `now` (monotonic seconds) and the results of the probes
they ran (lbd.health.checker runs them). Semantics are the kubelet's (pkg/kubelet/prober/
worker.go), with Kubernetes' defaults already in the model's Probe:

- an endpoint with a probe starts not ready ("initial delay", then "no probe result yet");
- results count in runs of the same outcome: `failureThreshold` failures in a row make a
  ready endpoint not ready, `successThreshold` successes in a row make it ready; a shorter run
  changes nothing (a not-ready endpoint that keeps failing stays out, with the newest reason);
- a passive failure (a client connect that was refused or timed out) counts as a whole
  failure run at once: the endpoint leaves now and needs `successThreshold` probes to return.

Schedule: each endpoint has a stable phase in [0, 1) (`stable_phase`: a hash, so a reload or a
restart gives the same spread, and 1,000 endpoints never probe in the same instant). The first
probe runs `initialDelaySeconds + phase x min(periodSeconds, FIRST_PROBE_SPREAD)` after the
endpoint appears (a new endpoint is checked within a second, not a period); after that, probes
start on the endpoint's own grid, `phase x period + k x period`.

Invariants:
- at most one probe per endpoint is pending (`due` is false while one is);
- `ready` changes only on a result or a passive failure, never with time alone;
- the next probe is never scheduled less than half a period after the previous one started.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from enum import StrEnum

from lbd.model import HTTPGetAction, IPAddress, Probe

# Seconds over which the first probes of new endpoints are spread (at most one period): long
# enough that a start with 1,000 endpoints is no burst, short enough that they are ready soon.
FIRST_PROBE_SPREAD = 1.0


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """One endpoint's readinessProbe, as the health checker runs it (one per endpoint and probe)."""

    address: IPAddress
    probe: Probe

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{probe_kind(self.probe)} {host}:{self.probe.action.port}"


class Outcome(StrEnum):
    """What one probe found: a metric label and a log field."""

    SUCCESS = "success"
    FAILURE = "failure"  # an answer that says no (HTTP status outside 200-399)
    TIMEOUT = "timeout"
    REFUSED = "refused"
    ERROR = "error"  # unreachable, reset, a broken answer

    @property
    def ok(self) -> bool:
        return self is Outcome.SUCCESS


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome, what to show for it ("HTTP 503", "connect refused") and its latency."""

    outcome: Outcome
    detail: str
    latency: float  # seconds from the start of the probe to its answer
    at: float  # monotonic time of the answer

    @property
    def ok(self) -> bool:
        return self.outcome.ok


class ProbeReason(StrEnum):
    """Why a probed endpoint is or is not ready, in the words `lbd get` shows."""

    INITIAL_DELAY = "initial delay"
    NO_RESULT = "no probe result yet"
    PASSED = "probe passed"
    FAILED = "probe failed"


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """What the probe says about its endpoint: ready or not, and why (e.g. `probe failed: HTTP 503`)."""

    ready: bool
    reason: str
    failing: bool = False  # not ready because of failures (not merely waiting for a result)

    @staticmethod
    def unknown(probe: Probe) -> ProbeVerdict:
        """The verdict before any state exists (a probe about to start)."""
        waiting = ProbeReason.INITIAL_DELAY if probe.initial_delay_seconds else ProbeReason.NO_RESULT
        return ProbeVerdict(False, str(waiting))


@dataclass(frozen=True, slots=True)
class Change:
    """Event: a verdict changed (readiness, or the reason an endpoint stays out)."""

    before: ProbeVerdict
    after: ProbeVerdict


def probe_kind(probe: Probe) -> str:
    """`http`, `https` or `tcp`: a metric label."""
    action = probe.action
    if isinstance(action, HTTPGetAction):
        return "https" if action.scheme == "HTTPS" else "http"
    return "tcp"


def stable_phase(spec: ProbeSpec) -> float:
    """A fraction in [0, 1) that depends only on the endpoint and what is probed (not on timings)."""
    key = f"{spec.address}|{spec.probe.action!r}".encode()
    return zlib.crc32(key) / 2**32


def passive_reason(failure: str) -> str:
    """The reason shown when client traffic, not a probe, found the endpoint dead."""
    words = {"refused": "connect refused", "timeout": "connect timed out", "unreachable": "unreachable"}
    return f"{words.get(failure, 'connect failed')} (client connection)"


def describe(probe: Probe) -> str:
    """kubectl describe's wording: `http-get http://:8080/health delay=0s timeout=1s period=10s #success=1 #failure=3`."""
    action = probe.action
    if isinstance(action, HTTPGetAction):
        what = f"http-get {action.scheme.lower()}://{action.host or ''}:{action.port}{action.path}"
    else:
        what = f"tcp-socket :{action.port}"
        if action.stands_in_for:
            what += f" (for the {action.stands_in_for} probe lbd cannot run)"
    return (
        f"{what} delay={probe.initial_delay_seconds}s timeout={probe.timeout_seconds}s "
        f"period={probe.period_seconds}s #success={probe.success_threshold} #failure={probe.failure_threshold}"
    )


_PASSED = str(ProbeReason.PASSED)


class ProbeState:
    """The probe state of one endpoint: its schedule, its runs of results, its verdict."""

    __slots__ = ("probe", "phase", "next_due", "pending", "ready", "reason", "run_ok", "run", "last", "_started")

    def __init__(self, probe: Probe, now: float, phase: float) -> None:
        if not 0.0 <= phase < 1.0:
            raise ValueError("phase must be in [0, 1)")
        self.probe = probe
        self.phase = phase
        self.next_due = now + probe.initial_delay_seconds + phase * min(probe.period_seconds, FIRST_PROBE_SPREAD)
        self.pending = False
        self.ready = False
        self.reason = str(ProbeReason.INITIAL_DELAY if probe.initial_delay_seconds else ProbeReason.NO_RESULT)
        self.run_ok: bool | None = None  # the outcome of the current run of equal results
        self.run = 0
        self.last: ProbeResult | None = None
        self._started = 0.0

    @property
    def verdict(self) -> ProbeVerdict:
        return ProbeVerdict(self.ready, self.reason, not self.ready and self.run_ok is False)

    def due(self, now: float) -> bool:
        return not self.pending and now >= self.next_due

    def start(self, now: float) -> None:
        """A probe starts now; the next one is due on the endpoint's grid, at least half a period on."""
        if self.pending:
            raise RuntimeError("a probe is already pending for this endpoint")
        self.pending = True
        self._started = now
        self.next_due = self._grid_after(now + self.probe.period_seconds / 2)

    def finish(self, result: ProbeResult, now: float) -> Change | None:
        """The pending probe answered (or timed out); returns the verdict change, if any."""
        self.pending = False
        self.last = result
        if self.next_due <= now:  # the probe outlived its period: the next is on the next slot
            self.next_due = self._grid_after(now)
        return self._count(result.ok, result.detail)

    def passive_failure(self, reason: str) -> Change | None:
        """Client traffic found the endpoint dead: a whole failure run at once."""
        before = self.verdict
        self.run_ok, self.run = False, self.probe.failure_threshold
        self.ready, self.reason = False, reason
        return self._changed(before)

    def retune(self, probe: Probe, now: float) -> None:
        """New timings or thresholds for the same check: keep readiness and the current run."""
        if probe.action != self.probe.action:
            raise ValueError("retune keeps the action; another check is another state")
        self.probe = probe
        if not self.pending:
            self.next_due = min(self.next_due, self._grid_after(now))

    def copy_for(self, probe: Probe, now: float) -> ProbeState:
        """A state for another probe of the same check on this endpoint (another service's
        timings): it starts from what this one knows, on its own schedule."""
        twin = ProbeState(self.probe, now, self.phase)
        twin.ready, twin.reason, twin.run_ok, twin.run, twin.last = self.ready, self.reason, self.run_ok, self.run, self.last
        twin.retune(probe, now)
        return twin

    def _grid_after(self, t: float) -> float:
        period = self.probe.period_seconds
        anchor = self.phase * period
        return anchor + (math.floor((t - anchor) / period) + 1) * period

    def _count(self, ok: bool, detail: str) -> Change | None:
        before = (self.ready, self.reason, self.run_ok)  # no objects on the path of every probe
        if self.run_ok is ok:
            self.run += 1
        else:
            self.run_ok, self.run = ok, 1
        probe = self.probe
        if ok:
            if self.run >= probe.success_threshold:
                self.ready, self.reason = True, _PASSED
            elif not self.ready:
                self.reason = f"{self.run} of {probe.success_threshold} successes"
        elif self.run >= probe.failure_threshold or not self.ready:
            # A not-ready endpoint stays out and shows the newest failure; a ready one leaves
            # only at the threshold.
            self.ready, self.reason = False, failed_reason(detail)
        same_failing = self.ready or (self.run_ok is False) == (before[2] is False)
        if self.ready == before[0] and self.reason == before[1] and same_failing:
            return None
        return Change(ProbeVerdict(before[0], before[1], not before[0] and before[2] is False), self.verdict)

    def _changed(self, before: ProbeVerdict) -> Change | None:
        after = self.verdict
        return None if after == before else Change(before, after)


def failed_reason(detail: str) -> str:
    """`probe failed: HTTP 503`; a detail that already says what broke is shown as it is."""
    return detail if detail.startswith(("connect", "timeout", "probe")) else f"{ProbeReason.FAILED}: {detail}"
