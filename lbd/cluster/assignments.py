"""Cluster-wide VIP assignments: one etcd key, changed only by compare-and-swap.

The AssignmentStore of cluster mode (lbd.assignments): `PREFIX/assignments` holds service key
-> VIP for the whole cluster, as JSON, and its etcd mod_revision is the compare-and-swap token.
Every node allocates from what the key holds and commits its allocation only if nobody wrote
in between; the loser re-reads and allocates again (allocate_and_commit), so two nodes applying
one new config at once hand no IP to two services, and every node, restarted or not, reads the
same VIPs back. `--state-dir` is not used for assignments in cluster mode.

Assumed: every node runs the same config. A commit replaces the whole map, so a node still on
an older config writes that config's view on its next reload or start (and a service only the
newer config has may lose its entry until a node with it commits again).

Stores are synchronous (called in the reconciler's store thread); the etcd client lives on the
event loop, so each call is handed to the loop and waited for with a deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from lbd.assignments import Stored
from lbd.cluster.etcd import EtcdClient, EtcdError
from lbd.model import IPAddress

CALL_TIMEOUT = 5.0  # seconds per store call (the reconciler's own deadline is 10 s)
T = TypeVar("T")


class EtcdAssignmentStore:
    def __init__(self, client: EtcdClient, prefix: str, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.key = (prefix + "assignments").encode()
        self.loop = loop

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            return asyncio.run_coroutine_threadsafe(call, self.loop).result(CALL_TIMEOUT)
        except (EtcdError, TimeoutError) as exc:
            # The store's contract: OSError when it cannot be read or written (serving goes on).
            raise OSError(f"etcd {self.key.decode()}: {exc or type(exc).__name__}") from exc

    def load(self) -> Stored:
        kv = self._run(self.client.get(self.key))
        if kv is None:
            return Stored({}, revision=0)
        return Stored(decode(kv.value), revision=kv.mod_revision)

    def commit(self, assignments: Mapping[str, IPAddress], expected: Stored) -> Stored | None:
        wanted = dict(assignments)
        if expected.revision and wanted == dict(expected.assignments):
            return expected  # nothing to write: every node's unchanged reload stays off etcd
        if not self._run(self.client.put_if(self.key, encode(wanted), int(expected.revision or 0))):
            return None  # another node wrote first: allocate again from what it wrote
        return self.load()


def encode(assignments: Mapping[str, IPAddress]) -> bytes:
    return json.dumps({key: str(ip) for key, ip in sorted(assignments.items())}, separators=(",", ":")).encode()


def decode(raw: bytes) -> dict[str, IPAddress]:
    try:
        data = json.loads(raw)
        return {str(key): ipaddress.ip_address(ip) for key, ip in data.items()}
    except (ValueError, AttributeError, TypeError) as exc:
        raise OSError(f"the cluster's assignments are not lbd's JSON: {exc}") from exc
