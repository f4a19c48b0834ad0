"""Members asking each other directly while etcd is out of reach (the failsafe of lbd.cluster.fencing).

One UDP socket per node (`--peer-port`, default 7947), its address in the node's membership
record. Two messages, JSON in one datagram each:
- ask   {"t": "ask", "node": A, "id": N, "vips": [...]}: A cannot reach etcd and holds these;
- reply {"t": "ok", "node": B, "id": N, "owns": [...]}: B promised (NodeOwnership.promise) to
  take none of A's VIPs for a TTL, and names those of A's VIPs it answers for or claims.
A round succeeds when every member asked replied within the timeout and none owns one of the
VIPs. Peers trust the segment as keepalived's VRRP does; a datagram holds up to ~4,000 VIPs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import Callable, Collection, Mapping

import structlog

log = structlog.get_logger("lbd.cluster.peers")

DEFAULT_PORT = 7947
MAX_DATAGRAM = 65_000


def local_address_towards(url: str) -> str:
    """The address this host would use to reach `url`'s host (no packet is sent: a UDP connect)."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))
        return str(probe.getsockname()[0])


class PeerLink(asyncio.DatagramProtocol):
    def __init__(self, node: str, promise: Callable[[str], Collection[str]]) -> None:
        self.node = node
        self.promise = promise  # the core's: asked by `node`, returns what this node answers for
        self.transport: asyncio.DatagramTransport | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[set[str], asyncio.Future[None], dict[str, list[str]]]] = {}

    async def open(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = json.loads(data)
            kind, sender, ident = message["t"], str(message["node"]), int(message["id"])
        except (ValueError, KeyError, TypeError):
            return  # not ours
        if kind == "ask" and self.transport is not None:
            asked = {str(v) for v in message.get("vips", ())}
            owns = sorted(asked & set(self.promise(sender)))
            log.info("failsafe_promised", to=sender, owns=owns)
            reply = {"t": "ok", "node": self.node, "id": ident, "owns": owns}
            self.transport.sendto(json.dumps(reply).encode(), addr)
        elif kind == "ok" and ident in self._waiting:
            pending, done, owns = self._waiting[ident]
            pending.discard(sender)
            owns[sender] = [str(v) for v in message.get("owns", ())]
            if not pending and not done.done():
                done.set_result(None)

    async def confirm(self, peers: Mapping[str, tuple[str, int]], vips: Collection[str], timeout: float) -> bool:
        """Ask every peer; True iff all answered in time and none answers for one of `vips`."""
        if not peers:
            return True  # the only member known: nobody to take over
        if self.transport is None:
            return False
        ident = next(self._ids)
        body = json.dumps({"t": "ask", "node": self.node, "id": ident, "vips": sorted(vips)}).encode()
        if len(body) > MAX_DATAGRAM:
            log.warning("failsafe_too_many_vips", vips=len(vips))
            return False
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending, owns = set(peers), {}
        self._waiting[ident] = (pending, done, owns)
        try:
            for address in peers.values():
                self.transport.sendto(body, address)
            try:
                async with asyncio.timeout(timeout):
                    await done
            except TimeoutError:
                log.warning("failsafe_unconfirmed", silent=sorted(pending))
                return False
        finally:
            del self._waiting[ident]
        overlap = {node: vs for node, vs in owns.items() if vs}
        if overlap:
            log.warning("failsafe_refused", owned_elsewhere=overlap)
            return False
        return True
