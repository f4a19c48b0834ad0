"""One data-plane worker process (`lbd run --workers N`): listeners and relays, nothing else.

The control plane (lbd.workers.pool) starts it with one end of a socket pair and tells it, as
plain data, what to serve: `open` (a ListenerSpec and the listening socket bound for this
worker), `update` (a ListenerChange: new targets, readiness, drains, options), `close`,
`stop_accepting`, `drain_all`, `cut_all`, `exit`. The worker answers each open and drain, sends
the failed connects of services with a readinessProbe (the checker runs in the control plane),
and every STATS_SECONDS its usage (for `lbd get`) and its data-plane metric families (for the
one scrape the control plane serves).

Signals are the control plane's business (systemd signals the whole cgroup): a worker ignores
them and ends when told to, or at once, resetting what it relays, when the control plane is gone.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import Any

import structlog

from lbd import metrics
from lbd.health.probe import ProbeSpec
from lbd.limits import raise_nofile
from lbd.listeners import Listeners
from lbd.workers.channel import Channel, Message

log = structlog.get_logger("lbd.workers")

STATS_SECONDS = 1.0


class RemoteHealth:
    """Failed connects of probed services, sent to the control plane's health checker."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def passive_failure(self, spec: ProbeSpec, reason: str) -> None:
        self.channel.send(("passive_failure", spec, reason))


def dataplane_families() -> list[Any]:
    """This process's data-plane metric families (prometheus-client Metric objects: picklable)."""
    names = metrics.dataplane_names()
    return [family for family in metrics.REGISTRY.collect() if family.name in names]


class Worker:
    def __init__(self, index: int, channel_sock: socket.socket, drain_timeout: float) -> None:
        self.index = index
        self.done = asyncio.Event()
        self.orphaned = False  # the control plane went away
        self.inbox: asyncio.Queue[tuple[Message, list[int]]] = asyncio.Queue()
        self.channel = Channel(channel_sock, lambda m, fds: self.inbox.put_nowait((m, fds)), self._orphaned)
        self.listeners = Listeners(drain_timeout, health=RemoteHealth(self.channel))
        self.tasks: set[asyncio.Task[Any]] = set()

    def _orphaned(self) -> None:
        self.orphaned = True
        self.done.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def consume(self) -> None:
        """Messages in the order sent: an update never overtakes the open it refers to."""
        while True:
            message, fds = await self.inbox.get()
            try:
                await self.handle(message, fds)
            except Exception as exc:  # a bug: say so, keep serving what runs
                log.exception("worker_message_failed", kind=message[0], error=str(exc))

    async def handle(self, message: Message, fds: list[int]) -> None:
        kind = message[0]
        if kind == "open":
            spec = message[1]
            sock = socket.socket(fileno=fds[0])
            error = None
            if spec.key in self.listeners.running:  # sent again by a restart that raced an open
                sock.close()
                self.channel.send(("opened", spec.key, None))
                return
            try:
                await self.listeners.open(spec, sock)
            except Exception as exc:  # OSError: the port; anything else is a bug, said in the answer
                sock.close()
                error = str(exc) or repr(exc)
            self.channel.send(("opened", spec.key, error))
        elif kind == "update":
            self.listeners.update(message[1])
        elif kind == "close":
            key = message[1]
            task = self.listeners.close(key)
            if task is None:
                self.channel.send(("drained", key, 0))
            else:
                task.add_done_callback(lambda t, key=key: self.channel.send(("drained", key, _result(t))))
        elif kind == "stop_accepting":
            self.listeners.stop_accepting()
        elif kind == "drain_all":
            self._spawn(self._drain_all(message[1]))
        elif kind == "cut_all":
            self.listeners.cut_all()
        elif kind == "exit":
            self.done.set()
        for fd in fds[1:] if kind == "open" else fds:  # none expected: never leak one
            socket.close(fd)

    async def _drain_all(self, timeout: float) -> None:
        aborted = await self.listeners.drain_all(timeout)
        self.channel.send(("drain_all_done", aborted))

    async def report(self) -> None:
        while True:
            await asyncio.sleep(STATS_SECONDS)
            self.channel.send(("stats", self.listeners.usage(time.monotonic()), dataplane_families()))


def _result(task: asyncio.Task[int]) -> int:
    if task.cancelled() or task.exception() is not None:
        return 0
    return task.result()


async def serve(index: int, channel_fd: int, drain_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, lambda: None)
    raise_nofile()
    structlog.contextvars.bind_contextvars(worker=index)
    worker = Worker(index, socket.socket(fileno=channel_fd), drain_timeout)
    worker.channel.send(("hello",))
    consumer = loop.create_task(worker.consume())
    reporter = loop.create_task(worker.report())
    await worker.done.wait()
    consumer.cancel()
    reporter.cancel()
    if worker.orphaned:  # no control plane: nobody releases VIPs or drains for us; stop now
        cut = worker.listeners.cut_all()
        worker.listeners.stop_accepting()
        log.error("worker_orphaned", connections_reset=cut)
        return 1
    worker.channel.close()
    return 0
