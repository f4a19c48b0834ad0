"""Tests for lbd.state: the sticky assignments file."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import lbd.state
from lbd.state import (
    MAX_STATE_BYTES,
    PREVIOUS_FILE,
    STATE_FILE,
    StateSource,
    load_assignments,
    load_state,
    save_assignments,
)

ASSIGNMENTS = {
    "default/web": ipaddress.ip_address("192.168.1.200"),
    "apps/api": ipaddress.ip_address("2001:db8::5"),
    "default/dns-udp": ipaddress.ip_address("192.168.1.201"),
}


def test_round_trip(tmp_path: Path) -> None:
    save_assignments(tmp_path, ASSIGNMENTS)
    assert load_assignments(tmp_path) == ASSIGNMENTS


def test_file_format_is_versioned_with_sorted_keys(tmp_path: Path) -> None:
    save_assignments(tmp_path, ASSIGNMENTS)
    text = (tmp_path / STATE_FILE).read_text()
    document = json.loads(text)
    assert document == {
        "version": 1,
        "generation": 0,
        "assignments": {
            "apps/api": "2001:db8::5",
            "default/dns-udp": "192.168.1.201",
            "default/web": "192.168.1.200",
        },
    }
    assert list(document["assignments"]) == sorted(document["assignments"])
    assert text.endswith("\n")


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_assignments(tmp_path) == {}
    assert load_assignments(tmp_path / "does-not-exist") == {}


def test_save_creates_the_directory(tmp_path: Path) -> None:
    state_dir = tmp_path / "var" / "lib" / "lbd"
    save_assignments(state_dir, ASSIGNMENTS)
    assert load_assignments(state_dir) == ASSIGNMENTS
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700 & ~_umask()
    assert stat.S_IMODE((state_dir / STATE_FILE).stat().st_mode) == 0o644


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    save_assignments(tmp_path, ASSIGNMENTS)
    save_assignments(tmp_path, {"default/web": ipaddress.ip_address("10.0.0.1")})
    save_assignments(tmp_path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE, PREVIOUS_FILE]
    assert load_assignments(tmp_path) == {}


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_assignments(tmp_path, ASSIGNMENTS)

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(lbd.state.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_assignments(tmp_path, {"default/web": ipaddress.ip_address("10.0.0.1")})
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # fsync failed before any rename
    assert load_assignments(tmp_path) == ASSIGNMENTS


def test_save_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(lbd.state.os, "fsync", spy)
    save_assignments(tmp_path, ASSIGNMENTS)
    assert synced == ["file", "dir"]


CORRUPT = [
    "{not json",
    "",
    "[]",
    '{"version": 2, "assignments": {}}',
    '{"assignments": {"default/web": "192.168.1.200"}}',
    '{"version": 1, "assignments": []}',
    '{"version": 1, "assignments": {"default/web": "not-an-ip"}}',
    '{"version": 1, "assignments": {"default/web": 3232235976}}',
    '{"version": 1, "generation": -1, "assignments": {}}',
    "[" * 100_000 + "]" * 100_000,  # a RecursionError in json: start-up stopped on it before
]


@pytest.mark.parametrize("content", CORRUPT)
def test_corrupt_file_without_a_previous_generation_is_lost(tmp_path: Path, content: str) -> None:
    (tmp_path / STATE_FILE).write_text(content)
    with capture_logs() as logs:
        loaded = load_state(tmp_path)
    assert (loaded.assignments, loaded.source) == ({}, StateSource.LOST)
    assert [(e["event"], e["log_level"]) for e in logs] == [("state_lost", "error")]
    assert str(tmp_path / STATE_FILE) in logs[0]["problems"][0]


@pytest.mark.parametrize("content", CORRUPT[:3])
def test_corrupt_file_falls_back_to_the_previous_generation(tmp_path: Path, content: str) -> None:
    save_assignments(tmp_path, ASSIGNMENTS, generation=1)
    save_assignments(tmp_path, {"default/web": ipaddress.ip_address("10.0.0.9")}, generation=2)
    (tmp_path / STATE_FILE).write_text(content)  # truncated by a crash, a full disk, a person
    with capture_logs() as logs:
        loaded = load_state(tmp_path)
    assert (loaded.assignments, loaded.source, loaded.generation) == (ASSIGNMENTS, StateSource.PREVIOUS, 1)
    assert [(e["event"], e["log_level"], e["generation"]) for e in logs] == [("state_fallback", "error", 1)]


def test_saving_after_a_fallback_keeps_the_good_previous_generation(tmp_path: Path) -> None:
    save_assignments(tmp_path, ASSIGNMENTS, generation=1)
    save_assignments(tmp_path, ASSIGNMENTS, generation=2)
    (tmp_path / STATE_FILE).write_text("{garbage")
    save_assignments(tmp_path, {}, generation=3, keep_previous=False)
    assert load_state(tmp_path).source is StateSource.CURRENT
    (tmp_path / STATE_FILE).write_text("{garbage again")
    assert load_state(tmp_path).assignments == ASSIGNMENTS


def test_missing_current_with_a_previous_says_so(tmp_path: Path) -> None:
    save_assignments(tmp_path, ASSIGNMENTS)
    save_assignments(tmp_path, ASSIGNMENTS)
    (tmp_path / STATE_FILE).unlink()
    with capture_logs() as logs:
        assert load_state(tmp_path).source is StateSource.PREVIOUS
    assert logs[0]["event"] == "state_fallback" and "missing" in logs[0]["problems"][0]


def test_a_symlink_to_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).symlink_to("/dev/zero")
    loaded = load_state(tmp_path)
    assert loaded.source is StateSource.LOST
    assert "is a symbolic link" in loaded.problems[0]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / STATE_FILE)
    loaded = load_state(tmp_path)  # a blocking open would hang here forever
    assert loaded.source is StateSource.LOST and "not a regular file" in loaded.problems[0]


def test_an_oversized_file_is_not_read(tmp_path: Path) -> None:
    with open(tmp_path / STATE_FILE, "wb") as f:
        f.truncate(MAX_STATE_BYTES + 1)
    loaded = load_state(tmp_path)
    assert loaded.source is StateSource.LOST and f"over {MAX_STATE_BYTES}" in loaded.problems[0]


def test_undecodable_bytes_are_lost(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with capture_logs() as logs:
        assert load_assignments(tmp_path) == {}
    assert logs[0]["event"] == "state_lost"


def test_state_path_that_is_a_directory_is_lost(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir()
    assert load_state(tmp_path).source is StateSource.LOST


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
