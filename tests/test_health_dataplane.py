"""Probe verdicts driving the data plane: reconciler + checker + a real listener, all on loopback.

Two backends on 127.0.0.2 and 127.0.0.3 (the same port), a loopback VIP: readiness reaches
the router's target set, a passive failure takes a dead backend out at once, a reload keeps
an unchanged endpoint's state, and with nothing ready a client is reset at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import time
from collections.abc import Callable

from lbd.health.checker import HealthChecker
from lbd.health.probe import ProbeSpec
from lbd.listeners import Listeners
from lbd.model import Endpoint, HTTPGetAction, Model, Probe, Service, ServicePort, ServiceType
from lbd.reconcile import Reconciler
from lbd.relay import RelayOptions
from lbd.vips import Vips
from tests.test_health_checker import HttpServer
from tests.test_reconcile import LOOP_POOL, MemoryStore, SwitchGate, free_port
from tests.test_vips import RecordingPresence

BACKENDS = ("127.0.0.2", "127.0.0.3")


def model(backend_port: int, vip_port: int, **probe: int) -> Model:
    web = Service(
        "web",
        ports=(ServicePort("http", vip_port, backend_port),),
        endpoints=tuple(Endpoint(ipaddress.ip_address(a)) for a in BACKENDS),
        readiness_probe=Probe(HTTPGetAction(backend_port, "/health"), **{"period_seconds": 1, **probe}),
    )
    return Model(pools=(LOOP_POOL,), services=(web,))


def wired() -> Reconciler:
    health = HealthChecker()
    r = Reconciler(
        node="node-a",
        relay=RelayOptions(connect_timeout=0.5),
        store=MemoryStore(),
        gate=SwitchGate(),
        vips=Vips(RecordingPresence()),
        listeners=Listeners(drain_timeout=0.2, health=health),
        health=health,
    )
    health.on_change = r.mark_dirty
    return r


def targets(r: Reconciler) -> set[str]:
    (entry,) = r.listeners.running.values()
    return {t[0] for t in entry.spec.targets}


async def until(condition: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while not condition() and time.monotonic() - started < seconds:
        await asyncio.sleep(0.01)
    assert condition()
    return time.monotonic() - started


async def get(vip: str, port: int) -> bytes | str:
    """One request through the VIP: the backend's answer, or how the connection ended."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, port), 2)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        return data or "closed"
    except ConnectionResetError:
        return "reset"


def test_probes_drive_the_target_set_and_a_dead_backend_leaves_on_its_first_refused_connect() -> None:
    backend_port, vip_port = free_port(), free_port()

    async def scenario() -> None:
        servers = [await HttpServer(host=a).start(backend_port) for a in BACKENDS]
        r = wired()
        await r.health.start()  # type: ignore[union-attr]
        try:
            for server in servers:
                server.status = 503
            await r.start(model(backend_port, vip_port, failure_threshold=2))
            vip = "127.0.0.240"
            assert targets(r) == set()  # start-up waited for the first probes: both fail
            assert r.readiness["default/web"].endpoints[0].text == "probe failed: HTTP 503"
            # Nothing ready: a client is reset at once, not left waiting.
            started = time.monotonic()
            assert await get(vip, vip_port) == "reset"
            assert time.monotonic() - started < 0.1
            for server in servers:
                server.status = 200
            await until(lambda: targets(r) == set(BACKENDS), 1.5)
            status = r.readiness["default/web"].endpoints[0]
            assert (status.ready, status.text) == (True, "probe passed")

            # /health turns 503 on one backend: out within period x failureThreshold + timeout.
            servers[0].status = 503
            took = await until(lambda: targets(r) == {BACKENDS[1]}, 1 * 2 + 1 + 0.5)
            assert took <= 3.2
            assert r.readiness["default/web"].endpoints[0].text == "probe failed: HTTP 503"
            servers[0].status = 200
            await until(lambda: targets(r) == set(BACKENDS), 1.5)

            # The other dies: the first client to hit it is retried elsewhere, and it leaves at once.
            await servers[1].close()
            answers = [await get(vip, vip_port) for _ in range(2)]
            assert all(isinstance(a, bytes) and a.startswith(b"HTTP/1.1 200") for a in answers)
            await until(lambda: targets(r) == {BACKENDS[0]}, 0.2)
            assert r.readiness["default/web"].endpoints[1].text == "connect refused (client connection)"
            # The event is recorded by the readiness report, off the loop: it may trail the targets.
            def left() -> list[str]:
                return [e.message for e in r.events.recent("default/web")
                        if e.reason == "EndpointNotReady" and e.subject == BACKENDS[1]]
            await until(lambda: bool(left()), 1.0)
            assert left()[-1] == "connect refused (client connection)"
        finally:
            await r.stop()
            r.listeners.stop_accepting()
            await r.listeners.drain_all(0.1)
            await r.health.stop()  # type: ignore[union-attr]
            for server in servers:
                await server.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_reload_keeps_an_unchanged_endpoints_state_and_retunes_a_changed_probe() -> None:
    backend_port, vip_port = free_port(), free_port()

    async def scenario() -> None:
        servers = [await HttpServer(host=a).start(backend_port) for a in BACKENDS]
        r = wired()
        health = r.health
        assert health is not None
        await health.start()
        try:
            first = model(backend_port, vip_port)
            await r.start(first)
            assert targets(r) == set(BACKENDS)  # probed before serving
            spec = ProbeSpec(ipaddress.ip_address(BACKENDS[0]), first.services[0].readiness_probe)  # type: ignore[arg-type]
            state = health._endpoints[spec].state
            # Same config again, then a new failure threshold: ready all along, same state object.
            seen: list[set[str]] = []
            (router,) = [entry.router for entry in r.listeners.running.values()]
            for again in (dataclasses.replace(first), model(backend_port, vip_port, failure_threshold=7)):
                applied = await r.submit(again)
                seen.append(targets(r))
                assert not applied.failed
            assert seen == [set(BACKENDS), set(BACKENDS)]
            assert [entry.router for entry in r.listeners.running.values()] == [router]
            (moved,) = [ep for ep in health._endpoints.values() if str(ep.spec.address) == BACKENDS[0]]
            assert moved.state is state and moved.state.probe.failure_threshold == 7
        finally:
            await r.stop()
            r.listeners.stop_accepting()
            await r.listeners.drain_all(0.1)
            await health.stop()
            for server in servers:
                await server.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_service_without_a_probe_keeps_passive_health_only_and_unserved_ones_are_not_probed() -> None:
    vip_port = free_port()
    dead = socket.socket()
    dead.bind(("127.0.0.2", 0))
    dead_port = dead.getsockname()[1]  # bound, not listening: refused
    web = Service("web", ports=(ServicePort("http", vip_port, dead_port),),
                  endpoints=(Endpoint(ipaddress.ip_address("127.0.0.2")),))
    # Not exposed: lbd neither serves nor probes it, and shows what its config says.
    internal = Service("internal", type=ServiceType.CLUSTER_IP, ports=(ServicePort("http", 80, 8080),),
                       endpoints=(Endpoint(ipaddress.ip_address("127.0.0.3")),),
                       readiness_probe=Probe(HTTPGetAction(8080)))

    async def scenario() -> None:
        r = wired()
        await r.health.start()  # type: ignore[union-attr]
        try:
            await r.start(Model(pools=(LOOP_POOL,), services=(web, internal)))
            assert r.readiness["default/internal"].endpoints[0].text == "ready"
            assert targets(r) == {"127.0.0.2"}  # ready by config: nothing probes it
            assert await get("127.0.0.240", vip_port) in ("reset", "closed")
            await asyncio.sleep(0.05)
            assert targets(r) == {"127.0.0.2"}  # passively ejected inside the router, still in the set
            (entry,) = r.listeners.running.values()
            assert entry.router.passive.ejected(time.monotonic())
            assert len(r.health) == 0  # type: ignore[arg-type]
        finally:
            await r.stop()
            r.listeners.stop_accepting()
            await r.listeners.drain_all(0.1)
            await r.health.stop()  # type: ignore[union-attr]

    try:
        asyncio.run(asyncio.wait_for(scenario(), 10))
    finally:
        dead.close()
