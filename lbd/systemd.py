"""sd_notify: tell systemd where lbd stands (READY, RELOADING, STOPPING, STATUS, WATCHDOG).

The protocol is one datagram of `KEY=value` lines on the unix socket named by $NOTIFY_SOCKET
(a leading '@' means the abstract namespace); see sd_notify(3). A few lines, no dependency.
Without $NOTIFY_SOCKET (not under systemd, or Type=exec) every call is a no-op. Sending never
blocks and never raises: systemd's view is useful, not essential.

The watchdog: with WatchdogSec= set, systemd passes WATCHDOG_USEC (and WATCHDOG_PID); lbd
sends WATCHDOG=1 from its event loop every half of it, so a wedged loop stops the pings and
systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("lbd.systemd")


class Notifier:
    """Sends sd_notify messages when systemd asked for them."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); older ones ignore it.
        self.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def send(self, message: str) -> bool:
        """One datagram; False (and one log line, the first time) when it could not be sent."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("sd_notify_failed", socket=self.address.replace("\0", "@"), error=str(exc))
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, if the watchdog is meant for this process (sd_watchdog_enabled(3))."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6
