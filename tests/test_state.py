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
from lbd.state import STATE_FILE, load_assignments, save_assignments

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
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o755 & ~_umask()
    assert stat.S_IMODE((state_dir / STATE_FILE).stat().st_mode) == 0o644


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    save_assignments(tmp_path, ASSIGNMENTS)
    save_assignments(tmp_path, {"default/web": ipaddress.ip_address("10.0.0.1")})
    save_assignments(tmp_path, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
    assert load_assignments(tmp_path) == {}


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_assignments(tmp_path, ASSIGNMENTS)

    def crash(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(lbd.state.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_assignments(tmp_path, {"default/web": ipaddress.ip_address("10.0.0.1")})
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
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


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        '{"version": 2, "assignments": {}}',
        '{"assignments": {"default/web": "192.168.1.200"}}',
        '{"version": 1, "assignments": []}',
        '{"version": 1, "assignments": {"default/web": "not-an-ip"}}',
        '{"version": 1, "assignments": {"default/web": 3232235976}}',
    ],
)
def test_corrupt_file_is_empty_and_logs_a_warning(tmp_path: Path, content: str) -> None:
    (tmp_path / STATE_FILE).write_text(content)
    with capture_logs() as logs:
        assert load_assignments(tmp_path) == {}
    assert [(e["event"], e["log_level"]) for e in logs] == [("state_unreadable", "warning")]
    assert logs[0]["path"] == str(tmp_path / STATE_FILE)


def test_undecodable_bytes_are_empty(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with capture_logs() as logs:
        assert load_assignments(tmp_path) == {}
    assert logs[0]["event"] == "state_unreadable"


def test_state_path_that_is_a_directory_is_empty(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir()
    with capture_logs() as logs:
        assert load_assignments(tmp_path) == {}
    assert logs[0]["event"] == "state_unreadable"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
