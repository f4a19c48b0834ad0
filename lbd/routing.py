"""ServiceRouter: the Router a relay asks for targets; glues Balancer + PassiveHealth + a clock.

The only impure thing here is the clock (injected, `time.monotonic` by default) and the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

import structlog

from lbd.balancer import Balancer, Target, format_target
from lbd.health.passive import PassiveHealth
from lbd.relay import Failure

log = structlog.get_logger("lbd.routing")


# Told of every failed connect of a service with a readinessProbe (the health checker counts
# it as a failed probe at once).
ProbeFailure = Callable[[Target, Failure], None]


class ServiceRouter:
    """Picks targets for one service port: balancer order, minus tried and passively-ejected targets.

    With `probe_failed` set (the service has a readinessProbe) a failed connect is also a failed
    probe: the endpoint leaves the ready set until a probe passes again. Without it, passive
    ejection alone steers traffic away, as before.
    """

    __slots__ = ("_clock", "balancer", "draining", "generation", "passive", "port", "probe_failed", "service")

    def __init__(
        self,
        balancer: Balancer,
        passive: PassiveHealth,
        clock: Callable[[], float] = time.monotonic,
        service: str = "ns/name",
        port: int | str = 80,
    ) -> None:
        self.balancer = balancer
        self.passive = passive
        self.service = service
        self.port = port
        self.probe_failed: ProbeFailure | None = None
        self.generation = 0  # bumped when the ready set may have changed (UDP flows re-check then)
        self.draining: frozenset[Target] = frozenset()
        self._clock = clock

    def update(self, targets: Sequence[Target], draining: frozenset[Target] = frozenset()) -> None:
        """New READY targets (endpoint churn or active health): keeps rotation and affinity.

        `draining` targets get no new picks, but established flows may stay on them (operator drain).
        """
        self.balancer.update(targets)
        self.passive.retain(frozenset(targets) | draining)
        self.draining = draining
        self.generation += 1

    def is_ready(self, target: Target) -> bool:
        """Whether an established UDP flow may keep using `target`: ready, or drained by an operator."""
        return target in self.balancer.ready or target in self.draining

    def pick(self, client_ip: str, tried: Collection[Target]) -> Target | None:
        """Each target at most once per client connection; ejected ones only when nothing else is left."""
        now = self._clock()
        ejected = self.passive.ejected(now)
        if not ejected:
            return self.balancer.pick(client_ip, now, tried)
        target = self.balancer.pick(client_ip, now, ejected.union(tried))
        if target is None:  # everything untried is ejected: try those anyway, a client sees no error
            target = self.balancer.pick(client_ip, now, tried)
        return target

    def failed(self, target: Target, failure: Failure) -> None:
        if self.probe_failed is not None:
            self.probe_failed(target, failure)
        ejection = self.passive.failed(target, self._clock(), str(failure))
        if ejection is not None:
            log.warning(
                "endpoint_ejected",
                service=self.service,
                port=self.port,
                target=format_target(target),
                reason=str(failure),
                fails=ejection.fails,
                seconds=self.passive.fail_timeout,
            )

    def succeeded(self, target: Target) -> None:
        if self.passive.succeeded(target):
            log.info("endpoint_recovered", service=self.service, port=self.port, target=format_target(target))
