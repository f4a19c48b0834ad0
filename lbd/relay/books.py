"""A listener's books per endpoint: connections (UDP: flows) opened and closed, bytes each way.

The relay bumps plain ints on its own path (a connect that succeeded, a relay that ended, a
batch of datagrams) and never touches Prometheus; the listener's housekeeping flushes them,
once a second, into the `lbd_endpoint_*` families (lbd.metrics). An endpoint's series go once it
left the ready set and its last connection ended: a draining or failing endpoint still shows
what it carries, and churning endpoints (new pod addresses) never grow the registry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from typing import Any

from lbd import metrics
from lbd.balancer import Target, format_target

UP, DOWN = "client_to_endpoint", "endpoint_to_client"


class EndpointCounts:
    """One endpoint's plain ints; `active` is opened - closed."""

    __slots__ = ("opened", "closed", "bytes_up", "bytes_down", "flushed", "children")

    def __init__(self) -> None:
        self.opened = self.closed = self.bytes_up = self.bytes_down = 0
        self.flushed = (0, 0, 0, 0)  # opened, bytes up, bytes down, active: as last flushed
        self.children: tuple[Any, Any, Any, Any] | None = None  # bound at the first flush

    @property
    def active(self) -> int:
        return self.opened - self.closed


class EndpointBooks:
    """Every endpoint a listener relayed to, and the flush of their counts into Prometheus.

    `families` is (active gauge, opened counter, bytes counter), labelled service, port,
    endpoint (and direction for bytes): lbd.metrics.TCP_ENDPOINT_METRICS or UDP_ENDPOINT_METRICS.
    """

    __slots__ = ("families", "service", "port_name", "counts")

    def __init__(self, families: tuple[Any, Any, Any], service: str, port_name: str) -> None:
        self.families = families
        self.service = service
        self.port_name = port_name
        self.counts: dict[Target, EndpointCounts] = {}

    def of(self, target: Target) -> EndpointCounts:
        """The counts of `target` (a connect to it succeeded, or a flow picked it)."""
        counts = self.counts.get(target)
        if counts is None:
            counts = self.counts[target] = EndpointCounts()
        return counts

    def flush(self, is_ready: Callable[[Target], bool]) -> bool:
        """Push what changed since the last flush; drop endpoints that left the ready set and
        carry nothing any more. Returns whether anything changed."""
        changed = False
        for target, counts in list(self.counts.items()):
            active = counts.opened - counts.closed
            now = (counts.opened, counts.bytes_up, counts.bytes_down, active)
            before = counts.flushed
            if now != before:
                changed = True
                counts.flushed = now
                gauge, opened, up, down = counts.children or self._bind(counts, target)
                if now[0] != before[0]:
                    opened.inc(now[0] - before[0])
                if now[1] != before[1]:
                    up.inc(now[1] - before[1])
                if now[2] != before[2]:
                    down.inc(now[2] - before[2])
                if now[3] != before[3]:
                    gauge.inc(now[3] - before[3])  # inc, not set: listeners of a port share labels
            if active == 0 and not is_ready(target):
                self._drop(target)
        return changed

    def retire(self, targets: Collection[Target]) -> None:
        """These left the ready set: the idle ones go now (their series with them, so nothing
        unflushed matters), the others once their last connection ended (`flush`)."""
        for target in targets:
            counts = self.counts.get(target)
            if counts is not None and counts.active == 0:
                self._drop(target)

    def rename(self, port_name: str) -> None:
        """The port was renamed (after a flush): what was counted stays under the old name, open
        connections move to the new one, what comes next counts there."""
        for counts in self.counts.values():
            if counts.children is not None:
                counts.children[0].dec(counts.flushed[3])
                counts.children = None
            counts.flushed = (*counts.flushed[:3], 0)
        self.port_name = port_name

    def _bind(self, counts: EndpointCounts, target: Target) -> tuple[Any, Any, Any, Any]:
        labels = (self.service, self.port_name, format_target(target))
        gauge, opened, nbytes = self.families
        counts.children = (gauge.labels(*labels), opened.labels(*labels),
                           nbytes.labels(*labels, UP), nbytes.labels(*labels, DOWN))
        return counts.children

    def _drop(self, target: Target) -> None:
        counts = self.counts.pop(target)
        if counts.children is None:
            return  # never flushed: no series
        # A port's listeners share these series (an old VIP's listener draining beside the new
        # one): one that drops an endpoint takes them from the other too. Rare and harmless:
        # the other's later counts go to unexported children, nothing wrong is shown.
        for family in self.families:
            with contextlib.suppress(KeyError):
                metrics.forget(family, service=self.service, port=self.port_name, endpoint=format_target(target))
