"""etcd v3 through its JSON gateway (the route Patroni takes): leases, transactions, ranges, watch.

Plain HTTP/1.1 POSTs of JSON (keys and values base64, 64-bit numbers as strings) with aiohttp on
the event loop: no gRPC runtime, no threads, nothing that a fork could leave half-locked (the
workers of `lbd run --workers` are exec'd and never hold a client anyway). Measured side by side
(bench/etcd_clients.py): ~200 us of CPU per keepalive against aetcd's (grpc.aio) ~320 and
httpx's ~990, with the failover across endpoints that aetcd (one host per client) lacks. Unary calls have an
exact deadline each (`timeout`, over every endpoint tried); a refused or timed-out endpoint is
left for the next one, and the one that answered is tried first next time. A watch is a
streamed response, one JSON object per line; a watch cut short is resumed by the caller from
the last revision + 1, and one whose revision was compacted raises Compacted (resync in full).

Only what cluster mode needs; etcd's own API reference names every field used here.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

DEFAULT_TIMEOUT = 1.0  # seconds per unary call, all endpoints included
MAX_TXN_KEYS = 64  # keys per transaction; etcd's --max-txn-ops is 128 by default


class EtcdError(Exception):
    """etcd answered with an error (its gRPC code and message)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Unavailable(EtcdError):
    """No endpoint answered within the deadline."""


class Compacted(EtcdError):
    """A watch asked for history etcd no longer has: read everything again (`range`)."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted up to {revision}")
        self.revision = revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "PUT" or "DELETE"
    kv: KeyValue
    prev: KeyValue | None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with `prefix` (etcd's `--prefix`)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _kv(raw: dict[str, Any] | None) -> KeyValue | None:
    if not raw:
        return None
    return KeyValue(_unb64(raw.get("key")), _unb64(raw.get("value")), int(raw.get("create_revision", 0)),
                    int(raw.get("mod_revision", 0)), int(raw.get("lease", 0)))


class EtcdClient:
    def __init__(self, endpoints: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._current = 0
        self._http: aiohttp.ClientSession | None = None  # made on the loop, at the first call

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(trust_env=False)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _call(self, path: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """POST to the first endpoint that answers, within one deadline for the whole call."""
        deadline = timeout if timeout is not None else self.timeout
        errors: list[str] = []
        try:
            async with asyncio.timeout(deadline):
                for attempt in range(len(self.endpoints)):
                    index = (self._current + attempt) % len(self.endpoints)
                    url = self.endpoints[index] + "/v3" + path
                    try:
                        async with self._session().post(url, json=body) as response:
                            data = await response.json(content_type=None)
                            status = response.status
                    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                        errors.append(f"{self.endpoints[index]}: {exc!r}")
                        continue
                    self._current = index
                    if status != 200 or "error" in data:
                        raise EtcdError(str(data.get("message") or data.get("error") or status), data.get("code"))
                    return data
        except TimeoutError:
            errors.append(f"no answer within {deadline} s")
        raise Unavailable("; ".join(errors) or "no endpoint answered")

    # ---- leases ---------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, the TTL etcd granted, which may be more than asked for)."""
        data = await self._call("/lease/grant", {"TTL": ttl})
        return int(data["ID"]), int(data["TTL"])

    async def keepalive(self, lease: int, timeout: float | None = None) -> int:
        """Renew a lease: its TTL, or 0 if etcd no longer has it."""
        data = await self._call("/lease/keepalive", {"ID": lease}, timeout)
        return int(data.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        try:
            await self._call("/lease/revoke", {"ID": lease})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    async def time_to_live(self, lease: int) -> int:
        """Seconds left on a lease; -1 if it is gone."""
        data = await self._call("/lease/timetolive", {"ID": lease})
        return int(data.get("TTL", -1))

    # ---- keys -----------------------------------------------------------------------------------

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> bool:
        """Put `key` only if it does not exist (create_revision == 0); True if this call made it."""
        return (await self.claim(key, value, lease))[0]

    async def claim(self, key: bytes, value: bytes, lease: int = 0) -> tuple[bool, int]:
        """`create`, with the store's revision after it (the key's create revision if it won)."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        data = await self._call("/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            "success": [{"request_put": put}],
        })
        return bool(data.get("succeeded")), int(data["header"]["revision"])

    async def claim_many(self, keys: Sequence[bytes], value: bytes, lease: int) -> tuple[set[bytes], int]:
        """Create every key in one transaction if none exists (at most MAX_TXN_KEYS): (the keys
        found taken, none if it succeeded; the store's revision, the keys' create revision if
        it did). One revision for many keys is one watch event per watcher, not one per key."""
        compare = [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0} for key in keys]
        data = await self._call("/kv/txn", {
            "compare": compare,
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease}} for key in keys],
            "failure": [{"request_range": {"key": _b64(key), "count_only": True}} for key in keys],
        })
        revision = int(data["header"]["revision"])
        if data.get("succeeded"):
            return set(), revision
        counts = [int(r.get("response_range", {}).get("count", 0)) for r in data.get("responses", [])]
        return {key for key, count in zip(keys, counts, strict=False) if count}, revision

    async def delete_if(self, key: bytes, value: bytes) -> bool:
        """Delete `key` only if it still holds `value` (a node releases only its own claim)."""
        data = await self._call("/kv/txn", {
            "compare": [{"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        })
        return bool(data.get("succeeded"))

    async def release(self, key: bytes, value: bytes, marker: bytes, lease: int) -> bool:
        """Delete `key` if it still holds `value`, and in the same revision put `marker` (on
        `lease`): watchers tell a voluntary release from an operator's delete by the marker."""
        data = await self._call("/kv/txn", {
            "compare": [{"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}],
            "success": [{"request_delete_range": {"key": _b64(key)}},
                        {"request_put": {"key": _b64(marker), "value": _b64(value), "lease": lease}}],
        })
        return bool(data.get("succeeded"))

    async def get(self, key: bytes) -> KeyValue | None:
        data = await self._call("/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def put_if(self, key: bytes, value: bytes, mod_revision: int) -> bool:
        """Compare-and-swap: put `key` only if it was last changed at `mod_revision` (0: only if
        it does not exist)."""
        compare = ({"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                   if mod_revision == 0 else
                   {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision})
        data = await self._call("/kv/txn", {
            "compare": [compare], "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]})
        return bool(data.get("succeeded"))

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        data = await self._call("/kv/put", body)
        return int(data["header"]["revision"])

    async def range(self, prefix: bytes) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix`, and the store's revision they were read at."""
        data = await self._call("/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        kvs = [kv for raw in data.get("kvs", []) if (kv := _kv(raw)) is not None]
        return int(data["header"]["revision"]), kvs

    # ---- watch ----------------------------------------------------------------------------------

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Changes under `prefix` from `start_revision` on, a batch per etcd response, until the
        stream ends or fails (the caller resumes from the last revision + 1)."""
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": start_revision, "prev_kv": True}}
        endpoint = self.endpoints[self._current]
        # A quiet watch is not a dead one: only connecting has a deadline.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=None)
        async with self._session().post(endpoint + "/v3/watch", json=body, timeout=timeout) as response:
            if response.status != 200:
                raise EtcdError(f"watch refused: HTTP {response.status}")
            pending = bytearray()  # one JSON object per line; a line may outgrow aiohttp's readline
            async for chunk in response.content.iter_any():
                pending += chunk
                while (end := pending.find(b"\n")) >= 0:
                    line = bytes(pending[:end])
                    del pending[:end + 1]
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result", {})
                    compacted = int(result.get("compact_revision", 0))
                    if compacted:
                        raise Compacted(compacted)
                    events = [
                        WatchEvent(e.get("type", "PUT"), _kv(e["kv"]), _kv(e.get("prev_kv")))  # type: ignore[arg-type]
                        for e in result.get("events", [])
                    ]
                    if events:
                        yield events
