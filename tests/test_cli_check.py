"""`lbd check`: exit codes and the kubectl-style table, on the shipped configs and a broken one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lbd(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbd", *args, "--state-dir", str(tmp / "state")],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )


def test_check_example_prints_table(tmp_path: Path) -> None:
    out = lbd("check", "--config", "config/example.yaml", tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header[:3] == ["NAME", "TYPE", "EXTERNAL-IP"]
    assert "nginx-demo" in out.stdout and "198.18.100.24" in out.stdout


def test_check_manifest_directory(tmp_path: Path) -> None:
    out = lbd("check", "--config", "config/manifests/", tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "EXTERNAL-IP" in out.stdout
    assert "not exposed" in out.stdout  # the ClusterIP service is listed, not served


def test_native_and_manifests_agree_in_json(tmp_path: Path) -> None:
    native = json.loads(lbd("check", "-o", "json", "--config", "config/example.yaml", tmp=tmp_path).stdout)
    manifests = json.loads(lbd("check", "-o", "json", "--config", "config/manifests/", tmp=tmp_path).stdout)
    assert native == manifests


def test_check_rejects_bad_port_naming_service_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "pools:\n  - name: p\n    addresses: [10.1.0.0/28]\n"
        "services:\n  - name: web\n    ports: [{name: http, port: 70000}]\n    endpoints: [10.0.0.1]\n"
    )
    out = lbd("check", "--config", str(bad), tmp=tmp_path)
    assert out.returncode == 1
    assert "Service default/web" in out.stderr
    assert "services[0].ports[0].port" in out.stderr
    assert "70000 is not a port (1-65535)" in out.stderr
    assert str(bad) in out.stderr


def test_pending_service_shows_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "pools:\n  - name: p\n    addresses: [10.1.0.1-10.1.0.1]\n"
        "services:\n"
        "  - name: a\n    ports: [{port: 80}]\n    endpoints: [10.0.0.1]\n"
        "  - name: b\n    ports: [{port: 80}]\n    endpoints: [10.0.0.1]\n"
    )
    out = lbd("check", "--config", str(cfg), tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "<pending>" in out.stdout
    assert "default/b: <pending>:" in out.stdout


def test_check_shows_each_probe_and_warns_that_exec_becomes_a_tcp_connect(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "pools:\n  - name: p\n    addresses: [10.1.0.0/28]\n"
        "services:\n"
        "  - name: web\n    ports: [{port: 80, targetPort: 8080}]\n    endpoints: [10.0.0.1]\n"
        "    readinessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 5}\n"
        "  - name: db\n    ports: [{port: 5432}]\n    endpoints: [10.0.0.2]\n"
        "    readinessProbe: {exec: {command: [pg_isready]}}\n"
    )
    out = lbd("check", "--config", str(cfg), tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "default/web: readiness http-get http://:8080/health delay=0s timeout=1s period=5s" in out.stdout
    assert "default/db: readiness tcp-socket :5432 (for the exec probe lbd cannot run)" in out.stdout
    assert "warning:" in out.stderr and "exec probes cannot run from a load balancer" in out.stderr


def test_check_takes_a_positional_path_as_the_example_header_says(tmp_path: Path) -> None:
    assert "`lbd check config/example.yaml`" in (ROOT / "config" / "example.yaml").read_text()
    positional = lbd("check", "-o", "json", "config/example.yaml", tmp=tmp_path)
    flagged = lbd("check", "-o", "json", "--config", "config/example.yaml", tmp=tmp_path)
    assert positional.returncode == 0, positional.stderr
    assert json.loads(positional.stdout) == json.loads(flagged.stdout)
    both = lbd("check", "config/manifests/metallb-pool.yaml", "--config", "config/manifests/nginx-demo.yaml",
               tmp=tmp_path)
    assert both.returncode == 0 and "config OK: 2 file(s)" in both.stdout, both.stderr


def test_check_without_a_config_says_how_to_give_one(tmp_path: Path) -> None:
    out = lbd("check", tmp=tmp_path)
    assert out.returncode == 2
    assert "no config given: `lbd check PATH` or `lbd check --config PATH`" in out.stderr


def test_strict_turns_warnings_into_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "bgp.yaml"
    cfg.write_text(
        "pools:\n  - name: p\n    addresses: [10.1.0.0/28]\n"
        "services:\n  - name: web\n    ports: [{port: 80}]\n    endpoints: [10.0.0.1]\n"
        "---\n{apiVersion: metallb.io/v1beta2, kind: BGPPeer, metadata: {name: tor}}\n"
    )
    lenient = lbd("check", str(cfg), tmp=tmp_path)
    assert lenient.returncode == 0, lenient.stderr
    assert "BGPPeer tor: lbd announces VIPs with ARP/NDP only" in lenient.stderr
    assert "1 warning(s)" in lenient.stdout
    strict = lbd("check", "--strict", str(cfg), tmp=tmp_path)
    assert strict.returncode == 1
    assert "1 warning(s); --strict treats them as errors" in strict.stderr
    # The shipped examples are what lbd does, word for word: strict passes them.
    for shipped in ("config/example.yaml", "config/manifests/"):
        out = lbd("check", "--strict", shipped, tmp=tmp_path)
        assert out.returncode == 0, out.stderr


def test_no_pool_at_all_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "nopool.yaml"
    cfg.write_text("services:\n  - name: web\n    ports: [{port: 80}]\n    endpoints: [10.0.0.1]\n")
    out = lbd("check", str(cfg), tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "default/web: <pending>: no address pool is configured" in out.stdout
