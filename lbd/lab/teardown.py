"""What a lab owns and how it goes away, even on failure: owner records, teardown, sweeping.

Every lab writes an owner record (/run/lbdt/<run id>.json: its pid and start time, namespaces
and temp dir) before it creates anything, and tears down on close, garbage collection,
interpreter exit and SIGINT/SIGTERM/SIGHUP. `sweep_stale` removes what crashed runs left: a
record whose process is gone, or an `lbdt-` namespace nobody claims once it is old enough.
Only the lab's own namespaces (and the processes in them) are ever removed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

PREFIX = "lbdt-"
OWNER_DIR = Path("/run/lbdt")  # tmpfs like /run/netns: cleared by the same reboot
NETNS_DIR = Path("/run/netns")  # where `ip netns add` mounts named namespaces
COMMAND_TIMEOUT = 10.0  # seconds for one `ip` (or test) command; they take milliseconds
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for lab processes
UNOWNED_MIN_AGE = 600.0  # seconds: an lbdt- namespace nobody claims is only swept when older


class LabError(RuntimeError):
    """A lab command failed; the message has the command and its stderr."""


def run_command(
    argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def process_start(pid: int) -> int | None:
    """Start time of a live `pid` in clock ticks since boot (/proc/<pid>/stat field 22).

    None when it is gone or a zombie: a killed owner stays a zombie until reaped, and a zombie
    will never clean up its lab.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, start 22
    return None if fields[0] in ("Z", "X") else int(fields[19])


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group we started, then SIGKILL it after a grace period."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def delete_netns(name: str) -> None:
    """Kill what still runs in the namespace (all started by the lab or its tests), delete it."""
    if not netns_exists(name):
        return
    pids = run_command(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run_command(["ip", "netns", "del", name], check=False)


class Resources:
    """What one lab owns, kept apart from the Lab so finalizers can run without it."""

    def __init__(self, run_id: str, namespaces: list[str]) -> None:
        self.run_id = run_id
        self.namespaces = namespaces
        self.processes: list[subprocess.Popen[Any]] = []
        self.owner_file = OWNER_DIR / f"{run_id}.json"
        self.tmpdir: Path | None = None  # captures and helper logs; removed with the namespaces
        self.started = False  # nothing exists before the owner record: nothing to tear down
        self.done = False
        self._busy = False
        self._lock = threading.RLock()

    def write_owner(self) -> None:
        for name in self.namespaces:  # another run drew the same id: touch nothing of theirs
            if netns_exists(name):
                raise LabError(f"namespace {name} exists already; another lab uses run id {self.run_id}")
        self.started = True
        OWNER_DIR.mkdir(parents=True, exist_ok=True)
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.run_id}-"))
        record = {
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
            "namespaces": self.namespaces,
            "tmpdir": str(self.tmpdir),
        }
        self.owner_file.write_text(json.dumps(record))

    def teardown(self) -> None:
        with self._lock:
            if self.done or self._busy:  # a signal arriving mid-teardown must not start another
                return
            if not self.started:
                self.done = True
                LIVE.discard(self)
                return
            self._busy = True
            try:
                for proc in self.processes:
                    with contextlib.suppress(Exception):
                        stop_process(proc)
                for name in reversed(self.namespaces):
                    with contextlib.suppress(Exception):
                        delete_netns(name)
                if self.tmpdir is not None:
                    shutil.rmtree(self.tmpdir, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.owner_file.unlink(missing_ok=True)
                self.done = True
                LIVE.discard(self)
            finally:
                self._busy = False


LIVE: set[Resources] = set()
_handlers_installed = False


def teardown_all() -> None:
    for resources in list(LIVE):
        resources.teardown()


def install_signal_handlers() -> None:
    """Tear labs down on SIGINT/SIGTERM/SIGHUP, then do what the previous handler would have."""
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if previous == signal.SIG_IGN:  # e.g. SIGINT of a background job: the process ignores it
            continue

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            teardown_all()
            if callable(previous):
                previous(signum, frame)  # SIGINT: raises KeyboardInterrupt as usual
            else:  # SIG_DFL (or None: set outside Python): die of the signal as intended
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(sig, handler)
    atexit.register(teardown_all)
    _handlers_installed = True


def sweep_stale(prefix: str = PREFIX, *, unowned_min_age: float = UNOWNED_MIN_AGE) -> list[str]:
    """Remove namespaces of crashed lab runs; returns their names.

    A lab whose owner record names a dead process is removed at once. An `lbdt-` namespace no
    record claims (another tool's, or a record lost) is only removed when older than
    `unowned_min_age`, so concurrent test runs on the same machine never sweep each other.
    """
    removed: list[str] = []
    claimed: set[str] = set()
    for record_file in sorted(OWNER_DIR.glob("*.json")) if OWNER_DIR.is_dir() else []:
        try:
            record = json.loads(record_file.read_text())
            pid, start, names = int(record["pid"]), record.get("start"), list(record["namespaces"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if start is not None and process_start(pid) == start:
            claimed.update(names)
            continue
        for name in names:
            if netns_exists(name):
                delete_netns(name)
                removed.append(name)
        tmpdir = Path(str(record.get("tmpdir") or ""))
        if tmpdir.name.startswith(PREFIX) and tmpdir.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(tmpdir, ignore_errors=True)
        record_file.unlink(missing_ok=True)
    now = time.time()
    for name in list_netns():
        if not name.startswith(prefix) or name in claimed or name in removed:
            continue
        try:
            age = now - (NETNS_DIR / name).stat().st_mtime
        except OSError:
            continue
        if age >= unowned_min_age:
            delete_netns(name)
            removed.append(name)
    return removed
