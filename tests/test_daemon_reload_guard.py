"""A reload never empties the data plane by accident: a truncated config is an error, and a
config that would stop every service is refused unless the operator asks (`--allow-empty`).
"""

from __future__ import annotations

import signal
import subprocess

import pytest

# backends and daemon_factory are fixtures: pytest finds them by name in this module.
from tests.test_daemon_loopback import LBD, backends, config_for, daemon_factory, free_port, hello, wait_for_event  # noqa: F401

POOLS_ONLY = "pools:\n  - name: local\n    addresses: [127.0.0.240-127.0.0.250]\n"


def reload(d, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LBD, "reload", "--admin-socket", str(d.socket), *extra],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("truncated", ["", "# lbd.yaml, managed by config management\n", POOLS_ONLY])
def test_sighup_of_a_truncated_config_keeps_every_service(daemon_factory, backends, truncated: str) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start()
    d.config.write_text(truncated)
    d.proc.send_signal(signal.SIGHUP)
    wait_for_event(d, "reload_rejected")
    log = d.log.read_text()
    assert "config is empty" in log or "exposes no service while 2 are served" in log
    assert {r["name"] for r in d.get()} == {"web", "web2"}
    assert hello("127.0.0.240", port).startswith("backend-")
    assert "reload_applied" not in log
    assert d.stop() == 0


def test_lbd_reload_says_why_and_allow_empty_applies(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start()
    d.config.write_text(POOLS_ONLY)
    refused = reload(d)
    assert refused.returncode == 1
    assert f"error: {d.config}: the new config exposes no service while 2 are served" in refused.stderr
    assert "lbd reload --allow-empty" in refused.stderr
    assert hello("127.0.0.241", port).startswith("backend-")
    applied = reload(d, "--allow-empty")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("reloaded: added 0, removed 2, changed 0, unchanged 0")
    assert d.get() == []
    assert d.stop() == 0


def test_lbd_reload_reports_config_errors(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start()
    d.config.write_text("")
    out = reload(d)
    assert out.returncode == 1
    assert f"error: {d.config}: config is empty: no pools and no services" in out.stderr
    assert "not reloaded; the running config stays" in out.stderr
    wait_for_event(d, "reload_rejected")
    assert d.stop() == 0
