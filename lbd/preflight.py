"""Checks `lbd run` makes before it opens anything: private directories and privileges.

The state dir and the admin socket's dir are created 0700 and refused when another user could
have planted something in them (owned by someone else, or writable by group or others): a
local user who pre-creates `/tmp/lbd-state` with `assignments.json -> /dev/zero` would
otherwise steer root's lbd. A daemon that lacks a privilege says so in one line, naming the
capability and the options to change, before a listener is opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lbd.errors import CannotStart
from lbd.model import Model

PRIVATE_DIR_MODE = 0o700
# Linux capability numbers (include/uapi/linux/capability.h).
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
# Ports below this need CAP_NET_BIND_SERVICE (the sysctl net.ipv4.ip_unprivileged_port_start).
UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")

_PRIVILEGE_HINT = (
    "run lbd as root (or with CAP_NET_ADMIN and CAP_NET_RAW, as systemd/lbd.service does), or give "
    "--state-dir and --admin-socket in a directory you own (a loopback-only config needs no privilege)"
)


def private_dir(path: Path, option: str) -> Path:
    """Make sure `path` is a directory only this user can write: create it 0700 if missing.

    Raises CannotStart naming the directory, what is wrong and the `option` to change.
    """
    path = Path(path)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        link = os.lstat(path)
        info = os.stat(path)
    except PermissionError as exc:
        raise CannotStart(f"cannot create {path} ({option}): {exc.strerror}; {_PRIVILEGE_HINT}") from exc
    except (FileExistsError, NotADirectoryError) as exc:
        raise CannotStart(f"{path} ({option}) is not a directory; choose another {option}") from exc
    except OSError as exc:
        raise CannotStart(f"cannot create {path} ({option}): {exc.strerror or exc}; choose another {option}") from exc
    me = os.geteuid()
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (me, 0):
        raise CannotStart(f"{path} ({option}) is a symbolic link owned by uid {link.st_uid}, not by lbd's "
                          f"user (uid {me}); another user could point it anywhere: choose another {option}")
    if not stat.S_ISDIR(info.st_mode):
        raise CannotStart(f"{path} ({option}) is not a directory; choose another {option}")
    if info.st_uid != me:
        raise CannotStart(f"{path} ({option}) belongs to uid {info.st_uid}, not to lbd's user (uid {me}); "
                          f"another user could plant files in it: choose another {option} "
                          f"(e.g. one made with `mktemp -d`)")
    if info.st_mode & 0o022:
        raise CannotStart(f"{path} ({option}) is writable by its group or by others (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}); `chmod 0700 {path}` or choose another {option}")
    return path


def needs_net_privileges(model: Model) -> bool:
    """Whether serving `model` adds addresses or sends ARP (any VIP outside loopback)."""
    return any(not (r.first.is_loopback and r.last.is_loopback) for pool in model.pools for r in pool.ranges)


def effective_capabilities() -> int:
    """This process's effective capability set (CapEff in /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def privileged_ports(model: Model, start: int) -> list[str]:
    """`namespace/name:port` of every exposed service port below `start`."""
    return [f"{s.key}:{p.port}" for s in model.services if s.exposed for p in s.ports if p.port < start]


def unprivileged_port_start() -> int:
    try:
        return int(UNPRIVILEGED_PORT_START.read_text())
    except (OSError, ValueError):
        return 1024  # the kernel's default


def check_privileges(model: Model) -> None:
    """Refuse, in one line, to start a daemon that could not bind or announce its VIPs."""
    caps = effective_capabilities()
    missing = [name for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW"))
               if not caps >> bit & 1]
    if missing and needs_net_privileges(model):
        raise CannotStart(f"the config has VIPs outside loopback, which needs {' and '.join(missing)} "
                          f"(to add addresses and send ARP/NDP); {_PRIVILEGE_HINT}")
    if not caps >> CAP_NET_BIND_SERVICE & 1:
        start = unprivileged_port_start()
        if low := privileged_ports(model, start):
            # Each such service would fail on its own, and retrying never helps: say it once, now.
            raise CannotStart(f"{', '.join(low[:3])}{' ...' if len(low) > 3 else ''}: ports below {start} "
                              "(net.ipv4.ip_unprivileged_port_start) need CAP_NET_BIND_SERVICE; run lbd as root "
                              "or with that capability (systemd/lbd.service grants it), or use higher ports")
