"""The UDP flow table (pure): least-recently-used order, idle expiry, the cap and its eviction order."""

from __future__ import annotations

import pytest

from lbd.relay.flows import Flow, FlowTable

A, B, C, D = (("198.18.0.100", 5000 + i) for i in range(4))
T1, T2 = ("198.18.0.11", 53), ("198.18.0.12", 53)


def flow(client: tuple, now: float, target: tuple = T1) -> Flow:
    return Flow(client, target, now, generation=0)


def test_get_touches_and_missing_clients_have_no_flow() -> None:
    table: FlowTable[Flow] = FlowTable(max_flows=10, timeout=30)
    assert table.get(A, 0) is None
    table.add(flow(A, 0))
    table.add(flow(B, 1))
    got = table.get(A, 5)
    assert got is not None and got.last == 5 and got.client_ip == "198.18.0.100"
    assert list(table.flows) == [B, A]  # A is now the most recently used


def test_expire_removes_exactly_the_idle_ones_oldest_first() -> None:
    table: FlowTable[Flow] = FlowTable(max_flows=10, timeout=30)
    for i, client in enumerate((A, B, C)):
        table.add(flow(client, i))
    table.touch(table.flows[A], 20)  # a reply on A at t=20
    assert table.expire(30.5) == []  # B (t=1) is idle only 29.5 s
    assert [f.client for f in table.expire(31)] == [B]
    assert [f.client for f in table.expire(50)] == [C, A]
    assert len(table) == 0


def test_the_cap_evicts_the_least_recently_used_first() -> None:
    table: FlowTable[Flow] = FlowTable(max_flows=3, timeout=30)
    for i, client in enumerate((A, B, C)):
        assert table.add(flow(client, i)) == []
    table.get(A, 10)  # A used again: B is now the oldest idle
    evicted = table.add(flow(D, 11))
    assert [f.client for f in evicted] == [B]
    assert list(table.flows) == [C, A, D] and len(table) == 3


def test_resize_evicts_down_to_the_new_cap_and_takes_the_new_timeout() -> None:
    table: FlowTable[Flow] = FlowTable(max_flows=10, timeout=30)
    for i, client in enumerate((A, B, C, D)):
        table.add(flow(client, i))
    assert [f.client for f in table.resize(2, 5)] == [A, B]
    assert [f.client for f in table.expire(8)] == [C, D]


def test_remove_and_clear() -> None:
    table: FlowTable[Flow] = FlowTable(max_flows=10, timeout=30)
    table.add(flow(A, 0))
    table.add(flow(B, 0, T2))
    assert table.remove(A) is not None and table.remove(A) is None
    assert [f.target for f in table.clear()] == [T2] and len(table) == 0


def test_limits_must_make_sense() -> None:
    with pytest.raises(ValueError):
        FlowTable(max_flows=0, timeout=30)
    with pytest.raises(ValueError):
        FlowTable(max_flows=1, timeout=0)
