"""Run a command the way systemd/lbd.service runs lbd, without systemd: its user, capabilities and sandbox.

Read from the unit file itself, so the test follows the unit:
  User= (as a uid given by the test; no user is added), AmbientCapabilities= (with
  CapabilityBoundingSet= and NoNewPrivileges=: setpriv), ProtectKernelTunables= (/proc/sys
  bind-mounted read-only in a private mount namespace, as systemd does), UMask=,
  MemoryDenyWriteExecute= (the kernel's PR_SET_MDWE where it has it: Linux >= 6.3; systemd 252
  does the same with seccomp), SystemCallFilter= with SystemCallErrorNumber= and
  SystemCallArchitectures=native, and RestrictAddressFamilies= (one seccomp filter, built with
  libseccomp from the groups `systemd-analyze syscall-filter` prints).
Not emulated (they cannot change what lbd's code does): ProtectSystem=, ProtectHome=,
PrivateTmp=, PrivateDevices=, ProtectProc= and the other mount-only settings.

    argv = Sandbox.from_unit(UNIT, uid=61234).argv([sys.executable, "-m", "lbd", "run", ...])
    lab.popen("node", argv)

As a script (the last step inside the sandbox, as the unprivileged user):
    python unit_sandbox.py [--umask 0077] [--mdwe] [--seccomp FILE] -- COMMAND...
applies the memory and seccomp settings to itself and execs COMMAND. Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve()
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1  # include/uapi/linux/prctl.h
# libseccomp (seccomp.h): actions and the argument comparison EQ.
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6,
            "AF_NETLINK": socket.AF_NETLINK, "AF_PACKET": socket.AF_PACKET}


def unit_settings(path: Path) -> dict[str, list[str]]:
    """[Service] keys and their values, in order (a key may repeat, as SystemCallFilter= does)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`: every @group and its members (names or other groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: Sequence[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def allowed_syscalls(filters: Sequence[str], groups: dict[str, list[str]]) -> set[str]:
    """systemd's reading of SystemCallFilter= lines: the first an allow list, `~` lines taken out."""
    allowed: set[str] = set()
    for line in filters:
        deny = line.startswith("~")
        names = line.lstrip("~").split()
        if deny:
            allowed -= expand(names, groups)
        else:
            allowed |= expand(names, groups)
    return allowed


def mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


@dataclass(frozen=True)
class Sandbox:
    """What the unit asks for, ready to become a command line."""

    uid: int
    capabilities: tuple[str, ...]  # "net_admin", ...
    no_new_privileges: bool
    read_only_proc_sys: bool
    umask: str | None
    mdwe: bool
    syscalls: tuple[str, ...]  # allowed; empty: no filter
    errno_name: str
    families: tuple[str, ...]

    @classmethod
    def from_unit(cls, unit: Path, uid: int) -> Sandbox:
        s = unit_settings(unit)

        def flag(key: str) -> bool:
            return s.get(key, ["no"])[-1] in ("yes", "true", "1", "strict")

        caps = tuple(c.lower().removeprefix("cap_") for v in s.get("AmbientCapabilities", []) for c in v.split())
        syscalls = tuple(sorted(allowed_syscalls(s.get("SystemCallFilter", []), syscall_groups())))
        assert s.get("SystemCallArchitectures") in (None, ["native"]), "only native is emulated"
        return cls(
            uid=uid, capabilities=caps, no_new_privileges=flag("NoNewPrivileges"),
            read_only_proc_sys=flag("ProtectKernelTunables"), umask=s.get("UMask", [None])[-1],
            # Where the kernel lacks PR_SET_MDWE (before 6.3) the run goes on without it.
            mdwe=flag("MemoryDenyWriteExecute") and mdwe_supported(), syscalls=syscalls,
            errno_name=s.get("SystemCallErrorNumber", ["EPERM"])[-1],
            families=tuple(f for v in s.get("RestrictAddressFamilies", []) for f in v.split()),
        )

    def argv(self, command: Sequence[str], workdir: Path) -> list[str]:
        """`command` as the unit would run it; `workdir` (readable by the uid) keeps the filter."""
        argv: list[str] = []
        if self.read_only_proc_sys:
            argv += ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"', "sandbox"]
        caps = ",".join(f"+{c}" for c in self.capabilities)
        argv += ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                 f"--bounding-set=-all{',' + caps if caps else ''}"]
        if caps:
            argv += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
        if self.no_new_privileges:
            argv.append("--no-new-privs")
        argv += [sys.executable, str(HERE)]
        if self.umask:
            argv += ["--umask", self.umask]
        if self.mdwe:
            argv.append("--mdwe")
        if self.syscalls:
            spec = workdir / "seccomp.json"
            spec.write_text(json.dumps({"allow": self.syscalls, "errno": self.errno_name, "families": self.families}))
            spec.chmod(0o644)
            argv += ["--seccomp", str(spec)]
        return [*argv, "--", *command]


def _load_seccomp(spec: dict[str, object]) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    class ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    refuse = 0x00050000 | getattr(errno, str(spec["errno"]))  # SCMP_ACT_ERRNO(n)
    ctx = ctypes.c_void_p(lib.seccomp_init(ctypes.c_uint32(refuse)))
    families = [FAMILIES[f] for f in spec["families"]]  # type: ignore[union-attr]
    for name in spec["allow"]:  # type: ignore[union-attr]
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # not a syscall of this architecture
            continue
        if name == "socket" and families:  # RestrictAddressFamilies=: socket() for these only
            for family in families:
                cmp = ArgCmp(0, SCMP_CMP_EQ, family, 0)
                lib.seccomp_rule_add_array(ctx, ctypes.c_uint32(SCMP_ACT_ALLOW), number, 1, ctypes.byref(cmp))
            continue
        if lib.seccomp_rule_add(ctx, ctypes.c_uint32(SCMP_ACT_ALLOW), number, 0) < 0:
            raise SystemExit(f"sandbox: cannot allow {name}")
    if lib.seccomp_load(ctx) < 0:
        raise SystemExit(f"sandbox: seccomp_load failed: {os.strerror(ctypes.get_errno())}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="unit_sandbox")
    parser.add_argument("--umask")
    parser.add_argument("--mdwe", action="store_true")
    parser.add_argument("--seccomp", type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.umask:
        os.umask(int(args.umask, 8))
    if args.mdwe:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise SystemExit(f"sandbox: PR_SET_MDWE failed: {os.strerror(ctypes.get_errno())}")
    if args.seccomp:
        _load_seccomp(json.loads(args.seccomp.read_text()))
    applied = {"uid": os.getuid(), "mdwe": args.mdwe, "seccomp": bool(args.seccomp), "umask": args.umask}
    print(f"sandbox: {json.dumps(applied)}", file=sys.stderr, flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
