"""lbd as systemd/lbd.service runs it: an unprivileged uid with ambient CAP_NET_ADMIN, CAP_NET_RAW and
CAP_NET_BIND_SERVICE, read-only /proc/sys, no new privileges, the unit's syscall filter and W^X.

Every path lbd takes with those privileges is exercised in the lab's node namespace: netlink
(the VIP is bound), packet sockets (gratuitous ARP seen on the client), a port below 1024, the
state dir and admin socket, the config parser's child process (`lbd reload`, the unit's
ExecReload, run in the same sandbox), a rejected reload, and the ARP settings with and without
the sysctl.d drop-in. The sandbox is read from the unit (integration/unit_sandbox.py).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether

from integration.unit_sandbox import Sandbox
from lbd.lab.netlab import ETH_P_ARP, Lab
from lbd.lab.node import LbdNode

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "lbd.service"
UID = 61234  # no account of this host (none is added): lbd needs no passwd entry
UNIT_CAPS = (1 << 10) | (1 << 12) | (1 << 13)  # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW
HTTP, UDP_ECHO = 8080, 9001  # lbd/lab/backend.py


def _searchable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents] if p.is_dir())


def reachable_python() -> tuple[str, dict[str, str]]:
    """An interpreter the unprivileged uid can exec, with lbd and its dependencies importable.

    The venv's own when its interpreter is reachable (a venv of /usr/bin/python3); else
    /usr/bin/python3 with the venv's packages (e.g. a venv of a python under /root).
    """
    if not _searchable_by_others(ROOT) or not _searchable_by_others(Path(sysconfig.get_paths()["purelib"])):
        pytest.skip(f"the checkout {ROOT} or its venv is not readable by other users")
    if _searchable_by_others(Path(os.path.realpath(sys.executable)).parent):
        return sys.executable, {}
    system = "/usr/bin/python3"
    version = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True).stdout.strip() if os.path.exists(system) else ""
    if version != str(sys.version_info[:2]):
        pytest.skip(f"{sys.executable} is not reachable by other users and {system} is not Python "
                    f"{sys.version_info[0]}.{sys.version_info[1]}")
    return system, {"PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}


@dataclasses.dataclass
class AsUnit:
    """Runs commands the way the unit would, with files in a dir the uid owns."""

    sandbox: Sandbox
    base: Path  # 0755, root's: the seccomp spec
    home: Path  # 0700, the uid's: config, state, socket, log
    python: str
    env: dict[str, str]

    def wrap(self, argv: list[str]) -> list[str]:
        env = ["env", *(f"{k}={v}" for k, v in self.env.items())] if self.env else []
        return [*env, *self.sandbox.argv([self.python, *argv[1:]], self.base)]

    def lbd(self, lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
        return lab.exec("node", self.wrap([sys.executable, "-m", "lbd", *args]), timeout=60)


@pytest.fixture
def as_unit() -> Iterator[AsUnit]:
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        pytest.skip("needs setpriv and unshare (util-linux)")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (the unit's syscall groups)")
    python, env = reachable_python()
    base = Path(tempfile.mkdtemp(prefix="lbd-unit-"))
    try:
        base.chmod(0o755)
        home = base / "home"
        home.mkdir(mode=0o700)
        os.chown(home, UID, UID)
        yield AsUnit(Sandbox.from_unit(UNIT, UID), base, home, python, env)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def config(lab: Lab, *, dns: bool = False) -> str:
    first, last = lab.vip_range(4)
    text = f"""
interfaces: [eth0]
pools: [{{name: v4, addresses: [{first}-{last}]}}]
services:
  - name: web
    ports: [{{port: 80, targetPort: {HTTP}}}]
    endpoints: [{lab.ip("backend-1")}]
"""
    if dns:
        text += f"""
  - name: dns
    annotations: {{metallb.io/allow-shared-ip: web}}
    loadBalancerIP: {lab.vip(1)}
    ports: [{{port: 53, targetPort: {UDP_ECHO}, protocol: UDP}}]
    endpoints: [{lab.ip("backend-1")}]
"""
    return text


def set_arp(lab: Lab, **values: int) -> None:
    lab.exec("node", ["sysctl", "-q", "-w", *(f"net.ipv4.conf.{k.replace('_', '.', 1)}={v}"
                                              for k, v in values.items())], check=True)


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def start(lab: Lab, unit: AsUnit, text: str, *extra: str, wrap: Callable[[list[str]], list[str]]) -> LbdNode:
    node = LbdNode(lab, text, directory=unit.home)
    node.config.chmod(0o644)
    return node.start("--garp-rounds", "2", "--garp-interval", "0.2", *extra, wrap=wrap)


def curl(lab: Lab, url: str) -> str:
    return lab.exec("client", ["curl", "-s", "--max-time", "3", url], timeout=10).stdout.strip()


@pytest.mark.parametrize("workers", [1, 2])
def test_lbd_serves_as_the_unit_runs_it(lab: Lab, as_unit: AsUnit, workers: int) -> None:
    lab.start_backends()
    set_arp(lab, all_arp_ignore=1, all_arp_announce=2)  # what /etc/sysctl.d/60-lbd.conf does
    vip = lab.vip(0)
    with lab.capture("client", ethertypes=(ETH_P_ARP,)) as capture:
        node = start(lab, as_unit, config(lab), "--workers", str(workers), wrap=as_unit.wrap)
        time.sleep(0.5)
    try:
        assert node.proc is not None
        workers_pids = [int(p) for p in Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()]
        assert len(workers_pids) == (workers if workers > 1 else 0)
        for pid in (node.proc.pid, *workers_pids):  # workers inherit the sandbox, the uid and the caps
            seen = status(pid)
            assert seen["Uid"].split() == [str(UID)] * 4
            assert int(seen["CapEff"], 16) == int(seen["CapAmb"], 16) == int(seen["CapBnd"], 16) == UNIT_CAPS
            assert seen["NoNewPrivs"] == "1" and seen["Seccomp"] == "2"
        sandbox_line = next(line for line in node.log_text().splitlines() if line.startswith("sandbox:"))
        assert '"seccomp": true' in sandbox_line and f'"mdwe": {str(as_unit.sandbox.mdwe).lower()}' in sandbox_line
        # netlink: the VIP is on eth0 with lbd's label; packet sockets: its gratuitous ARPs.
        assert {(a["local"], a.get("label")) for a in lab.addresses("node")} >= {(str(vip), "eth0:lbd")}
        garps = [p for p in map(Ether, capture.frames) if ARP in p and p[ARP].psrc == p[ARP].pdst == str(vip)]
        assert garps and all(p.src == lab.mac("node") for p in garps)
        assert curl(lab, f"http://{vip}/") == "backend-1"  # port 80: CAP_NET_BIND_SERVICE
        events = node.events()
        assert not [e for e in events if e.get("level") in ("warning", "error") and e.get("event") != "fd_limit"]
        # The state dir and admin socket are the uid's and private.
        assert (node.state_dir.stat().st_uid, stat.S_IMODE(node.state_dir.stat().st_mode)) == (UID, 0o700)
        assert (node.socket.stat().st_uid, stat.S_IMODE(node.socket.stat().st_mode)) == (UID, 0o600)

        # ExecReload: `lbd reload` in the same sandbox; the parse runs in a child process.
        node.config.write_text(config(lab, dns=True))
        applied = as_unit.lbd(lab, "reload", "--admin-socket", str(node.socket))
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.startswith("reloaded: added 1, removed 0, changed 0, unchanged 1")
        echo = lab.exec("client", ["sh", "-c", f"printf ping | nc -u -w 1 {lab.vip(1)} 53"], timeout=10)
        assert echo.stdout.split() == ["backend-1", "ping"]
        node.config.write_text("services: [{name: web, ports: [{port: 70000}]}]\n")
        rejected = as_unit.lbd(lab, "reload", "--admin-socket", str(node.socket))
        assert rejected.returncode == 1  # `systemctl reload lbd` fails, and says why
        assert "70000 is not a port (1-65535)" in rejected.stderr and "the running config stays" in rejected.stderr
        assert curl(lab, f"http://{vip}/") == "backend-1"
    finally:
        assert node.stop(signal.SIGTERM) == 0
    assert str(vip) not in {a["local"] for a in lab.addresses("node")}


@pytest.mark.parametrize("proc_sys", ["read-only", "writable"])
def test_arp_settings_without_the_drop_in(lab: Lab, as_unit: AsUnit, proc_sys: str) -> None:
    # No drop-in: read-only (ProtectKernelTunables=), lbd cannot fix eth0 and says what to do;
    # writable, CAP_NET_ADMIN is enough for a non-root lbd to set eth0's own values.
    lab.start_backends()
    set_arp(lab, all_arp_ignore=0, all_arp_announce=0, eth0_arp_ignore=0, eth0_arp_announce=0)
    sandbox = dataclasses.replace(as_unit.sandbox, read_only_proc_sys=proc_sys == "read-only")
    unit = dataclasses.replace(as_unit, sandbox=sandbox)
    node = start(lab, unit, config(lab), wrap=unit.wrap)
    try:
        assert curl(lab, f"http://{lab.vip(0)}/") == "backend-1"  # served either way
        events = {e["event"]: e for e in node.events() if e.get("event", "").startswith("arp_sysctl")}
        now = [lab.exec("node", ["cat", f"/proc/sys/net/ipv4/conf/eth0/{k}"]).stdout.strip()
               for k in ("arp_ignore", "arp_announce")]
        if proc_sys == "read-only":
            failed = events["arp_sysctl_failed"]
            assert failed["level"] == "warning" and "Read-only file system" in failed["error"]
            assert "net.ipv4.conf.all.arp_ignore=1 in /etc/sysctl.d/60-lbd.conf" in failed["error"]
            assert "ARP flux" in failed["hint"]
            assert now == ["0", "0"]
        else:
            assert "arp_sysctl_failed" not in events
            assert events["arp_sysctl_set"]["arp_ignore"] == 1 and events["arp_sysctl_set"]["arp_announce"] == 2
            assert now == ["1", "2"]
    finally:
        assert node.stop(signal.SIGTERM) == 0


def test_the_emulated_sandbox_refuses_what_the_unit_forbids(as_unit: AsUnit) -> None:
    # So that the tests above prove something: each emulated setting bites.
    probe = """
import mmap, os, socket, tempfile
def outcome(action):
    try:
        action()
        return "allowed"
    except OSError as exc:
        return exc.errno
own = tempfile.TemporaryFile()
print(outcome(lambda: os.fchown(own.fileno(), os.getuid(), os.getgid())))  # @privileged (@chown)
print(outcome(lambda: socket.socket(socket.AF_BLUETOOTH, socket.SOCK_STREAM)))  # RestrictAddressFamilies
print(outcome(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)))  # W^X
print(outcome(lambda: open("/proc/sys/net/ipv4/conf/all/arp_ignore", "w").write("1")))  # read-only
print(oct(os.umask(0)))
"""
    out = subprocess.run(as_unit.wrap([sys.executable, "-c", probe]), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    chown, bluetooth, wx, proc_sys, umask = out.stdout.split()
    assert chown == str(1)  # EPERM (SystemCallErrorNumber=EPERM), for a chown to oneself
    assert bluetooth == str(1)
    assert wx == (str(13) if as_unit.sandbox.mdwe else "allowed")  # EACCES from PR_SET_MDWE
    assert proc_sys == str(30)  # EROFS
    assert umask == "0o77"
