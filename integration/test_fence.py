"""The kernel fence of cluster mode (lbd.net.fence) on its own, in the lab: a VIP bound on the
node is answered (ARP, IPv6 neighbour discovery) only while it is live in the fence, and stops
being answered when its element times out, with nothing of lbd running."""

from __future__ import annotations

import sys
import textwrap
import time

from lbd.lab.netlab import Lab

FENCE = textwrap.dedent("""
    import ipaddress, sys, time
    from lbd.net.fence import ArpFence
    fence = ArpFence(table="lbdtest")
    fence.install()
    until = time.monotonic() + float(sys.argv[3])
    fence.set_live({ipaddress.ip_address(sys.argv[1]): until, ipaddress.ip_address(sys.argv[2]): until},
                   time.monotonic())
""")


def resolved(lab: Lab, ip: str) -> bool:
    """Whether the client learns the VIP's MAC (a connect makes it ask)."""
    lab.flush_neigh("client")
    lab.exec("client", ["nc", "-z", "-w", "1", ip, "9"], timeout=5)
    entry = lab.neigh("client", ip)  # type: ignore[arg-type]
    return entry is not None and bool(entry.get("lladdr"))


def test_a_fenced_vip_goes_quiet_when_its_element_times_out(lab: Lab) -> None:
    v4, v6 = str(lab.vip(7)), str(lab.vip(7, 6))
    lab.exec("node", ["ip", "addr", "add", f"{v4}/32", "dev", "eth0"], check=True)
    lab.exec("node", ["ip", "addr", "add", f"{v6}/128", "dev", "eth0", "nodad"], check=True)
    try:
        assert resolved(lab, v4) and resolved(lab, v6)  # no fence: the kernel answers
        out = lab.exec("node", [sys.executable, "-c", FENCE, v4, v6, "2.0"])
        assert out.returncode == 0, out.stderr
        assert resolved(lab, v4) and resolved(lab, v6)  # live: answered
        time.sleep(2.2)
        assert not resolved(lab, v4), "ARP answered after the fence expired"
        assert not resolved(lab, v6), "neighbour solicitation answered after the fence expired"
    finally:
        lab.exec("node", ["ip", "addr", "del", f"{v4}/32", "dev", "eth0"])
        lab.exec("node", ["ip", "addr", "del", f"{v6}/128", "dev", "eth0"])
        for family in ("arp", "ip6"):
            lab.exec("node", ["nft", "delete", "table", family, "lbdtest"])
