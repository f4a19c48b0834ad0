"""`lbd demo`: the MetalLB tutorial's nginx-demo on a throwaway network of namespaces.

Builds a lab (a bridge as the switch, a client, the lbd node, three backends), runs lbd on the
node with an embedded config, and shows from the client what a user sees: the VIPs, requests
spread over the backends, ClientIP affinity, the VIP's ARP entry, a backend failing its
readinessProbe leaving rotation and coming back, a backend dying without a client noticing, UDP
datagrams answered from the VIP. Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from lbd.admin import AdminUnavailable
from lbd.lab.netlab import Lab, LabError
from lbd.lab.node import LbdNode
from lbd.views import services_table

HTTP_PORT = 8080  # what lbd/lab/backend.py serves
UDP_PORT = 9001
WIRE = Path(__file__).resolve().parent / "lab" / "wire.py"
# nginx-demo's readinessProbe in DEMO_CONFIG (keep them equal): out within PERIOD x FAILURES
# + the 1 s timeout, short for a demo.
PROBE_PERIOD, PROBE_FAILURES = 1, 2

DEMO_CONFIG = """\
# The MetalLB tutorial's nginx-demo, in lbd's native format.
interfaces: [eth0]
pools:
  - name: demo
    addresses: [{first}-{last}]
services:
  - name: nginx-demo
    ports: [{{name: http, port: 80, targetPort: {http}, protocol: TCP}}]
    endpoints: [{backends}]
    readinessProbe: {{httpGet: {{path: /health, port: {http}}}, periodSeconds: 1, failureThreshold: 2}}
  - name: nginx-sticky
    sessionAffinity: ClientIP
    sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 600}}}}
    ports: [{{name: http, port: 80, targetPort: {http}, protocol: TCP}}]
    endpoints: [{backends}]
  - name: echo-udp
    ports: [{{name: echo, port: 5353, targetPort: {udp}, protocol: UDP}}]
    endpoints: [{backends}]
"""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say()
    say(f"==> {text}")


def curl(lab: Lab, url: str) -> str:
    out = lab.exec("client", ["curl", "-s", "--max-time", "3", url], timeout=10)
    return out.stdout.strip() if out.returncode == 0 else f"ERROR (curl exit {out.returncode})"


def udp_replies(lab: Lab, vip: str, port: int, count: int) -> list[tuple[str, str]]:
    """(reply source, answering backend) for `count` datagrams, each from a new connected socket."""
    out = lab.exec("client", [sys.executable, str(WIRE), "udp-ask", vip, str(port), "--count", str(count),
                              "--new-socket"], timeout=30)
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    return [(f"{r['source'][0]}:{r['source'][1]}", r["first"]) for r in replies if not r.get("timeout")]


def endpoint(node: LbdNode, service: str, address: str) -> dict[str, object]:
    (row,) = [r for r in node.services() if r["name"] == service]
    return next(e for e in row["endpoints"] if e["address"] == address)


def wait_ready(node: LbdNode, service: str, address: str, ready: bool, seconds: float) -> float | None:
    """Seconds until the endpoint's readiness is `ready`, or None if not within `seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if endpoint(node, service, address)["ready"] is ready:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def main() -> int:
    if os.geteuid() != 0:
        say("lbd demo needs root: it builds network namespaces (run it as root, or via scripts/demo.sh)")
        return 1
    started = time.monotonic()
    try:
        with Lab(backends=3) as lab:
            return _run(lab, started)
    except (LabError, RuntimeError, AdminUnavailable, subprocess.TimeoutExpired) as exc:
        say(f"demo failed: {exc}")
        return 1
    except KeyboardInterrupt:
        say("\ninterrupted; the lab has been removed")
        return 130


def _run(lab: Lab, started: float) -> int:
    first, last = lab.vip_range(4)
    step(f"Built a lab: a bridge, a client ({lab.ip('client')}), the lbd node ({lab.ip('node')}, "
         f"MAC {lab.mac('node')}) and backends {', '.join(str(lab.ip(b)) for b in lab.backends)}")
    lab.start_backends()
    backends = ", ".join(str(lab.ip(b)) for b in lab.backends)
    config = DEMO_CONFIG.format(first=first, last=last, backends=backends, http=HTTP_PORT, udp=UDP_PORT)
    say("    lbd's config (pool in the lab's subnet, announced on the node's eth0):")
    for line in config.splitlines()[1:]:
        say(f"      {line}")

    step("Starting `lbd run` on the node: it allocates VIPs, binds them to eth0 and announces them with ARP")
    node = LbdNode(lab, config).start("--garp-interval", "0.2", "--drain-timeout", "2")
    rows = node.services()
    say("    $ lbd get services")
    for line in services_table(rows, time.time()).splitlines():
        say(f"    {line}")
    vips = {r["name"]: r["externalIP"] for r in rows}

    step(f"6 requests from the client to http://{vips['nginx-demo']}/ (round-robin)")
    answers = [curl(lab, f"http://{vips['nginx-demo']}/") for _ in range(6)]
    for i, answer in enumerate(answers, 1):
        say(f"    request {i}: {answer}")
    spread = Counter(answers)
    say(f"    spread: {dict(sorted(spread.items()))}")

    step(f"6 requests to the ClientIP-affinity service http://{vips['nginx-sticky']}/")
    sticky = [curl(lab, f"http://{vips['nginx-sticky']}/") for _ in range(6)]
    say(f"    answers: {', '.join(sticky)}  -> the client stays on {sticky[0]}")

    mac = lab.neigh_mac("client", vips["nginx-demo"])
    step("The client's ARP table learned the VIP from lbd's announcement")
    say(f"    {vips['nginx-demo']} is at {mac} (the node's eth0 is {lab.mac('node')})")

    step(f"4 UDP datagrams to {vips['echo-udp']}:5353, each from a new connected socket (as dig sends them)")
    udp = udp_replies(lab, vips["echo-udp"], 5353, 4)
    for i, (source, name) in enumerate(udp, 1):
        say(f"    datagram {i}: answered by {name}, from {source}")
    udp_ok = len(udp) == 4 and {s for s, _ in udp} == {f"{vips['echo-udp']}:5353"} and len({n for _, n in udp}) > 1
    say("    every reply comes from the VIP (a connected socket accepts nothing else), round-robin per flow")

    sick = lab.backends[2]
    sick_ip = str(lab.ip(sick))
    window = PROBE_PERIOD * PROBE_FAILURES + 1
    step(f"{sick}'s /health starts answering 503; nginx-demo's readinessProbe takes it out (within {window} s)")
    lab.exec("client", ["curl", "-s", "-X", "POST", "--max-time", "3", f"http://{sick_ip}:{HTTP_PORT}/fail"])
    left = wait_ready(node, "nginx-demo", sick_ip, False, window + 2)
    out = endpoint(node, "nginx-demo", sick_ip)
    say(f"    out of rotation after {left:.1f} s: {out['reason']}" if left is not None else "    still in rotation!")
    during = [curl(lab, f"http://{vips['nginx-demo']}/") for _ in range(4)]
    say(f"    4 requests: {', '.join(during)}")
    lab.exec("client", ["curl", "-s", "-X", "POST", "--max-time", "3", f"http://{sick_ip}:{HTTP_PORT}/recover"])
    back = wait_ready(node, "nginx-demo", sick_ip, True, PROBE_PERIOD + 2)
    say(f"    /health passes again: back in rotation after {back:.1f} s" if back is not None else "    not back!")
    healed = [curl(lab, f"http://{vips['nginx-demo']}/") for _ in range(3)]
    say(f"    3 requests: {', '.join(healed)}")
    probe_ok = left is not None and back is not None and sick not in during and sick in healed

    victim = lab.backends[1]
    step(f"{victim} dies; lbd notices the refused connection, retries another backend, takes it out")
    lab.stop(lab.backend_processes[victim])
    after = [curl(lab, f"http://{vips['nginx-demo']}/") for _ in range(6)]
    for i, answer in enumerate(after, 1):
        say(f"    request {i}: {answer}")
    errors = sum(a.startswith("ERROR") for a in after)
    say(f"    client errors: {errors}; {victim} answered {sum(a == victim for a in after)} of 6")
    say(f"    $ lbd get services   ({victim}: {endpoint(node, 'nginx-demo', str(lab.ip(victim)))['reason']}; "
        "its next passing probe brings it back)")
    for line in services_table(node.services(), time.time()).splitlines():
        say(f"    {line}")

    step("SIGTERM: lbd stops accepting, drains, removes its VIPs and exits")
    code = node.stop()
    vips_left = [a["local"] for a in lab.addresses("node") if a.get("local") in vips.values()]
    say(f"    lbd exited with {code}; VIPs still on the node: {vips_left or 'none'}")

    ok = (
        code == 0 and not vips_left and len(spread) == 3 and len(set(sticky)) == 1 and errors == 0
        and victim not in after and mac == lab.mac("node") and probe_ok and udp_ok
    )
    step(f"Tearing the lab down. Demo {'OK' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
