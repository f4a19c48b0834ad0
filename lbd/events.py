"""Events: what happened to services and their endpoints, newest last, kept in memory for `describe`.

A bounded ring (the oldest go first), like the events kubectl describe lists under an object.
Every event is also a structured log line; the ring is what the admin API can answer without
reading the journal.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Events kept: a few per endpoint for a large service, hours of a flapping one.
MAX_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: `EndpointNotReady` for `default/web` `198.18.1.11`: `probe failed: HTTP 503`."""

    time: float  # seconds since the epoch
    reason: str  # CamelCase, as Kubernetes events: IPAllocated, AllocationFailed, EndpointNotReady
    service: str  # "namespace/name"; "" for lbd itself (a reload)
    subject: str  # what in the service: an endpoint's address, a VIP; "" for the service itself
    message: str
    type: str = "Normal"  # Normal | Warning, as Kubernetes events

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    """The newest MAX_EVENTS events."""

    def __init__(self, maxlen: int = MAX_EVENTS, clock: Callable[[], float] = time.time) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._clock = clock
        self._lock = threading.Lock()  # readiness reports record from a worker thread

    def record(self, reason: str, service: str, subject: str, message: str, type: str = "Normal") -> Event:
        event = Event(self._clock(), reason, service, subject, message, type)
        with self._lock:
            self._events.append(event)
        return event

    def recent(self, service: str | None = None, limit: int = 100) -> list[Event]:
        """The newest `limit` events, oldest first; only `service`'s when given."""
        with self._lock:
            chosen = [e for e in self._events if service is None or e.service == service]
        return chosen[-limit:] if limit > 0 else []

    def __len__(self) -> int:
        return len(self._events)
