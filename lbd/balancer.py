"""Balancer: which ready endpoint gets the next connection of a service port (pure core).

Round-robin over the ready targets, with optional Kubernetes `ClientIP` session affinity.
No I/O and no clock: the caller passes `now` (monotonic seconds), so tests need no sleep.

Invariants:
- `pick` only ever returns a target of the current ready set and never one in `exclude`.
- Changing the ready set keeps the round-robin position: the rotation continues after the
  last picked target (or after where it stood, if that target left); new targets join it.
- A ClientIP pin lives `timeout_seconds` after the client's LAST connection (kube-proxy's
  iptables `recent --rcheck --seconds ... --reap` + `--set` semantics), and is replaced by a
  fresh pick when its target is no longer ready or is excluded (failed connect on retry).
- The affinity table holds only unexpired pins (purged lazily from the least-recently-used
  end on every pick, O(expired)) and at most `max_clients` entries.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Protocol

from lbd.model import DEFAULT_AFFINITY_TIMEOUT_SECONDS, SessionAffinity

Target = tuple[str, int]  # (endpoint ip as str, port)

# Hard cap on pinned clients per service port, so a scan from many source addresses cannot
# grow the table without bound within the (up to 24 h) affinity timeout. ~100 B per entry.
DEFAULT_MAX_AFFINITY_CLIENTS = 1 << 18


def format_target(target: Target) -> str:
    """`ip:port`, with the IPv6 address in brackets: for logs and metric labels."""
    ip, port = target
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class _RoundRobin:
    """The rotation: an index into the ready targets that survives changes of the set."""

    __slots__ = ("targets", "ready", "_next", "_last")

    def __init__(self) -> None:
        self.targets: tuple[Target, ...] = ()
        self.ready: frozenset[Target] = frozenset()
        self._next = 0  # index of the target the next plain pick returns
        self._last: Target | None = None  # the last target handed out

    def update(self, targets: Sequence[Target]) -> None:
        old = self.targets
        new = tuple(dict.fromkeys(targets))  # drop duplicates, keep order
        self.targets, self.ready = new, frozenset(new)
        if not new:
            self._next = 0
            return
        last = self._last
        if last is None:
            self._next %= len(new)
            return
        if last in self.ready:
            self._next = (new.index(last) + 1) % len(new)
            return
        # The last picked target left: resume at the first old successor that is still ready.
        start = old.index(last) if last in old else -1
        for step in range(1, len(old) + 1):
            successor = old[(start + step) % len(old)]
            if successor in self.ready:
                self._next = new.index(successor)
                return
        self._next = 0  # nothing of the old set survives: start the new one from the top

    def pick(self, exclude: Collection[Target] = ()) -> Target | None:
        targets = self.targets
        n = len(targets)
        if not n:
            return None
        i = self._next % n
        if exclude:
            for _ in range(n):
                if targets[i] not in exclude:
                    break
                i = (i + 1) % n
            else:
                return None
        target = targets[i]
        self._next = (i + 1) % n
        self._last = target
        return target


class _Strategy(Protocol):
    def pick(self, rr: _RoundRobin, client_ip: str, now: float, exclude: Collection[Target]) -> Target | None: ...

    def __len__(self) -> int: ...


class _NoAffinity:
    """`sessionAffinity: None`: every connection takes the next target in the rotation."""

    __slots__ = ()

    def __init__(self, timeout_seconds: float, max_clients: int) -> None:
        pass

    def pick(self, rr: _RoundRobin, client_ip: str, now: float, exclude: Collection[Target]) -> Target | None:
        return rr.pick(exclude)

    def __len__(self) -> int:
        return 0


class _ClientIPAffinity:
    """`sessionAffinity: ClientIP`: a client IP sticks to its target while it keeps coming back."""

    __slots__ = ("_timeout", "_max", "_pins")

    def __init__(self, timeout_seconds: float, max_clients: int) -> None:
        self._timeout = timeout_seconds
        self._max = max_clients
        # client ip -> (target, last use); ordered by last use, oldest first.
        self._pins: OrderedDict[str, tuple[Target, float]] = OrderedDict()

    def pick(self, rr: _RoundRobin, client_ip: str, now: float, exclude: Collection[Target]) -> Target | None:
        pins = self._pins
        expired_before = now - self._timeout
        while pins:  # lazy purge: the front holds the least recently used pins
            ip, (_, last_use) = next(iter(pins.items()))
            if last_use > expired_before:
                break
            del pins[ip]
        pin = pins.get(client_ip)
        if pin is not None:
            target = pin[0]
            if target in rr.ready and target not in exclude:
                pins[client_ip] = (target, now)
                pins.move_to_end(client_ip)
                return target
        fresh = rr.pick(exclude)  # new client, or its target is gone/failed: re-balance
        if fresh is None:
            return None
        pins[client_ip] = (fresh, now)
        pins.move_to_end(client_ip)
        if len(pins) > self._max:
            pins.popitem(last=False)
        return fresh

    def __len__(self) -> int:
        return len(self._pins)


_STRATEGIES: dict[SessionAffinity, type[_NoAffinity] | type[_ClientIPAffinity]] = {
    SessionAffinity.NONE: _NoAffinity,
    SessionAffinity.CLIENT_IP: _ClientIPAffinity,
}


class Balancer:
    """Per service port: round-robin over ready targets, optional ClientIP affinity (Kubernetes semantics)."""

    __slots__ = ("affinity", "_rr", "_strategy")

    def __init__(
        self,
        affinity: SessionAffinity,
        timeout_seconds: float = DEFAULT_AFFINITY_TIMEOUT_SECONDS,
        *,
        max_clients: int = DEFAULT_MAX_AFFINITY_CLIENTS,
    ) -> None:
        self.affinity = SessionAffinity(affinity)
        self._rr = _RoundRobin()
        self._strategy: _Strategy = _STRATEGIES[self.affinity](timeout_seconds, max_clients)

    def update(self, targets: Sequence[Target]) -> None:
        """Set the READY targets, in order (readiness comes from health checking)."""
        self._rr.update(targets)

    def pick(self, client_ip: str, now: float, exclude: Collection[Target] = ()) -> Target | None:
        """The target for a new connection from `client_ip`, or None when no ready target is left."""
        return self._strategy.pick(self._rr, client_ip, now, exclude)

    @property
    def targets(self) -> tuple[Target, ...]:
        return self._rr.targets

    @property
    def ready(self) -> frozenset[Target]:
        return self._rr.ready

    @property
    def pinned_clients(self) -> int:
        """Size of the affinity table (0 without affinity); for tests and metrics."""
        return len(self._strategy)
