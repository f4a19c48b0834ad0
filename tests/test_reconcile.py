"""The reconcile task executing plans: real listeners on loopback, a recording presence, no root.

Loopback VIPs never reach the presence; a 198.18.x VIP does, so both halves of the VIP
lifecycle are exercised. Listeners on 198.18.x are stubs: a unit test binds nothing outside
loopback on the host (the netns integration tests bind real ones).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Mapping, Sequence

import pytest

from lbd.assignments import Stored
from lbd.daemon import Daemon
from lbd.listeners import Listeners
from lbd.model import (
    AddressRange,
    Endpoint,
    IPAddress,
    Model,
    Pool,
    Protocol,
    Service,
    ServicePort,
    SessionAffinity,
)
from lbd.options import DaemonOptions
from lbd.ownership import Ownership, OwnershipReason
from lbd.plan import ListenerKey, ListenerSpec
from lbd.readiness import Readiness
from lbd.reconcile import Reconciler, ShuttingDown
from lbd.relay import RelayOptions
from lbd.relay.listener import Listener
from lbd.status import ServiceState
from lbd.vips import Vips
from tests.test_vips import RecordingPresence

LOOP_POOL = Pool("local", (AddressRange(ipaddress.ip_address("127.0.0.240"), ipaddress.ip_address("127.0.0.250")),))
LAB_VIP = ipaddress.ip_address("198.18.7.200")
LAB_POOL = Pool("lab", (AddressRange(LAB_VIP, LAB_VIP),))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, IPAddress] = {}

    def load(self) -> Stored:
        return Stored(dict(self.data))

    def commit(self, assignments: Mapping[str, IPAddress], expected: Stored) -> Stored:
        self.data = dict(assignments)
        return Stored(dict(self.data))


class SwitchGate:
    """A gate whose answer the test flips (as lease events will in a cluster)."""

    def __init__(self) -> None:
        self.owner = True

    def decide(self, vip: IPAddress, services: Sequence[Service], readiness: Readiness) -> Ownership:
        return Ownership(self.owner, OwnershipReason.SINGLE_NODE)

    def decided(self) -> None:
        pass


def service(name: str, port: int, **kwargs: object) -> Service:
    return Service(
        name,
        ports=(ServicePort("http", port, 8080),),
        endpoints=(Endpoint(ipaddress.ip_address("127.0.0.1"), port=1),),
        **kwargs,  # type: ignore[arg-type]
    )


class StubListener(Listener):
    """Listens nowhere: for VIPs a unit test must not bind on the host."""

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    def stop_accepting(self) -> None:
        pass

    async def drain(self, timeout: float) -> int:
        return 0

    def cut(self) -> int:
        return 0


def stub_listener(spec: ListenerSpec, router: object) -> Listener:
    return StubListener(str(spec.key.ip), spec.key.port, router, spec.options, spec.service, spec.port_name)  # type: ignore[arg-type]


def reconciler(
    presence: RecordingPresence | None = None, gate: SwitchGate | None = None, *, stub: bool = False
) -> Reconciler:
    kinds = {Protocol.TCP: stub_listener} if stub else Listeners(0).kinds
    return Reconciler(
        node="node-a",
        relay=RelayOptions(connect_timeout=0.5),
        store=MemoryStore(),
        gate=gate or SwitchGate(),
        vips=Vips(presence or RecordingPresence()),
        listeners=Listeners(drain_timeout=0.2, kinds=kinds),
    )


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_start_serves_then_an_identical_reload_is_a_no_op() -> None:
    port = free_port()
    model = Model(pools=(LOOP_POOL,), services=(service("a", port), service("b", port)))

    async def scenario() -> None:
        r = reconciler()
        applied = await r.start(model)
        assert applied.plan.summary() == "added 2, removed 0, changed 0, unchanged 0"
        assert set(r.listeners.specs()) == {
            ListenerKey(Protocol.TCP, ipaddress.ip_address(ip), port) for ip in ("127.0.0.240", "127.0.0.241")
        }
        assert r.vips.held() == {
            ipaddress.ip_address("127.0.0.240"): ("default/a",),
            ipaddress.ip_address("127.0.0.241"): ("default/b",),
        }
        assert {c.state for c in r.conditions.values()} == {ServiceState.SERVING}
        again = await r.submit(dataclasses.replace(model))
        assert again.plan.empty and again.plan.summary() == "added 0, removed 0, changed 0, unchanged 2"
        # An affinity change is an update in place: the same listener object keeps running.
        before = {k: e.listener for k, e in r.listeners.running.items()}
        sticky = (dataclasses.replace(model.services[0], session_affinity=SessionAffinity.CLIENT_IP), model.services[1])
        changed = await r.submit(dataclasses.replace(model, services=sticky))
        assert changed.plan.changed == ("default/a",) and len(changed.plan.update) == 1
        assert {k: e.listener for k, e in r.listeners.running.items()} == before
        await r.stop()
        r.listeners.stop_accepting()
        await r.listeners.drain_all(0.1)

    run(scenario())


def test_a_taken_port_blocks_only_its_service_until_a_retry_finds_it_free() -> None:
    port = free_port()
    squatter = socket.create_server(("127.0.0.240", port))  # a's VIP:port is taken
    model = Model(pools=(LOOP_POOL,), services=(service("a", port), service("b", port)))

    async def scenario() -> None:
        r = reconciler()
        applied = await r.start(model)
        assert set(applied.failed) == {"default/a"} and "cannot serve 127.0.0.240" in applied.failed["default/a"]
        assert r.conditions["default/a"].state is ServiceState.FAILED
        assert r.conditions["default/b"].state is ServiceState.SERVING
        assert list(r.vips.held()) == [ipaddress.ip_address("127.0.0.241")]  # a's VIP is not held
        squatter.close()
        r.mark_dirty(retry_blocked=True)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if r.conditions["default/a"].state is ServiceState.SERVING:
                break
        assert r.conditions["default/a"].state is ServiceState.SERVING
        assert len(r.vips.held()) == 2
        await r.stop()
        r.listeners.stop_accepting()
        await r.listeners.drain_all(0.1)

    try:
        run(scenario())
    finally:
        squatter.close()


def test_a_vip_no_interface_fits_fails_its_services_and_closes_their_listeners() -> None:
    port = free_port()
    model = Model(pools=(LAB_POOL,), services=(service("lab", port),))

    async def scenario() -> None:
        presence = RecordingPresence(refuse={LAB_VIP})
        r = reconciler(presence, stub=True)
        applied = await r.start(model)
        assert "cannot bind VIP 198.18.7.200" in applied.failed["default/lab"]
        assert r.listeners.specs() == {} and r.vips.held() == {}  # the listener opened, then closed
        assert r.conditions["default/lab"].state is ServiceState.FAILED
        await r.stop()

    run(scenario())


def test_losing_ownership_revokes_the_address_and_keeps_the_listener() -> None:
    port = free_port()
    model = Model(pools=(LAB_POOL,), services=(service("lab", port),))

    async def scenario() -> None:
        presence, gate = RecordingPresence(), SwitchGate()
        r = reconciler(presence, gate, stub=True)
        await r.start(model)
        assert presence.calls[-2:] == [("claim", str(LAB_VIP)), ("announce", f"{LAB_VIP}@eth0")]
        gate.owner = False
        r.mark_dirty()
        await asyncio.sleep(0.1)
        assert presence.calls[-2:] == [("withdraw", str(LAB_VIP)), ("release", str(LAB_VIP))]
        assert r.vips.held() == {} and len(r.listeners.specs()) == 1
        assert r.conditions["default/lab"].state is ServiceState.STANDBY
        gate.owner = True
        r.mark_dirty()
        await asyncio.sleep(0.1)
        assert presence.calls[-2:] == [("claim", str(LAB_VIP)), ("announce", f"{LAB_VIP}@eth0")]
        assert r.conditions["default/lab"].state is ServiceState.SERVING
        await r.stop()
        r.listeners.stop_accepting()
        await r.listeners.drain_all(0.1)

    run(scenario())


def test_removed_service_is_released_after_its_listener_drained() -> None:
    port = free_port()
    model = Model(pools=(LAB_POOL,), services=(service("lab", port),))

    async def scenario() -> None:
        presence = RecordingPresence()
        r = reconciler(presence, stub=True)
        await r.start(model)
        applied = await r.submit(Model(pools=(LAB_POOL,)))
        assert applied.plan.removed == ("default/lab",) and applied.plan.release == (LAB_VIP,)
        await asyncio.sleep(0.3)  # the listener had nothing to drain
        # Withdrawn at once, the address removed after the drain: in that order, once each.
        assert presence.calls[-2:] == [("withdraw", str(LAB_VIP)), ("release", str(LAB_VIP))]
        await r.stop()

    run(scenario())


# ---- failures half-way (found in review) ------------------------------------------------------


class ExplodingPresence(RecordingPresence):
    """announce() raises what an unwrapped pyroute2 call would (not an OSError, not AnnounceError)."""

    def __init__(self, explode: set[IPAddress]) -> None:
        super().__init__()
        self.explode = explode

    async def announce(self, vip: IPAddress, interface: str | None) -> None:
        if vip in self.explode:
            raise RuntimeError("netlink went away")
        await super().announce(vip, interface)


def test_a_config_submitted_after_shutdown_began_is_refused_at_once() -> None:
    async def scenario() -> None:
        r = reconciler()
        await r.start(Model(pools=(LOOP_POOL,)))
        await r.stop()
        future = r.submit(Model(pools=(LOOP_POOL,)))
        try:
            await asyncio.wait_for(future, 1)
        except ShuttingDown:
            return
        raise AssertionError("a submit after stop() must fail at once")

    run(scenario())


def test_a_start_that_fails_half_way_releases_what_it_claimed() -> None:
    port = free_port()
    model = Model(pools=(LAB_POOL,), services=(service("lab", port),))

    async def scenario() -> None:
        presence = ExplodingPresence({LAB_VIP})
        daemon = Daemon(DaemonOptions(("unused.yaml",), "node-a", admin_socket=None), presence, store=MemoryStore())
        daemon.listeners.kinds = {Protocol.TCP: stub_listener}
        try:
            await daemon.start(model)
        except RuntimeError:
            pass
        else:
            raise AssertionError("start should have failed")
        await daemon.shutdown()  # what run_daemon does after start_failed
        assert ("claim", str(LAB_VIP)) in presence.calls and presence.calls[-1] == ("release", str(LAB_VIP))
        assert daemon.vips.held() == {} and daemon.listeners.specs() == {}

    run(scenario())


def test_an_error_half_way_leaves_running_true_and_the_next_pass_recovers() -> None:
    port = free_port()
    b = service("b", port, address_pool="local")
    c = service("c", port, address_pool="lab")
    pools = (LOOP_POOL, LAB_POOL)

    async def scenario() -> None:
        presence = ExplodingPresence({LAB_VIP})
        r = reconciler(presence, stub=True)
        await r.start(Model(pools=pools, services=(b,)))
        try:  # b goes, c comes on a VIP whose announce fails
            await r.submit(Model(pools=pools, services=(c,)))
        except RuntimeError:
            pass
        assert r.running.listeners == r.listeners.specs()  # running tells the truth
        assert r.pass_failed
        presence.explode.clear()
        b2 = dataclasses.replace(b, endpoints=(Endpoint(ipaddress.ip_address("127.0.0.1"), port=2),))
        applied = await r.submit(Model(pools=pools, services=(b2, c)))
        assert not applied.failed and not r.pass_failed
        assert {x.state for x in r.conditions.values()} == {ServiceState.SERVING}
        assert r.vips.announced() == {LAB_VIP, ipaddress.ip_address("127.0.0.240")}
        await r.stop()

    run(scenario())


def test_a_retry_asked_for_during_a_pass_waits_for_the_next_pass() -> None:
    port = free_port()
    squatter = socket.create_server(("127.0.0.240", port))
    model = Model(pools=(LOOP_POOL,), services=(service("a", port),))

    async def scenario() -> None:
        r = reconciler()
        await r.start(model)
        assert r.conditions["default/a"].state is ServiceState.FAILED
        # A retry asked for while a pass runs must not make that pass report "a" as serving.
        future = r.submit(dataclasses.replace(model))
        r.mark_dirty(retry_blocked=True)
        applied = await future
        assert "default/a" in applied.failed
        assert r.conditions["default/a"].state is ServiceState.FAILED
        await r.stop()

    try:
        run(scenario())
    finally:
        squatter.close()


def test_a_claim_past_its_deadline_says_so_and_holds_the_lock_until_it_lands(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from lbd.net import addresses, claims
    from lbd.net.addresses import AddOutcome, AnnounceError, Link, Snapshot

    monkeypatch.setattr(claims, "NETLINK_TIMEOUT", 0.2)
    link = Link(2, "eth0", bytes.fromhex("02aabbccdd01"))
    done: list[str] = []

    def slow_add(ifname: str, vip: IPAddress) -> AddOutcome:
        time.sleep(0.4)
        done.append("add")
        return AddOutcome.ADDED

    def remove(ifname: str, vip: IPAddress) -> bool:
        done.append("remove")
        return True

    monkeypatch.setattr(addresses, "snapshot", lambda: Snapshot((link,), ()))
    monkeypatch.setattr(addresses, "add_address", slow_add)
    monkeypatch.setattr(addresses, "remove_address", remove)
    monkeypatch.setattr(addresses, "set_arp_sysctls", lambda ifname: {})

    async def scenario() -> None:
        claimer = claims.AddressClaims(("eth0",))
        try:
            await claimer.claim(LAB_VIP)
        except AnnounceError as exc:
            assert "did not answer within 0.2 s" in str(exc)
        else:
            raise AssertionError("the claim should have timed out")
        # The next change waits for the late add to land instead of racing it.
        with pytest.raises(AnnounceError):  # the snapshot finds nothing marked: nothing to remove
            monkeypatch.setattr(claims, "NETLINK_TIMEOUT", 0.05)
            await claimer.release(LAB_VIP)
        monkeypatch.setattr(claims, "NETLINK_TIMEOUT", 1.0)
        await claimer.release(LAB_VIP)
        assert done == ["add"]

    run(scenario())
