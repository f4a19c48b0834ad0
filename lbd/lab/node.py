"""Run `lbd run` inside a lab node namespace: start, wait until ready, ask it, stop it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbd.admin import request
from lbd.lab.netlab import Lab

READY_TIMEOUT = 15.0  # seconds; start-up takes well under one
STOP_TIMEOUT = 20.0


class LbdNode:
    """One lbd daemon in a lab host; its files (config, state, socket, log) live in the lab's tmpdir."""

    def __init__(self, lab: Lab, config_text: str, *, host: str = "node", name: str = "lbd",
                 directory: Path | None = None) -> None:
        self.lab = lab
        self.host = host
        self.dir = directory or lab.tmpdir / name  # another user's lbd needs a dir it can reach
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "lbd.yaml"
        self.config.write_text(config_text)
        self.state_dir = self.dir / "state"
        self.socket = self.dir / "admin.sock"
        self.log = self.dir / "lbd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, wrap: Callable[[list[str]], list[str]] | None = None) -> LbdNode:
        """Run lbd (`wrap` may rewrite its command line, e.g. to run it as the systemd unit would)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        argv = [
            sys.executable, "-m", "lbd", "run", "--config", str(self.config),
            "--state-dir", str(self.state_dir), "--admin-socket", str(self.socket),
            "--node-name", self.host, "--log-format", "json", *extra,
        ]
        if wrap is not None:
            argv = wrap(argv)
        with open(self.log, "ab") as log:
            self.proc = self.lab.popen(self.host, argv, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lbd exited with {self.proc.returncode}:\n{self.log_text(offset)}")
            if any(e.get("event") == "ready" for e in self.events(offset)):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"lbd was not ready within {READY_TIMEOUT} s:\n{self.log_text(offset)}")

    def log_text(self, offset: int = 0) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace")

    def events(self, offset: int = 0) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text(offset).splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def services(self) -> list[dict[str, Any]]:
        return request(Path(self.socket), "GET", "/v1/services")

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal lbd (the `ip netns exec` process execs it, so the pid is lbd's) and wait."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.lab.stop(self.proc)
            raise
