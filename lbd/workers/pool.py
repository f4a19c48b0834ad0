"""The control plane's view of N data-plane workers (`lbd run --workers N`): the listeners' verbs.

The reconciler drives a WorkerPool exactly as it drives the in-process `lbd.listeners.Listeners`
(open, update, close, drains, stop_accepting, drain_all, cut_all, usage). For each listener
the pool binds one socket per worker into a reuseport group (lbd.workers.steering: with ClientIP
affinity steered so one client reaches one worker) and hands socket i to worker i;
everything else goes to every worker as plain data (lbd.workers.channel).

The pool keeps its copy of each group's sockets while the listener is open. A worker that dies
is logged and restarted (backing off if it keeps dying) with the same socket of each group:
its slot in the group, and the connections queued on it meanwhile, wait for the new worker
instead of being reset or re-hashed to another worker.

What workers report (every second) is summed here: usage for `lbd get`, and their data-plane
metric families for the one scrape (WorkerMetrics; counters of a worker that ended are kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

import structlog
from prometheus_client.metrics_core import Metric

from lbd import metrics
from lbd.listeners import LISTENER_KINDS, PassiveFailures, Usage
from lbd.model import IPAddress, Protocol, SessionAffinity
from lbd.plan import ListenerChange, ListenerKey, ListenerSpec
from lbd.relay.tcp import LISTEN_BACKLOG
from lbd.workers.channel import Channel, Message
from lbd.workers.steering import reuseport_group, steer

log = structlog.get_logger("lbd.workers")

# A worker that lived less than this before dying is restarted after a growing delay.
STABLE_SECONDS = 5.0
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 5.0
# How long a worker may take to start, to answer an open, or to exit when told to.
START_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0

_KINDS = {Protocol.TCP: socket.SOCK_STREAM, Protocol.UDP: socket.SOCK_DGRAM}


def _by_client(spec: ListenerSpec) -> bool:
    """Only ClientIP affinity needs one client on one worker (lbd.workers.steering)."""
    return spec.balancer.affinity is SessionAffinity.CLIENT_IP


class WorkerMetrics:
    """A prometheus-client collector: the workers' data-plane families, summed by series."""

    def __init__(self) -> None:
        self.live: dict[int, list[Metric]] = {}
        self.retired: list[Metric] = []  # counters of workers that ended, summed

    def report(self, index: int, families: list[Metric]) -> None:
        self.live[index] = families

    def retire(self, index: int) -> None:
        """Worker `index` ended: its gauges go (what they counted died with it), its counters stay."""
        families = self.live.pop(index, [])
        counters = [f for f in families if f.type in ("counter", "histogram", "summary")]
        self.retired = merge([self.retired, counters])

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        return merge([*self.live.values(), self.retired])


def merge(groups: Iterable[list[Metric]]) -> list[Metric]:
    """Families of several processes as one: samples with the same name and labels summed."""
    out: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in groups:
        for family in families:
            if family.name not in out:
                out[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                sums[family.name] = {}
            series = sums[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                series[key] = series.get(key, 0.0) + sample.value
    for name, family in out.items():
        for (sample_name, labels), value in sums[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(out.values())


class Worker:
    """One worker process and what the pool is waiting to hear from it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.alive = False
        self.started_at = 0.0
        self.quick_fails = 0  # deaths in a row, each before STABLE_SECONDS
        self.hello: asyncio.Future[None] | None = None
        self.opens: dict[ListenerKey, asyncio.Future[str | None]] = {}
        self.closes: dict[ListenerKey, list[asyncio.Future[int]]] = {}
        self.drained_all: asyncio.Future[int] | None = None
        self.usage = Usage({}, {}, {})

    def send(self, message: Message, fds: tuple[int, ...] = ()) -> None:
        if self.alive and self.channel is not None:
            self.channel.send(message, fds)

    def settle(self) -> None:
        """The worker is gone: nothing it owed will come."""
        for fut in self.opens.values():
            if not fut.done():
                fut.set_result(None)  # its socket stays in the group; the restarted worker serves it
        for futs in self.closes.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(0)
        if self.drained_all is not None and not self.drained_all.done():
            self.drained_all.set_result(0)
        if self.hello is not None and not self.hello.done():
            self.hello.set_exception(RuntimeError(f"worker {self.index} exited before it started"))
        self.opens.clear()
        self.closes.clear()
        self.usage = Usage({}, {}, {})


class WorkerPool:
    """N data-plane workers behind the listeners' interface."""

    def __init__(
        self,
        count: int,
        drain_timeout: float,
        *,
        health: PassiveFailures | None = None,
        log_format: str = "json",
        argv: tuple[str, ...] = (sys.executable, "-m", "lbd", "worker"),
    ) -> None:
        self.count = count
        self.drain_timeout = drain_timeout
        self.health = health
        self.log_format = log_format
        self.argv = argv
        self.workers = [Worker(i) for i in range(count)]
        self.running: dict[ListenerKey, ListenerSpec] = {}
        self.groups: dict[ListenerKey, list[socket.socket]] = {}  # the pool's copies, socket i for worker i
        self._drains: dict[IPAddress, set[asyncio.Task[int]]] = {}
        self.metrics = WorkerMetrics()
        self.restarts = 0
        self.closing = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker (and serve their metrics in place of this process's own)."""
        for metric in metrics.DATAPLANE_METRICS:
            with contextlib.suppress(KeyError):
                metrics.REGISTRY.unregister(metric)
        metrics.REGISTRY.register(self.metrics)
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        log.info("workers_started", workers=self.count, pids=[w.proc.pid for w in self.workers if w.proc])

    async def stop(self) -> None:
        """Tell every worker to exit (after drain_all) and wait; kill what does not go."""
        self.closing = True
        for worker in self.workers:
            worker.send(("exit",))
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        if procs:
            done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=EXIT_TIMEOUT)
            for proc in procs:
                if proc.returncode is None:
                    log.warning("worker_killed", pid=proc.pid, reason="did not exit in time")
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=EXIT_TIMEOUT)
        for task in list(self._tasks):
            task.cancel()
        for socks in self.groups.values():
            for sock in socks:
                sock.close()
        self.groups.clear()
        with contextlib.suppress(KeyError):
            metrics.REGISTRY.unregister(self.metrics)
        for metric in metrics.DATAPLANE_METRICS:
            with contextlib.suppress(ValueError):
                metrics.REGISTRY.register(metric)

    def pids(self) -> list[int | None]:
        return [w.proc.pid if w.alive and w.proc is not None else None for w in self.workers]

    async def _spawn(self, worker: Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, "--index", str(worker.index), "--channel-fd", str(child.fileno()),
                "--drain-timeout", str(self.drain_timeout), "--log-format", self.log_format,
                pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        worker.proc = proc
        worker.alive = True
        worker.started_at = time.monotonic()
        worker.hello = loop.create_future()
        worker.channel = Channel(parent, lambda m, fds: self._on_message(worker, m, fds), lambda: None)
        self._watch(worker, proc)
        await asyncio.wait_for(asyncio.shield(worker.hello), START_TIMEOUT)

    def _watch(self, worker: Worker, proc: asyncio.subprocess.Process) -> None:
        async def wait() -> None:
            code = await proc.wait()
            if worker.proc is not proc:
                return
            worker.alive = False
            if worker.channel is not None:
                worker.channel.close()
            worker.settle()
            self.metrics.retire(worker.index)
            if self.closing:
                log.info("worker_exited", worker=worker.index, pid=proc.pid, returncode=code)
                return
            lived = time.monotonic() - worker.started_at
            worker.quick_fails = 0 if lived >= STABLE_SECONDS else worker.quick_fails + 1
            delay = min(RESTART_DELAY_MAX, RESTART_DELAY * 2 ** worker.quick_fails)
            log.error("worker_died", worker=worker.index, pid=proc.pid, returncode=code,
                      lived_seconds=round(lived, 3), restart_in=delay)
            await asyncio.sleep(delay)
            if not self.closing:
                await self._restart(worker)

        self._spawn_task(wait())

    async def _restart(self, worker: Worker) -> None:
        try:
            await self._spawn(worker)
        except Exception as exc:
            log.error("worker_restart_failed", worker=worker.index, error=str(exc))
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.kill()  # its watcher restarts it again, later
            return
        self.restarts += 1
        waits = [self._open_on(worker, spec) for spec in list(self.running.values())]
        results = await asyncio.gather(*waits)
        failed = [r for r in results if r]
        log.info("worker_restarted", worker=worker.index, pid=worker.proc.pid if worker.proc else None,
                 listeners=len(waits), failed=failed[:3])

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- messages from workers -----------------------------------------------------------------

    def _on_message(self, worker: Worker, message: Message, fds: list[int]) -> None:
        for fd in fds:  # workers send none
            socket.close(fd)
        kind = message[0]
        if kind == "stats":
            worker.usage = message[1]
            self.metrics.report(worker.index, message[2])
        elif kind == "opened":
            fut = worker.opens.pop(message[1], None)
            if fut is not None and not fut.done():
                fut.set_result(message[2])
        elif kind == "drained":
            futs = worker.closes.get(message[1])
            if futs:
                fut = futs.pop(0)
                if not futs:
                    del worker.closes[message[1]]
                if not fut.done():
                    fut.set_result(message[2])
        elif kind == "drain_all_done":
            if worker.drained_all is not None and not worker.drained_all.done():
                worker.drained_all.set_result(message[1])
        elif kind == "passive_failure":
            if self.health is not None:
                self.health.passive_failure(message[1], message[2])
        elif kind == "hello":
            if worker.hello is not None and not worker.hello.done():
                worker.hello.set_result(None)

    # ---- the listeners' verbs ------------------------------------------------------------------

    def protocols(self) -> frozenset[Protocol]:
        return frozenset(LISTENER_KINDS)

    def specs(self) -> dict[ListenerKey, ListenerSpec]:
        return dict(self.running)

    def _open_on(self, worker: Worker, spec: ListenerSpec) -> asyncio.Future[str | None]:
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        if not worker.alive:
            fut.set_result(None)  # it gets the listener when it is restarted
            return fut
        previous = worker.opens.get(spec.key)
        if previous is not None and not previous.done():
            previous.set_result(None)
        worker.opens[spec.key] = fut
        worker.send(("open", spec), (self.groups[spec.key][worker.index].fileno(),))
        return fut

    async def open(self, spec: ListenerSpec) -> None:
        """Bind the group (OSError if the port is taken) and have every worker serve its socket."""
        key = spec.key
        socks = reuseport_group(str(key.ip), key.port, _KINDS[key.protocol], self.count, LISTEN_BACKLOG,
                                by_client=_by_client(spec))
        self.groups[key] = socks
        self.running[key] = spec
        results = await asyncio.wait_for(asyncio.gather(*(self._open_on(w, spec) for w in self.workers)),
                                         START_TIMEOUT)
        errors = [r for r in results if r]
        if errors:
            self.close(key)
            raise OSError(f"a worker could not open {key}: {errors[0]}")
        log.info("listener_open", service=spec.service, listener=str(key), endpoints=len(spec.targets),
                 workers=self.count)

    def update(self, change: ListenerChange) -> None:
        if change.spec.key not in self.running:
            return
        before = self.running[change.spec.key]
        self.running[change.spec.key] = change.spec
        if _by_client(change.spec) != _by_client(before):
            try:
                steer(self.groups[change.spec.key], _by_client(change.spec))
            except OSError as exc:  # the kernel refused the program: affinity may split, say so
                log.error("steering_failed", listener=str(change.spec.key), error=str(exc))
        for worker in self.workers:
            worker.send(("update", change))

    def close(self, key: ListenerKey) -> asyncio.Task[int] | None:
        """Every worker stops accepting on it and drains; the task ends when all have."""
        spec = self.running.pop(key, None)
        socks = self.groups.pop(key, [])
        for sock in socks:  # the workers' copies close as they stop accepting
            sock.close()
        if spec is None:
            return None
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[int]] = []
        for worker in self.workers:
            fut: asyncio.Future[int] = loop.create_future()
            if worker.alive:
                worker.closes.setdefault(key, []).append(fut)
                worker.send(("close", key))
            else:
                fut.set_result(0)
            waits.append(fut)

        async def drained() -> int:
            return sum(await asyncio.gather(*waits))

        task = loop.create_task(drained())
        self._drains.setdefault(key.ip, set()).add(task)

        def done(t: asyncio.Task[int]) -> None:
            drains = self._drains.get(key.ip)
            if drains is not None:
                drains.discard(t)
                if not drains:
                    del self._drains[key.ip]

        task.add_done_callback(done)
        log.info("listener_closed", service=spec.service, listener=str(key))
        return task

    def drains(self, ip: IPAddress) -> list[asyncio.Task[int]]:
        return list(self._drains.get(ip, ()))

    def stop_accepting(self) -> None:
        """Shutdown: no worker accepts any more, and none is restarted."""
        self.closing = True
        for worker in self.workers:
            worker.send(("stop_accepting",))
        for socks in self.groups.values():
            for sock in socks:
                sock.close()
        self.groups.clear()

    def cut_all(self) -> int:
        """Every worker resets what it relays; returns how many were open as last reported."""
        for worker in self.workers:
            worker.send(("cut_all",))
        return sum(sum(w.usage.active.values()) for w in self.workers if w.alive)

    async def drain_all(self, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        waits = []
        for worker in self.workers:
            fut: asyncio.Future[int] = loop.create_future()
            if worker.alive:
                worker.drained_all = fut
                worker.send(("drain_all", timeout))
            else:
                fut.set_result(0)
            waits.append(fut)
        self.running.clear()
        aborted = sum(await asyncio.gather(*waits))
        pending = [t for tasks in self._drains.values() for t in tasks]
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            aborted += sum(r for r in results if isinstance(r, int))
        return aborted

    def usage(self, now: float) -> Usage:
        return Usage.merge([w.usage for w in self.workers if w.alive])
