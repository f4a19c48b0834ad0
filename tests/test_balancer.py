"""Balancer: round-robin that survives churn, ClientIP affinity with last-use expiry."""

from __future__ import annotations

import ast
import pathlib

from hypothesis import given
from hypothesis import strategies as st

from lbd.balancer import Balancer, Target
from lbd.model import SessionAffinity

A, B, C, D = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)


def picks(bal: Balancer, n: int, client: str = "192.0.2.1", now: float = 0.0) -> list[Target | None]:
    return [bal.pick(client, now) for _ in range(n)]


def rr(targets: list[Target]) -> Balancer:
    bal = Balancer(SessionAffinity.NONE)
    bal.update(targets)
    return bal


def test_round_robin_order() -> None:
    assert picks(rr([A, B, C]), 7) == [A, B, C, A, B, C, A]


def test_no_targets_gives_none() -> None:
    bal = Balancer(SessionAffinity.NONE)
    assert bal.pick("192.0.2.1", 0.0) is None
    bal.update([A])
    bal.update([])
    assert bal.pick("192.0.2.1", 0.0) is None
    assert Balancer(SessionAffinity.CLIENT_IP).pick("192.0.2.1", 0.0) is None


def test_exclude_skips_and_all_excluded_gives_none() -> None:
    bal = rr([A, B, C])
    assert bal.pick("c", 0, exclude={A}) == B
    assert bal.pick("c", 0, exclude=(C, A)) == B
    assert bal.pick("c", 0, exclude=[A, B, C]) is None


def test_churn_keeps_position() -> None:
    bal = rr([A, B, C])
    assert picks(bal, 2) == [A, B]
    bal.update([A, B, C, D])  # D joins after the last picked target
    assert picks(bal, 4) == [C, D, A, B]


def test_churn_last_picked_removed_continues_with_its_successor() -> None:
    bal = rr([A, B, C, D])
    assert picks(bal, 2) == [A, B]
    bal.update([A, C, D])  # B (last picked) leaves: the next one is still C
    assert picks(bal, 3) == [C, D, A]
    bal.update([A, D])  # last picked A still there
    assert picks(bal, 2) == [D, A]


def test_churn_successor_removed_too() -> None:
    bal = rr([A, B, C, D])
    assert picks(bal, 2) == [A, B]
    bal.update([A, D])  # B and C gone: continue at D
    assert picks(bal, 2) == [D, A]


def test_new_target_joins_rotation() -> None:
    bal = rr([A])
    assert picks(bal, 2) == [A, A]
    bal.update([A, B])
    assert set(picks(bal, 2)) == {A, B}


def test_duplicates_are_ignored() -> None:
    assert picks(rr([A, A, B]), 4) == [A, B, A, B]


def test_affinity_pins_client() -> None:
    bal = Balancer(SessionAffinity.CLIENT_IP, 100)
    bal.update([A, B, C])
    first = bal.pick("192.0.2.1", 0.0)
    second = bal.pick("192.0.2.2", 0.0)
    assert first != second
    assert all(bal.pick("192.0.2.1", t) == first for t in range(1, 50))
    assert bal.pick("192.0.2.2", 60.0) == second


def test_affinity_expires_after_last_use() -> None:
    bal = Balancer(SessionAffinity.CLIENT_IP, 10)
    bal.update([A, B])
    assert bal.pick("c1", 0.0) == A
    assert bal.pick("c1", 9.0) == A  # refreshes the pin: it now lasts until 19
    assert bal.pick("other", 9.5) == B  # moves the rotation on so a fresh pick differs
    assert bal.pick("c1", 18.9) == A  # 9.9 s after the last use: still pinned
    assert bal.pinned_clients == 2
    # 10 s after its last use the pin is gone (purged) and c1 is balanced afresh.
    assert bal.pick("x", 28.9) == A
    assert bal.pinned_clients == 1
    assert bal.pick("c1", 28.9) == B


def test_affinity_rebalances_when_target_leaves() -> None:
    bal = Balancer(SessionAffinity.CLIENT_IP, 100)
    bal.update([A, B])
    assert bal.pick("c1", 0) == A
    bal.update([B, C])
    new = bal.pick("c1", 1)
    assert new in (B, C)
    bal.update([A, B, C])  # A is back, but c1 was re-pinned and stays on its new target
    assert bal.pick("c1", 2) == new


def test_affinity_rebalances_excluded_target_and_repins() -> None:
    bal = Balancer(SessionAffinity.CLIENT_IP, 100)
    bal.update([A, B, C])
    assert bal.pick("c1", 0) == A
    assert bal.pick("c1", 1, exclude={A}) == B  # the connect to A failed during retry
    assert bal.pick("c1", 2) == B


def test_unaffected_clients_keep_affinity_on_churn() -> None:
    bal = Balancer(SessionAffinity.CLIENT_IP, 100)
    bal.update([A, B, C])
    pins = {f"c{i}": bal.pick(f"c{i}", 0) for i in range(9)}
    bal.update([A, C, D])  # B leaves, D joins
    for client, target in pins.items():
        if target != B:
            assert bal.pick(client, 1) == target
        else:
            assert bal.pick(client, 1) in (A, C, D)


def test_affinity_table_purges_expired_entries() -> None:
    bal = Balancer(SessionAffinity.CLIENT_IP, 10)
    bal.update([A, B])
    for i in range(1000):
        bal.pick(f"10.1.{i // 256}.{i % 256}", i * 0.001)
    assert bal.pinned_clients == 1000
    bal.pick("late", 20.0)  # all earlier pins expired: purged on this pick
    assert bal.pinned_clients == 1


def test_affinity_table_is_capped() -> None:
    bal = Balancer(SessionAffinity.CLIENT_IP, 1000, max_clients=10)
    bal.update([A, B])
    for i in range(100):
        bal.pick(f"c{i}", 0.0)
    assert bal.pinned_clients == 10


def test_affinity_all_excluded_gives_none_and_keeps_pin() -> None:
    bal = Balancer(SessionAffinity.CLIENT_IP, 100)
    bal.update([A])
    assert bal.pick("c1", 0) == A
    assert bal.pick("c1", 1, exclude=[A]) is None
    assert bal.pick("c1", 2) == A


def test_module_is_pure() -> None:
    import lbd.balancer

    tree = ast.parse(pathlib.Path(lbd.balancer.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"asyncio", "socket", "time", "pyroute2"}


target_lists = st.lists(
    st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1"]), st.integers(1, 3)),
    min_size=1,
    max_size=8,
    unique=True,
)


@given(target_lists, st.integers(0, 20))
def test_round_robin_is_fair_over_a_cycle(targets: list[Target], offset: int) -> None:
    bal = rr(targets)
    picks(bal, offset)
    assert sorted(picks(bal, len(targets))) == sorted(targets)


@given(st.lists(target_lists, min_size=1, max_size=6), st.lists(st.integers(0, 5), min_size=6, max_size=6))
def test_churn_never_returns_unready_and_each_cycle_is_fair(sets: list[list[Target]], counts: list[int]) -> None:
    bal = Balancer(SessionAffinity.NONE)
    for targets, n in zip(sets, counts):
        bal.update(targets)
        got = picks(bal, n)
        assert all(t in targets for t in got)
        assert sorted(picks(bal, len(targets))) == sorted(targets)
