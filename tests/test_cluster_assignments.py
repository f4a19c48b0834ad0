"""Cluster-wide assignments on a real etcd (lbd.cluster.assignments): every node reads the same
VIPs, and two nodes applying one new config at once hand no IP to two services."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Iterator

import pytest

from lbd.assignments import allocate_and_commit
from lbd.cluster.assignments import EtcdAssignmentStore
from lbd.cluster.etcd import EtcdClient
from lbd.model import AddressRange, Endpoint, Pool, Service, ServicePort
from tests.test_etcd_client import etcd  # noqa: F401  (the module's etcd member)

POOL = Pool("lab", (AddressRange(ipaddress.ip_address("198.18.5.1"), ipaddress.ip_address("198.18.5.6")),))


def services(*names: str) -> list[Service]:
    return [Service(n, ports=(ServicePort("http", 80, 80),), endpoints=(Endpoint(ipaddress.ip_address("198.18.1.1")),))
            for n in names]


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """The daemon's layout: the client on an event loop, the store called from other threads."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_nodes_agree_and_concurrent_commits_never_share_an_ip(etcd: str, loop_thread) -> None:  # noqa: F811
    prefix = f"/lbd-assign-{id(loop_thread)}/"
    stores = [EtcdAssignmentStore(EtcdClient([etcd]), prefix, loop_thread) for _ in range(3)]
    first = allocate_and_commit(stores[0], [POOL], services("a", "b"))
    assert first.store_error is None
    assert stores[1].load().assignments == first.allocation.sticky()

    # Three nodes apply the same new config at once: each allocates from what it read, the
    # compare-and-swap lets one win, the others re-read and agree with it.
    new = services("a", "b", "c", "d")
    read = [s.load() for s in stores]
    results = [None] * 3

    def apply(i: int) -> None:
        results[i] = allocate_and_commit(stores[i], [POOL], new, read[i])

    threads = [threading.Thread(target=apply, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    sticky = [r.allocation.sticky() for r in results]  # type: ignore[union-attr]
    assert sticky[0] == sticky[1] == sticky[2] == stores[0].load().assignments
    assert len(set(sticky[0].values())) == 4  # one IP per service
    assert {k: sticky[0][k] for k in ("default/a", "default/b")} == first.allocation.sticky()  # nothing moved
    for store in stores:
        asyncio.run_coroutine_threadsafe(store.client.close(), loop_thread).result(5)
