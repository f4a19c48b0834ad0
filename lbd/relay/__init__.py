"""The data plane: relays that carry client connections to endpoints picked by a Router."""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum
from typing import Protocol

from lbd.balancer import Target


class ConnectFailure(StrEnum):
    """Why a connect to an endpoint failed: a log field, a metric label and a test value."""

    REFUSED = "refused"  # RST to our SYN: nothing listens
    UNREACHABLE = "unreachable"  # ICMP host/net unreachable, no route
    TIMEOUT = "timeout"  # no answer within RelayOptions.connect_timeout
    ERROR = "error"  # any other OSError (EMFILE, EADDRNOTAVAIL, ...)


class Router(Protocol):
    """Where a relay sends a client connection; one per service port (see lbd.routing)."""

    def pick(self, client_ip: str, tried: Collection[Target]) -> Target | None:
        """The next target to try for this client connection; never one of `tried`."""
        ...

    def connect_failed(self, target: Target, reason: str) -> None: ...

    def connected(self, target: Target) -> None: ...


__all__ = ["ConnectFailure", "Router", "Target"]
