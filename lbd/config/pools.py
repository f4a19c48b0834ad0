"""Address pools (native and IPAddressPool.spec): ranges, overlaps in and across pools, duplicate names."""

from __future__ import annotations

from dataclasses import dataclass

from lbd.config.reading import Fields, Loc
from lbd.config.values import address_range
from lbd.config.yamlsrc import YSeq
from lbd.model import AddressRange, Pool


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """One address entry of a pool as written, for overlap errors."""

    range: AddressRange
    text: str
    loc: Loc


@dataclass(frozen=True, slots=True)
class PoolDraft:
    """A validated pool and where it and its entries came from."""

    pool: Pool
    name_loc: Loc
    entries: tuple[PoolEntry, ...]


def pool(pool_name: str, f: Fields, name_loc: Loc) -> PoolDraft:
    """addresses/autoAssign/avoidBuggyIPs, shared by the native pool and IPAddressPool.spec."""
    entries: list[PoolEntry] = []
    for _, item, where in f.items("addresses", required=True):
        parsed = address_range(item, where)
        if parsed is None:
            continue
        for earlier in entries:
            if parsed.overlaps(earlier.range):
                where.error(f"{item.strip()!r} overlaps {earlier.text!r} ({earlier.loc.path}) in the same pool")
        entries.append(PoolEntry(parsed, item.strip(), where))
    if "addresses" in f and isinstance(f.get("addresses"), YSeq) and not f.get("addresses"):
        f.at("addresses").error("a pool needs at least one address range")
    return PoolDraft(
        Pool(
            name=pool_name,
            ranges=tuple(e.range for e in entries),
            auto_assign=f.boolean("autoAssign", True),
            avoid_buggy_ips=f.boolean("avoidBuggyIPs", False),
        ),
        name_loc,
        tuple(entries),
    )


def check_pools(drafts: list[PoolDraft]) -> None:
    """Pool names are unique and no address is in two pools (MetalLB rejects both)."""
    seen: dict[str, PoolDraft] = {}
    for position, draft in enumerate(drafts):
        first = seen.setdefault(draft.pool.name, draft)
        if first is not draft:
            draft.name_loc.error(
                f"duplicate pool name {draft.pool.name!r} (first defined at {first.name_loc.where()})"
            )
        for earlier in drafts[:position]:
            for entry in draft.entries:
                for other in earlier.entries:
                    if entry.range.overlaps(other.range):
                        entry.loc.error(
                            f"{entry.text!r} overlaps {other.text!r} of IPAddressPool {earlier.pool.name} "
                            f"({other.loc.where()}); a VIP can belong to one pool only"
                        )
