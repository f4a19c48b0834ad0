"""The running listeners, by (protocol, VIP, port): open, update in place, close and drain.

The registry maps a protocol to its listener (TCP and UDP); a protocol with no entry is not
relayed (the plan leaves its ports out and the status says why). Each listener gets a
ServiceRouter (balancer + passive health) built from its ListenerSpec; for a service with a
readinessProbe its failed connects (and ICMP refusals, for UDP) also go to the health checker. A
closed listener stops accepting at once and drains in the background; its drain is kept
per VIP so the VIP lifecycle can wait for it before removing the address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol as Interface

import structlog

from lbd import metrics
from lbd.balancer import Balancer, Target, format_target
from lbd.health.passive import PassiveHealth
from lbd.health.probe import ProbeSpec, passive_reason
from lbd.model import IPAddress, Probe, Protocol
from lbd.plan import ListenerChange, ListenerKey, ListenerSpec
from lbd.relay import Failure, TcpOptions, UdpOptions
from lbd.relay.listener import Listener
from lbd.relay.tcp import TcpListener
from lbd.relay.udp import UdpListener
from lbd.routing import ProbeFailure, ServiceRouter

log = structlog.get_logger("lbd.listeners")

ListenerFactory = Callable[[ListenerSpec, ServiceRouter], Listener]


def _tcp(spec: ListenerSpec, router: ServiceRouter) -> Listener:
    tcp = spec.tuning if isinstance(spec.tuning, TcpOptions) else TcpOptions()
    return TcpListener(str(spec.key.ip), spec.key.port, router, spec.options, spec.service, spec.port_name, tcp=tcp)


def _udp(spec: ListenerSpec, router: ServiceRouter) -> Listener:
    udp = spec.tuning if isinstance(spec.tuning, UdpOptions) else UdpOptions()
    return UdpListener(str(spec.key.ip), spec.key.port, router, spec.options, spec.service, spec.port_name, udp=udp)


# What each protocol is relayed with.
LISTENER_KINDS: Mapping[Protocol, ListenerFactory] = {Protocol.TCP: _tcp, Protocol.UDP: _udp}


@dataclass(slots=True)
class OpenListener:
    """One open listener, the router behind it and the spec it runs."""

    spec: ListenerSpec
    listener: Listener
    router: ServiceRouter


@dataclass(frozen=True, slots=True)
class Usage:
    """What the listeners carry now, for the status (`lbd get`): by (service, port name) the
    endpoints passive health ejected and the connections (UDP: flows) open; by (service, target)
    the connections open to each endpoint. Plain data: workers report theirs, summed here."""

    ejected: dict[tuple[str, str], frozenset[Target]]
    active: dict[tuple[str, str], int]
    connections: dict[tuple[str, Target], int]

    @staticmethod
    def merge(parts: list[Usage]) -> Usage:
        ejected: dict[tuple[str, str], frozenset[Target]] = {}
        active: dict[tuple[str, str], int] = {}
        connections: dict[tuple[str, Target], int] = {}
        for part in parts:
            for label, targets in part.ejected.items():
                ejected[label] = ejected.get(label, frozenset()) | targets
            for label, n in part.active.items():
                active[label] = active.get(label, 0) + n
            for key, n in part.connections.items():
                connections[key] = connections.get(key, 0) + n
        return Usage(ejected, active, connections)


class DataPlane(Interface):
    """What the reconciler and the daemon drive: the Listeners below, in this process, or
    lbd.workers.pool.WorkerPool, the same verbs over N worker processes."""

    def protocols(self) -> frozenset[Protocol]: ...
    def specs(self) -> dict[ListenerKey, ListenerSpec]: ...
    async def open(self, spec: ListenerSpec) -> None: ...
    def update(self, change: ListenerChange) -> None: ...
    def close(self, key: ListenerKey) -> asyncio.Task[int] | None: ...
    def drains(self, ip: IPAddress) -> list[asyncio.Task[int]]: ...
    def stop_accepting(self) -> None: ...
    def cut_all(self) -> int: ...
    async def drain_all(self, timeout: float) -> int: ...
    def usage(self, now: float) -> Usage: ...


class PassiveFailures(Interface):
    """Where failed connects of services with a readinessProbe go (lbd.health.checker)."""

    def passive_failure(self, spec: ProbeSpec, reason: str) -> None: ...


def _router(spec: ListenerSpec) -> ServiceRouter:
    balancer = Balancer(spec.balancer.affinity, spec.balancer.timeout_seconds)
    router = ServiceRouter(balancer, PassiveHealth(), service=spec.service, port=spec.port_name)
    router.update(spec.targets, spec.draining)
    return router


def probe_reporter(health: PassiveFailures | None, probe: Probe | None) -> ProbeFailure | None:
    """A router's `probe_failed`: a failed connect to a target is a failed probe of its endpoint."""
    if health is None or probe is None:
        return None

    def report(target: Target, failure: Failure) -> None:
        health.passive_failure(ProbeSpec(ipaddress.ip_address(target[0]), probe), passive_reason(str(failure)))

    return report


class Listeners:
    """Every open listener; the executor of a plan calls open, update and close."""

    def __init__(
        self,
        drain_timeout: float,
        kinds: Mapping[Protocol, ListenerFactory] = LISTENER_KINDS,
        health: PassiveFailures | None = None,
    ) -> None:
        self.drain_timeout = drain_timeout
        self.kinds = kinds
        self.health = health
        self.running: dict[ListenerKey, OpenListener] = {}
        self._draining: set[Listener] = set()
        self._drains: dict[IPAddress, set[asyncio.Task[int]]] = {}

    def protocols(self) -> frozenset[Protocol]:
        return frozenset(self.kinds)

    def specs(self) -> dict[ListenerKey, ListenerSpec]:
        return {key: r.spec for key, r in self.running.items()}

    def usage(self, now: float) -> Usage:
        ejected: dict[tuple[str, str], frozenset[Target]] = {}
        active: dict[tuple[str, str], int] = {}
        connections: dict[tuple[str, Target], int] = {}
        for entry in self.running.values():
            label = (entry.spec.service, entry.spec.port_name)
            ejected[label] = ejected.get(label, frozenset()) | entry.router.passive.ejected(now)
            active[label] = active.get(label, 0) + entry.listener.active
            for target, counts in entry.listener.books.counts.items():
                key = (entry.spec.service, target)
                connections[key] = connections.get(key, 0) + counts.active
        return Usage(ejected, active, connections)

    async def open(self, spec: ListenerSpec, sock: socket.socket | None = None) -> None:
        """Bind and listen (or serve `sock`, bound by the control plane for a worker); raises
        OSError (e.g. the port is in use) and leaves nothing behind."""
        router = _router(spec)
        router.probe_failed = probe_reporter(self.health, spec.probe)
        listener = self.kinds[spec.key.protocol](spec, router)
        listener.given_socket = sock
        await listener.start()
        self.running[spec.key] = OpenListener(spec, listener, router)
        log.info("listener_open", service=spec.service, listener=str(spec.key), endpoints=len(spec.targets))

    def update(self, change: ListenerChange) -> None:
        """Apply a changed spec in place: established connections and the listening socket stay."""
        entry = self.running.get(change.spec.key)
        if entry is None:  # closed by a pass that failed half-way: the next plan opens it
            return
        spec, before = change.spec, entry.spec
        gone = set(entry.spec.targets) - set(spec.targets)
        if gone:  # their failure series go with them (churning endpoints never grows metrics)
            entry.listener.forget_targets(gone)
            for target in gone:
                metrics.forget_endpoint(spec.service, entry.spec.port_name, format_target(target))
        if change.balancer:
            # A new policy starts a fresh affinity table; the rotation restarts too.
            entry.router.balancer = Balancer(spec.balancer.affinity, spec.balancer.timeout_seconds)
            entry.router.update(spec.targets, spec.draining)
        elif change.targets:
            entry.router.update(spec.targets, spec.draining)  # keeps round-robin position and affinities
        if change.options:
            entry.listener.set_options(spec.options, spec.tuning)
        if change.renamed:
            old = entry.spec.port_name
            entry.listener.rename(spec.port_name)
            entry.router.port = spec.port_name
            entry.spec = spec
            self._forget_if_unused(spec.service, old)
        if spec.probe != before.probe:
            entry.router.probe_failed = probe_reporter(self.health, spec.probe)
        entry.spec = spec

    def close(self, key: ListenerKey) -> asyncio.Task[int] | None:
        """Stop accepting now; established connections drain in the background (the task)."""
        entry = self.running.pop(key, None)
        if entry is None:
            return None
        listener = entry.listener
        listener.stop_accepting()
        log.info("listener_closed", service=entry.spec.service, listener=str(key), draining=listener.active)
        self._draining.add(listener)
        task = asyncio.get_running_loop().create_task(listener.drain(self.drain_timeout))
        self._drains.setdefault(key.ip, set()).add(task)

        def drained(done: asyncio.Task[int]) -> None:
            self._draining.discard(listener)
            drains = self._drains.get(key.ip)
            if drains is not None:
                drains.discard(done)
                if not drains:
                    del self._drains[key.ip]
            self._forget_if_unused(listener.service, listener.port_name)

        task.add_done_callback(drained)
        return task

    def _forget_if_unused(self, service: str, port_name: str) -> None:
        """Drop the metric series of a service port once no listener (open or draining) has it;
        v4 and v6 listeners of one port share them."""
        labels = (service, port_name)
        if any((e.listener.service, e.listener.port_name) == labels for e in self.running.values()):
            return
        if any((lst.service, lst.port_name) == labels for lst in self._draining):
            return
        metrics.forget_listener(service, port_name)

    def drains(self, ip: IPAddress) -> list[asyncio.Task[int]]:
        """The drains still running for listeners that were on `ip`."""
        return list(self._drains.get(ip, ()))

    def stop_accepting(self) -> None:
        for entry in self.running.values():
            entry.listener.stop_accepting()

    def cut_all(self) -> int:
        """Reset every established connection now (a second SIGTERM); returns how many."""
        listeners = {entry.listener for entry in self.running.values()} | self._draining
        return sum(listener.cut() for listener in listeners)

    async def drain_all(self, timeout: float) -> int:
        """Shutdown: every listener (open or closed earlier) drains; returns connections cut."""
        closing = [entry.listener.drain(timeout) for entry in self.running.values()]
        self._draining.update(entry.listener for entry in self.running.values())
        self.running.clear()
        aborted = sum(await asyncio.gather(*closing)) if closing else 0
        pending = [t for tasks in self._drains.values() for t in tasks]
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            aborted += sum(r for r in results if isinstance(r, int))
        return aborted
