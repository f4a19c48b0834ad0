"""The UDP relay on loopback: flows, replies from the listener's address, affinity, limits, failures.

Real sockets, no root: the listener binds 127.0.0.1 (the "VIP"), backends are threads with
UDP sockets on other loopback ports, clients use connected sockets (as dig and nc -u do, so a
reply from any other address would be dropped by their kernel).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from lbd import metrics
from lbd.balancer import Balancer, Target
from lbd.health.passive import PassiveHealth
from lbd.model import SessionAffinity
from lbd.relay import Failure, RelayOptions, UdpOptions
from lbd.relay.udp import UdpListener
from lbd.routing import ServiceRouter

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
TIMEOUT = 2.0


class UdpBackend:
    """Answers each datagram with `<name>\\n<datagram>`, `replies` times; bounded by a stop flag."""

    def __init__(self, name: str, replies: int = 1, host: str = "127.0.0.1") -> None:
        self.name = name.encode()
        self.replies = replies
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.target: Target = (host, self.sock.getsockname()[1])
        self.received = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            self.received += 1
            for _ in range(self.replies):
                self.sock.sendto(self.name + b"\n" + data[:60000], peer)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


class RecordingRouter(ServiceRouter):
    def __init__(self, targets: list[Target], affinity: SessionAffinity = SessionAffinity.NONE) -> None:
        super().__init__(Balancer(affinity), PassiveHealth(), service="test/udp", port="dns")
        self.update(targets)
        self.failures: list[tuple[Target, Failure]] = []

    def failed(self, target: Target, failure: Failure) -> None:
        self.failures.append((target, failure))
        super().failed(target, failure)


def run(body: Callable[[], Awaitable[Any]], loop_kind: str = "uvloop") -> Any:
    loop = LOOPS[loop_kind]()
    try:
        return loop.run_until_complete(asyncio.wait_for(body(), 20))
    finally:
        loop.close()


async def started(router: ServiceRouter, udp: UdpOptions = UdpOptions(), host: str = "127.0.0.1") -> UdpListener:
    listener = UdpListener(host, 0, router, RelayOptions(), "test/udp", "dns", udp=udp)
    await listener.start()
    return listener


def client(listener: UdpListener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    c = socket.socket(family, socket.SOCK_DGRAM)
    c.settimeout(TIMEOUT)
    c.connect((listener.host, listener.port))  # connected: only replies from the VIP get through
    return c


def ask(c: socket.socket, data: bytes = b"ping", replies: int = 1) -> list[bytes]:
    c.send(data)
    return [c.recv(65536) for _ in range(replies)]


def name_of(reply: bytes) -> str:
    return reply.split(b"\n", 1)[0].decode()


@pytest.mark.parametrize("loop_kind", ["uvloop", "asyncio"])
def test_replies_come_from_the_vip_and_new_flows_round_robin(loop_kind: str) -> None:
    backends = [UdpBackend("b1"), UdpBackend("b2")]
    router = RecordingRouter([b.target for b in backends])

    async def body() -> list[str]:
        listener = await started(router)

        def clients() -> list[str]:
            names = []
            for _ in range(4):
                with client(listener) as c:
                    (reply,) = ask(c, b"hello")
                    assert reply.endswith(b"\nhello")
                    names.append(name_of(reply))
            return names

        try:
            return await asyncio.to_thread(clients)
        finally:
            await listener.drain(0)

    try:
        names = run(body, loop_kind)
    finally:
        for b in backends:
            b.close()
    assert names == ["b1", "b2", "b1", "b2"]


def test_a_flow_keeps_its_endpoint_and_gets_many_replies_per_request() -> None:
    backends = [UdpBackend("b1", replies=3), UdpBackend("b2", replies=3)]
    router = RecordingRouter([b.target for b in backends])

    async def body() -> None:
        listener = await started(router)

        def one_client() -> None:
            with client(listener) as c:
                answers = [name_of(r) for _ in range(5) for r in ask(c, replies=3)]
                assert len(set(answers)) == 1 and len(answers) == 15

        try:
            await asyncio.to_thread(one_client)
            assert listener.active == 1
            listener.flush_metrics()
            up = metrics.udp_datagrams_total.labels("test/udp", "dns", "client_to_endpoint")._value.get()
            assert up >= 5
        finally:
            await listener.drain(0)

    try:
        run(body)
    finally:
        for b in backends:
            b.close()


def test_client_ip_affinity_holds_across_source_ports() -> None:
    backends = [UdpBackend("b1"), UdpBackend("b2"), UdpBackend("b3")]
    router = RecordingRouter([b.target for b in backends], SessionAffinity.CLIENT_IP)

    async def body() -> set[str]:
        listener = await started(router)

        def clients() -> set[str]:
            names = set()
            for _ in range(6):  # six sockets: six source ports, one client IP
                with client(listener) as c:
                    names.add(name_of(ask(c)[0]))
            return names

        try:
            return await asyncio.to_thread(clients)
        finally:
            await listener.drain(0)

    try:
        assert len(run(body)) == 1
    finally:
        for b in backends:
            b.close()


def test_a_65000_byte_datagram_passes_intact_both_ways() -> None:
    backend = UdpBackend("big")
    router = RecordingRouter([backend.target])
    payload = bytes(range(256)) * 253 + b"x" * 232  # 65,000 bytes

    async def body() -> bytes:
        listener = await started(router)

        def big() -> bytes:
            with client(listener) as c:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                return ask(c, payload)[0]

        try:
            return await asyncio.to_thread(big)
        finally:
            await listener.drain(0)

    try:
        reply = run(body)
    finally:
        backend.close()
    assert reply == b"big\n" + payload[:60000]  # the backend echoes at most 60,000 bytes back


def test_an_idle_flow_expires_and_the_next_datagram_picks_again() -> None:
    backends = [UdpBackend("b1"), UdpBackend("b2")]
    router = RecordingRouter([b.target for b in backends])

    async def body() -> list[str]:
        listener = await started(router, UdpOptions(flow_timeout=0.3))
        c = client(listener)
        try:
            first = name_of((await asyncio.to_thread(ask, c))[0])
            again = name_of((await asyncio.to_thread(ask, c))[0])
            assert listener.active == 1
            await asyncio.sleep(0.8)  # idle past the timeout: the sweep (every 0.15 s) ends it
            assert listener.active == 0
            later = name_of((await asyncio.to_thread(ask, c))[0])
            return [first, again, later]
        finally:
            c.close()
            await listener.drain(0)

    try:
        assert run(body) == ["b1", "b1", "b2"]
    finally:
        for b in backends:
            b.close()


def test_the_cap_evicts_the_least_recently_used_flow() -> None:
    backend = UdpBackend("b1")
    router = RecordingRouter([backend.target])

    async def body() -> None:
        listener = await started(router, UdpOptions(max_flows=3))
        clients = [client(listener) for _ in range(5)]
        try:
            for c in clients:
                await asyncio.to_thread(ask, c)
            assert listener.active == 3
            assert listener.events["evicted"] == 2 and listener.events["created"] == 5
            # The newest three still have their flows; the oldest gets a fresh one.
            await asyncio.to_thread(ask, clients[4])
            assert listener.events["created"] == 5
            await asyncio.to_thread(ask, clients[0])
            assert listener.events["created"] == 6
        finally:
            for c in clients:
                c.close()
            await listener.drain(0)

    try:
        run(body)
    finally:
        backend.close()


def test_an_endpoint_answering_port_unreachable_is_skipped() -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_target: Target = ("127.0.0.1", dead.getsockname()[1])
    dead.close()  # nothing listens there now: the kernel answers ICMP port unreachable
    alive = UdpBackend("alive")
    router = RecordingRouter([dead_target, alive.target])

    async def body() -> list[str]:
        listener = await started(router)
        c = client(listener)
        c.settimeout(0.3)
        names = []
        try:
            for _ in range(3):  # the first datagram goes to the dead port and is lost
                try:
                    names.append(name_of((await asyncio.to_thread(ask, c))[0]))
                except TimeoutError:
                    names.append("lost")
            return names
        finally:
            c.close()
            await listener.drain(0)

    try:
        names = run(body)
    finally:
        alive.close()
    assert names == ["lost", "alive", "alive"]
    assert router.failures == [(dead_target, Failure.REFUSED)]


def test_no_endpoint_drops_and_counts() -> None:
    router = RecordingRouter([])

    async def body() -> int:
        listener = await started(router)
        c = client(listener)
        c.settimeout(0.2)
        try:
            for _ in range(3):
                with pytest.raises(TimeoutError):
                    await asyncio.to_thread(ask, c)
            return listener.drops["no_endpoint"]
        finally:
            c.close()
            await listener.drain(0)

    assert run(body) == 3


def test_an_endpoint_leaving_the_ready_set_moves_its_flows() -> None:
    backends = [UdpBackend("b1"), UdpBackend("b2")]
    router = RecordingRouter([b.target for b in backends])

    async def body() -> list[str]:
        listener = await started(router)
        c = client(listener)
        try:
            first = name_of((await asyncio.to_thread(ask, c))[0])
            router.update([backends[1].target])  # b1 leaves (reload, or a failed probe)
            second = name_of((await asyncio.to_thread(ask, c))[0])
            return [first, second]
        finally:
            c.close()
            await listener.drain(0)

    try:
        assert run(body) == ["b1", "b2"]
    finally:
        for b in backends:
            b.close()


def test_ipv6_vip_and_a_datagram_too_large_for_an_ipv4_endpoint() -> None:
    v6, v4 = UdpBackend("v6", host="::1"), UdpBackend("v4")
    router6, router4 = RecordingRouter([v6.target]), RecordingRouter([v4.target])

    async def body() -> int:
        to_v6 = await started(router6, host="::1")
        to_v4 = await started(router4, host="::1")
        c6, c4 = client(to_v6), client(to_v4)
        c4.settimeout(0.3)
        try:
            assert name_of((await asyncio.to_thread(ask, c6))[0]) == "v6"
            # 65,520 bytes fit IPv6 (65,527 max) but not IPv4 (65,507): dropped, counted.
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(ask, c4, b"x" * 65520)
            assert name_of((await asyncio.to_thread(ask, c4))[0]) == "v4"  # the flow still works
            return to_v4.drops["too_large"]
        finally:
            c6.close()
            c4.close()
            await to_v6.drain(0)
            await to_v4.drain(0)

    try:
        assert run(body) == 1
    finally:
        v6.close()
        v4.close()


def test_eviction_counts_late_replies_and_never_touches_the_new_datagram() -> None:
    backend = UdpBackend("b1")
    router = RecordingRouter([backend.target])

    async def body() -> tuple[bytes, int]:
        listener = await started(router, UdpOptions(max_flows=1))
        a, b = client(listener), client(listener)
        try:
            await asyncio.to_thread(ask, a)
            (flow_a,) = listener.table.flows.values()
            # A late reply for A waits unread on A's endpoint socket when B's datagram evicts A.
            listener.loop.remove_reader(flow_a.sock.fileno())
            backend.sock.sendto(b"late reply for a", flow_a.sock.getsockname())
            await asyncio.sleep(0.05)
            (reply,) = await asyncio.to_thread(ask, b, b"B" * 1000)
            return reply, listener.drops["flow_evicted"]
        finally:
            a.close()
            b.close()
            await listener.drain(0)

    try:
        reply, lost = run(body)
    finally:
        backend.close()
    assert reply == b"b1\n" + b"B" * 1000  # B's datagram reached the backend intact
    assert lost == 1
