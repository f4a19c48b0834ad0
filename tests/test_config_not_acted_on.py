"""What lbd does not act on is said by name: MetalLB kinds and fields, and services without endpoints."""

from __future__ import annotations

from lbd.config import ConfigError, load

POOLS = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: public, namespace: metallb-system}
spec: {addresses: [192.0.2.0/28]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: internal, namespace: metallb-system}
spec: {addresses: [198.51.100.0/28]}
"""


def by_object(warnings: tuple[ConfigError, ...]) -> dict[tuple[str | None, str | None], str]:
    return {(w.obj, w.field): w.message for w in warnings}


def test_bgp_kinds_warn_by_name_and_status_kinds_stay_quiet(config_file) -> None:
    path = config_file(POOLS + """
---
{apiVersion: metallb.io/v1beta2, kind: BGPPeer, metadata: {name: tor}, spec: {myASN: 64500, peerASN: 64501}}
---
{apiVersion: metallb.io/v1beta1, kind: BGPAdvertisement, metadata: {name: bgp}}
---
{apiVersion: metallb.io/v1beta1, kind: Community, metadata: {name: c}}
---
{apiVersion: metallb.io/v1beta1, kind: BFDProfile, metadata: {name: fast}}
---
{apiVersion: metallb.io/v1beta1, kind: ServiceL2Status, metadata: {name: l2-abc}}
---
{apiVersion: metallb.io/v1beta9, kind: FutureThing, metadata: {name: f}}
""")
    warned = by_object(load([path]).warnings)
    assert set(warned) == {
        ("BGPPeer tor", None), ("BGPAdvertisement bgp", None), ("Community c", None), ("BFDProfile fast", None),
        ("FutureThing f", None),
    }
    assert warned[("BGPPeer tor", None)].startswith(
        "lbd announces VIPs with ARP/NDP only (MetalLB's layer 2 mode), never with BGP")
    assert warned[("FutureThing f", None)] == "lbd does not read MetalLB's FutureThing; this object is ignored"


def test_l2advertisement_fields_lbd_does_not_apply_warn(config_file) -> None:
    path = config_file(POOLS + """
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: edge, namespace: metallb-system}
spec:
  ipAddressPools: [public, old]
  nodeSelectors: [{matchLabels: {kubernetes.io/hostname: node-a}}]
  interfaces: [eth0]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: anywhere, namespace: metallb-system}
spec: {ipAddressPools: [public]}
""")
    loaded = load([path])
    warned = by_object(loaded.warnings)
    assert warned[("L2Advertisement edge", "spec.nodeSelectors")].startswith("not applied: lbd announces from the node")
    assert warned[("L2Advertisement edge", "spec.ipAddressPools")] == "no IPAddressPool named 'old' in the config"
    # MetalLB assigns from `internal` but announces it nowhere; lbd announces it.
    assert warned[("IPAddressPool internal", "metadata.name")].startswith("no L2Advertisement lists this pool")
    # One advertisement on every interface, one on eth0: lbd has one interface list for all.
    assert warned[("L2Advertisement anywhere", None)] == (
        "no spec.interfaces (MetalLB: every interface), but L2Advertisement edge lists some: "
        "lbd announces every VIP on ['eth0'] only")
    assert len(loaded.warnings) == 4
    assert loaded.model.interfaces == ("eth0",)


def test_l2advertisement_that_means_what_lbd_does_is_quiet(config_file) -> None:
    # Every pool listed (or none: every pool), one interface list: MetalLB and lbd agree.
    path = config_file(POOLS + """
---
{apiVersion: metallb.io/v1beta1, kind: L2Advertisement, metadata: {name: a},
 spec: {ipAddressPools: [public, internal], interfaces: [eth0]}}
---
{apiVersion: metallb.io/v1beta1, kind: L2Advertisement, metadata: {name: b}, spec: {interfaces: [eth1]}}
""")
    assert load([path]).warnings == ()


def test_pool_selectors_are_not_applied(config_file) -> None:
    path = config_file(POOLS + """
---
{apiVersion: metallb.io/v1beta1, kind: L2Advertisement, metadata: {name: a},
 spec: {ipAddressPoolSelectors: [{matchLabels: {zone: a}}]}}
""")
    (warning,) = load([path]).warnings  # and no "pool not listed": the selector may pick it
    assert warning.field == "spec.ipAddressPoolSelectors" and warning.message.startswith("not applied")


def test_load_balancer_class_warns(config_file) -> None:
    path = config_file("""
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {type: LoadBalancer, loadBalancerClass: example.com/other, ports: [{port: 80}]}
---
{apiVersion: v1, kind: Endpoints, metadata: {name: web}}
""")
    (warning,) = load([path]).warnings
    assert warning.field == "spec.loadBalancerClass"
    assert warning.message.startswith("loadBalancerClass 'example.com/other' is not checked")


def test_service_without_any_endpoint_object_says_where_endpoints_come_from(config_file) -> None:
    path = config_file("""
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
---
apiVersion: v1
kind: Service
metadata: {name: internal}
spec: {ports: [{port: 80}]}
""")
    (warning,) = load([path]).warnings  # the ClusterIP one is not exposed: nothing to say
    assert (warning.obj, warning.field, warning.line) == ("Service shop/web", None, 3)
    assert "EndpointSlices labelled kubernetes.io/service-name=web in namespace shop" in warning.message
    assert "the Endpoints object shop/web" in warning.message
    assert "Deployment shop/web matches its selector, but lbd cannot see pods" in warning.message


def test_empty_endpoint_objects_are_what_kubernetes_writes_for_no_pods(config_file) -> None:
    # A scaled-to-zero Deployment: an EndpointSlice with no endpoints, an Endpoints with no subsets.
    path = config_file("""
{apiVersion: v1, kind: Service, metadata: {name: a}, spec: {type: LoadBalancer, ports: [{port: 80}]}}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, addressType: IPv4, endpoints: [],
 metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}}
---
{apiVersion: v1, kind: Service, metadata: {name: b}, spec: {type: LoadBalancer, ports: [{port: 81}]}}
---
{apiVersion: v1, kind: Endpoints, metadata: {name: b}}
""")
    assert load([path]).warnings == ()


def test_native_service_without_endpoints_list(config_file) -> None:
    path = config_file("""
services:
  - {name: forgot, ports: [{port: 80}]}
  - {name: meant, ports: [{port: 81}], endpoints: []}
""")
    (warning,) = load([path]).warnings
    assert (warning.obj, warning.field) == ("Service default/forgot", "services[0]")
    assert warning.message.startswith("no endpoints: list the backends under `endpoints:`")
