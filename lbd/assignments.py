"""Where VIP assignments are kept, behind one seam, and the allocate-then-commit step.

The allocator is pure (lbd.allocator); what it was given last time and where its answer goes
is an AssignmentStore. Single node: the sticky file in --state-dir (lbd.state). Several nodes
(lbd.cluster.assignments): an etcd key whose `commit` is a compare-and-swap, so two nodes applying a new
config at once cannot hand one IP to two services; the loser re-reads and allocates again.

Stores are synchronous (the daemon calls them in a worker thread, with a deadline), so tests
drive them without an event loop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from lbd import state
from lbd.state import LoadedState, StateSource
from lbd.allocator import Allocation, allocate
from lbd.model import IPAddress, Pool, Service

# Compare-and-swap rounds before giving up: each lost round means another writer committed
# in between, so a handful is plenty unless something is wrong.
COMMIT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Stored:
    """Assignments as read from a store, with the store's token for compare-and-swap."""

    assignments: Mapping[str, IPAddress] = field(default_factory=dict)
    revision: object = None  # opaque to callers; the file store has none
    # Set when the store lost its state: new VIPs are not handed out (one could be a VIP the
    # lost state gave another service); services get this as their pending reason.
    hold_new: str | None = None


class AssignmentStore(Protocol):
    """Keeps service key -> VIP across restarts (and, in a cluster, across nodes)."""

    def load(self) -> Stored: ...

    def commit(self, assignments: Mapping[str, IPAddress], expected: Stored) -> Stored | None:
        """Store `assignments` if the store still holds `expected`; returns what it holds now
        (with its new revision), or None if another writer won.

        Raises OSError when the store cannot be written (the caller keeps serving).
        """
        ...


class CommitConflict(RuntimeError):
    """Other writers kept winning: no allocation could be committed."""


class FileAssignmentStore:
    """The single-node store: `assignments.json` in the state dir; this node is the only writer.

    A corrupt current file falls back to the previous generation (lbd.state). When no
    generation is readable the state is lost: nothing is assigned afresh and nothing is
    written (the unreadable files stay for a post-mortem) until lbd runs with `reset=True`
    (`--reset-state`), which sets them aside and starts over.
    """

    def __init__(self, state_dir: Path, *, reset: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.reset = reset
        self._on_disk: dict[str, IPAddress] | None = None  # what the current file holds, once known
        self._generation = 0
        self._current_good = True  # the current file may become `.prev` when replaced
        self._hold_new: str | None = None

    def load(self) -> Stored:
        loaded = state.load_state(self.state_dir)
        if loaded.source is StateSource.LOST and self.reset:
            moved = state.set_aside(self.state_dir, f"unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
            structlog.get_logger(__name__).warning(
                "state_reset", state_dir=str(self.state_dir), set_aside=[str(p) for p in moved])
            loaded = LoadedState()
        elif loaded.source is not StateSource.LOST and self.reset:
            structlog.get_logger(__name__).info("state_reset_ignored", state_dir=str(self.state_dir),
                                                reason="the state is readable; it is kept")
        self._generation = loaded.generation
        self._on_disk = dict(loaded.assignments) if loaded.source is StateSource.CURRENT else None
        self._current_good = loaded.source in (StateSource.CURRENT, StateSource.NONE)
        self._hold_new = None
        if loaded.source is StateSource.LOST:
            self._hold_new = (f"the VIP state in {self.state_dir} is unreadable, so no VIP is assigned afresh "
                              "(it could be one another service held); restart lbd with --reset-state to assign anew")
        return Stored(dict(loaded.assignments), hold_new=self._hold_new)

    def commit(self, assignments: Mapping[str, IPAddress], expected: Stored) -> Stored:
        wanted = dict(assignments)
        if self._hold_new is not None:  # lost: write nothing until the operator resets
            return Stored(wanted, hold_new=self._hold_new)
        if wanted != self._on_disk:  # unchanged: no write, no fsync
            state.save_assignments(self.state_dir, wanted, generation=self._generation + 1,
                                   keep_previous=self._current_good)
            self._generation += 1
            self._on_disk = wanted
            self._current_good = True
        return Stored(dict(wanted))


@dataclass(frozen=True, slots=True)
class Committed:
    """An allocation, what the store holds after it, and whether storing it failed (then the
    allocation holds only until the next restart, and `stored` is what the store held before)."""

    allocation: Allocation
    stored: Stored
    store_error: str | None = None


def allocate_and_commit(
    store: AssignmentStore,
    pools: Sequence[Pool],
    services: Sequence[Service],
    previous: Stored | None = None,
    *,
    attempts: int = COMMIT_ATTEMPTS,
) -> Committed:
    """Allocate from what the store holds and commit the result, retrying lost compare-and-swaps.

    `previous` skips the first read when the caller already holds the store's last state.
    A store that cannot be written does not stop serving: the allocation is returned with the
    error, and stickiness across restarts is what is lost until a later commit succeeds.
    """
    stored = previous if previous is not None else store.load()
    for _ in range(attempts):
        allocation = allocate(pools, services, stored.assignments, hold_new=stored.hold_new)
        try:
            now = store.commit(allocation.sticky(), stored)
        except OSError as exc:
            return Committed(allocation, stored, f"{type(exc).__name__}: {exc}")
        if now is not None:
            return Committed(allocation, now)
        stored = store.load()
    raise CommitConflict(f"assignments changed under us {attempts} times in a row; not committed")
