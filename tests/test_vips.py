"""The VIP lifecycle against a recording Presence: order, drains, re-acquire, revoke, loopback."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Collection, Sequence

import pytest

from lbd.model import IPAddress
from lbd.net.addresses import NoInterfaceError
from lbd.vips import Vips

VIP = ipaddress.ip_address("198.18.1.200")
OTHER = ipaddress.ip_address("198.18.1.201")
LOOP = ipaddress.ip_address("127.0.0.240")


class RecordingPresence:
    """Remembers every verb; `claim` fails for addresses in `refuse`."""

    def __init__(self, refuse: Collection[IPAddress] = (), leftovers: Collection[IPAddress] = ()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse = set(refuse)
        self.leftovers = set(leftovers)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def set_interfaces(self, interfaces: Sequence[str]) -> None:
        self.calls.append(("interfaces", ",".join(interfaces)))

    async def claim(self, vip: IPAddress) -> str:
        if vip in self.refuse:
            raise NoInterfaceError(f"cannot bind VIP {vip}")
        self.calls.append(("claim", str(vip)))
        return "eth0"

    async def release(self, vip: IPAddress) -> None:
        self.calls.append(("release", str(vip)))

    async def announce(self, vip: IPAddress, interface: str | None) -> None:
        self.calls.append(("announce", f"{vip}@{interface}"))

    async def withdraw(self, vip: IPAddress) -> None:
        self.calls.append(("withdraw", str(vip)))

    async def reconcile(self, wanted: Collection[IPAddress]) -> tuple[dict[IPAddress, str], list[IPAddress]]:
        kept = {ip: "eth0" for ip in self.leftovers if ip in wanted}
        removed = sorted(self.leftovers - set(wanted))
        self.calls.append(("reconcile", ",".join(str(ip) for ip in removed)))
        return kept, removed


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 5))


def test_claim_announce_then_release_waits_for_the_drain() -> None:
    async def scenario() -> None:
        presence = RecordingPresence()
        vips = Vips(presence)
        await vips.acquire(VIP, ["default/web"])
        await vips.announce(VIP)
        await vips.announce(VIP)  # idempotent
        assert vips.held() == {VIP: ("default/web",)} and vips.announced() == {VIP}
        drain = asyncio.get_running_loop().create_future()
        await vips.release(VIP, [drain])
        # Withdrawn at once; the address stays while connections drain.
        assert presence.calls == [("claim", str(VIP)), ("announce", f"{VIP}@eth0"), ("withdraw", str(VIP))]
        assert vips.held() == {} and vips.announced() == frozenset()
        await asyncio.sleep(0.01)
        assert ("release", str(VIP)) not in presence.calls
        drain.set_result(0)
        await asyncio.sleep(0.01)
        assert presence.calls[-1] == ("release", str(VIP))

    run(scenario())


def test_acquired_again_while_draining_stays_bound_and_is_announced_again() -> None:
    async def scenario() -> None:
        presence = RecordingPresence()
        vips = Vips(presence)
        await vips.acquire(VIP, ["default/web"])
        await vips.announce(VIP)
        drain = asyncio.get_running_loop().create_future()
        await vips.release(VIP, [drain])
        await vips.acquire(VIP, ["default/web2"])
        await vips.announce(VIP)
        drain.set_result(0)
        await asyncio.sleep(0.01)
        verbs = [verb for verb, _ in presence.calls]
        assert verbs == ["claim", "announce", "withdraw", "announce"]  # no second claim, no release
        assert vips.held() == {VIP: ("default/web2",)} and vips.announced() == {VIP}

    run(scenario())


def test_revoke_withdraws_and_unbinds_without_waiting() -> None:
    async def scenario() -> None:
        presence = RecordingPresence()
        vips = Vips(presence)
        await vips.acquire(VIP, ["default/web"])
        await vips.announce(VIP)
        await vips.revoke(VIP)
        assert [verb for verb, _ in presence.calls] == ["claim", "announce", "withdraw", "release"]
        assert vips.held() == {}

    run(scenario())


def test_a_refused_claim_raises_and_leaves_nothing() -> None:
    async def scenario() -> None:
        vips = Vips(RecordingPresence(refuse={VIP}))
        with pytest.raises(NoInterfaceError):
            await vips.acquire(VIP, ["default/web"])
        assert vips.held() == {}

    run(scenario())


def test_loopback_vips_never_reach_the_presence() -> None:
    async def scenario() -> None:
        presence = RecordingPresence()
        vips = Vips(presence)
        await vips.acquire(LOOP, ["default/web"])
        await vips.announce(LOOP)
        assert vips.held() == {LOOP: ("default/web",)} and vips.announced() == {LOOP}
        await vips.release(LOOP)
        await asyncio.sleep(0.01)
        await vips.acquire(LOOP, ["default/web"])
        await vips.revoke(LOOP)
        await vips.close()
        assert presence.calls == []

    run(scenario())


def test_adopt_keeps_wanted_leftovers_and_close_releases_everything() -> None:
    async def scenario() -> None:
        presence = RecordingPresence(leftovers={VIP, OTHER})
        vips = Vips(presence)
        await vips.adopt([VIP, LOOP])
        assert presence.calls == [("reconcile", str(OTHER))]  # loopback is not the presence's
        assert vips.held() == {VIP: ()}
        await vips.acquire(VIP, ["default/web"])  # adopted: no second claim
        await vips.announce(VIP)
        await vips.close()
        assert [verb for verb, _ in presence.calls] == ["reconcile", "announce", "withdraw", "release"]
        assert vips.held() == {}

    run(scenario())
