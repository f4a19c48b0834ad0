"""MetalLB objects as lbd applies them: L2Advertisement, and the kinds and fields it does not act on.

lbd is one node's layer-2 speaker: it announces every pool's VIPs with ARP/NDP on the union of
the interfaces that L2Advertisements list. Where MetalLB would do something else with the same
manifests (an advertisement limited to some pools or nodes, BGP, a loadBalancerClass), lbd says
so by name in a config warning, seen in `lbd check` and logged at start and on reload, instead
of ignoring it silently; `lbd check --strict` turns warnings into a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lbd.config import values as v
from lbd.config.collected import Collected
from lbd.config.pools import PoolDraft
from lbd.config.reading import Fields, Loc

L2_SPEC_FIELDS = ("interfaces", "ipAddressPools")
L2_SPEC_IGNORED = ("ipAddressPoolSelectors", "nodeSelectors")

_NO_BGP = "lbd announces VIPs with ARP/NDP only (MetalLB's layer 2 mode), never with BGP"
# MetalLB kinds lbd reads nothing from, and what the user should know about each.
NOT_ACTED_ON = {
    "BGPPeer": f"{_NO_BGP}: no BGP session is opened",
    "BGPAdvertisement": f"{_NO_BGP}: no pool is advertised over BGP",
    "Community": f"{_NO_BGP}: communities have no use",
    "BFDProfile": f"{_NO_BGP}: BFD has no use",
}
# MetalLB's output, not its configuration (a `kubectl get -o yaml` dump may hold them): no word.
STATUS_KINDS = frozenset({"ServiceL2Status", "ServiceBGPStatus"})
METALLB_API_GROUP = "metallb.io/"


def skipped_kind(kind: str, api_version: object) -> str | None:
    """Why lbd ignores this MetalLB object (a warning), or None for a kind skipped without a word."""
    if kind in NOT_ACTED_ON:
        return f"{NOT_ACTED_ON[kind]}; this object is ignored"
    if isinstance(api_version, str) and api_version.startswith(METALLB_API_GROUP) and kind not in STATUS_KINDS:
        return f"lbd does not read MetalLB's {kind}; this object is ignored"
    return None


def load_balancer_class(value: object) -> str:
    """The warning for a Service's spec.loadBalancerClass, which lbd does not check."""
    return (f"loadBalancerClass {value!r} is not checked: lbd serves this Service like any LoadBalancer "
            "Service (MetalLB serves only Services of the class it runs with, by default none)")


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One L2Advertisement, reduced to what decides whether lbd does what MetalLB would."""

    name: str
    loc: Loc  # the object
    interfaces: tuple[str, ...]
    pools: tuple[str, ...] | None  # spec.ipAddressPools; None: not limited by name
    pools_loc: Loc
    by_selector: bool  # spec.ipAddressPoolSelectors: pools chosen by labels lbd does not keep


def read_advertisement(spec: Fields, name: str | None, loc: Loc, into: Collected) -> Advertisement:
    """spec.interfaces go to the model; the fields lbd does not apply get a warning each."""
    interfaces = []
    for _, item, where in spec.items("interfaces"):
        interface = v.interface_name(item, where)
        if interface is not None:
            interfaces.append(interface)
            into.interfaces.append(interface)
    pools: list[str] | None = None
    if "ipAddressPools" in spec:
        pools = [item for _, item, where in spec.items("ipAddressPools") if _pool_name(item, where)]
    if "ipAddressPoolSelectors" in spec:
        spec.key_at("ipAddressPoolSelectors").warn(
            "not applied: lbd announces every pool's VIPs (MetalLB only the selected pools'); "
            "list the pools by name in ipAddressPools to have lbd check them")
    if "nodeSelectors" in spec:
        spec.key_at("nodeSelectors").warn(
            "not applied: lbd announces from the node it runs on, whatever that node's labels "
            "(MetalLB only from the selected nodes)")
    return Advertisement(name or "(unnamed)", loc, tuple(interfaces), None if pools is None else tuple(pools),
                         spec.key_at("ipAddressPools"), "ipAddressPoolSelectors" in spec)


def _pool_name(item: object, where: Loc) -> bool:
    if isinstance(item, str) and item:
        return True
    where.error(f"expected a pool name, got {item!r}")
    return False


def check_advertisements(ads: Sequence[Advertisement], pools: Sequence[PoolDraft]) -> None:
    """Warn where lbd's one announcement (every pool, every listed interface) differs from MetalLB's."""
    if not ads:
        return
    names = {draft.pool.name for draft in pools}
    for ad in ads:
        for missing in [p for p in ad.pools or () if p not in names]:
            ad.pools_loc.warn(f"no IPAddressPool named {missing!r} in the config")
    # Pools no advertisement selects: MetalLB assigns their IPs but never announces them.
    if all(ad.pools is not None and not ad.by_selector for ad in ads):
        selected = {p for ad in ads for p in ad.pools or ()}
        for draft in pools:
            if draft.pool.name not in selected:
                draft.name_loc.warn(
                    "no L2Advertisement lists this pool in ipAddressPools: MetalLB would assign its IPs "
                    "but not announce them; lbd announces every pool")
    listed = [ad for ad in ads if ad.interfaces]
    if listed:
        every = sorted({i for ad in listed for i in ad.interfaces})
        for ad in ads:
            if not ad.interfaces:
                ad.loc.warn(
                    f"no spec.interfaces (MetalLB: every interface), but L2Advertisement {listed[0].name} lists "
                    f"some: lbd announces every VIP on {every} only")
