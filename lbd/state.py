"""The sticky state file: which service held which VIP, so a restart keeps every address.

Invariants:
  - `save_assignments` replaces `assignments.json` atomically: a reader (or a crash at any
    point) sees the old file or the new one, never a mix, and no temp file is left behind.
  - `load_assignments` never raises for a missing, unreadable or corrupt file: losing sticky
    state only means fresh assignments, while crashing would take every VIP down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from lbd.model import IPAddress

STATE_FILE = "assignments.json"
STATE_VERSION = 1
_DIR_MODE = 0o755
_FILE_MODE = 0o644  # VIPs are not secret; lets `lbd get` run unprivileged


def load_assignments(state_dir: Path) -> dict[str, IPAddress]:
    """The persisted key -> IP map; {} if there is none or it cannot be trusted."""
    path = Path(state_dir) / STATE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        _warn_unreadable(path, exc)
        return {}
    try:
        return _parse(json.loads(text))
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        _warn_unreadable(path, exc)
        return {}


def save_assignments(state_dir: Path, assignments: Mapping[str, IPAddress]) -> None:
    """Write `assignments.json` atomically and durably (temp file, fsync, rename, fsync dir)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    document = {"version": STATE_VERSION, "assignments": {key: str(ip) for key, ip in assignments.items()}}
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")

    # Same directory as the target, so the rename stays within one filesystem and is atomic.
    fd, tmp_name = tempfile.mkstemp(dir=state_dir, prefix=f".{STATE_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), _FILE_MODE)
            os.fsync(tmp.fileno())
        os.replace(tmp_name, state_dir / STATE_FILE)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(state_dir)  # makes the rename itself survive a power loss


def _warn_unreadable(path: Path, exc: Exception) -> None:
    # Looked up per call: a logger cached at import would ignore later structlog.configure().
    structlog.get_logger(__name__).warning("state_unreadable", path=str(path), error=str(exc))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(document: Any) -> dict[str, IPAddress]:
    if not isinstance(document, dict):
        raise ValueError("state file is not a JSON object")
    if document.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported state version {document.get('version')!r}, expected {STATE_VERSION}")
    entries = document.get("assignments")
    if not isinstance(entries, dict):
        raise ValueError('"assignments" is not an object')
    result: dict[str, IPAddress] = {}
    for key, value in entries.items():
        if not isinstance(value, str):
            raise ValueError(f"assignment for {key!r} is not a string")
        result[key] = ipaddress.ip_address(value)  # ValueError on garbage
    return result
