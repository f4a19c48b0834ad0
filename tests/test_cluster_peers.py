"""Failsafe asks between members (lbd.cluster.peers) on loopback: all answer and own nothing ->
confirmed; one silent or one owning a VIP -> not; the answer carries the asker's promise."""

from __future__ import annotations

import asyncio

from lbd.cluster.peers import PeerLink, local_address_towards
from lbd.loop import run
from tests.test_etcd_client import free_port


def test_a_round_needs_every_member_and_no_overlap() -> None:
    async def main() -> None:
        promised: list[tuple[str, str]] = []

        def member(name: str, owns: set[str]) -> PeerLink:
            def promise(asker: str) -> set[str]:
                promised.append((name, asker))
                return owns
            return PeerLink(name, promise)

        a, b, c = member("node-a", set()), member("node-b", {"198.18.0.9"}), member("node-c", set())
        ports = {}
        for link in (a, b, c):
            ports[link.node] = free_port()
            await link.open("127.0.0.1", ports[link.node])
        try:
            address = {n: ("127.0.0.1", p) for n, p in ports.items()}
            assert await a.confirm({"node-c": address["node-c"]}, {"198.18.0.200"}, 0.5)
            assert promised == [("node-c", "node-a")]
            # node-b answers for one of them: refused.
            assert not await a.confirm({n: address[n] for n in ("node-b", "node-c")}, {"198.18.0.9"}, 0.5)
            # A member that does not answer (nothing listens there): refused, within the timeout.
            silent = ("127.0.0.1", free_port())
            started = asyncio.get_running_loop().time()
            assert not await a.confirm({"node-c": address["node-c"], "node-d": silent}, {"198.18.0.200"}, 0.3)
            assert asyncio.get_running_loop().time() - started < 1.0
            assert await a.confirm({}, {"198.18.0.200"}, 0.3)  # the only member known
        finally:
            for link in (a, b, c):
                link.close()

    run(main())
    assert local_address_towards("http://127.0.0.1:2379") == "127.0.0.1"
