"""Active health checks end to end: `lbd run` on the lab's node probing the lab's backends.

Backends answer `/health` with 200, or 503 after `POST /fail` (lbd/lab/backend.py). Probe
timings are short (periodSeconds 1) so the whole module stays well under half a minute; the
admin API's readiness is what the routers use, so it is what the tests watch.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lbd.lab.netlab import Lab
from lbd.lab.node import LbdNode

HTTP = 8080  # lbd/lab/backend.py's ports
TCP_STREAM = 9000
CLOSED = 9999  # nothing listens there on a backend
POLL = 0.05


def config(lab: Lab, *services: str) -> str:
    first, last = lab.vip_range(4)
    return f"interfaces: [eth0]\npools:\n  - name: v4\n    addresses: [{first}-{last}]\nservices:\n" + "".join(services)


def service(lab: Lab, name: str, probe: str) -> str:
    backends = ", ".join(str(lab.ip(b)) for b in lab.backends)
    return (
        f"  - name: {name}\n"
        f"    ports: [{{name: http, port: 80, targetPort: {HTTP}}}]\n"
        f"    endpoints: [{backends}]\n"
        f"    readinessProbe: {probe}\n"
    )


def http_probe(**timings: int) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in {"periodSeconds": 1, **timings}.items())
    return f"{{httpGet: {{path: /health, port: {HTTP}}}, {fields}}}"


@pytest.fixture(scope="module")
def lab_with_backends(lab: Lab) -> Lab:
    lab.start_backends()
    return lab


@pytest.fixture
def node(lab_with_backends: Lab) -> Iterator[LbdNode]:
    lab = lab_with_backends
    lbd = LbdNode(lab, config(lab), name=f"lbd-{time.monotonic_ns()}")
    yield lbd
    if lbd.proc is not None and lbd.proc.poll() is None:
        lbd.stop(signal.SIGKILL)
    for addr in lab.addresses("node"):  # the next test starts from a node without VIPs
        local = addr.get("local", "")
        if local and local not in (str(lab.ip("node")), str(lab.ip("node", 6))) and not local.startswith("fe80"):
            lab.exec("node", ["ip", "addr", "del", f"{local}/{addr['prefixlen']}", "dev", "eth0"])
    for backend in lab.backends:  # healthy again, and running
        lab.exec("client", ["curl", "-s", "-X", "POST", "--max-time", "2", f"http://{lab.ip(backend)}:{HTTP}/recover"])
    lab.start_backends()
    lab.flush_neigh("client")


def endpoints(node: LbdNode, name: str) -> dict[str, dict[str, Any]]:
    (row,) = [r for r in node.services() if r["name"] == name]
    return {e["address"]: e for e in row["endpoints"]}


def vip(node: LbdNode, name: str) -> str:
    (row,) = [r for r in node.services() if r["name"] == name]
    return str(row["externalIP"])


def wait(condition: Callable[[], bool], seconds: float) -> float:
    """Seconds until `condition` held; fails after `seconds`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(POLL)
    return time.monotonic() - started


def all_ready(node: LbdNode, name: str) -> Callable[[], bool]:
    return lambda: all(e["ready"] for e in endpoints(node, name).values())


def curl(lab: Lab, url: str, *extra: str) -> str:
    out = lab.exec("client", ["curl", "-s", "--max-time", "3", *extra, url], timeout=10)
    assert out.returncode == 0, f"curl {url} failed ({out.returncode}): {out.stderr}"
    return out.stdout.strip()


# Connect, then wait for the first byte: how long until the client learns there is nothing.
RESET_CLIENT = """
import json, socket, sys, time
started = time.monotonic()
try:
    s = socket.create_connection((sys.argv[1], 80), timeout=2)
    s.settimeout(2)
    outcome = "eof" if s.recv(1) == b"" else "data"
except ConnectionResetError:
    outcome = "reset"
except OSError as exc:
    outcome = type(exc).__name__
print(json.dumps([outcome, time.monotonic() - started]))
"""


def test_a_backend_failing_its_health_leaves_in_time_and_returns_after_success_threshold(node: LbdNode) -> None:
    lab = node.lab
    period, failures, successes, timeout = 1, 2, 2, 1
    node.config.write_text(config(lab, service(lab, "web", http_probe(
        failureThreshold=failures, successThreshold=successes, timeoutSeconds=timeout))))
    node.start()
    wait(all_ready(node, "web"), 4)
    ip = vip(node, "web")
    victim = lab.backends[0]
    address = str(lab.ip(victim))
    curl(lab, f"http://{address}:{HTTP}/fail", "-X", "POST")
    left = wait(lambda: not endpoints(node, "web")[address]["ready"], 6)
    assert left <= period * failures + timeout + 2 * POLL
    out = endpoints(node, "web")[address]
    assert out["reason"] == "probe failed: HTTP 503" and out["lastProbe"]["detail"] == "HTTP 503"
    assert victim not in {curl(lab, f"http://{ip}/") for _ in range(6)}
    curl(lab, f"http://{address}:{HTTP}/recover", "-X", "POST")
    back = wait(lambda: endpoints(node, "web")[address]["ready"], 5)
    assert back >= (successes - 1) * period - 0.2  # one success is not enough
    assert victim in {curl(lab, f"http://{ip}/") for _ in range(6)}
    events = [e["event"] for e in node.events() if e.get("endpoint") == address]
    assert events[-2:] == ["endpoint_not_ready", "endpoint_ready"]
    assert node.stop() == 0


def test_tcp_probe_on_a_closed_port_keeps_endpoints_out_and_clients_are_reset_at_once(node: LbdNode) -> None:
    lab = node.lab
    node.config.write_text(config(
        lab,
        service(lab, "closed", f"{{tcpSocket: {{port: {CLOSED}}}, periodSeconds: 1}}"),
        service(lab, "other-port", f"{{tcpSocket: {{port: {TCP_STREAM}}}, periodSeconds: 1}}"),
    ))
    node.start()
    wait(all_ready(node, "other-port"), 4)  # a probe on another port than the traffic's works
    assert curl(lab, f"http://{vip(node, 'other-port')}/") in lab.backends
    time.sleep(1.2)  # the closed port has had its probes too
    closed = endpoints(node, "closed")
    assert not any(e["ready"] for e in closed.values())
    assert {e["reason"] for e in closed.values()} == {"connect refused"}
    row = [r for r in json.loads(lab.exec("node", [sys.executable, "-m", "lbd", "get", "services", "-o", "json",
                                                   "--admin-socket", str(node.socket)]).stdout)
           if r["name"] == "closed"]
    assert row and row[0]["readinessProbe"].startswith("tcp-socket :9999")
    for _ in range(3):
        out = lab.exec("client", [sys.executable, "-c", RESET_CLIENT, vip(node, "closed")], timeout=10)
        outcome, seconds = json.loads(out.stdout)
        assert outcome == "reset" and seconds < 0.1, (outcome, seconds)
    assert node.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_backend_leaves_on_the_first_refused_connect_with_no_client_error(node: LbdNode, workers: int) -> None:
    """With workers, the refused connect happens in a worker and reaches the control plane's
    checker as a message; the new readiness goes back to every worker in the plan."""
    lab = node.lab
    # Probes every 3 s with failureThreshold 3: a probe alone would take ~9 s to notice.
    node.config.write_text(config(lab, service(lab, "web", http_probe(periodSeconds=3, failureThreshold=3))))
    node.start("--workers", str(workers))
    wait(all_ready(node, "web"), 4)
    ip = vip(node, "web")
    victim = lab.backends[1]
    address = str(lab.ip(victim))
    lab.stop(lab.backend_processes[victim])
    answers = [curl(lab, f"http://{ip}/") for _ in range(6)]  # curl fails the test on any error
    assert victim not in answers
    out = endpoints(node, "web")[address]
    assert (out["ready"], out["reason"]) == (False, "connect refused (client connection)")
    (event,) = [e for e in node.events() if e.get("event") == "endpoint_not_ready" and e.get("endpoint") == address]
    assert event["reason"] == "connect refused (client connection)" and event["was_ready"] is True
    # Back: a successful probe returns it (the next one, or the one after if the backend was not
    # listening yet when one ran: within two periods; one CI run with workers needed over 4 s).
    lab.start_backends()
    wait(lambda: endpoints(node, "web")[address]["ready"], 7)
    assert node.stop() == 0


def test_an_unchanged_endpoint_keeps_its_readiness_across_a_reload(node: LbdNode) -> None:
    lab = node.lab
    # successThreshold 3: a state lost on reload would show as ~2 s out of rotation.
    web = service(lab, "web", http_probe(successThreshold=3))
    node.config.write_text(config(lab, web))
    node.start()
    wait(all_ready(node, "web"), 6)
    offset = node.log.stat().st_size
    node.config.write_text(config(lab, web, service(lab, "extra", http_probe())))  # web unchanged
    node.reload()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert all_ready(node, "web")(), "an unchanged endpoint flapped on reload"
        time.sleep(POLL)
    after = node.events(offset)
    assert any(e.get("event") == "reload_applied" for e in after)
    assert not [e for e in after if e.get("event") == "endpoint_not_ready" and e.get("service") == "default/web"]
    assert node.stop() == 0
