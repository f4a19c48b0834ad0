"""UDP relay: datagrams to a VIP port go to an endpoint the Router picks; replies come back from the VIP.

One socket listens on VIP:port. A client's first datagram opens a flow (lbd.relay.flows): the
Router picks an endpoint (round-robin, or ClientIP affinity, so one client on many source
ports lands on one endpoint) and a socket connected to it carries the flow's datagrams; what the
endpoint sends back on that socket goes to the client from VIP:port, so a client with a
connected socket (nc -u, dig, DNS stubs) accepts it. Many replies per request and many
requests per reply both work: nothing pairs them.

Bounded, never queued: a datagram that cannot be sent at once is dropped and counted by reason
(lbd.relay.flows.DropReason). Flows expire after `flow_timeout` idle (an idle sweep, no timer
per datagram) and are capped per port, least recently used evicted first.

Failures: an ICMP port unreachable from the endpoint surfaces as ECONNREFUSED on the flow's
connected socket; it is a passive failure for the Router and the flow closes, so the client's
next datagram picks again (at once, for a refusal seen while sending). A flow whose endpoint
left the ready set moves with its next datagram (the Router's generation says when to look).

Per datagram: one recvfrom_into into a reused buffer, one send of a memoryview slice (no copy),
an OrderedDict move, an add to the endpoint's books; reads are batched until EAGAIN, counters
are plain ints flushed by the housekeeping timer.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable, Sequence

import structlog

from lbd import metrics
from lbd.balancer import Target
from lbd.relay import Failure, RelayOptions, Router, UdpOptions
from lbd.relay.books import EndpointCounts
from lbd.relay.flows import DropReason, Flow, FlowEvent, FlowTable
from lbd.relay.listener import BurstLog, Listener, bound_socket

log = structlog.get_logger("lbd.relay")

# The largest UDP payload over IPv6 (65,535 - 8); IPv4 allows 65,507. One buffer per listener.
RECV_BUFFER = 65536
# Datagrams handled per wake-up before other sockets get their turn.
READ_BATCH = 64
# Replies still queued on an evicted flow's socket that are read (and counted as dropped).
EVICTED_DRAIN = 16
# Housekeeping at most this far apart (flush counters, expire idle flows).
HOUSEKEEPING_SECONDS = 1.0

_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})
_OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE})
# Receive buffer asked for on the VIP socket (the kernel caps it at net.core.rmem_max): a burst
# of new flows is read in batches, and the default ~200 KiB holds only a few hundred datagrams.
VIP_RCVBUF = 4 * 1024 * 1024
_SOCK_FLAGS = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


class _Flow(Flow):
    """A flow, its socket connected to the endpoint and the endpoint's books."""

    __slots__ = ("sock", "counts")

    def __init__(
        self, client: tuple, target: Target, now: float, generation: int, sock: socket.socket, counts: EndpointCounts
    ) -> None:
        super().__init__(client, target, now, generation)
        self.sock: socket.socket | None = sock
        self.counts = counts


class UdpListener(Listener):
    """One UDP socket on (VIP, port) relaying flows to the targets its Router picks."""

    ENDPOINT_METRICS = metrics.UDP_ENDPOINT_METRICS

    def __init__(
        self,
        host: str,
        port: int,
        router: Router,
        options: RelayOptions,
        service: str,
        port_name: str,
        *,
        udp: UdpOptions = UdpOptions(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host, port, router, options, service, port_name, clock=clock)
        self.udp = udp
        self.table: FlowTable[_Flow] = FlowTable(udp.max_flows, udp.flow_timeout)
        self._sock: socket.socket | None = None
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._scratch = bytearray(64)
        self._local_error_log = BurstLog()
        self.cut_flows = 0
        # The clock is read once per wake-up of the VIP socket, never per datagram; replies stamp
        # their flow with that reading (at most one housekeeping period old, see housekeep).
        self.now = clock()
        # Plain-int counters, flushed into Prometheus by housekeeping.
        self.datagrams_up = self.bytes_up = self.datagrams_down = self.bytes_down = 0
        self.events = {event: 0 for event in FlowEvent}
        self.drops = {reason: 0 for reason in DropReason}
        self._flushed: dict[str, int] = {}
        self._flushed_active = 0
        self._bind_metrics()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        sock = self.listening_socket(socket.SOCK_DGRAM, ((socket.SOL_SOCKET, socket.SO_RCVBUF, VIP_RCVBUF),))
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.loop.add_reader(sock.fileno(), self._on_client_datagrams)
        self.arm_housekeeping()

    def stop_accepting(self) -> None:
        """UDP has no connections to finish: the socket and every flow close now."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.cut_flows += self.cut()
        if self.housekeeping is not None:
            self.housekeeping.cancel()
            self.housekeeping = None
        self.flush_metrics()

    async def drain(self, timeout: float) -> int:
        self.stop_accepting()
        cut, self.cut_flows = self.cut_flows, 0
        return cut

    def cut(self) -> int:
        flows = self.table.clear()
        for flow in flows:
            self._close(flow)
        return len(flows)

    @property
    def active(self) -> int:
        return len(self.table)

    def set_options(self, options: RelayOptions, tuning: object = None) -> None:
        self.options = options
        if isinstance(tuning, UdpOptions) and tuning != self.udp:
            self.udp = tuning
            for flow in self.table.resize(tuning.max_flows, tuning.flow_timeout):
                self._close(flow, FlowEvent.EVICTED)

    def rename(self, port_name: str) -> None:
        self.flush_metrics()  # what was counted so far stays under the old name
        self._m_active.dec(self._flushed_active)
        super().rename(port_name)
        self._bind_metrics()
        self._m_active.inc(self._flushed_active)

    # -- client -> endpoint ---------------------------------------------------------------------

    def _on_client_datagrams(self) -> None:
        sock = self._sock
        if sock is None:
            return
        recv, buf, view, flows = sock.recvfrom_into, self._buf, self._view, self.table.flows
        generation = self.router.generation  # changes only between callbacks (a reconcile pass)
        now = self.now = self.clock()
        count = size = 0
        for _ in range(READ_BATCH):
            try:
                n, client = recv(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ENOMEM and friends: nothing to do with any endpoint
                self._drop(DropReason.LOCAL_ERROR, exc)
                break
            count += 1
            size += n
            flow = flows.get(client)
            if flow is None:
                flow = self._open(client, now, ())
                if flow is None:
                    continue
            else:
                flows.move_to_end(client)
                flow.last = now
                if flow.generation != generation and not self._still_ready(flow):
                    flow = self._reopen(flow, now, ())
                    if flow is None:
                        continue
            try:
                flow.sock.send(view[:n])  # type: ignore[union-attr]  # open flows have a socket
            except OSError as exc:
                self._send_up_failed(flow, view[:n], now, exc)
            else:
                flow.counts.bytes_up += n
        self.datagrams_up += count
        self.bytes_up += size

    def _send_up_failed(self, flow: _Flow, data: memoryview, now: float, exc: OSError) -> None:
        if isinstance(exc, BlockingIOError):
            self.drops[DropReason.WOULD_BLOCK] += 1
            return
        if isinstance(exc, ConnectionRefusedError):  # an ICMP port unreachable answered an earlier datagram
            failure = Failure.REFUSED
        elif exc.errno == errno.EMSGSIZE:
            self.drops[DropReason.TOO_LARGE] += 1
            return
        elif exc.errno in _UNREACHABLE:
            failure = Failure.UNREACHABLE
        else:
            self._drop(DropReason.LOCAL_ERROR, exc)
            return
        # The endpoint failed this flow: it moves now, and this datagram goes with it.
        failed = flow.target
        self.failed(failed, failure)
        moved = self._reopen(flow, now, (failed,))
        if moved is None:
            return
        try:
            moved.sock.send(data)  # type: ignore[union-attr]
        except OSError:
            self.drops[DropReason.WOULD_BLOCK] += 1
        else:
            moved.counts.bytes_up += len(data)

    def _still_ready(self, flow: _Flow) -> bool:
        """The ready set changed since the flow picked: may it stay on its endpoint?"""
        if self.router.is_ready(flow.target):
            flow.generation = self.router.generation
            return True
        return False

    def _open(self, client: tuple, now: float, tried: Sequence[Target]) -> _Flow | None:
        target = self.router.pick(client[0], tried)
        if target is None:
            self.drops[DropReason.NO_ENDPOINT] += 1
            self.log_no_endpoint(client[0], list(tried))
            return None
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        try:
            sock = socket.socket(family, _SOCK_FLAGS)
        except OSError as exc:  # EMFILE/ENFILE/ENOBUFS: lbd's limit, not the endpoint's fault
            if exc.errno not in _OUT_OF_FDS or not self.table.flows:
                self._drop(DropReason.LOCAL_ERROR, exc)
                return None
            # Out of file descriptors: the cap in effect is the fd limit. Make room as the cap
            # would, least recently used first, rather than refuse every new client.
            self._close(self.table.flows.popitem(last=False)[1], FlowEvent.EVICTED)
            try:
                sock = socket.socket(family, _SOCK_FLAGS)
            except OSError as again:
                self._drop(DropReason.LOCAL_ERROR, again)
                return None
        try:
            sock.connect(target)
        except OSError as exc:
            sock.close()
            if exc.errno in _UNREACHABLE:
                self.failed(target, Failure.UNREACHABLE)
            else:
                self._drop(DropReason.LOCAL_ERROR, exc)
            return None
        counts = self.books.of(target)
        counts.opened += 1
        flow = _Flow(client, target, now, self.router.generation, sock, counts)
        self.loop.add_reader(sock.fileno(), self._on_endpoint_datagrams, flow)
        for evicted in self.table.add(flow):
            self._close(evicted, FlowEvent.EVICTED)
        self.events[FlowEvent.CREATED] += 1
        return flow

    def _reopen(self, flow: _Flow, now: float, tried: Sequence[Target]) -> _Flow | None:
        """Move a client's flow to a fresh pick (its endpoint failed or left the ready set)."""
        self.table.remove(flow.client)
        self._close(flow)
        return self._open(flow.client, now, tried)

    # -- endpoint -> client ---------------------------------------------------------------------

    def _on_endpoint_datagrams(self, flow: _Flow) -> None:
        sock, front = flow.sock, self._sock
        if sock is None or front is None:
            return
        recv, send, buf, view, client = sock.recv_into, front.sendto, self._buf, self._view, flow.client
        count = size = 0
        for _ in range(READ_BATCH):
            try:
                n = recv(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ECONNREFUSED: an ICMP port unreachable, nothing listens there
                refused = isinstance(exc, ConnectionRefusedError)
                self._fail_flow(flow, Failure.REFUSED if refused else Failure.UNREACHABLE
                                if exc.errno in _UNREACHABLE else Failure.ERROR)
                break
            try:
                send(view[:n], client)
            except OSError as exc:
                if isinstance(exc, BlockingIOError):
                    self.drops[DropReason.WOULD_BLOCK] += 1
                elif exc.errno == errno.EMSGSIZE:
                    self.drops[DropReason.TOO_LARGE] += 1
                else:
                    self._drop(DropReason.LOCAL_ERROR, exc)
                continue
            count += 1
            size += n
        if count:
            if not flow.answered:
                flow.answered = True
                self.router.succeeded(flow.target)
            if flow.sock is not None:
                self.table.flows.move_to_end(client)
                flow.last = self.now
            self.datagrams_down += count
            self.bytes_down += size
            flow.counts.bytes_down += size

    def _fail_flow(self, flow: _Flow, failure: Failure) -> None:
        """The endpoint refused: count it, close the flow; the next datagram picks again."""
        self.failed(flow.target, failure)
        if self.table.flows.get(flow.client) is flow:
            self.table.remove(flow.client)
        self._close(flow)

    # -- books ----------------------------------------------------------------------------------

    def _close(self, flow: _Flow, event: FlowEvent | None = None) -> None:
        sock, flow.sock = flow.sock, None
        if sock is None:
            return
        if event is FlowEvent.EVICTED:
            lost = 0
            for _ in range(EVICTED_DRAIN):  # replies that came too late for an evicted flow
                try:
                    # Not into self._buf: an eviction happens while that holds the datagram of
                    # the new flow that caused it. A short buffer is enough to count.
                    sock.recv_into(self._scratch, 0, socket.MSG_TRUNC)
                except OSError:
                    break
                lost += 1
            self.drops[DropReason.FLOW_EVICTED] += lost
        if event is not None:
            self.events[event] += 1
        flow.counts.closed += 1
        self.loop.remove_reader(sock.fileno())
        sock.close()

    def _drop(self, reason: DropReason, exc: OSError) -> None:
        self.drops[reason] += 1
        suppressed = self._local_error_log.hit(self.clock())
        if suppressed is not None:
            log.warning(
                "udp_local_error",
                service=self.service,
                port=self.port_name,
                error=exc.strerror or str(exc),
                errno=errno.errorcode.get(exc.errno or 0, exc.errno),
                suppressed=suppressed,
            )

    def housekeeping_period(self) -> float:
        return min(HOUSEKEEPING_SECONDS, self.udp.flow_timeout / 2)

    def housekeep(self, period: float) -> bool:
        self.now = now = self.clock()
        # A reply's stamp may lag by one period: expire one period late rather than early.
        for flow in self.table.expire(now - period):
            self._close(flow, FlowEvent.EXPIRED)
        self.flush_metrics()
        return self._sock is not None

    def _bind_metrics(self) -> None:
        labels = (self.service, self.port_name)
        self._m_active = metrics.udp_flows_active.labels(*labels)
        self._m_counters = {
            "datagrams_up": metrics.udp_datagrams_total.labels(*labels, "client_to_endpoint"),
            "datagrams_down": metrics.udp_datagrams_total.labels(*labels, "endpoint_to_client"),
            "bytes_up": metrics.udp_bytes_total.labels(*labels, "client_to_endpoint"),
            "bytes_down": metrics.udp_bytes_total.labels(*labels, "endpoint_to_client"),
            **{f"event_{e}": metrics.udp_flows_total.labels(*labels, str(e)) for e in FlowEvent},
            **{f"drop_{r}": metrics.udp_drops_total.labels(*labels, str(r)) for r in DropReason},
        }

    def flush_metrics(self) -> None:
        """Push the plain-int counters (the listener's, its endpoints') into Prometheus."""
        self.books.flush(self.router.is_ready)
        now = {
            "datagrams_up": self.datagrams_up,
            "datagrams_down": self.datagrams_down,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            **{f"event_{e}": n for e, n in self.events.items()},
            **{f"drop_{r}": n for r, n in self.drops.items()},
        }
        for name, value in now.items():
            delta = value - self._flushed.get(name, 0)
            if delta:
                self._m_counters[name].inc(delta)
        self._flushed = now
        active = len(self.table)
        if active != self._flushed_active:
            self._m_active.inc(active - self._flushed_active)  # inc, not set: listeners may share labels
            self._flushed_active = active
