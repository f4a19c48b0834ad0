"""Passive health: eject an endpoint whose connects fail, nginx `max_fails`/`fail_timeout` style (pure core).

No I/O and no clock: callers pass `now` (monotonic seconds).

Semantics (nginx upstream `server ... max_fails=1 fail_timeout=10s`, the defaults here):
- `max_fails` failed connects within `fail_timeout` seconds of the first of them eject the
  target for `fail_timeout` seconds.
- When the ejection runs out the target is tried again; until a connect succeeds, one more
  failure ejects it again at once (nginx keeps `fails >= max_fails` until a success too).
- A successful connect clears everything known about the target.
- Ejection only steers traffic away: the router still tries ejected targets when nothing else
  is left, so passive health never turns "some endpoint accepts" into a client error.

This is the seam active health checking plugs into: it owns readiness (`Balancer.update`),
this owns "recently refused"; both speak `Target`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from lbd.balancer import Target

# nginx's defaults for `server` in an upstream block.
DEFAULT_MAX_FAILS = 1
DEFAULT_FAIL_TIMEOUT = 10.0

_NOTHING: frozenset[Target] = frozenset()


@dataclass(frozen=True, slots=True)
class Ejection:
    """Event: `target` is ejected until `until` after `fails` failures; the last said `reason`."""

    target: Target
    until: float
    fails: int
    reason: str


@dataclass(slots=True)
class _State:
    fails: int = 0
    first_fail: float = 0.0  # start of the current counting window
    ejected_until: float | None = None  # set once ejected; kept until a success


class PassiveHealth:
    """Counts failed connects per target and says which targets sit out right now."""

    __slots__ = ("max_fails", "fail_timeout", "_states", "_cache", "_cache_valid_until")

    def __init__(self, max_fails: int = DEFAULT_MAX_FAILS, fail_timeout: float = DEFAULT_FAIL_TIMEOUT) -> None:
        if max_fails < 1 or fail_timeout <= 0:
            raise ValueError("passive health needs max_fails >= 1 and fail_timeout > 0")
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self._states: dict[Target, _State] = {}
        # ejected(now) runs on every new connection: cache the set until it can next change.
        self._cache: frozenset[Target] = _NOTHING
        self._cache_valid_until = float("-inf")

    def failed(self, target: Target, now: float, reason: str = "") -> Ejection | None:
        """Record a failed connect; returns an Ejection when this failure (re-)ejects the target."""
        state = self._states.get(target)
        if state is None:
            state = self._states[target] = _State(first_fail=now)
        if state.ejected_until is not None:
            if now < state.ejected_until:
                return None  # already out (a connect that started before the ejection)
            state.fails = self.max_fails  # trial after the ejection failed: out again at once
        else:
            if now - state.first_fail > self.fail_timeout:
                state.fails, state.first_fail = 0, now  # old failures no longer count
            state.fails += 1
            if state.fails < self.max_fails:
                return None
        state.ejected_until = now + self.fail_timeout
        self._cache_valid_until = float("-inf")
        return Ejection(target, state.ejected_until, state.fails, reason)

    def succeeded(self, target: Target) -> bool:
        """Record a successful connect; returns True when the target had been ejected (recovered)."""
        if not self._states:  # the usual case: nothing ever failed
            return False
        state = self._states.pop(target, None)
        if state is None:
            return False
        self._cache_valid_until = float("-inf")
        return state.ejected_until is not None

    def ejected(self, now: float) -> frozenset[Target]:
        """The targets to avoid at `now`."""
        if now < self._cache_valid_until:
            return self._cache
        out: list[Target] = []
        valid_until = float("inf")
        for target, state in self._states.items():
            until = state.ejected_until
            if until is not None and now < until:
                out.append(target)
                valid_until = min(valid_until, until)
        self._cache = frozenset(out) if out else _NOTHING
        self._cache_valid_until = valid_until
        return self._cache

    def retain(self, targets: Collection[Target]) -> None:
        """Forget targets no longer in the endpoint set (keeps the table bounded under churn)."""
        gone = [t for t in self._states if t not in targets]
        for target in gone:
            del self._states[target]
        if gone:
            self._cache_valid_until = float("-inf")
