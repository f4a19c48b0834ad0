"""Health of endpoints: passive (failed connects eject a target for a while) and active probes.

passive.py    nginx-style ejection after failed connects (pure)
probe.py      one endpoint's readinessProbe state machine (pure)
http.py       the httpGet probe's request and status line (pure)
prober.py     one probe on the loop: a fresh connection, bounded by its timeout
checker.py    every probe the plan asks for; verdicts for readiness
report.py     readiness changes as logs, events and lbd_endpoint_ready
"""

from lbd.health.passive import DEFAULT_FAIL_TIMEOUT, DEFAULT_MAX_FAILS, Ejection, PassiveHealth

__all__ = ["DEFAULT_FAIL_TIMEOUT", "DEFAULT_MAX_FAILS", "Ejection", "PassiveHealth"]
