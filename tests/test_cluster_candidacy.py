"""The candidacy index (lbd.cluster.candidacy): members' records, the VIP sets they name by
digest, and each VIP's candidates, with the VIPs every change touches."""

from __future__ import annotations

from lbd.cluster.candidacy import CandidacyIndex, NodeRecord, candidacy_digest, decode_vips, encode_vips

A = frozenset({"198.18.0.10", "198.18.0.11", "198.18.0.12"})
LOCAL = frozenset({"198.18.0.10"})


def test_records_name_sets_by_digest_and_identical_sets_are_one_group() -> None:
    index = CandidacyIndex("node-a")
    assert index.set_mine(A) == A
    digest = candidacy_digest(A)
    assert decode_vips(encode_vips(A)) == A and candidacy_digest(frozenset()) == ""
    assert index.set_published(digest, A) == frozenset()  # nobody names it yet
    assert index.record_changed("node-b", NodeRecord(digest, 2)) == A
    assert index.record_changed("node-c", NodeRecord(digest, 2)) == A
    assert len(index.groups) == 1
    assert index["198.18.0.11"] == frozenset({"node-a", "node-b", "node-c"})
    assert index["198.18.0.11"] is index["198.18.0.12"]  # one set object: the core's caches hit
    assert set(index) == A and "198.18.0.99" not in index and len(index) == 3


def test_a_record_naming_an_unseen_set_counts_once_the_set_arrives() -> None:
    index = CandidacyIndex("node-a")
    digest = candidacy_digest(LOCAL)
    assert index.record_changed("node-b", NodeRecord(digest, 2)) == frozenset()
    assert "198.18.0.10" not in index
    assert index.set_published(digest, LOCAL) == LOCAL
    assert index["198.18.0.10"] == frozenset({"node-b"})


def test_a_member_leaving_or_changing_touches_only_its_vips() -> None:
    index = CandidacyIndex("node-a")
    index.set_mine(A)
    index.load({"node-b": NodeRecord(candidacy_digest(A), 2), "node-c": NodeRecord(candidacy_digest(LOCAL), 2)},
               {candidacy_digest(A): A, candidacy_digest(LOCAL): LOCAL})
    assert index["198.18.0.10"] == frozenset({"node-a", "node-b", "node-c"})
    assert index.record_changed("node-c", None) == LOCAL  # gone with its lease
    assert index["198.18.0.10"] == frozenset({"node-a", "node-b"})
    assert index.record_changed("node-b", NodeRecord("", 2)) == A  # its candidacy emptied
    assert index["198.18.0.12"] == frozenset({"node-a"})
    assert index.set_mine(frozenset()) == A
    assert "198.18.0.12" not in index


def test_a_record_lbd_did_not_write_is_a_member_with_no_candidacy() -> None:
    assert NodeRecord.decode(b"not json") == NodeRecord("", 0)
    record = NodeRecord("abc", 2, ("198.18.0.1", 7947))
    assert NodeRecord.decode(record.encode()) == record
