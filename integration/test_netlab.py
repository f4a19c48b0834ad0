"""The lab itself: it builds, hosts reach each other, backends answer, and nothing is left behind."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lbd.lab import netlab, teardown
from lbd.lab.netlab import PREFIX, Lab, sweep_stale


def host_netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def lab_names(lab: Lab) -> set[str]:
    return {lab.switch, *(h.netns for h in lab.hosts.values())}


def test_lab_builds_with_unique_names(lab: Lab) -> None:
    assert lab_names(lab) <= host_netns()
    assert all(name.startswith(f"{PREFIX}{lab.run_id}-") for name in lab_names(lab))
    assert set(lab.hosts) == {"client", "node", "backend-1", "backend-2", "backend-3"}
    assert lab.ip("node") in lab.subnet4 and lab.ip("node", 6) in lab.subnet6
    first, last = lab.vip_range()
    assert str(first).endswith(".200") and str(last).endswith(".220") and lab.vip(3) in lab.subnet4
    macs = {lab.mac(h) for h in lab.hosts}
    assert len(macs) == len(lab.hosts)
    # Nothing of the lab lives in the host's namespace: no veth ends, no bridge.
    assert not {name for name in host_links() if name.startswith(("p-", PREFIX))}


def test_client_reaches_backend_over_both_families(lab: Lab) -> None:
    assert lab.ping("client", lab.ip("backend-1"))
    assert lab.ping("client", lab.ip("backend-2", 6))
    assert lab.neigh_mac("client", lab.ip("backend-1")) == lab.mac("backend-1")
    assert not lab.ping("client", lab.vip(20), timeout=0.5)  # nobody has VIPs yet


def test_backends_serve_http_tcp_udp_and_fail_on_demand(lab: Lab) -> None:
    lab.start_backends()
    probe = r"""
import socket, sys
host, name = sys.argv[1], sys.argv[2]
def http(method, path):
    with socket.create_connection((host, 8080), timeout=3) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()
assert http("GET", "/") == (200, name + "\n"), http("GET", "/")
assert http("GET", "/health")[0] == 200
assert http("POST", "/fail")[0] == 200
assert http("GET", "/health") == (503, "failing " + name + "\n")
assert http("POST", "/recover")[0] == 200
assert http("GET", "/health")[0] == 200
with socket.create_connection((host, 9000), timeout=3) as s:
    assert s.recv(100) == (name + "\n").encode()
    s.sendall(b"ping")
    assert s.recv(100) == b"ping"
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as u:
    u.settimeout(3)
    u.sendto(b"hello", (host, 9001))
    assert u.recv(100) == (name + "\nhello").encode()
print("ok")
"""
    for name, version in (("backend-1", 4), ("backend-3", 6)):
        result = lab.exec("client", [sys.executable, "-c", probe, str(lab.ip(name, version)), name])
        assert result.stdout.strip() == "ok", result.stderr


def test_popen_processes_are_killed_on_close_and_nothing_is_left() -> None:
    lab = Lab(backends=1).build()
    names, tmpdir = lab_names(lab), lab.tmpdir
    assert tmpdir.is_dir()
    sleeper = lab.popen("client", ["sleep", "60"])
    lab.start_backends()
    backend = lab.backend_processes["backend-1"]
    assert lab.ping("client", lab.ip("backend-1"))
    lab.close()
    assert sleeper.poll() is not None and backend.poll() is not None
    assert not names & host_netns()
    assert not {name for name in host_links() if name.startswith(("p-", PREFIX))}
    assert not (teardown.OWNER_DIR / f"{lab.run_id}.json").exists()
    assert not tmpdir.exists()
    lab.close()  # idempotent


def test_failed_build_tears_down() -> None:
    lab = Lab(backends=0)
    lab.hosts["client"] = dataclasses.replace(lab.hosts["client"], ipv4="300.1.1.1")  # type: ignore[arg-type]
    with pytest.raises(netlab.LabError):
        lab.build()  # fails half-way, at the client's address
    assert lab.closed
    assert not lab_names(lab) & host_netns()


def test_sigterm_removes_the_lab(tmp_path: Path) -> None:
    script = tmp_path / "victim.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(netlab.__file__).parents[2])!r})\n"
        "from lbd.lab.netlab import Lab\n"
        "lab = Lab(backends=0).build()\n"
        "lab.popen('client', ['sleep', '60'])\n"
        "print(' '.join([lab.switch, *(h.netns for h in lab.hosts.values())]), flush=True)\n"
        "time.sleep(30)\n"
    )
    victim = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None
        names = set(victim.stdout.readline().split())
        assert names and names <= host_netns()
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(20) == -signal.SIGTERM  # it still dies of SIGTERM, after cleaning up
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert not names & host_netns()


def test_sweep_removes_crashed_run_only() -> None:
    live = Lab(backends=0).build()
    dead = Lab(backends=0)
    dead._finalizer.detach()  # this object must not clean up: the sweep must
    try:
        # A crashed run: its namespaces exist, its owner record names a dead process.
        for name in dead._resources.namespaces:
            subprocess.run(["ip", "netns", "add", name], check=True)
        gone = subprocess.Popen(["true"])
        gone.wait()
        dead_tmpdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{dead.run_id}-"))
        record = {"pid": gone.pid, "start": 1, "namespaces": dead._resources.namespaces, "tmpdir": str(dead_tmpdir)}
        teardown.OWNER_DIR.mkdir(parents=True, exist_ok=True)
        (teardown.OWNER_DIR / f"{dead.run_id}.json").write_text(json.dumps(record))
        removed = sweep_stale()
        assert set(dead._resources.namespaces) <= set(removed)
        assert not set(dead._resources.namespaces) & host_netns()
        assert not (teardown.OWNER_DIR / f"{dead.run_id}.json").exists()
        assert not dead_tmpdir.exists()
        assert live.tmpdir.is_dir()
        assert lab_names(live) <= host_netns()  # a live run is never swept
        assert not lab_names(live) & set(removed)
    finally:
        live.close()
        dead._resources.teardown()  # in case the sweep failed
    assert not lab_names(live) & host_netns()


def test_run_budget() -> None:
    started = time.monotonic()
    with Lab(backends=3) as lab:
        assert lab.ping("client", lab.ip("backend-3"))
    assert time.monotonic() - started < 10
