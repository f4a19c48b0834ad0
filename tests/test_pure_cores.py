"""The sans-IO cores stay pure: no event loop, no sockets, no netlink, no clock reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LBD = Path(__file__).resolve().parent.parent / "lbd"
PURE = [
    "model.py",
    "allocator.py",
    "balancer.py",
    "readiness.py",
    "ownership.py",
    "plan.py",
    "status.py",
    "health/passive.py",
    "net/ethernet.py",
    "net/arp.py",
    "net/ndp.py",
    *(str(p.relative_to(LBD)) for p in sorted((LBD / "config").glob("*.py"))),
]
FORBIDDEN = {"asyncio", "socket", "pyroute2", "uvloop", "time", "select", "selectors"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", PURE)
def test_core_imports_no_io(module: str) -> None:
    assert not imported_modules(LBD / module) & FORBIDDEN


def test_lbd_never_imports_scapy() -> None:
    """scapy is a test dependency only (pyproject's `test` extra): no lbd module, lab included, may need it."""
    users = [str(p.relative_to(LBD)) for p in sorted(LBD.rglob("*.py")) if "scapy" in imported_modules(p)]
    assert users == []
