"""The cluster's ownership gate without etcd: answers from a fake member, candidacy handed over
once per pass, Local services only from a node with a ready local endpoint."""

from __future__ import annotations

import ipaddress

from lbd.cluster.gate import ClusterGate
from lbd.model import Endpoint, Service, ServicePort, TrafficPolicy
from lbd.ownership import Ownership, OwnershipReason
from lbd.readiness import assess
from lbd.views import nodes_table

A, B, C = (ipaddress.ip_address(f"198.18.1.{n}") for n in (200, 201, 202))


class FakeMember:
    node = "node-a"

    def __init__(self, answering: set[str], owners: dict[str, str]) -> None:
        self.answering, self.owners = answering, owners
        self.wanted: list[set[str]] = []

    def is_answering(self, vip: str) -> bool:
        return vip in self.answering

    def owner_of(self, vip: str) -> str | None:
        return self.owners.get(vip)

    def want(self, vips: set[str]) -> None:
        self.wanted.append(vips)


WEB = Service("web", ports=(ServicePort("http", 80, 80),), endpoints=(Endpoint(ipaddress.ip_address("198.18.1.11")),))
LOCAL_ELSEWHERE = Service("local", ports=(ServicePort("http", 81, 80),), external_traffic_policy=TrafficPolicy.LOCAL,
                          endpoints=(Endpoint(ipaddress.ip_address("198.18.1.12"), node_name="node-b"),))


def test_owner_standby_and_candidacy() -> None:
    member = FakeMember({str(A)}, {str(A): "node-a", str(B): "node-b", str(C): "node-b"})
    gate = ClusterGate(member)
    readiness = {s.key: assess(s, "node-a") for s in (WEB, LOCAL_ELSEWHERE)}
    assert gate.decide(A, [WEB], readiness) == Ownership(True, OwnershipReason.LEASE_HOLDER, "node-a")
    assert gate.decide(B, [WEB], readiness) == Ownership(False, OwnershipReason.OWNED_BY_PEER, "node-b")
    # Local with no ready endpoint here: not a candidate, and the status still names the holder.
    assert gate.decide(C, [LOCAL_ELSEWHERE], readiness) == Ownership(False, OwnershipReason.NO_LOCAL_ENDPOINT, "node-b")
    assert member.wanted == []  # handed over once per pass, not per VIP
    gate.decided()
    assert member.wanted == [{str(A), str(B)}]
    # The next pass starts afresh: a VIP no longer asked about is no longer wanted.
    assert not gate.decide(C, [WEB], readiness).owner
    gate.decided()
    assert member.wanted[-1] == {str(C)}


def test_a_vip_nobody_holds_yet() -> None:
    member = FakeMember(set(), {})
    decided = ClusterGate(member).decide(A, [WEB], {WEB.key: assess(WEB, "node-a")})
    assert decided == Ownership(False, OwnershipReason.NO_OWNER, None)
    assert "no node holds the VIP yet" in decided.reason.text


def test_nodes_table() -> None:
    rows = [{"name": "node-a", "self": True, "leaseTTL": 2, "candidateFor": 3, "vips": ["198.18.1.200"]},
            {"name": "node-b", "self": False, "leaseTTL": None, "candidateFor": 0, "vips": []}]
    lines = nodes_table(rows).splitlines()
    assert lines[0].split() == ["NAME", "LEASE-TTL", "CANDIDATE-FOR", "VIPS"]
    assert lines[1].split() == ["node-a", "*", "2s", "3", "1"]
    assert lines[2].split() == ["node-b", "<none>", "0", "0"]
    assert nodes_table(rows, wide=True).splitlines()[1].split()[-1] == "198.18.1.200"
    assert "single node" in nodes_table([])
