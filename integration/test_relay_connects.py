"""The relay core's connects off loopback: refused, timed out, retried, and nothing left.

`lbd run` on the lab's node, clients in the client namespace. The endpoints sit across the
lab's bridge, so a connect really goes out as a SYN: a closed port answers with a RST
(refused), an address nobody holds never answers (ARP goes unanswered, so the SYN is never
sent and lbd's connect watchdog gives up first), and the relay must move on to the next
endpoint without the client seeing anything.
"""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbd.lab.netlab import Lab
from lbd.lab.node import LbdNode

HTTP = 8080  # lbd/lab/backend.py's ports
CLOSED = 9999  # nothing listens there on a backend
METRICS_PORT = 9465  # inside the node's namespace
CONNECT_TIMEOUT = 0.3


def nobody(lab: Lab) -> str:
    """An address in the lab's subnet that no namespace holds (its ARP goes unanswered)."""
    return str(lab.subnet4[77])


def config(lab: Lab) -> str:
    first, last = lab.vip_range(4)
    good, refusing = lab.ip(lab.backends[0]), lab.ip(lab.backends[1])
    return textwrap.dedent(f"""
        interfaces: [eth0]
        pools:
          - name: v4
            addresses: [{first}-{last}]
        services:
          - name: retry
            ports: [{{name: http, port: 80}}]
            endpoints: ["{nobody(lab)}:{HTTP}", "{refusing}:{CLOSED}", "{good}:{HTTP}"]
          - name: dead
            ports: [{{name: http, port: 80}}]
            endpoints: ["{refusing}:{CLOSED}", "{nobody(lab)}:{HTTP}"]
    """)


@pytest.fixture(scope="module")
def node(lab: Lab) -> Iterator[LbdNode]:
    lab.start_backends()
    lbd = LbdNode(lab, config(lab), name=f"lbd-{time.monotonic_ns()}")
    lbd.start("--connect-timeout", str(CONNECT_TIMEOUT), "--metrics-address", f"127.0.0.1:{METRICS_PORT}")
    yield lbd
    if lbd.proc is not None and lbd.proc.poll() is None:
        lbd.stop(signal.SIGKILL)


def vip(node: LbdNode, name: str) -> str:
    return next(row["externalIP"] for row in node.services() if row["name"] == name)


def failures(lab: Lab, service: str, *wanted: tuple[str, str]) -> dict[tuple[str, str], float]:
    """The service's connect failures by (endpoint, reason), once `wanted` all show (the data
    plane flushes its counters into the registry every second)."""
    deadline = time.monotonic() + 5
    while True:
        seen = _failures(lab, service)
        if all(seen.get(key, 0) >= 1 for key in wanted) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def _failures(lab: Lab, service: str) -> dict[tuple[str, str], float]:
    out = lab.exec("node", ["curl", "-s", "--max-time", "3", f"http://127.0.0.1:{METRICS_PORT}/metrics"], timeout=10)
    assert out.returncode == 0, out.stderr
    return {
        (s.labels["endpoint"], s.labels["reason"]): s.value
        for f in text_string_to_metric_families(out.stdout)
        if f.name == "lbd_upstream_connect_failures"
        for s in f.samples
        if s.name.endswith("_total") and s.labels["service"] == f"default/{service}"
    }


def test_refused_and_timed_out_connects_are_retried_on_the_next_endpoint(node: LbdNode) -> None:
    lab = node.lab
    address = vip(node, "retry")
    good, refusing = lab.ip(lab.backends[0]), lab.ip(lab.backends[1])
    answers = []
    started = time.monotonic()
    for _ in range(6):
        out = lab.exec("client", ["curl", "-s", "--max-time", "5", f"http://{address}/"], timeout=10)
        assert out.returncode == 0, f"curl through {address} failed ({out.returncode}): {out.stderr}"
        answers.append(out.stdout.strip())
    elapsed = time.monotonic() - started
    # Every request reached the one endpoint that works, whichever the round-robin picked first.
    assert answers == [lab.backends[0]] * 6
    # Each bad endpoint failed once and was ejected (passive health), so at most one request
    # waited for the watchdog: the connect timeout, not ARP's 3 s, bounds the wait.
    assert elapsed < 5, elapsed
    timed_out, refused = (f"{nobody(lab)}:{HTTP}", "timeout"), (f"{refusing}:{CLOSED}", "refused")
    seen = failures(lab, "retry", timed_out, refused)
    assert seen.get(timed_out, 0) >= 1, seen
    assert seen.get(refused, 0) >= 1, seen
    assert not any(endpoint == f"{good}:{HTTP}" for endpoint, _ in seen), seen


def test_a_client_is_reset_when_every_endpoint_fails(node: LbdNode) -> None:
    lab = node.lab
    address = vip(node, "dead")
    probe = textwrap.dedent(f"""
        import socket, sys
        c = socket.create_connection(("{address}", 80), timeout=5)
        c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        try:
            data = c.recv(100)
        except ConnectionResetError:
            print("reset")
            sys.exit(0)
        print("got", data)
        sys.exit(1)
    """)
    started = time.monotonic()
    out = lab.exec("client", ["python3", "-c", probe], timeout=15)
    assert out.returncode == 0 and out.stdout.strip() == "reset", (out.stdout, out.stderr)
    # Refused at once, the other given up after the connect timeout: well before ARP's 3 s.
    assert time.monotonic() - started < 2.5
    refused, timed_out = (f"{lab.ip(lab.backends[1])}:{CLOSED}", "refused"), (f"{nobody(lab)}:{HTTP}", "timeout")
    seen = failures(lab, "dead", refused, timed_out)
    assert seen.get(refused, 0) >= 1, seen
    assert seen.get(timed_out, 0) >= 1, seen
