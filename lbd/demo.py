"""`lbd demo`: the MetalLB tutorial's nginx-demo on a throwaway network of namespaces.

Builds a lab (a bridge as the switch, a client, the lbd node, three backends), runs lbd on the
node with an embedded config, and shows from the client what a user sees: the VIPs, requests
spread over the backends, ClientIP affinity, the VIP's ARP entry, a backend failing without a
client noticing, UDP datagrams answered from the VIP. Everything is removed at the end, also on
Ctrl-C.
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
from lbd.status import render_table

HTTP_PORT = 8080  # what lbd/lab/backend.py serves
UDP_PORT = 9001
WIRE = Path(__file__).resolve().parent / "lab" / "wire.py"

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
    for line in render_table(rows).splitlines():
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

    victim = lab.backends[1]
    step(f"{victim} dies; lbd notices the refused connection and retries another backend")
    lab.stop(lab.backend_processes[victim])
    after = [curl(lab, f"http://{vips['nginx-demo']}/") for _ in range(6)]
    for i, answer in enumerate(after, 1):
        say(f"    request {i}: {answer}")
    errors = sum(a.startswith("ERROR") for a in after)
    say(f"    client errors: {errors}; {victim} answered {sum(a == victim for a in after)} of 6")
    say("    $ lbd get services   (the refused endpoint is out of rotation: passive health check)")
    for line in render_table(node.services()).splitlines():
        say(f"    {line}")

    step("SIGTERM: lbd stops accepting, drains, removes its VIPs and exits")
    code = node.stop()
    left = [a["local"] for a in lab.addresses("node") if a.get("local") in vips.values()]
    say(f"    lbd exited with {code}; VIPs still on the node: {left or 'none'}")

    ok = (
        code == 0 and not left and len(spread) == 3 and len(set(sticky)) == 1 and errors == 0
        and victim not in after and mac == lab.mac("node") and udp_ok
    )
    step(f"Tearing the lab down. Demo {'OK' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
