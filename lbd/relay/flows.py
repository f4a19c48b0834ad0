"""UDP flows: where a client's datagrams go, bounded in number and in idle time (pure).

A flow is keyed by the client's (address, port). Its first datagram picks an endpoint through
the service port's Router; later datagrams of the flow go to the same endpoint, and replies go
back to the client. No I/O and no clock here: callers pass `now`, so tests need no sleep.

Invariants:
- `flows` is in least-recently-used order: every datagram either way moves its flow to the end;
- a flow is idle from `last` on; `expire(now)` removes exactly the flows idle for `timeout` or
  longer, oldest first, and stops at the first one that is not (O(expired));
- `len(table) <= max_flows` after every `add`: the least recently used flows are evicted first,
  so a flood of new sources costs bounded memory and sockets;
- a flow's `generation` is the router's when its target was picked: a different one means the
  ready set changed, and the flow's target must be checked before its next datagram.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum
from typing import Generic, TypeVar

from lbd.balancer import Target

Client = tuple  # the client's socket address: (ip, port) or (ip, port, flowinfo, scope_id)


class DropReason(StrEnum):
    """Why a datagram was not relayed: a metric label and a log field."""

    NO_ENDPOINT = "no_endpoint"  # no ready endpoint (or every one refused)
    WOULD_BLOCK = "would_block"  # a socket buffer was full; UDP never queues in lbd
    FLOW_EVICTED = "flow_evicted"  # replies waiting on a flow the cap evicted
    TOO_LARGE = "too_large"  # EMSGSIZE: bigger than the other side's family allows
    LOCAL_ERROR = "local_error"  # lbd could not make a socket (EMFILE, ENOBUFS, ...)


class FlowEvent(StrEnum):
    CREATED = "created"
    EXPIRED = "expired"
    EVICTED = "evicted"


class Flow:
    """One client's flow; the relay subclasses it to add the endpoint socket."""

    __slots__ = ("client", "client_ip", "target", "last", "generation", "answered")

    def __init__(self, client: Client, target: Target, now: float, generation: int) -> None:
        self.client = client
        self.client_ip: str = client[0]
        self.target = target
        self.last = now
        self.generation = generation
        self.answered = False  # the endpoint has replied at least once (passive health: success)


F = TypeVar("F", bound=Flow)


class FlowTable(Generic[F]):
    """Flows by client, least recently used first, with a cap and an idle timeout."""

    __slots__ = ("flows", "max_flows", "timeout")

    def __init__(self, max_flows: int, timeout: float) -> None:
        if max_flows < 1 or timeout <= 0:
            raise ValueError("a flow table needs max_flows >= 1 and timeout > 0")
        self.flows: OrderedDict[Client, F] = OrderedDict()
        self.max_flows = max_flows
        self.timeout = timeout

    def __len__(self) -> int:
        return len(self.flows)

    def get(self, client: Client, now: float) -> F | None:
        """The client's flow, marked as used now; None if it has none."""
        flow = self.flows.get(client)
        if flow is not None:
            self.flows.move_to_end(client)
            flow.last = now
        return flow

    def touch(self, flow: F, now: float) -> None:
        """A datagram of `flow` went by (a reply, say)."""
        self.flows.move_to_end(flow.client)
        flow.last = now

    def add(self, flow: F) -> list[F]:
        """Add a new flow (the client has none); returns the flows evicted to make room, oldest first."""
        evicted = self._shrink_to(self.max_flows - 1)
        self.flows[flow.client] = flow
        return evicted

    def remove(self, client: Client) -> F | None:
        return self.flows.pop(client, None)

    def expire(self, now: float) -> list[F]:
        """Remove and return the flows idle for `timeout` or longer, oldest first."""
        expired: list[F] = []
        deadline = now - self.timeout
        flows = self.flows
        while flows:
            flow = next(iter(flows.values()))
            if flow.last > deadline:
                break
            expired.append(flows.popitem(last=False)[1])
        return expired

    def resize(self, max_flows: int, timeout: float) -> list[F]:
        """New limits (a reload); returns the flows evicted if the cap shrank."""
        if max_flows < 1 or timeout <= 0:
            raise ValueError("a flow table needs max_flows >= 1 and timeout > 0")
        self.max_flows, self.timeout = max_flows, timeout
        return self._shrink_to(max_flows)

    def clear(self) -> list[F]:
        flows = list(self.flows.values())
        self.flows.clear()
        return flows

    def _shrink_to(self, size: int) -> list[F]:
        evicted: list[F] = []
        while len(self.flows) > size:
            evicted.append(self.flows.popitem(last=False)[1])
        return evicted
