"""The sticky state file: which service held which VIP, so a restart keeps every address.

Two generations are kept: `assignments.json` (current) and `assignments.json.prev` (the one
before it). A corrupt current file falls back to the previous generation, with an error event;
when neither can be read although state existed, the state is *lost*, and the caller must not
hand out VIPs as if nothing had been assigned (lbd.assignments refuses new assignments until
the operator says `--reset-state`).

Invariants:
  - `save_assignments` replaces `assignments.json` atomically: a reader (or a crash at any
    point) sees the old file or the new one, never a mix, and no temp file is left behind.
    The file it replaces becomes `.prev` first (a hard link, so a current file always exists).
  - `load_state` never raises: a missing, unreadable, oversized, non-regular (FIFO, device),
    symlinked or corrupt file (bad JSON, nesting deep enough for a RecursionError) is a
    problem it reports, not an exception.
  - Reads are bounded: at most MAX_STATE_BYTES, never through a symlink, never blocking.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from lbd.model import IPAddress

STATE_FILE = "assignments.json"
PREVIOUS_FILE = STATE_FILE + ".prev"
STATE_VERSION = 1
# 10,000 assignments are ~0.5 MB; anything near this is not a state file lbd wrote.
MAX_STATE_BYTES = 16 * 1024 * 1024
_DIR_MODE = 0o700  # see lbd.preflight: the state dir is private
_FILE_MODE = 0o644


class StateSource(StrEnum):
    """Where loaded assignments came from: a log field and a test value."""

    CURRENT = "current"
    PREVIOUS = "previous"  # the current file was unreadable: fell back one generation
    NONE = "none"  # no state yet (a first start), or it could not be looked at
    LOST = "lost"  # state existed, and no generation of it is readable


@dataclass(frozen=True, slots=True)
class LoadedState:
    """What `load_state` found: the assignments, their source and generation, what was wrong."""

    assignments: dict[str, IPAddress] = field(default_factory=dict)
    source: StateSource = StateSource.NONE
    generation: int = 0
    problems: tuple[str, ...] = ()


class StateUnreadable(Exception):
    """A state file exists but cannot be trusted; the message says why."""


def load_state(state_dir: Path) -> LoadedState:
    """The newest readable generation, reported once as a log event when it is not the current."""
    state_dir = Path(state_dir)
    problems: list[str] = []
    existed = False
    missing = ""
    for name, source in ((STATE_FILE, StateSource.CURRENT), (PREVIOUS_FILE, StateSource.PREVIOUS)):
        path = state_dir / name
        try:
            assignments, generation = read_generation(path)
        except FileNotFoundError:
            if source is StateSource.CURRENT:
                missing = f"{path}: missing"
            continue
        except PermissionError as exc:  # `lbd check` as a user: the state dir is private
            _log().warning("state_unreadable", path=str(path), error=exc.strerror)
            return LoadedState(source=StateSource.NONE, problems=(f"{path}: {exc.strerror}",))
        except StateUnreadable as exc:
            existed = True
            problems.append(f"{path}: {exc}")
            continue
        if source is StateSource.PREVIOUS and missing:
            problems.append(missing)
        if problems:
            _log().error("state_fallback", path=str(path), generation=generation, problems=problems,
                         hint="VIPs assigned after this generation was written may move")
        return LoadedState(assignments, source, generation, tuple(problems))
    if existed:
        _log().error("state_lost", state_dir=str(state_dir), problems=problems,
                     hint="no VIP is assigned afresh until you restart lbd with --reset-state")
        return LoadedState(source=StateSource.LOST, problems=tuple(problems))
    return LoadedState()


def load_assignments(state_dir: Path) -> dict[str, IPAddress]:
    """The assignments of the newest readable generation ({} if none)."""
    return load_state(state_dir).assignments


def read_generation(path: Path) -> tuple[dict[str, IPAddress], int]:
    """One state file's assignments and generation number.

    Raises FileNotFoundError, PermissionError, or StateUnreadable for anything else wrong.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        raise
    except NotADirectoryError as exc:  # the state dir is not a directory: there is no state
        raise FileNotFoundError(exc.errno, exc.strerror, str(path)) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateUnreadable("is a symbolic link; lbd writes a regular file here") from exc
        raise StateUnreadable(exc.strerror or str(exc)) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateUnreadable("is not a regular file")
        if info.st_size > MAX_STATE_BYTES:
            raise StateUnreadable(f"is {info.st_size} bytes, over {MAX_STATE_BYTES}")
        data = os.read(fd, MAX_STATE_BYTES + 1)
    except OSError as exc:
        raise StateUnreadable(exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)
    if len(data) > MAX_STATE_BYTES:
        raise StateUnreadable(f"is over {MAX_STATE_BYTES} bytes")
    try:
        return _parse(json.loads(data.decode("utf-8")))
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:  # JSONDecodeError is a ValueError
        raise StateUnreadable(f"{type(exc).__name__}: {exc}") from exc


def save_assignments(
    state_dir: Path, assignments: Mapping[str, IPAddress], *, generation: int = 0, keep_previous: bool = True
) -> None:
    """Write `assignments.json` atomically and durably (temp file, fsync, rename, fsync dir).

    With `keep_previous`, the file replaced becomes `assignments.json.prev` (pass False when
    the current file is the corrupt one: the good previous generation must stay).
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    document = {
        "version": STATE_VERSION,
        "generation": generation,
        "assignments": {key: str(ip) for key, ip in assignments.items()},
    }
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
    current = state_dir / STATE_FILE

    # Same directory as the target, so the renames stay within one filesystem and are atomic.
    fd, tmp_name = tempfile.mkstemp(dir=state_dir, prefix=f".{STATE_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fchmod(tmp.fileno(), _FILE_MODE)
            os.fsync(tmp.fileno())
        if keep_previous and current.is_file() and not current.is_symlink():
            _link_over(current, state_dir / PREVIOUS_FILE)
        os.replace(tmp_name, current)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(state_dir)  # makes the renames themselves survive a power loss


def set_aside(state_dir: Path, suffix: str) -> list[Path]:
    """Rename the state files out of the way (kept for a post-mortem); returns the new names."""
    moved = []
    for name in (STATE_FILE, PREVIOUS_FILE):
        path = Path(state_dir) / name
        if os.path.lexists(path):
            target = path.with_name(f"{name}.{suffix}")
            os.replace(path, target)
            moved.append(target)
    return moved


def _link_over(source: Path, target: Path) -> None:
    """`target` becomes another name of `source` (atomically, via a temp name)."""
    temp = target.with_name(f".{target.name}.tmp")
    temp.unlink(missing_ok=True)
    os.link(source, temp)
    os.replace(temp, target)


def _log() -> Any:
    # Looked up per call: a logger cached at import would ignore later structlog.configure().
    return structlog.get_logger(__name__)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(document: Any) -> tuple[dict[str, IPAddress], int]:
    if not isinstance(document, dict):
        raise ValueError("state file is not a JSON object")
    if document.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported state version {document.get('version')!r}, expected {STATE_VERSION}")
    generation = document.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ValueError(f"generation {generation!r} is not a count")
    entries = document.get("assignments")
    if not isinstance(entries, dict):
        raise ValueError('"assignments" is not an object')
    result: dict[str, IPAddress] = {}
    for key, value in entries.items():
        if not isinstance(value, str):
            raise ValueError(f"assignment for {key!r} is not a string")
        result[key] = ipaddress.ip_address(value)  # ValueError on garbage
    return result, generation
