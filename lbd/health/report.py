"""Readiness changes made visible: a log line and an event per change, and `lbd_endpoint_ready`.

The reconciler calls `publish` after every pass with the readiness before and after it, so
every change is reported once, whatever caused it (a probe, a passive failure, a reload that
changed a slice's conditions, the terminating fallback). The gauge's label children follow
the endpoints: one that goes away (or whose service is no longer served) is removed.
"""

from __future__ import annotations

from collections.abc import Collection

import structlog

from lbd import metrics
from lbd.events import EventLog
from lbd.readiness import Readiness, changes, endpoint_label

log = structlog.get_logger("lbd.health")


class ReadinessReport:
    """Publishes readiness: logs and events for changes, the per-endpoint gauge for what is served."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self._exported: dict[tuple[str, str], int] = {}  # (service, endpoint) -> the gauge's value

    def publish(self, before: Readiness, after: Readiness, served: Collection[str]) -> None:
        for change in changes(before, after):
            if change.service not in served:
                continue
            if change.ready:
                log.info("endpoint_ready", service=change.service, endpoint=change.endpoint, reason=change.reason)
            else:
                log.warning("endpoint_not_ready", service=change.service, endpoint=change.endpoint,
                            reason=change.reason, was_ready=change.was_ready)
            self.events.record(
                "EndpointReady" if change.ready else "EndpointNotReady", change.service, change.endpoint, change.reason,
                "Normal" if change.ready else "Warning",
            )
        now: dict[tuple[str, str], int] = {}
        for key in served:
            readiness = after.get(key)
            for status in readiness.endpoints if readiness is not None else ():
                now[(key, endpoint_label(status.endpoint))] = int(status.ready)
        for labels, value in now.items():
            if self._exported.get(labels) != value:
                metrics.endpoint_ready.labels(*labels).set(value)
        for labels in self._exported.keys() - now.keys():
            metrics.endpoint_ready.remove(*labels)
        self._exported = now
