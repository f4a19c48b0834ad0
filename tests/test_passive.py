"""PassiveHealth: nginx max_fails/fail_timeout ejection with an injected clock."""

from __future__ import annotations

import pytest

from lbd.health.passive import PassiveHealth

A, B = ("10.0.0.1", 80), ("10.0.0.2", 80)


def test_one_failure_ejects_for_fail_timeout_by_default() -> None:
    ph = PassiveHealth()
    ev = ph.failed(A, 100.0, "refused")
    assert ev is not None and ev.target == A and ev.until == 110.0 and ev.reason == "refused"
    assert ph.ejected(100.0) == {A}
    assert ph.ejected(109.9) == {A}
    assert ph.ejected(110.0) == frozenset()


def test_success_clears_and_reports_recovery() -> None:
    ph = PassiveHealth()
    ph.failed(A, 0.0)
    assert ph.succeeded(A) is True
    assert ph.ejected(1.0) == frozenset()
    assert ph.succeeded(A) is False
    assert ph.succeeded(B) is False


def test_max_fails_within_window() -> None:
    ph = PassiveHealth(max_fails=3, fail_timeout=10)
    assert ph.failed(A, 0.0) is None
    assert ph.failed(A, 5.0) is None
    assert ph.ejected(5.0) == frozenset()
    assert ph.failed(A, 9.0) is not None
    assert ph.ejected(9.0) == {A}


def test_failures_spread_beyond_window_do_not_eject() -> None:
    ph = PassiveHealth(max_fails=2, fail_timeout=10)
    assert ph.failed(A, 0.0) is None
    assert ph.failed(A, 11.0) is None  # the first one is too old to count
    assert ph.failed(A, 12.0) is not None


def test_failed_trial_after_ejection_reejects_at_once() -> None:
    ph = PassiveHealth(max_fails=3, fail_timeout=10)
    for t in (0.0, 1.0, 2.0):
        ph.failed(A, t)
    assert ph.ejected(11.9) == {A}
    assert ph.ejected(12.0) == frozenset()  # back on trial
    assert ph.failed(A, 13.0) is not None
    assert ph.ejected(13.0) == {A}


def test_failure_while_ejected_is_not_a_new_event() -> None:
    ph = PassiveHealth()
    assert ph.failed(A, 0.0) is not None
    assert ph.failed(A, 1.0) is None
    assert ph.ejected(10.5) == frozenset()  # the ejection is not extended by the late failure


def test_retain_forgets_removed_targets() -> None:
    ph = PassiveHealth()
    ph.failed(A, 0.0)
    ph.failed(B, 0.0)
    ph.retain({B})
    assert ph.ejected(1.0) == {B}


def test_cache_is_invalidated_by_every_change() -> None:
    ph = PassiveHealth()
    assert ph.ejected(0.0) == frozenset()
    ph.failed(A, 0.5)
    assert ph.ejected(0.6) == {A}
    ph.failed(B, 0.7)
    assert ph.ejected(0.8) == {A, B}
    ph.succeeded(A)
    assert ph.ejected(0.9) == {B}


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PassiveHealth(max_fails=0)
    with pytest.raises(ValueError):
        PassiveHealth(fail_timeout=0)
