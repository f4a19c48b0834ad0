"""Integration fixtures: a lab of network namespaces per test module (root only).

Everything here is skipped, with the reason shown, when not root, when `ip` is missing or when
this kernel/container cannot create network namespaces. CI runs as root, so there they run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbd.lab.netlab import PREFIX, Lab, sweep_stale

HERE = Path(__file__).resolve().parent


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (they build network namespaces); run as root, as CI does"
    if shutil.which("ip") is None:
        return "integration tests need the `ip` command (Debian package iproute2)"
    probe = f"{PREFIX}{uuid.uuid4().hex[:6]}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    if made.returncode != 0:
        return f"cannot create network namespaces here: {made.stderr.strip()}"
    return None


SKIP_REASON = _why_not_runnable()
if SKIP_REASON is not None and os.environ.get("LBD_REQUIRE_INTEGRATION") == "1":
    raise pytest.UsageError(f"LBD_REQUIRE_INTEGRATION=1 but {SKIP_REASON}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.root)
            if SKIP_REASON is not None:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture(scope="session", autouse=True)
def _sweep_crashed_runs() -> None:
    """Leftovers of a crashed earlier run go first (never a live run's: see sweep_stale)."""
    if SKIP_REASON is None:
        for name in sweep_stale():
            print(f"netlab: removed stale namespace {name}")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A fresh lab (client, node, three backends) for one test module, removed afterwards."""
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    with Lab() as built:
        yield built
