"""Every input is bounded and no input gives a traceback: file kinds and sizes, nesting, empty
configs, and `lbd check` on hostile files (it exits 1 with errors, never a traceback or a hang).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbd.config import ConfigInvalid, attempt, load
from lbd.config.yamlsrc import MAX_CONFIG_BYTES, MAX_NESTING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bigconfig import big_config  # noqa: E402


def check(*paths: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    args = [a for p in paths for a in ("--config", str(p))]
    return subprocess.run([sys.executable, "-m", "lbd", "check", *args, "--state-dir", "/nonexistent"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "lbd.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    (error,) = attempt([fifo]).errors
    assert time.monotonic() - started < 2
    assert error.file == str(fifo)
    assert error.message == "is a FIFO, not a regular file; give a YAML file or a directory of them"


def test_a_device_is_refused() -> None:
    (error,) = attempt(["/dev/zero"]).errors
    assert error.message.startswith("is a character device, not a regular file")


def test_a_file_over_the_size_cap_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    (error,) = attempt([big]).errors
    assert error.message == "is 64.0 MiB, over the 64 MiB a config file may be; split it into several files in a directory"


def test_deep_nesting_is_a_field_error_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("services:\n  - name: web\n    ports: [{port: 80}]\n    annotations: "
                    + "{a: " * 990 + "1" + "}" * 990 + "\n")
    (error,) = attempt([path]).errors
    assert (error.file, error.doc, error.line) == (str(path), 0, 4)
    assert error.field.startswith("services[0].annotations.a.a")
    assert error.message.startswith(f"nested deeper than {MAX_NESTING} levels")


def test_libyaml_nesting_limit_is_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "deeper.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    (error,) = attempt([path]).errors
    assert "YAML syntax error" in error.message and "nesting depth" in error.message


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"# only a comment\n",
        b"\xff\xfe\x00\x01garbage",
        b"pools: " + b"[" * 990 + b"]" * 990,
        b"a: &a [*a]\n",
        b"services: !!python/object/apply:os.system [true]\n",
        b"services: [{name: web, ports: [{port: 99999999999999999999999999}]}]\n",
        b"pools: [{name: p, addresses: ['::1:2:3:4:5:6:7:8:9']}]\n",
        b"\x00\x00\x00",
        b"---\n" * 10000,
    ],
)
def test_lbd_check_never_prints_a_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    out = check(path)
    assert out.returncode == 1, out.stdout
    assert "Traceback" not in out.stderr
    assert f"error: {path}" in out.stderr


def test_lbd_check_on_a_fifo_and_dev_zero(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    out = check(fifo, Path("/dev/zero"), timeout=10)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "is a FIFO" in out.stderr and "/dev/zero: is a character device" in out.stderr


def test_empty_config_check_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "lbd.yaml"
    empty.write_text("")
    out = check(empty)
    assert out.returncode == 1
    assert f"error: {empty}: config is empty: no pools and no services" in out.stderr


def test_check_warns_when_nothing_is_exposed(tmp_path: Path) -> None:
    path = tmp_path / "lbd.yaml"
    path.write_text("pools: [{name: p, addresses: [192.0.2.0/28]}]\n")
    out = check(path)
    assert out.returncode == 0
    assert f"warning: {path}: config exposes nothing: 1 pool(s), no service of type LoadBalancer" in out.stderr


def test_check_of_5000_pools_and_10000_services_is_not_quadratic(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(big_config(5000, 10000, 18080))
    started = time.monotonic()
    out = check(path, timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr[-2000:]
    assert "config OK: 1 file(s), 5000 pool(s), 10000 service(s)" in out.stdout
    print(f"lbd check of 5,000 pools + 10,000 services: {elapsed:.2f} s")
    # A guard against quadratic work (33 s for 10,000 pools alone), not a speed claim: ~3 s on a
    # quiet core, twice that beside a benchmark.
    assert elapsed < 15.0


def test_the_model_of_a_valid_config_loads_despite_the_bounds(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("pools: [{name: p, addresses: [192.0.2.0/28]}]\nservices: [{name: web, ports: [{port: 80}], endpoints: [192.0.2.100]}]\n")
    assert load([path]).model.services[0].name == "web"
    with pytest.raises(ConfigInvalid):
        load([tmp_path / "missing.yaml"])


def test_check_shows_what_run_does_with_an_unreadable_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "assignments.json").write_text("{truncated")
    path = tmp_path / "ok.yaml"
    path.write_text("pools: [{name: p, addresses: [192.0.2.0/28]}]\nservices: [{name: web, ports: [{port: 80}], endpoints: [192.0.2.100]}]\n")
    out = subprocess.run([sys.executable, "-m", "lbd", "check", "--config", str(path), "--state-dir", str(state),
                          "-o", "json"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "state_lost" in out.stderr
    assert "--reset-state" in out.stdout  # web is pending, as `lbd run` would leave it
