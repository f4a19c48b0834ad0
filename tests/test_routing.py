"""ServiceRouter: retry order over balancer + passive health with a fake clock."""

from __future__ import annotations

from lbd.balancer import Balancer, Target
from lbd.health.passive import PassiveHealth
from lbd.model import SessionAffinity
from lbd.relay import Failure
from lbd.routing import ServiceRouter

A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router(targets: list[Target], affinity: SessionAffinity = SessionAffinity.NONE) -> tuple[ServiceRouter, Clock]:
    clock = Clock()
    bal = Balancer(affinity)
    r = ServiceRouter(bal, PassiveHealth(), clock=clock, service="ns/web", port=80)
    r.update(targets)
    return r, clock


def attempts(r: ServiceRouter, client: str = "192.0.2.1", fail: frozenset[Target] = frozenset()) -> list[Target]:
    """What one client connection tries, failing the connects to `fail` like a relay would."""
    tried: list[Target] = []
    for _ in range(10):
        target = r.pick(client, tried)
        if target is None:
            break
        assert target not in tried
        tried.append(target)
        if target in fail:
            r.failed(target, Failure.REFUSED)
        else:
            r.succeeded(target)
            break
    return tried


def test_each_target_at_most_once_per_connection() -> None:
    r, _ = router([A, B, C])
    assert attempts(r, fail=frozenset({A, B, C})) == [A, B, C]


def test_refused_target_is_retried_on_next() -> None:
    r, _ = router([A, B, C])
    assert attempts(r, fail=frozenset({A})) == [A, B]


def test_ejected_target_is_skipped_until_fail_timeout() -> None:
    r, clock = router([A, B, C])
    attempts(r, fail=frozenset({A}))  # A ejected at t=1000
    clock.now += 1
    seen = [attempts(r)[0] for _ in range(6)]
    assert A not in seen
    clock.now += 10  # ejection over: A is back in the rotation
    assert A in [attempts(r)[0] for _ in range(3)]


def test_fallback_to_ejected_when_everything_else_tried() -> None:
    r, clock = router([A, B])
    attempts(r, fail=frozenset({A, B}))  # both ejected
    clock.now += 1
    # Both are ejected, the connection still tries both (and one may accept again).
    assert attempts(r, fail=frozenset({A})) in ([A, B], [B])
    assert attempts(r, fail=frozenset({A, B})) == [A, B] or attempts(r, fail=frozenset({A, B})) == [B, A]


def test_fallback_prefers_healthy_then_ejected() -> None:
    r, clock = router([A, B, C])
    r.failed(A, Failure.REFUSED)
    clock.now += 1
    tried = attempts(r, fail=frozenset({A, B, C}))
    assert sorted(tried) == [A, B, C] and tried[-1] == A


def test_success_clears_ejection() -> None:
    r, clock = router([A, B])
    r.failed(A, Failure.TIMEOUT)
    assert r.passive.ejected(clock.now) == {A}
    r.succeeded(A)
    assert r.passive.ejected(clock.now) == frozenset()


def test_no_targets() -> None:
    r, _ = router([])
    assert r.pick("192.0.2.1", ()) is None


def test_affinity_moves_off_ejected_target() -> None:
    r, clock = router([A, B], SessionAffinity.CLIENT_IP)
    assert attempts(r, "c1") == [A]
    r.failed(A, Failure.REFUSED)
    clock.now += 1
    assert attempts(r, "c1") == [B]
    clock.now += 20
    assert attempts(r, "c1") == [B]  # re-pinned to B, stays there after A recovers


def test_update_forgets_passive_state_of_removed_targets() -> None:
    r, clock = router([A, B])
    r.failed(A, Failure.REFUSED)
    r.update([B])
    r.update([A, B])
    assert r.passive.ejected(clock.now) == frozenset()


def test_a_drained_target_gets_no_new_picks_but_its_established_flows_may_stay() -> None:
    r, _ = router([A, B, C])
    r.update([A, C], draining=frozenset({B}))
    assert {r.pick(f"192.0.2.{i}", []) for i in range(6)} == {A, C}
    assert r.is_ready(B) and r.is_ready(A)  # a UDP flow on B stays until it idles out
    r.update([A, C])  # undrained and gone: a flow on B moves with its next datagram
    assert not r.is_ready(B)
