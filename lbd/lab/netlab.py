"""A throwaway layer 2 network of network namespaces: a switch, a client, lbd node(s), backends.

    with Lab() as lab:                       # or: lab = Lab().build(); ...; lab.close()
        lab.start_backends()                 # lbd/lab/backend.py in every backend namespace
        lab.exec("client", ["curl", "-s", f"http://{lab.ip('backend-1')}:8080/"])
        daemon = lab.popen("node", [sys.executable, "-m", "lbd", "run", ...])   # killed on close
        lab.mac("node"), lab.ip("node"), lab.ip("node", 6), lab.vip(0), lab.vip(0, 6)
        lab.ping("client", lab.vip(0)), lab.neigh_mac("client", lab.vip(0))
        with lab.capture("client") as cap: ...; frames = cap.frames   # raw ARP/NDP frames

Topology for run id 1a2b3c4d and subnet index N (0-255; random 1-254 unless given). Every link lives
in the lab's namespaces; nothing is created in, or attached to, the host's namespace. Addresses
come only from ranges no real network uses: 198.18.0.0/15 (RFC 2544, benchmarking) and
2001:db8::/32 (RFC 3849, documentation); N is decimal in IPv4 and hex in IPv6.

    lbdt-1a2b3c4d-sw         br0: the switch, ports p-client, p-node, p-backend-1, ...
    lbdt-1a2b3c4d-client     eth0  198.18.N.100/24  2001:db8:0:N::100/64
    lbdt-1a2b3c4d-node       eth0  198.18.N.2/24    2001:db8:0:N::2/64     (node-2: .3, node-3: .4)
    lbdt-1a2b3c4d-backend-1  eth0  198.18.N.11/24   2001:db8:0:N::11/64    (backend-2: .12, ...)
    VIP pool                 198.18.N.200-198.18.N.220 and 2001:db8:0:N::200-2001:db8:0:N::220

Files (captures, helper logs) go to `lab.tmpdir`. Cleanup happens on close/`with` exit, when
the Lab is garbage collected or the interpreter exits (weakref.finalize, atexit), and on
SIGINT/SIGTERM/SIGHUP (unless the process ignores them); every step tolerates the previous one
having half happened. An owner record in /run/lbdt/<run id>.json names the builder's pid, so
`sweep_stale()` removes a crashed run's namespaces and files, and never a live run's.

Run as a script:
    python -m lbd.lab.netlab up        build a lab with backends, print it, wait for Ctrl-C
    python -m lbd.lab.netlab sweep     remove leftovers of crashed runs
The helpers that run inside a namespace (ping, capture) are lbd/lab/wire.py.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbd.lab import wire
from lbd.lab.teardown import (
    COMMAND_TIMEOUT,
    KILL_GRACE,
    LIVE,
    PREFIX,
    UNOWNED_MIN_AGE,
    LabError,
    Resources,
    install_signal_handlers,
    run_command,
    stop_process,
    sweep_stale,
)
from lbd.model import IPAddress
from lbd.net.ethernet import ETH_P_ARP, ETH_P_IPV6

IFNAME = "eth0"  # every host's interface to the switch
BRIDGE = "br0"
READY_TIMEOUT = 10.0  # seconds for a helper process to say READY
# Lab subnets: inside 198.18.0.0/15 (RFC 2544) and 2001:db8::/32 (RFC 3849), never a private
# range a real network uses, so a lab can never be mistaken for (or leak into) a real network.
SUBNET4 = "198.18.{n}.0/24"
SUBNET6 = "2001:db8:0:{n:x}::/64"
SUBNET_INDEXES = range(0, 256)  # N in both templates; a random lab picks 1-254
HOST_NUMBERS = {"client": 100, "node": 2}  # node-K: 1 + K; backend-K: 10 + K
VIP_FIRST, VIP_LAST = 200, 220  # VIP pool host numbers, in both families
HERE = Path(__file__).resolve().parent
BACKEND_SCRIPT = HERE / "backend.py"
WIRE_SCRIPT = HERE / "wire.py"



@dataclass(frozen=True, slots=True)
class Host:
    """One namespace on the lab's switch."""

    name: str  # "client", "node", "backend-1", ...
    netns: str  # lbdt-<run id>-<name>
    port: str  # its veth end on the switch (in the switch namespace)
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address


class Capture:
    """ARP/NDP frames seen on one host's interface, recorded by a helper in its namespace."""

    def __init__(self, lab: Lab, host: str, ifname: str, ethertypes: Sequence[int]) -> None:
        self.path = lab.tmpdir / f"capture-{secrets.token_hex(4)}.pcap"
        types = ",".join(f"0x{t:04x}" for t in ethertypes)
        self._proc = lab.popen(
            host,
            [sys.executable, str(WIRE_SCRIPT), "capture", "--iface", ifname, "--out", str(self.path),
             "--ethertypes", types],
            stdout=subprocess.PIPE,
        )
        _wait_ready(self._proc, f"capture on {host}")
        self.frames: list[bytes] = []
        self.timed: list[tuple[float, bytes]] = []  # (Unix time seen, frame)

    def stop(self) -> list[bytes]:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                stop_process(self._proc)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self.timed = wire.read_pcap_timed(self.path) if self.path.exists() else []
        self.frames = [frame for _, frame in self.timed]
        self.path.unlink(missing_ok=True)
        return self.frames

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Lab:
    """A switch namespace with a bridge, and one namespace per host joined to it by a veth pair."""

    def __init__(self, *, backends: int = 3, nodes: int = 1, subnet: int | None = None, run_id: str | None = None):
        if not 1 <= nodes <= 8 or not 0 <= backends <= 50:
            raise ValueError("nodes must be 1-8 and backends 0-50")
        if subnet is not None and subnet not in SUBNET_INDEXES:
            raise ValueError("subnet must be 0-255 (the third octet of 198.18.N.0/24)")
        self.run_id = run_id or secrets.token_hex(4)
        self.subnet_index = subnet if subnet is not None else 1 + secrets.randbelow(254)
        self.subnet4 = ipaddress.IPv4Network(SUBNET4.format(n=self.subnet_index))
        self.subnet6 = ipaddress.IPv6Network(SUBNET6.format(n=self.subnet_index))
        self.switch = f"{PREFIX}{self.run_id}-sw"
        numbers = dict(HOST_NUMBERS)
        names = ["client", "node"]
        for k in range(2, nodes + 1):
            names.append(f"node-{k}")
            numbers[f"node-{k}"] = 1 + k
        for k in range(1, backends + 1):
            names.append(f"backend-{k}")
            numbers[f"backend-{k}"] = 10 + k
        self.hosts: dict[str, Host] = {
            name: Host(
                name=name,
                netns=f"{PREFIX}{self.run_id}-{name}",
                port=f"p-{name}",
                ipv4=self._address(4, numbers[name]),  # type: ignore[arg-type]
                ipv6=self._address(6, numbers[name]),  # type: ignore[arg-type]
            )
            for name in names
        }
        self._resources = Resources(self.run_id, [self.switch, *(h.netns for h in self.hosts.values())])
        self._finalizer = weakref.finalize(self, self._resources.teardown)
        self.backend_processes: dict[str, subprocess.Popen[Any]] = {}

    # ---- building and tearing down -------------------------------------------------------------

    def build(self) -> Lab:
        install_signal_handlers()
        LIVE.add(self._resources)
        self._resources.write_owner()  # before anything exists: a crash from here on is sweepable
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        for name in self._resources.namespaces:
            run_command(["ip", "netns", "add", name])
        # The switch is L2 only: no IPv6 on its ports (no router solicitations, no MLD noise);
        # no multicast snooping, so solicited-node multicast always floods like on a dumb switch.
        run_command(["ip", "netns", "exec", self.switch, "sysctl", "-q", "-w",
              "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        run_command(["ip", "-n", self.switch, "-batch", "-"], input=(
            "link set lo up\n"
            f"link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0\n"
            f"link set {BRIDGE} up\n"
        ))
        for host in self.hosts.values():
            # No duplicate address detection and no router solicitations: addresses usable at once.
            run_command(["ip", "netns", "exec", host.netns, "sysctl", "-q", "-w",
                  "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                  "net.ipv6.conf.default.router_solicitations=0", "net.ipv6.conf.default.accept_ra=0"])
            # Created inside the switch namespace with its peer put straight into the host's.
            run_command(["ip", "-n", self.switch, "link", "add", host.port, "type", "veth",
                  "peer", "name", IFNAME, "netns", host.netns])
            run_command(["ip", "-n", self.switch, "link", "set", host.port, "master", BRIDGE, "up"])
            run_command(["ip", "-n", host.netns, "-batch", "-"], input=(
                "link set lo up\n"
                f"addr add {host.ipv4}/{self.subnet4.prefixlen} dev {IFNAME}\n"
                f"addr add {host.ipv6}/{self.subnet6.prefixlen} dev {IFNAME} nodad\n"
                f"link set {IFNAME} up\n"
            ))

    def close(self) -> None:
        """Kill the lab's processes and delete its namespaces (and so every link in them)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._resources.done

    @property
    def tmpdir(self) -> Path:
        """A directory for this lab's files (captures, logs); removed on close and by sweeps."""
        if self._resources.tmpdir is None:
            raise LabError("the lab is not built")
        return self._resources.tmpdir

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- addresses -----------------------------------------------------------------------------

    def _address(self, version: int, number: int) -> IPAddress:
        if version == 4:
            return self.subnet4.network_address + number
        return ipaddress.IPv6Address(f"{self.subnet6.network_address}{number}")  # ::100 reads as .100

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in this lab; hosts are {sorted(self.hosts)}") from None

    def netns(self, host: str) -> str:
        return self.host(host).netns

    def ip(self, host: str, version: int = 4) -> IPAddress:
        h = self.host(host)
        return h.ipv4 if version == 4 else h.ipv6

    def vip(self, index: int = 0, version: int = 4) -> IPAddress:
        """The index-th address of the VIP pool (.200 up to .220)."""
        if not 0 <= index <= VIP_LAST - VIP_FIRST:
            raise IndexError(f"the VIP pool has {VIP_LAST - VIP_FIRST + 1} addresses")
        return self._address(version, VIP_FIRST + index)

    def vip_range(self, version: int = 4) -> tuple[IPAddress, IPAddress]:
        return self._address(version, VIP_FIRST), self._address(version, VIP_LAST)

    @property
    def backends(self) -> list[str]:
        return [name for name in self.hosts if name.startswith("backend-")]

    def mac(self, host: str, ifname: str = IFNAME) -> str:
        out = run_command(["ip", "-n", self.netns(host), "-j", "link", "show", "dev", ifname]).stdout
        return str(json.loads(out)[0]["address"])

    def addresses(self, host: str, ifname: str = IFNAME) -> list[dict[str, Any]]:
        """`ip -j addr` entries of one interface: local, prefixlen, label, ..."""
        out = run_command(["ip", "-n", self.netns(host), "-j", "addr", "show", "dev", ifname]).stdout
        data = json.loads(out)
        return list(data[0].get("addr_info", [])) if data else []

    def neigh(self, host: str, address: IPAddress, ifname: str = IFNAME) -> dict[str, Any] | None:
        out = run_command(["ip", "-n", self.netns(host), "-j", "neigh", "show", "to", str(address), "dev", ifname]).stdout
        entries = json.loads(out) if out.strip() else []
        return entries[0] if entries else None

    def neigh_mac(self, host: str, address: IPAddress, ifname: str = IFNAME) -> str | None:
        entry = self.neigh(host, address, ifname)
        return None if entry is None else entry.get("lladdr")

    def set_neigh(self, host: str, address: IPAddress, mac: str, ifname: str = IFNAME) -> None:
        """Plant a (stale) neighbour entry, e.g. the old owner of a VIP before a failover."""
        run_command(["ip", "-n", self.netns(host), "neigh", "replace", str(address), "lladdr", mac,
              "dev", ifname, "nud", "stale"])

    def flush_neigh(self, host: str, ifname: str = IFNAME) -> None:
        run_command(["ip", "-n", self.netns(host), "neigh", "flush", "dev", ifname])

    # ---- processes -----------------------------------------------------------------------------

    def exec(
        self, host: str, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in a host's namespace and wait for it (bounded by `timeout`)."""
        return run_command(["ip", "netns", "exec", self.netns(host), *argv], timeout=timeout, check=check, input=input)

    def popen(self, host: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command in a host's namespace; it is killed (its process group) on close."""
        if self.closed:
            raise LabError("the lab is closed")
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns(host), *argv], start_new_session=True, **kwargs)
        self._resources.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        """Stop a process started with popen (SIGTERM, then SIGKILL)."""
        stop_process(proc)

    def ping(self, src: str, dst: IPAddress | str, timeout: float = 2.0) -> bool:
        """One ICMP echo from `src` to `dst`; True if answered within `timeout`."""
        proc = self.exec(src, [sys.executable, str(WIRE_SCRIPT), "ping", str(dst),
                               "--timeout", str(timeout)], timeout=timeout + COMMAND_TIMEOUT)
        return proc.returncode == 0

    def capture(self, host: str, ifname: str = IFNAME, ethertypes: Sequence[int] = (ETH_P_ARP, ETH_P_IPV6)) -> Capture:
        """Start recording ARP (and IPv6) frames on a host; `.stop()` or `with` returns them."""
        return Capture(self, host, ifname, ethertypes)

    def start_backends(self, *extra_args: str) -> dict[str, subprocess.Popen[Any]]:
        """Start lbd/lab/backend.py in every backend namespace and wait until all listen."""
        started = {}
        for name in self.backends:
            if name in self.backend_processes and self.backend_processes[name].poll() is None:
                continue
            proc = self.popen(name, [sys.executable, str(BACKEND_SCRIPT), "--name", name, *extra_args],
                              stdout=subprocess.PIPE)
            started[name] = proc
        for name, proc in started.items():
            _wait_ready(proc, name)
            self.backend_processes[name] = proc
        return dict(self.backend_processes)

    def describe(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "switch": self.switch,
            "subnet": [str(self.subnet4), str(self.subnet6)],
            "vip_pool": [f"{a}-{b}" for a, b in (self.vip_range(4), self.vip_range(6))],
            "hosts": {
                h.name: {"netns": h.netns, "interface": IFNAME, "ipv4": str(h.ipv4), "ipv6": str(h.ipv6)}
                for h in self.hosts.values()
            },
        }


def _wait_ready(proc: subprocess.Popen[Any], what: str, timeout: float = READY_TIMEOUT) -> None:
    """Wait for a helper's READY line on its stdout pipe."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            raise LabError(f"{what} exited before it was ready (exit code {proc.wait(KILL_GRACE)})")
        buffer += chunk
        if b"READY" in buffer:
            return
    stop_process(proc)
    raise LabError(f"{what} was not ready within {timeout} s")


def _up_main(backends: int, nodes: int, max_seconds: float) -> int:
    with Lab(backends=backends, nodes=nodes) as lab:
        lab.start_backends()
        print(json.dumps(lab.describe(), indent=2), flush=True)
        print(f"lab {lab.run_id} is up; Ctrl-C removes it", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(max_seconds)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netlab", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build a lab with backends, print it, wait for Ctrl-C")
    up.add_argument("--backends", type=int, default=3)
    up.add_argument("--nodes", type=int, default=1)
    up.add_argument("--max-seconds", type=float, default=3600.0)
    sweep = commands.add_parser("sweep", help="remove namespaces left by crashed runs")
    sweep.add_argument("--min-age", type=float, default=UNOWNED_MIN_AGE, help="for namespaces nobody claims")
    args = parser.parse_args(argv)
    if args.command == "up":
        return _up_main(args.backends, args.nodes, args.max_seconds)
    for name in sweep_stale(unowned_min_age=args.min_age):
        print(f"removed {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
