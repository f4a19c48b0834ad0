"""`lbd demo`, the README's main command: it must print the table and the spread, and leave nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from lbd.lab.netlab import PREFIX


def lab_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)}


def test_demo_prints_table_and_spread_and_cleans_up() -> None:
    before = lab_namespaces()
    out = subprocess.run([sys.executable, "-m", "lbd", "demo"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "EXTERNAL-IP" in out.stdout and "nginx-demo" in out.stdout
    assert "spread: {'backend-1': 2, 'backend-2': 2, 'backend-3': 2}" in out.stdout
    assert "client errors: 0" in out.stdout
    assert "probe failed: HTTP 503" in out.stdout and "back in rotation" in out.stdout
    assert "Demo OK" in out.stdout
    assert lab_namespaces() == before


def test_demo_interrupted_leaves_nothing() -> None:
    before = lab_namespaces()
    proc = subprocess.Popen([sys.executable, "-m", "lbd", "demo"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # interrupt once lbd is up, mid-demo
        if "requests from the client" in line:
            break
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 5
    while lab_namespaces() != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lab_namespaces() == before
    leftovers = subprocess.run(["pgrep", "-f", "lbd/lab/backend.py"], capture_output=True, text=True).stdout
    assert not leftovers.strip()
