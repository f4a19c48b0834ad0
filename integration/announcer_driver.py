"""Drive an `lbd.net.presence.L2Presence` inside a lab namespace, one JSON command per line.

    ip netns exec lbdt-1a2b3c4d-node .venv/bin/python integration/announcer_driver.py \\
        --netns lbdt-1a2b3c4d-node --interfaces eth0 --garp-rounds 3 --garp-interval 0.2

stdin:  {"op": "claim", "ip": "198.18.4.200"}    stdout: {"ok": true, "result": "eth0"}
ops: claim, announce, withdraw, release (ip); reconcile (wanted: [ip]) -> removed;
     metrics (ip) -> counters; marked -> lbd-marked addresses with label, proto, created; close.
Logs (structlog JSON) go to stderr. Refuses to run unless it is inside the `lbdt-` namespace
named by --netns (so never on the host), exits with its parent, and after --max-seconds.

`AnnouncerProcess` is the test side: it starts the driver in a lab host and calls ops.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CALL_TIMEOUT = 10.0  # seconds for one op; they take milliseconds
MAX_SECONDS = 120.0  # a driver never outlives a test run by much


def _in_lab_netns(name: str) -> bool:
    """True only when this process runs in the named lab namespace (never the host's)."""
    if not name.startswith("lbdt-"):
        return False
    try:
        ours, lab = os.stat("/proc/self/ns/net"), os.stat(f"/run/netns/{name}")
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (lab.st_dev, lab.st_ino)


async def _serve(args: argparse.Namespace) -> int:
    from pyroute2 import IPRoute

    from lbd import metrics
    from lbd.net import addresses
    from lbd.net.presence import L2Presence

    announcer = L2Presence(
        args.interfaces,
        garp_rounds=args.garp_rounds,
        garp_interval=args.garp_interval,
        refresh_interval=args.refresh_interval,
    )
    await announcer.start()
    loop = asyncio.get_running_loop()

    def counters(ip: str) -> dict[str, float]:
        def value(name: str) -> float:
            return metrics.REGISTRY.get_sample_value(name, {"ip": ip}) or 0.0

        return {
            "gratuitous": value("metallb_layer2_gratuitous_sent"),
            "requests": value("metallb_layer2_requests_received"),
            "responses": value("metallb_layer2_responses_sent"),
            "conflicts": value("lbd_layer2_conflicts_total"),
        }

    def marked() -> list[dict[str, Any]]:
        snap = addresses.snapshot()
        created: dict[tuple[str, int], int] = {}
        with IPRoute() as ipr:  # creation stamps tell "kept" from "removed and added again"
            for msg in ipr.addr("dump"):
                address = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                cacheinfo = msg.get("IFA_CACHEINFO") or {}
                created[(str(ipaddress.ip_address(address)), msg["index"])] = cacheinfo.get("cstamp", 0)
        return [
            {"ip": str(a.ip), "prefixlen": a.prefixlen, "interface": link.name, "label": a.label, "proto": a.proto,
             "created": created.get((str(a.ip), a.index))}
            for a, link in snap.marked()
        ]

    claimed: dict[Any, str] = {}  # VIP -> interface, as the VIP lifecycle would remember it

    async def handle(request: dict[str, Any]) -> Any:
        op = request["op"]
        ip = ipaddress.ip_address(request["ip"]) if "ip" in request else None
        if op == "claim":
            claimed[ip] = await announcer.claim(ip)  # type: ignore[arg-type]
            return claimed[ip]
        if op == "announce":
            return await announcer.announce(ip, claimed.get(ip))  # type: ignore[arg-type]
        if op == "withdraw":
            return await announcer.withdraw(ip)  # type: ignore[arg-type]
        if op == "release":
            claimed.pop(ip, None)
            return await announcer.release(ip)  # type: ignore[arg-type]
        if op == "reconcile":
            kept, removed = await announcer.reconcile({ipaddress.ip_address(w) for w in request.get("wanted", [])})
            claimed.update(kept)
            return [str(r) for r in removed]
        if op == "metrics":
            return counters(str(ip))
        if op == "marked":
            return await asyncio.to_thread(marked)
        raise ValueError(f"unknown op {op!r}")

    deadline = loop.time() + args.max_seconds
    print(json.dumps({"ok": True, "result": "READY"}), flush=True)
    while (left := deadline - loop.time()) > 0:
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), left)
        except asyncio.TimeoutError:
            break
        if not line:
            break  # the test closed our stdin
        request = json.loads(line)
        if request.get("op") == "close":
            break
        try:
            reply = {"ok": True, "result": await handle(request)}
        except Exception as error:  # reported to the test, which decides
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)
    await announcer.close()
    print(json.dumps({"ok": True, "result": "closed"}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interfaces", nargs="*", default=[])
    parser.add_argument("--garp-rounds", type=int, default=5)
    parser.add_argument("--garp-interval", type=float, default=1.1)
    parser.add_argument("--refresh-interval", type=float, default=None)
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    parser.add_argument("--netns", required=True, help="the lbdt- namespace this must be running in")
    args = parser.parse_args()
    if not _in_lab_netns(args.netns):
        print(f"announcer_driver: not running in lab namespace {args.netns!r}; refusing", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE.parent))  # the repository, for `lbd`
    from lbd.lab.backend import die_with_parent
    from lbd import log

    die_with_parent()
    log.configure("json")
    return asyncio.run(_serve(args))


class AnnouncerProcess:
    """The test side: a presence driver running in one lab host."""

    def __init__(self, lab: Any, host: str = "node", *, interfaces: tuple[str, ...] = ("eth0",),
                 garp_rounds: int = 3, garp_interval: float = 0.2, refresh_interval: float | None = None) -> None:
        argv = [sys.executable, str(HERE / "announcer_driver.py"), "--netns", lab.netns(host),
                "--garp-rounds", str(garp_rounds), "--garp-interval", str(garp_interval)]
        if interfaces:
            argv += ["--interfaces", *interfaces]
        if refresh_interval is not None:
            argv += ["--refresh-interval", str(refresh_interval)]
        self.stderr_path = lab.tmpdir / f"driver-{host}-{id(self):x}.log"  # removed with the lab
        self._stderr = self.stderr_path.open("wb")
        self.lab = lab
        self.proc = lab.popen(host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self._buffer = b""
        if self._read() != "READY":
            raise RuntimeError(f"driver did not start: {self.logs()}")

    def call(self, op: str, **fields: Any) -> Any:
        """Run one op; raises RuntimeError with the driver's error text if it failed."""
        reply = self.try_call(op, **fields)
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def try_call(self, op: str, **fields: Any) -> dict[str, Any]:
        request = {"op": op, **{k: (str(v) if isinstance(v, ipaddress._BaseAddress) else v) for k, v in fields.items()}}
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline_left = CALL_TIMEOUT
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], deadline_left)
            if not ready:
                raise TimeoutError(f"driver did not answer within {CALL_TIMEOUT} s: {self.logs()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"driver exited ({self.proc.poll()}): {self.logs()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def _read(self) -> Any:
        return self._reply()["result"]

    def logs(self) -> list[dict[str, Any]]:
        """The driver's structlog events so far."""
        self._stderr.flush()
        events = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"event": "raw", "text": line})
        return events

    def close(self) -> None:
        """Graceful close (tasks and sockets stop; addresses stay)."""
        if self.proc.poll() is None:
            try:
                self.call("close")
            except (RuntimeError, TimeoutError, OSError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.lab.stop(self.proc)
        self._close_files()

    def kill(self) -> None:
        """Crash it: SIGKILL, nothing cleaned up (what reconcile is for)."""
        self.proc.kill()
        self.proc.wait(5)
        self._close_files()

    def _close_files(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()
        self.stderr_path.unlink(missing_ok=True)

    def __enter__(self) -> AnnouncerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    raise SystemExit(main())
