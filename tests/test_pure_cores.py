"""The sans-IO cores stay pure: no event loop, no sockets, no netlink, no clock reads, no file I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LBD = Path(__file__).resolve().parent.parent / "lbd"
# The config modules that touch the file system: __init__ lists directories, yamlsrc reads files.
# Every other config module validates values it is handed, and must stay that way.
CONFIG_FILE_READERS = {"config/__init__.py", "config/yamlsrc.py"}
PURE = [
    "model.py",
    "allocator.py",
    "balancer.py",
    "readiness.py",
    "ownership.py",
    "cluster/fencing.py",
    "cluster/gate.py",
    "cluster/candidacy.py",
    "plan.py",
    "status.py",
    "views.py",
    "health/passive.py",
    "relay/flows.py",
    "health/probe.py",
    "health/http.py",
    "net/ethernet.py",
    "net/arp.py",
    "net/ndp.py",
    *(
        name for name in (str(p.relative_to(LBD)) for p in sorted((LBD / "config").glob("*.py")))
        if name not in CONFIG_FILE_READERS
    ),
]
FORBIDDEN = {"asyncio", "socket", "pyroute2", "uvloop", "time", "select", "selectors"}
# File I/O: the modules that reach the file system, and the calls that do (on any object, e.g. a Path).
FILE_MODULES = {"os", "pathlib", "io", "shutil", "glob", "tempfile"}
FILE_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "listdir", "scandir", "iterdir"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def file_calls(path: Path) -> set[str]:
    """Calls like open(...), x.read_text(), os.listdir(...) in the module."""
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called in FILE_CALLS:
                found.add(called)
    return found


@pytest.mark.parametrize("module", PURE)
def test_core_imports_no_io(module: str) -> None:
    assert not imported_modules(LBD / module) & FORBIDDEN


def test_lbd_never_imports_scapy() -> None:
    """scapy is a test dependency only (pyproject's `test` extra): no lbd module, lab included, may need it."""
    users = [str(p.relative_to(LBD)) for p in sorted(LBD.rglob("*.py")) if "scapy" in imported_modules(p)]
    assert users == []


@pytest.mark.parametrize("module", PURE)
def test_core_does_no_file_io(module: str) -> None:
    assert not imported_modules(LBD / module) & FILE_MODULES
    assert not file_calls(LBD / module)


def test_the_file_readers_left_out_are_real_and_do_read_files() -> None:
    # An entry here is an exemption: keep it only while the module really does file I/O.
    for module in CONFIG_FILE_READERS:
        assert imported_modules(LBD / module) & FILE_MODULES or file_calls(LBD / module), module
