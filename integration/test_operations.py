"""Operating a running lbd as an operator would: `lbd reload`, `get`, `describe`, `drain`.

Every command runs as the operator runs it, `python -m lbd ...` on the node against the admin
socket; clients run in the client namespace. A client loop (one new connection per request,
bounded in count and time) runs through reloads and drains and must see no failed request.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbd.lab.netlab import Lab
from lbd.lab.node import LbdNode

HTTP = 8080  # lbd/lab/backend.py's ports
TCP_STREAM = 9000
POLL = 0.05

# One new connection per request to VIP:80 until the stop file appears (or the bounds are hit);
# prints one JSON line per request: [monotonic start, backend name or "ERR: ..."].
CLIENT_LOOP = """
import json, os, socket, sys, time
vip, stop = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 120
for _ in range(100000):
    if os.path.exists(stop) or time.monotonic() > deadline:
        break
    started = time.monotonic()
    try:
        with socket.create_connection((vip, 80), timeout=3) as s:
            s.settimeout(3)
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: lbd\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, _, body = data.partition(b"\\r\\n\\r\\n")
        answer = body.decode().strip() if head.startswith(b"HTTP/1.") and b" 200 " in head else "ERR: " + repr(head[:60])
    except OSError as exc:
        answer = "ERR: " + repr(exc)
    print(json.dumps([started, answer]), flush=True)
    time.sleep(0.005)
"""

# A long-lived connection to the TCP echo port, opened before a drain: it must keep working.
HELD_CONNECTION = """
import socket, sys
s = socket.create_connection((sys.argv[1], 9000), timeout=5)
s.settimeout(5)
name = s.recv(64).decode().strip()
print(name, flush=True)
for line in sys.stdin:  # one echo per line the test writes
    s.sendall(line.encode())
    got = b""
    while not got.endswith(b"\\n"):
        chunk = s.recv(64)
        if not chunk:
            break
        got += chunk
    print(got.decode().strip(), flush=True)
"""


def web(lab: Lab, *, probe: bool = False) -> str:
    backends = ", ".join(str(lab.ip(b)) for b in lab.backends)
    text = (
        "  - name: web\n"
        f"    loadBalancerIP: {lab.vip(0)}\n"
        f"    ports: [{{name: http, port: 80, targetPort: {HTTP}}}, {{name: echo, port: {TCP_STREAM}}}]\n"
        f"    endpoints: [{backends}]\n"
    )
    if probe:
        text += f"    readinessProbe: {{httpGet: {{path: /health, port: {HTTP}}}, periodSeconds: 1}}\n"
    return text


def extra(lab: Lab, name: str, vip_index: int) -> str:
    return (
        f"  - name: {name}\n"
        f"    loadBalancerIP: {lab.vip(vip_index)}\n"
        f"    ports: [{{port: 80, targetPort: {HTTP}}}]\n"
        f"    endpoints: [{lab.ip(lab.backends[0])}]\n"
    )


def config(lab: Lab, *services: str) -> str:
    first, last = lab.vip_range(4)
    return (f"interfaces: [eth0]\npools:\n  - name: lab\n    addresses: [{first}-{last}]\n"
            "services:\n" + "".join(services))


@pytest.fixture(scope="module")
def lab_with_backends(lab: Lab) -> Lab:
    lab.start_backends()
    return lab


@pytest.fixture
def node(lab_with_backends: Lab) -> Iterator[LbdNode]:
    lab = lab_with_backends
    lbd = LbdNode(lab, config(lab, web(lab)), name=f"lbd-{time.monotonic_ns()}")
    yield lbd
    if lbd.proc is not None and lbd.proc.poll() is None:
        lbd.stop(signal.SIGKILL)
    for backend in lab.backends:
        lab.exec("client", ["curl", "-s", "-X", "POST", "--max-time", "2", f"http://{lab.ip(backend)}:{HTTP}/recover"])
    lab.flush_neigh("client")


def lbd_cli(node: LbdNode, *argv: str) -> Any:
    """`lbd ARGV --admin-socket ...` on the node, as an operator types it."""
    return node.lab.exec(node.host, [sys.executable, "-m", "lbd", *argv, "--admin-socket", str(node.socket)],
                         timeout=60)


class ClientLoop:
    """CLIENT_LOOP running in the client namespace against one VIP."""

    def __init__(self, lab: Lab, vip: str, workdir: Path) -> None:
        self.stop_file = workdir / f"stop-{time.monotonic_ns()}"
        self.proc = lab.popen("client", [sys.executable, "-c", CLIENT_LOOP, vip, str(self.stop_file)],
                              stdout=__import__("subprocess").PIPE, text=True)
        self.lab = lab

    def finish(self) -> list[tuple[float, str]]:
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=30)
        return [tuple(json.loads(line)) for line in out.splitlines()]  # type: ignore[misc]


def wait(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(POLL)


def node_has(lab: Lab, ip: object) -> bool:
    return any(a.get("local") == str(ip) for a in lab.addresses("node"))


def answer_of(lab: Lab, vip: object) -> str:
    out = lab.exec("client", ["curl", "-s", "--max-time", "3", f"http://{vip}/"], timeout=10)
    assert out.returncode == 0, f"curl {vip}: {out.returncode} {out.stderr}"
    return out.stdout.strip()


def test_ten_reloads_under_a_client_loop_lose_no_request_and_release_and_add_vips(node: LbdNode) -> None:
    lab = node.lab
    node.config.write_text(config(lab, web(lab), extra(lab, "extra-0", 2)))
    node.start()
    loop = ClientLoop(lab, str(lab.vip(0)), node.dir)
    try:
        for k in range(1, 11):
            old_vip = lab.vip(2 if k % 2 else 1)
            new_vip = lab.vip(1 if k % 2 else 2)
            node.config.write_text(config(lab, web(lab), extra(lab, f"extra-{k}", 1 if k % 2 else 2)))
            out = lbd_cli(node, "reload", "-o", "json")
            assert out.returncode == 0, out.stderr
            answer = json.loads(out.stdout)
            assert answer["applied"] and answer["summary"] == "added 1, removed 1, changed 0, unchanged 1", answer
            assert answer["added"] == [f"default/extra-{k}"] and answer["unchanged"] == ["default/web"]
            assert not node_has(lab, old_vip), f"reload {k}: the removed service's VIP {old_vip} is still bound"
            assert answer_of(lab, new_vip) == lab.backends[0]  # the added service answers at once
        text = lbd_cli(node, "reload")  # the text form says the same in words
        assert text.returncode == 0 and text.stdout.strip() == "reloaded: added 0, removed 0, changed 0, unchanged 2"
    finally:
        results = loop.finish()
    failed = [r for r in results if r[1].startswith("ERR")]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert len(results) >= 20 and {r[1] for r in results} == set(lab.backends)
    assert node.stop() == 0


def test_a_broken_config_is_refused_with_every_error_and_the_old_one_keeps_serving(node: LbdNode) -> None:
    lab = node.lab
    node.start()
    good = node.config.read_text()
    node.config.write_text(good.replace("targetPort: 8080", "targetPort: 80800")
                           + "  - name: broken\n    ports: [{port: http}]\n")
    out = lbd_cli(node, "reload")
    assert out.returncode == 1
    assert str(node.config) in out.stderr and "targetPort" in out.stderr and "80800" in out.stderr
    assert "broken" in out.stderr and "not reloaded; the running config stays" in out.stderr
    assert answer_of(lab, lab.vip(0)) in lab.backends
    # The rejection is an event and the admin API still serves the old config.
    events = json.loads(lbd_cli(node, "get", "events", "-o", "json").stdout)
    assert any(e["reason"] == "ReloadRejected" and e["type"] == "Warning" for e in events), events
    (row,) = json.loads(lbd_cli(node, "get", "services", "-o", "json").stdout)
    assert row["name"] == "web" and row["ports"][0]["targetPort"] == HTTP
    assert node.stop() == 0


def test_every_get_and_describe_in_every_output_format(node: LbdNode) -> None:
    lab = node.lab
    node.config.write_text(config(lab, web(lab, probe=True), extra(lab, "extra", 1)))
    node.start()
    wait(lambda: all(e["ready"] for e in json.loads(lbd_cli(node, "get", "ep", "web", "-o", "json").stdout)), 5)
    shown: dict[tuple[str, str], str] = {}
    for resource in ("services", "svc", "endpoints", "ep", "pools", "events"):
        for output in ("table", "wide", "json", "yaml"):
            out = lbd_cli(node, "get", resource, "-o", output)
            assert out.returncode == 0, (resource, output, out.stderr)
            shown[resource, output] = out.stdout
    services = json.loads(shown["services", "json"])
    # The same objects (their probe results move between two asks).
    assert [(r["name"], r["externalIP"], r["ports"]) for r in yaml.safe_load(shown["svc", "yaml"])] == [
        (r["name"], r["externalIP"], r["ports"]) for r in services]
    web_row = next(r for r in services if r["name"] == "web")
    assert web_row["namespace"] == "default" and web_row["externalIP"] == str(lab.vip(0))
    assert web_row["pending_reason"] is None
    assert {(e["address"], e["port"], e["ready"]) for e in web_row["endpoints"]} >= {
        (str(lab.ip(b)), HTTP, True) for b in lab.backends}
    table = shown["services", "table"].splitlines()
    assert table[0].split() == ["NAME", "TYPE", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS", "AGE", "NODE"]
    assert table[0].split() + ["AFFINITY", "POLICY", "POOL"] == shown["services", "wide"].splitlines()[0].split()
    web_line = next(line.split() for line in table[1:] if line.startswith("web "))
    assert web_line[1:5] == ["LoadBalancer", str(lab.vip(0)), f"80->{HTTP}/TCP,{TCP_STREAM}/TCP", "3/3"]
    assert web_line[-1] == web_row["node"] == "node"  # the node holding the VIP
    assert shown["endpoints", "table"].splitlines()[0].split()[:4] == ["SERVICE", "ENDPOINT", "READY", "REASON"]
    assert len(json.loads(shown["ep", "json"])) == len(lab.backends) + 1  # one row per endpoint
    pools = json.loads(shown["pools", "json"])
    first, last = lab.vip_range()
    total = int(last) - int(first) + 1
    assert [(p["name"], p["used"], p["total"]) for p in pools] == [("lab", 2, total)]
    assert shown["pools", "table"].splitlines()[1].split()[:3] == ["lab", f"{first}-{last}", f"2/{total}"]
    assert any(e["reason"] == "IPAllocated" for e in json.loads(shown["events", "json"]))
    # One object: by name, NAMESPACE/NAME and -n; a missing one is a one-line error.
    for argv in (("get", "svc", "web"), ("get", "svc", "default/web"), ("get", "svc", "web", "-n", "default")):
        out = lbd_cli(node, *argv, "-o", "json")
        assert out.returncode == 0 and [r["name"] for r in json.loads(out.stdout)] == ["web"], (argv, out.stderr)
    missing = lbd_cli(node, "get", "svc", "nope")
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0 and "nope" in missing.stderr
    described = lbd_cli(node, "describe", "service", "web")
    assert described.returncode == 0, described.stderr
    for label in ("Name:", "Namespace:", "LoadBalancer Ingress:", "Port:", "Session Affinity:", "Readiness Probe:",
                  "Endpoints:", "Events:"):
        assert label in described.stdout, (label, described.stdout)
    assert str(lab.vip(0)) in described.stdout and "IPAllocated" in described.stdout
    assert node.stop() == 0


def test_drain_under_a_client_loop_sends_no_new_connection_to_the_endpoint_and_keeps_established_ones(
    node: LbdNode,
) -> None:
    lab = node.lab
    node.start()
    victim = lab.backends[0]
    address = str(lab.ip(victim))
    # An established connection to the victim (round-robin: one of the first few lands there).
    held = []
    for _ in range(len(lab.backends)):
        proc = lab.popen("client", [sys.executable, "-c", HELD_CONNECTION, str(lab.vip(0))],
                         stdin=__import__("subprocess").PIPE, stdout=__import__("subprocess").PIPE, text=True)
        name = proc.stdout.readline().strip()  # type: ignore[union-attr]
        held.append((name, proc))
    (victim_conn,) = [proc for name, proc in held if name == victim]
    loop = ClientLoop(lab, str(lab.vip(0)), node.dir)
    try:
        time.sleep(0.5)
        out = lbd_cli(node, "drain", "endpoint", "web", address)
        assert out.returncode == 0, out.stderr
        drained_at = time.monotonic()  # the answer comes once the routers have it
        rows = json.loads(lbd_cli(node, "get", "endpoints", "web", "-o", "json").stdout)
        assert {(r["ready"], r["reason"]) for r in rows if r["address"] == address} == {
            (False, "draining (lbd drain): established connections finish, no new ones")}
        # It still carries the held connection (CONNECTIONS), and the others theirs.
        assert {r["address"]: r["connections"] for r in rows}[address] >= 1
        table = lbd_cli(node, "get", "endpoints", "web").stdout
        assert any(address in line and "DRAINING" in line for line in table.splitlines()), table
        # The drain holds across a reload that changes nothing of it.
        node.config.write_text(config(lab, web(lab), extra(lab, "extra", 1)))
        assert lbd_cli(node, "reload").returncode == 0
        time.sleep(1.0)
        # The established connection still works.
        victim_conn.stdin.write("still here\n")  # type: ignore[union-attr]
        victim_conn.stdin.flush()  # type: ignore[union-attr]
        assert victim_conn.stdout.readline().strip() == "still here"  # type: ignore[union-attr]
        # The window ends when the undrain is asked for, not when its answer is back: a request
        # that starts in between may land on the endpoint (a while, on a loaded machine).
        undrain_asked = time.monotonic()
        out = lbd_cli(node, "undrain", "endpoint", "default/web", address)
        assert out.returncode == 0, out.stderr
        undrained_at = time.monotonic()
        time.sleep(0.5)
    finally:
        results = loop.finish()
        for _, proc in held:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(10)
    failed = [r for r in results if r[1].startswith("ERR")]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    during = [answer for started, answer in results if drained_at < started < undrain_asked]
    assert len(during) >= 10 and victim not in during, during
    assert victim in [answer for started, answer in results if started > undrained_at]
    assert victim in [answer for started, answer in results if started < drained_at - 0.2]
    described = lbd_cli(node, "describe", "svc", "web").stdout
    assert "EndpointDraining" in described and "EndpointUndrained" in described
    assert node.stop() == 0


def test_a_backend_going_unready_shows_in_describe_with_its_reason(node: LbdNode) -> None:
    lab = node.lab
    node.config.write_text(config(lab, web(lab, probe=True)))
    node.start()
    victim = str(lab.ip(lab.backends[1]))
    lab.exec("client", ["curl", "-s", "-X", "POST", "--max-time", "2", f"http://{victim}:{HTTP}/fail"])

    def described() -> str:
        return str(lbd_cli(node, "describe", "service", "web").stdout)

    wait(lambda: "EndpointNotReady" in described(), 8)
    text = described()
    line = next(line for line in text.splitlines() if "EndpointNotReady" in line)
    assert "Warning" in line and victim in line and "HTTP 503" in line, line
    assert any(victim in line and "probe failed: HTTP 503" in line for line in text.splitlines()
               if "EndpointNotReady" not in line), text  # the endpoint list gives the reason too
    assert node.stop() == 0
