"""Health of endpoints: passive (failed connects eject a target for a while) and, later, active probes."""

from lbd.health.passive import DEFAULT_FAIL_TIMEOUT, DEFAULT_MAX_FAILS, Ejection, PassiveHealth

__all__ = ["DEFAULT_FAIL_TIMEOUT", "DEFAULT_MAX_FAILS", "Ejection", "PassiveHealth"]
