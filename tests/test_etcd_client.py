"""The etcd client (lbd.cluster.etcd) against a real, throwaway etcd member on loopback.

scripts/setup.sh unpacks Debian's etcd-server (3.4) into .venv/etcd; without it these are
skipped, except under CI (LBD_REQUIRE_INTEGRATION=1), where a missing etcd fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
import urllib.request
from pathlib import Path

import pytest

from lbd.cluster.etcd import MAX_TXN_KEYS, Compacted, EtcdClient, Unavailable, WatchEvent, prefix_end
from lbd.lab.backend import die_with_parent
from lbd.loop import run

ROOT = Path(__file__).resolve().parent.parent
# scripts/setup.sh unpacks Debian's etcd-server here; an installed etcd does too.
ETCD = os.environ.get("LBD_ETCD") or next(
    (str(p) for p in (ROOT / ".venv/etcd/usr/bin/etcd", Path(shutil.which("etcd") or "/nonexistent")) if p.exists()),
    "etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def etcd_member(data: Path, *extra: str) -> Iterator[str]:
    """A one-member etcd on loopback ports of its own; its URL while it runs."""
    if not Path(ETCD).exists():
        if os.environ.get("LBD_REQUIRE_INTEGRATION") == "1":
            pytest.fail("etcd is not installed (scripts/setup.sh installs etcd-server)")
        pytest.skip("etcd is not installed (scripts/setup.sh installs etcd-server)")
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        [ETCD, "--name", "t", "--data-dir", str(data / "d"), "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"t={peer_url}",
         *extra],
        stdout=subprocess.DEVNULL, stderr=open(data / "etcd.log", "wb"), start_new_session=True,
        preexec_fn=die_with_parent,  # a test run killed hard leaves no etcd behind
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                    if b'"health":"true"' in answer.read().replace(b" ", b""):
                        break
            except OSError:
                pass
            assert proc.poll() is None, (data / "etcd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "etcd did not become healthy"
            time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_member(tmp_path_factory.mktemp("etcd")) as url:
        yield url


def test_prefix_end() -> None:
    assert prefix_end(b"/lbd/") == b"/lbd0"
    assert prefix_end(b"a\xff") == b"b"


def test_a_lease_reads_back_the_ttl_etcd_granted_and_goes_with_revoke(etcd: str) -> None:
    async def main() -> tuple[int, int, int, int]:
        c = EtcdClient([etcd])
        try:
            lease, granted = await c.grant(1)
            renewed = await c.keepalive(lease)
            await c.revoke(lease)
            return granted, renewed, await c.keepalive(lease), await c.time_to_live(lease)
        finally:
            await c.close()

    granted, renewed, after, left = run(main())
    # etcd raises TTLs below 1.5 x its election timeout (1 s by default): 1 becomes 2.
    assert granted == renewed == 2
    assert after == 0 and left == -1


def test_create_is_exclusive_and_a_key_goes_with_its_lease(etcd: str) -> None:
    async def main() -> list[object]:
        c = EtcdClient([etcd])
        try:
            lease, _ = await c.grant(5)
            first = await c.create(b"/t/vip/a", b"node-1", lease)
            second = await c.create(b"/t/vip/a", b"node-2")
            _, held = await c.range(b"/t/vip/")
            not_mine = await c.delete_if(b"/t/vip/a", b"node-2")
            await c.revoke(lease)
            _, after = await c.range(b"/t/vip/")
            return [first, second, [(kv.key, kv.value, kv.lease == lease) for kv in held], not_mine, after]
        finally:
            await c.close()

    assert run(main()) == [True, False, [(b"/t/vip/a", b"node-1", True)], False, []]


def test_claim_many_creates_all_in_one_revision_or_none_and_names_the_taken(etcd: str) -> None:
    async def main() -> list[object]:
        c = EtcdClient([etcd])
        try:
            lease, _ = await c.grant(5)
            keys = [b"/m/vip/%d" % i for i in range(MAX_TXN_KEYS)]
            taken, revision = await c.claim_many(keys[:3], b"node-1", lease)
            _, held = await c.range(b"/m/vip/")
            again, _ = await c.claim_many(keys, b"node-2", lease)  # 3 of the 64 exist: none is made
            _, after = await c.range(b"/m/vip/")
            await c.revoke(lease)
            return [taken, sorted({kv.create_revision for kv in held}) == [revision],
                    [kv.value for kv in held], again, len(after)]
        finally:
            await c.close()

    assert run(main()) == [set(), True, [b"node-1"] * 3, {b"/m/vip/0", b"/m/vip/1", b"/m/vip/2"}, 3]


def test_a_watch_sees_claims_and_releases_and_a_compacted_start_raises(etcd: str) -> None:
    async def main() -> tuple[list[WatchEvent], bool]:
        c = EtcdClient([etcd])
        try:
            revision, _ = await c.range(b"/w/")
            seen: list[WatchEvent] = []

            async def follow() -> None:
                async for batch in c.watch(b"/w/", revision + 1):
                    seen.extend(batch)
                    if len(seen) >= 2:
                        return

            task = asyncio.get_running_loop().create_task(follow())
            await asyncio.sleep(0.2)
            await c.create(b"/w/x", b"node-1")
            assert await c.delete_if(b"/w/x", b"node-1")
            await asyncio.wait_for(task, 5)
            last = await c.put(b"/w/y", b"1")
            await c._call("/kv/compaction", {"revision": last, "physical": True})
            try:
                async for _ in c.watch(b"/w/", 1):
                    break
            except Compacted:
                return seen, True
            return seen, False
        finally:
            await c.close()

    seen, compacted = run(main())
    assert [(e.kind, e.kv.key) for e in seen] == [("PUT", b"/w/x"), ("DELETE", b"/w/x")]
    assert seen[1].prev is not None and seen[1].prev.value == b"node-1"
    assert compacted


def test_failover_across_endpoints_and_one_deadline_per_call(etcd: str) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}"

    async def main() -> tuple[bool, float, str]:
        good = EtcdClient([refused, etcd], timeout=0.5)
        stuck = EtcdClient([mute], timeout=0.3)
        try:
            ok = await good.create(b"/f/k", b"v")
            started = time.monotonic()
            try:
                await stuck.range(b"/f/")
            except Unavailable as exc:
                return ok, time.monotonic() - started, str(exc)
            return ok, -1.0, ""
        finally:
            await good.close()
            await stuck.close()

    try:
        ok, waited, why = run(main())
    finally:
        silent.close()
    assert ok
    assert 0.25 <= waited < 1.5, waited  # the call's deadline, not the HTTP library's default
    assert "no answer within 0.3 s" in why
