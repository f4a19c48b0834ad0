"""Cluster mode in the daemon: the member, the gate, the kernel fence, and what they report.

`lbd run --etcd-endpoints ...` makes the daemon a ClusterNode's host. The member
(lbd.cluster.member) decides when this node answers for a VIP; its actions land here:
- Bind / Fence / Unbind move the kernel fence (lbd.net.fence) at once, so ARP follows the
  lease without waiting for a reconcile pass, and then mark the state dirty: the pass binds or
  revokes the address and announces (lbd.vips, through the ClusterGate's answers);
- the same deadlines guard the gratuitous ARP sender (`may_announce`).
Events and metrics say what moved and why; `lbd get nodes` reads `members()`.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

import structlog

from lbd import metrics
from lbd.cluster.etcd import EtcdClient
from lbd.cluster.fencing import Action, Bind, DropReason, Fence, Unbind
from lbd.cluster.gate import ClusterGate
from lbd.cluster.member import ClusterMember
from lbd.cluster.peers import DEFAULT_PORT, local_address_towards
from lbd.errors import CannotStart
from lbd.events import EventLog
from lbd.model import IPAddress
from lbd.net.fence import ArpFence, NftError

log = structlog.get_logger("lbd.cluster")


class ClusterNode:
    def __init__(
        self,
        node: str,
        endpoints: list[str],
        *,
        prefix: str,
        lease_ttl: int,
        peer_port: int = DEFAULT_PORT,
        on_change: Callable[[], None],
        events: EventLog,
        fence: ArpFence | None = None,
    ) -> None:
        self.node = node
        self.client = EtcdClient(endpoints)
        self.peer_port = peer_port
        self.member = ClusterMember(self.client, node, self._on_actions, prefix=prefix.encode(), ttl=lease_ttl)
        self.member.on_seen = on_change  # a peer's VIP changed hands: the NODE column follows
        self.gate = ClusterGate(self.member)
        self.fence = fence  # made at start: a missing libnftables is a start_failed line, not a traceback
        self.on_change = on_change
        self.events = events
        self.loop = asyncio.get_running_loop()
        self.until: dict[IPAddress, float] = {}  # VIPs answered now, each until its deadline
        self._owners_shown: set[tuple[str, str]] = set()
        self._stopped = False

    async def start(self) -> None:
        try:  # members ask each other on the address this node reaches etcd from
            self.member.peer = (local_address_towards(self.client.endpoints[0]), self.peer_port)
        except OSError as exc:
            raise CannotStart(f"--etcd-endpoints {self.client.endpoints[0]}: no route to it ({exc})") from exc
        if self.fence is None:
            self.fence = ArpFence()
        self.fence.install()
        log.info("cluster_joining", node=self.node, endpoints=self.client.endpoints, peer=self.member.peer,
                 prefix=self.member.prefix.decode(), lease_ttl=self.member.requested_ttl)
        await self.member.start()
        metrics.cluster_lease_ttl_seconds.set(self.member.core.ttl)
        log.info("cluster_joined", node=self.node, lease_ttl=self.member.core.ttl, members=len(self.member.nodes))

    async def handover(self) -> None:
        """Graceful stop: stop answering, revoke the lease: the next owners take over now."""
        if not self._stopped:
            self._stopped = True
            await self.member.stop(handover=True)
            metrics.cluster_lease_ttl_seconds.set(0)

    async def close(self) -> None:
        """After the data plane released every VIP: the client and the fence go."""
        await self.handover()
        await self.client.close()
        if self.fence is None:
            return
        try:
            self.fence.remove()
        except NftError as exc:
            log.warning("cluster_fence_remove_failed", error=str(exc))

    def may_announce(self, vip: IPAddress) -> bool:
        return self.until.get(vip, float("-inf")) > self.loop.time()

    # ---- the member's actions -------------------------------------------------------------------

    def _on_actions(self, actions: list[Action]) -> None:
        now = self.loop.time()
        for action in actions:
            ip = ipaddress.ip_address(action.vip)
            if isinstance(action, (Bind, Fence)):
                if isinstance(action, Bind):
                    self._acquired(action.vip, now)
                self.until[ip] = action.until
            elif isinstance(action, Unbind) and self.until.pop(ip, None) is not None:
                self._dropped(action.vip, action.reason)
        try:
            if self.fence is not None:
                self.fence.set_live(self.until, now)
        except NftError as exc:
            log.error("cluster_fence_failed", error=str(exc), hint="ARP for held VIPs may not follow the lease")
        metrics.cluster_members.set(len(self.member.nodes))
        metrics.cluster_lease_ttl_seconds.set(self.member.core.ttl if self.member.core.lease is not None else 0)
        self.on_change()

    def _acquired(self, vip: str, now: float) -> None:
        metrics.cluster_vip_transitions_total.labels("acquired").inc()
        freed = self.member.freed_at.pop(vip, None)
        if freed is not None:  # someone held it before: a takeover
            metrics.cluster_failovers_total.inc()
            metrics.cluster_last_failover_seconds.set(now - freed)
            self.events.record("VIPAcquired", "", vip, f"node {self.node} took {vip} over "
                               f"{(now - freed) * 1000:.0f} ms after its previous owner's key went")
        else:
            self.events.record("VIPAcquired", "", vip, f"node {self.node} holds {vip}")

    def _dropped(self, vip: str, reason: DropReason) -> None:
        fenced = reason is not DropReason.NOT_WANTED
        metrics.cluster_vip_transitions_total.labels("fenced" if fenced else "released").inc()
        if fenced:
            self.events.record("VIPFenced", "", vip, f"node {self.node} stopped answering for {vip}: {reason}",
                               "Warning")
        else:
            self.events.record("VIPReleased", "", vip, f"node {self.node} handed {vip} over")

    # ---- what `lbd get nodes` and the metrics show ---------------------------------------------

    def refresh_owner_metric(self) -> None:
        now = {(vip, node) for vip, node in self.member.owners.items() if node is not None}
        for vip, node in self._owners_shown - now:
            metrics.cluster_vip_owner.remove(vip, node)
        for vip, node in now:
            metrics.cluster_vip_owner.labels(vip, node).set(1)
        self._owners_shown = now

    def members(self) -> list[dict[str, Any]]:
        owned: dict[str, list[str]] = {}
        for vip, node in self.member.owners.items():
            if node is not None:
                owned.setdefault(node, []).append(vip)
        names = set(self.member.nodes) | {self.node}
        return [
            {
                "name": name,
                "self": name == self.node,
                "leaseTTL": self.member.nodes[name].ttl if name in self.member.nodes else None,
                "candidateFor": len(self.member.candidacy_of(name)),
                "vips": sorted(owned.get(name, ()), key=_ip_order),
            }
            for name in sorted(names)
        ]


def _ip_order(text: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)
