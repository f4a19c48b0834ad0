"""The probe state machine (lbd.health.probe), driven by a fake clock: no loop, no socket, no sleep."""

from __future__ import annotations

import ipaddress

import pytest

from lbd.health.probe import (
    FIRST_PROBE_SPREAD,
    Outcome,
    ProbeResult,
    ProbeSpec,
    ProbeState,
    ProbeVerdict,
    describe,
    passive_reason,
    probe_kind,
    stable_phase,
)
from lbd.model import HTTPGetAction, Probe, TCPSocketAction

HTTP = HTTPGetAction(8080, "/health")
OK = Outcome.SUCCESS


def result(outcome: Outcome = OK, detail: str | None = None, at: float = 0.0) -> ProbeResult:
    words = {Outcome.SUCCESS: "HTTP 200", Outcome.FAILURE: "HTTP 503", Outcome.REFUSED: "connect refused",
             Outcome.TIMEOUT: "timeout after 1s", Outcome.ERROR: "probe error: reset"}
    return ProbeResult(outcome, detail or words[outcome], 0.001, at)


class Clocked:
    """A ProbeState and the fake time it lives in; `probe()` runs one probe with a given outcome."""

    def __init__(self, probe: Probe, phase: float = 0.0, now: float = 100.0) -> None:
        self.now = now
        self.state = ProbeState(probe, now, phase)
        self.changes: list[ProbeVerdict] = []

    def probe(self, outcome: Outcome = OK, took: float = 0.001) -> ProbeVerdict:
        """Wait until the probe is due, run it, return the verdict after it."""
        self.now = max(self.now, self.state.next_due)
        assert self.state.due(self.now)
        self.state.start(self.now)
        self.now += took
        change = self.state.finish(result(outcome, at=self.now), self.now)
        if change is not None:
            self.changes.append(change.after)
        return self.state.verdict

    def run(self, *outcomes: Outcome) -> list[bool]:
        return [self.probe(o).ready for o in outcomes]


F, T = Outcome.FAILURE, Outcome.TIMEOUT

# ---- defaults and the start ------------------------------------------------------------------


def test_kubernetes_defaults_are_the_models() -> None:
    probe = Probe(HTTP)
    assert (probe.initial_delay_seconds, probe.period_seconds, probe.timeout_seconds) == (0, 10, 1)
    assert (probe.success_threshold, probe.failure_threshold) == (1, 3)


def test_not_ready_until_the_first_success_then_ready_at_once_with_the_defaults() -> None:
    c = Clocked(Probe(HTTP))
    assert c.state.verdict == ProbeVerdict(False, "no probe result yet")
    assert c.probe().ready
    assert c.state.verdict == ProbeVerdict(True, "probe passed")


def test_default_failure_threshold_three_failures_in_a_row() -> None:
    c = Clocked(Probe(HTTP))
    c.probe()
    assert c.run(F, F) == [True, True]
    assert c.probe(F) == ProbeVerdict(False, "probe failed: HTTP 503", failing=True)


def test_a_success_between_failures_restarts_the_count() -> None:
    c = Clocked(Probe(HTTP))
    c.probe()
    assert c.run(F, F, OK, F, F) == [True] * 5
    assert not c.probe(F).ready


def test_first_results_failing_keep_it_out_with_the_newest_reason() -> None:
    c = Clocked(Probe(HTTP))
    assert c.probe(F) == ProbeVerdict(False, "probe failed: HTTP 503", failing=True)
    assert c.probe(Outcome.REFUSED) == ProbeVerdict(False, "connect refused", failing=True)
    assert c.probe(T).reason == "timeout after 1s"


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_success_threshold(threshold: int) -> None:
    c = Clocked(Probe(HTTP, success_threshold=threshold))
    readiness = c.run(*[OK] * threshold)
    assert readiness == [False] * (threshold - 1) + [True]
    if threshold > 1:
        assert c.changes[0] == ProbeVerdict(False, f"1 of {threshold} successes")


@pytest.mark.parametrize("threshold", [1, 2, 4])
def test_failure_threshold(threshold: int) -> None:
    c = Clocked(Probe(HTTP, failure_threshold=threshold))
    c.probe()
    assert c.run(*[F] * threshold) == [True] * (threshold - 1) + [False]


def test_coming_back_needs_success_threshold_successes_in_a_row() -> None:
    c = Clocked(Probe(HTTP, success_threshold=2, failure_threshold=1))
    c.run(OK, OK)
    assert c.run(F) == [False]
    assert c.run(OK, F, OK) == [False, False, False]
    assert c.run(OK) == [True]


def test_every_outcome_but_success_is_a_failure() -> None:
    for outcome in (F, T, Outcome.REFUSED, Outcome.ERROR):
        c = Clocked(Probe(HTTP, failure_threshold=1))
        c.probe()
        assert not c.probe(outcome).ready


# ---- initial delay and the schedule ---------------------------------------------------------


def test_initial_delay_no_probe_before_it_and_not_ready_during_it() -> None:
    c = Clocked(Probe(HTTP, initial_delay_seconds=5, period_seconds=10), phase=0.5)
    assert c.state.verdict == ProbeVerdict(False, "initial delay")
    assert not c.state.due(104.9)
    # delay + phase x min(period, FIRST_PROBE_SPREAD)
    assert c.state.next_due == pytest.approx(100 + 5 + 0.5 * FIRST_PROBE_SPREAD)
    assert c.probe().ready


def test_first_probe_spread_within_a_second_even_with_a_long_period() -> None:
    dues = [ProbeState(Probe(HTTP, period_seconds=30), 0.0, phase).next_due for phase in (0.0, 0.25, 0.99)]
    assert dues == pytest.approx([0.0, 0.25, 0.99])
    short = ProbeState(Probe(HTTP, period_seconds=1), 0.0, 0.5)
    assert short.next_due == pytest.approx(0.5)


def test_after_the_first_probe_each_endpoint_keeps_its_own_grid() -> None:
    period = 10
    for phase in (0.0, 0.3, 0.9):
        c = Clocked(Probe(HTTP, period_seconds=period), phase=phase, now=1000.0)
        starts = []
        for _ in range(5):
            c.now = max(c.now, c.state.next_due)
            starts.append(c.now)
            c.probe()
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert gaps[0] >= period / 2 and gaps[0] <= 1.5 * period
        assert gaps[1:] == pytest.approx([period] * 3)
        assert (starts[-1] - phase * period) % period == pytest.approx(0, abs=1e-6)


def test_phases_spread_endpoints_over_the_period() -> None:
    slots = []
    for i in range(1000):
        address = ipaddress.ip_address(f"127.1.{i // 250}.{i % 250 + 1}")
        state = ProbeState(Probe(HTTP, period_seconds=1), 0.0, stable_phase(ProbeSpec(address, Probe(HTTP))))
        slots.append(int(state.next_due * 10))  # the tenth of a second it falls in
    per_tenth = [slots.count(k) for k in range(10)]
    assert min(per_tenth) > 50 and max(per_tenth) < 150


def test_stable_phase_ignores_timings_and_is_the_same_every_time() -> None:
    address = ipaddress.ip_address("198.18.0.11")
    a = stable_phase(ProbeSpec(address, Probe(HTTP, period_seconds=1)))
    assert a == stable_phase(ProbeSpec(address, Probe(HTTP, period_seconds=7, failure_threshold=9)))
    assert a != stable_phase(ProbeSpec(address, Probe(HTTPGetAction(8081, "/health"))))
    assert 0.0 <= a < 1.0


def test_one_pending_probe_at_most_and_a_slow_probe_moves_the_next_slot() -> None:
    c = Clocked(Probe(HTTP, period_seconds=1, timeout_seconds=3))
    c.state.start(c.now)
    assert not c.state.due(c.now + 5)
    with pytest.raises(RuntimeError):
        c.state.start(c.now + 5)
    finished = c.now + 2.5
    c.state.finish(result(T, at=finished), finished)
    assert c.state.next_due > finished  # on the grid after the answer, not in the past


# ---- passive failures ------------------------------------------------------------------------


def test_a_passive_failure_takes_a_ready_endpoint_out_at_once() -> None:
    c = Clocked(Probe(HTTP, failure_threshold=3))
    c.probe()
    change = c.state.passive_failure(passive_reason("refused"))
    assert change is not None and change.before.ready and not change.after.ready
    assert c.state.verdict == ProbeVerdict(False, "connect refused (client connection)", failing=True)


def test_after_a_passive_failure_success_threshold_probes_bring_it_back() -> None:
    c = Clocked(Probe(HTTP, success_threshold=2))
    c.probe(), c.probe()
    c.state.passive_failure(passive_reason("timeout"))
    assert c.run(OK, OK) == [False, True]


def test_a_passive_failure_on_an_endpoint_already_out_changes_only_the_reason() -> None:
    c = Clocked(Probe(HTTP))
    c.probe(F)
    change = c.state.passive_failure(passive_reason("refused"))
    assert change is not None and change.after.reason == "connect refused (client connection)"
    assert c.state.passive_failure(passive_reason("refused")) is None  # nothing new


# ---- retune and copies -----------------------------------------------------------------------


def test_retune_keeps_readiness_and_the_run_and_applies_new_thresholds() -> None:
    c = Clocked(Probe(HTTP, failure_threshold=3))
    c.probe()
    c.probe(F)
    c.state.retune(Probe(HTTP, failure_threshold=2, period_seconds=1), c.now)
    assert c.state.ready
    assert not c.probe(F).ready  # the run of 1 continues: 2 reaches the new threshold
    with pytest.raises(ValueError):
        c.state.retune(Probe(TCPSocketAction(8080)), c.now)


def test_retune_to_a_shorter_period_probes_sooner() -> None:
    c = Clocked(Probe(HTTP, period_seconds=60))
    c.probe()
    before = c.state.next_due
    c.state.retune(Probe(HTTP, period_seconds=1), c.now)
    assert c.state.next_due <= c.now + 1 < before


def test_copy_for_another_services_timings_starts_from_what_is_known() -> None:
    c = Clocked(Probe(HTTP))
    c.probe()
    twin = c.state.copy_for(Probe(HTTP, period_seconds=2), c.now)
    assert twin.verdict == c.state.verdict and twin.probe.period_seconds == 2 and twin.last == c.state.last


# ---- words -----------------------------------------------------------------------------------


def test_describe_and_kind() -> None:
    assert describe(Probe(HTTP)) == (
        "http-get http://:8080/health delay=0s timeout=1s period=10s #success=1 #failure=3"
    )
    assert describe(Probe(TCPSocketAction(5432, "exec"), period_seconds=2)).startswith(
        "tcp-socket :5432 (for the exec probe lbd cannot run) delay=0s timeout=1s period=2s"
    )
    assert probe_kind(Probe(HTTPGetAction(443, scheme="HTTPS"))) == "https"
    assert probe_kind(Probe(TCPSocketAction(1))) == "tcp"
    spec = ProbeSpec(ipaddress.ip_address("2001:db8::1"), Probe(HTTP))
    assert str(spec) == "http [2001:db8::1]:8080"


def test_phase_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError):
        ProbeState(Probe(HTTP), 0.0, 1.0)
