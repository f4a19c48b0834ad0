"""The assignment store seam: the sticky file, and allocate-then-commit with compare-and-swap."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

import pytest

from lbd import state
from lbd.assignments import (
    CommitConflict,
    FileAssignmentStore,
    Stored,
    allocate_and_commit,
)
from lbd.model import AddressRange, IPAddress, Pool, Service, ServicePort

POOL = Pool("lab", (AddressRange(ipaddress.ip_address("198.18.1.200"), ipaddress.ip_address("198.18.1.210")),))
PORT = (ServicePort("http", 80, 80),)
A, B = Service("a", ports=PORT), Service("b", ports=PORT)
IP = ipaddress.ip_address


def test_file_store_round_trip_and_stickiness(tmp_path: Path) -> None:
    store = FileAssignmentStore(tmp_path)
    assert store.load() == Stored({})
    first = allocate_and_commit(store, [POOL], [B])
    assert first.allocation.ip_of("default/b") == IP("198.18.1.200") and first.store_error is None
    # A restart (new store object) keeps b's VIP although a sorts first.
    second = allocate_and_commit(FileAssignmentStore(tmp_path), [POOL], [A, B])
    assert second.allocation.ip_of("default/b") == IP("198.18.1.200")
    assert second.allocation.ip_of("default/a") == IP("198.18.1.201")
    assert state.load_assignments(tmp_path) == {"default/a": IP("198.18.1.201"), "default/b": IP("198.18.1.200")}


def test_file_store_skips_writes_when_nothing_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileAssignmentStore(tmp_path)
    allocate_and_commit(store, [POOL], [A])
    writes: list[object] = []
    monkeypatch.setattr(state, "save_assignments", lambda *args: writes.append(args))
    allocate_and_commit(store, [POOL], [A])
    assert writes == []


def test_unwritable_store_keeps_the_allocation_and_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    committed = allocate_and_commit(FileAssignmentStore(blocker / "state"), [POOL], [A])
    assert committed.allocation.ip_of("default/a") == IP("198.18.1.200")
    assert committed.store_error is not None and "Error" in committed.store_error


class RacingStore:
    """A compare-and-swap store where another writer commits `rival` before our first commit."""

    def __init__(self, rival: Mapping[str, IPAddress], races: int = 1) -> None:
        self.data: dict[str, IPAddress] = {}
        self.revision = 0
        self.rival = dict(rival)
        self.races = races
        self.loads = 0

    def load(self) -> Stored:
        self.loads += 1
        return Stored(dict(self.data), self.revision)

    def commit(self, assignments: Mapping[str, IPAddress], expected: Stored) -> Stored | None:
        if self.races:
            self.races -= 1
            self.data, self.revision = dict(self.rival), self.revision + 1  # the other node wins
        if expected.revision != self.revision:
            return None
        self.data, self.revision = dict(assignments), self.revision + 1
        return Stored(dict(self.data), self.revision)


def test_lost_compare_and_swap_reallocates_from_the_winner() -> None:
    store = RacingStore({"default/b": IP("198.18.1.200")})
    committed = allocate_and_commit(store, [POOL], [A, B])
    # The rival gave b the first address; our retry respects it instead of handing it to a.
    assert committed.allocation.ip_of("default/b") == IP("198.18.1.200")
    assert committed.allocation.ip_of("default/a") == IP("198.18.1.201")
    assert store.loads == 2 and store.data == committed.allocation.sticky()
    assert committed.stored == Stored(store.data, store.revision)  # the next commit's expectation


def test_endless_conflicts_give_up_loudly() -> None:
    store = RacingStore({}, races=100)
    with pytest.raises(CommitConflict):
        allocate_and_commit(store, [POOL], [A], attempts=3)


# --- generations, fallback and lost state (the store's side of lbd.state) ----------------------

WEB, ECHO = Service("web", ports=PORT), Service("echo", ports=PORT)


def test_a_truncated_state_file_never_moves_a_vip_to_another_service(tmp_path: Path) -> None:
    # The defect: assignments.json truncated, restart re-assigned from scratch, web's VIP went to echo.
    first = allocate_and_commit(FileAssignmentStore(tmp_path), [POOL], [WEB])
    assert first.allocation.ip_of("default/web") == IP("198.18.1.200")
    second = allocate_and_commit(FileAssignmentStore(tmp_path), [POOL], [WEB, ECHO])
    assert second.allocation.ip_of("default/echo") == IP("198.18.1.201")
    (tmp_path / state.STATE_FILE).write_text('{"version": 1, "assign')  # cut off mid-write
    third = allocate_and_commit(FileAssignmentStore(tmp_path), [POOL], [WEB, ECHO])
    # Back one generation: web keeps .200; echo (assigned after it) gets a VIP no one else had.
    assert third.allocation.ip_of("default/web") == IP("198.18.1.200")
    assert third.allocation.ip_of("default/echo") != IP("198.18.1.200")


def test_lost_state_assigns_nothing_afresh_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / state.STATE_FILE).write_text("{garbage")
    requested = Service("pinned", ports=PORT, requested_ips=(IP("198.18.1.205"),))
    committed = allocate_and_commit(FileAssignmentStore(tmp_path), [POOL], [WEB, requested])
    assert committed.allocation.ip_of("default/web") is None
    assert "--reset-state" in committed.allocation.pending()["default/web"]
    assert committed.allocation.ip_of("default/pinned") == IP("198.18.1.205")  # the operator's own choice
    assert (tmp_path / state.STATE_FILE).read_text() == "{garbage"  # kept for a post-mortem


def test_reset_state_sets_the_unreadable_files_aside_and_assigns_anew(tmp_path: Path) -> None:
    (tmp_path / state.STATE_FILE).write_text("{garbage")
    committed = allocate_and_commit(FileAssignmentStore(tmp_path, reset=True), [POOL], [WEB])
    assert committed.allocation.ip_of("default/web") == IP("198.18.1.200")
    aside = [p.name for p in tmp_path.iterdir() if ".unreadable-" in p.name]
    assert len(aside) == 1 and aside[0].startswith(state.STATE_FILE)
    assert state.load_state(tmp_path).source is state.StateSource.CURRENT


def test_reset_state_keeps_a_readable_state(tmp_path: Path) -> None:
    allocate_and_commit(FileAssignmentStore(tmp_path), [POOL], [ECHO])
    committed = allocate_and_commit(FileAssignmentStore(tmp_path, reset=True), [POOL], [WEB, ECHO])
    assert committed.allocation.ip_of("default/echo") == IP("198.18.1.200")


def test_generations_count_up(tmp_path: Path) -> None:
    store = FileAssignmentStore(tmp_path)
    allocate_and_commit(store, [POOL], [WEB])
    allocate_and_commit(store, [POOL], [WEB, ECHO])
    assert state.load_state(tmp_path).generation == 2
    assert state.read_generation(tmp_path / state.PREVIOUS_FILE)[1] == 1
