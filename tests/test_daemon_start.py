"""`lbd run` refuses, in one line and before it opens anything, what it must not start with:
paths another user could have prepared, a missing privilege, a metrics port in use; and it
survives a corrupt state file without moving a VIP. Loopback only; the non-root case drops to
uid 65534 with setpriv (keeping only the right to read this checkout and its Python).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

# backends and daemon_factory are fixtures: pytest finds them by name in this module.
from tests.test_daemon_loopback import LBD, backends, config_for, daemon_factory, free_port, hello  # noqa: F401

NOBODY = 65534


def run_once(tmp_path: Path, *args: str, config: str | None = None, prefix: tuple[str, ...] = (),
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`lbd run` that is expected to stop by itself (it refuses to start)."""
    path = tmp_path / "lbd.yaml"
    path.write_text(config or "pools: [{name: local, addresses: [127.0.0.240/32]}]\n"
                              f"services: [{{name: web, ports: [{{port: {free_port()}}}], endpoints: [127.0.0.1]}}]\n")
    path.chmod(0o644)
    return subprocess.run([*prefix, *LBD, "run", "--config", str(path), "--log-format", "console", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def one_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "listener_open" not in out.stderr  # refused before anything was opened
    (line,) = [x for x in out.stderr.splitlines() if "start_failed" in x]
    return line


def test_a_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "lbd-state"
    planted.mkdir()
    (planted / "assignments.json").symlink_to("/dev/zero")  # root's lbd would read until MemoryError
    os.chown(planted, NOBODY, NOBODY)
    line = one_error(run_once(tmp_path, "--state-dir", str(planted), "--admin-socket", str(tmp_path / "a/admin.sock")))
    assert f"{planted} (--state-dir) belongs to uid {NOBODY}, not to lbd's user (uid 0)" in line
    assert "mktemp -d" in line


@pytest.mark.parametrize("which", ["--state-dir", "--admin-socket"])
def test_a_world_writable_dir_is_refused(tmp_path: Path, which: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    paths = {"--state-dir": str(tmp_path / "state"), "--admin-socket": str(tmp_path / "run" / "admin.sock")}
    paths[which] = str(shared) if which == "--state-dir" else str(shared / "lbd.sock")
    line = one_error(run_once(tmp_path, *(x for kv in paths.items() for x in kv)))
    assert f"{shared} ({which}) is writable by its group or by others (mode 1777)" in line


def test_new_private_dirs_are_0700(daemon_factory, backends) -> None:
    d = daemon_factory(config_for(backends, free_port()))
    d.socket = d.tmp / "run" / "admin.sock"
    d.start()
    assert (d.state.stat().st_mode & 0o777, d.socket.parent.stat().st_mode & 0o777) == (0o700, 0o700)
    assert d.stop() == 0


def test_a_file_at_the_socket_path_is_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "admin.sock").write_text("not a socket")
    line = one_error(run_once(tmp_path, "--state-dir", str(tmp_path / "state"), "--admin-socket",
                              str(run_dir / "admin.sock")))
    assert f"{run_dir / 'admin.sock'} exists and is not a socket; choose another --admin-socket" in line


def test_a_metrics_port_in_use_names_the_address(tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        out = run_once(tmp_path, "--state-dir", str(tmp_path / "state"), "--admin-socket",
                       str(tmp_path / "run/admin.sock"), "--metrics-address", f"127.0.0.1:{port}")
    finally:
        taken.close()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_non_root_with_default_paths_says_what_it_needs_in_one_line(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    as_nobody = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
    line = one_error(run_once(tmp_path, prefix=as_nobody))  # default --state-dir /var/lib/lbd
    assert "cannot create /var/lib/lbd (--state-dir): Permission denied" in line
    assert "CAP_NET_ADMIN and CAP_NET_RAW" in line and "--state-dir and --admin-socket" in line
    routable = ("pools: [{name: lan, addresses: [198.18.7.200/32]}]\n"
                "services: [{name: web, ports: [{port: 80}], endpoints: [198.18.7.10]}]\n")
    line = one_error(run_once(tmp_path, "--state-dir", str(tmp_path / "s"), config=routable, prefix=as_nobody))
    assert "the config has VIPs outside loopback, which needs CAP_NET_ADMIN and CAP_NET_RAW" in line


def test_a_second_sigterm_during_the_drain_stops_at_once(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.start("--drain-timeout", "30")
    with socket.create_connection(("127.0.0.240", port), timeout=5) as c:
        assert c.makefile("rb").readline().startswith(b"backend-")
        d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while b"shutdown_started" not in d.log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert d.proc.poll() is None  # draining: the connection may go on for 30 s
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        assert time.monotonic() - started < 3
        c.settimeout(5)
        with pytest.raises(ConnectionResetError):
            c.recv(1) or c.recv(1)
    events = [json.loads(x) for x in d.log.read_text().splitlines() if x.startswith("{")]
    names = [e["event"] for e in events]
    assert names.index("second_stop_signal") < names.index("shutdown_forced") < names.index("shutdown_complete")
    assert next(e for e in events if e["event"] == "shutdown_forced")["connections_reset"] == 1


def test_a_truncated_state_file_keeps_every_vip_where_it_was(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port).split("  - name: web2")[0])  # web only
    d.start()
    assert {r["name"]: r["externalIP"] for r in d.get()} == {"web": "127.0.0.240"}
    assert d.stop() == 0
    both = config_for(backends, port).replace("name: web2", "name: echo")
    d.config.write_text(both)
    d.start()
    assert {r["name"]: r["externalIP"] for r in d.get()} == {"web": "127.0.0.240", "echo": "127.0.0.241"}
    assert d.stop() == 0
    (d.state / "assignments.json").write_text('{"version": 1, "assignme')  # truncated
    d.start()
    assert {r["name"]: r["externalIP"] for r in d.get()}["web"] == "127.0.0.240"
    assert '"event": "state_fallback"' in d.log.read_text()
    assert hello("127.0.0.240", port).startswith("backend-")
    assert d.stop() == 0


def test_unreadable_state_assigns_nothing_until_reset(daemon_factory, backends) -> None:
    port = free_port()
    d = daemon_factory(config_for(backends, port))
    d.state.mkdir(mode=0o700)
    (d.state / "assignments.json").write_text("[" * 100_000)  # no previous generation either
    d.start()
    rows = {r["name"]: r for r in d.get()}
    assert rows["web"]["externalIP"] is None and "--reset-state" in rows["web"]["pending_reason"]
    assert '"event": "state_lost"' in d.log.read_text()
    assert d.stop() == 0
    d.start("--reset-state")
    assert {r["name"]: r["externalIP"] for r in d.get()} == {"web": "127.0.0.240", "web2": "127.0.0.241"}
    assert '"event": "state_reset"' in d.log.read_text()
    assert d.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_port_below_1024_without_cap_net_bind_service_is_one_line(tmp_path: Path) -> None:
    # Loopback VIPs need no other privilege: only the port is missing one.
    from lbd.preflight import unprivileged_port_start

    if unprivileged_port_start() <= 80:
        pytest.skip("net.ipv4.ip_unprivileged_port_start lets anyone bind port 80 here")
    tmp_path.chmod(0o755)
    as_nobody = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")
    low = ("pools: [{name: lo, addresses: [127.0.0.240/32]}]\n"
           "services: [{name: web, ports: [{port: 80}], endpoints: [127.0.0.1]}]\n")
    line = one_error(run_once(tmp_path, "--state-dir", str(tmp_path / "s"), "--admin-socket",
                              str(tmp_path / "r/admin.sock"), config=low, prefix=as_nobody))
    assert "default/web:80: ports below 1024 (net.ipv4.ip_unprivileged_port_start) need CAP_NET_BIND_SERVICE" in line


def test_config_warnings_are_logged_at_start(daemon_factory, backends) -> None:
    # What `lbd check` warns about, the daemon says too (the journal is where a unit's user looks).
    bgp = "---\n{apiVersion: metallb.io/v1beta2, kind: BGPPeer, metadata: {name: tor}}\n"
    d = daemon_factory(config_for(backends, free_port()) + bgp)
    d.start()
    try:
        warnings = [json.loads(line) for line in d.log.read_text().splitlines() if '"config_warning"' in line]
        assert [w["level"] for w in warnings] == ["warning"]
        assert "BGPPeer tor: lbd announces VIPs with ARP/NDP only" in warnings[0]["warning"]
    finally:
        assert d.stop() == 0
