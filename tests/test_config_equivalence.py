"""The same set-up written natively and as manifests loads to an equal Model."""

from __future__ import annotations

import itertools
from pathlib import Path

from lbd.config import load
from lbd.model import Protocol, SessionAffinity

REPO = Path(__file__).resolve().parent.parent

NATIVE = """
interfaces: [eth0, eth1]
pools:
  - name: public
    addresses: [203.0.113.10-203.0.113.20, "2001:db8::/124"]
  - name: internal
    addresses: [10.50.0.0/28]
    autoAssign: false
services:
  - name: shop
    namespace: prod
    annotations: {metallb.io/address-pool: public, lbd.io/idle-timeout: 10m}
    selector: {app: shop}
    sessionAffinity: ClientIP
    sessionAffinityConfig: {clientIP: {timeoutSeconds: 1800}}
    externalTrafficPolicy: Local
    ports:
      - {name: http, port: 80, targetPort: 8080}
      - {name: https, port: 443, targetPort: 8443}
    endpoints:
      - {address: 10.244.1.10, nodeName: node-a}
      - {address: 10.244.2.10, nodeName: node-b, ready: false}
      - {address: 10.244.3.10, nodeName: node-c, ready: false, serving: true, terminating: true}
    readinessProbe:
      httpGet: {path: /healthz, port: http, httpHeaders: [{name: X-Probe, value: lbd}]}
      periodSeconds: 5
      failureThreshold: 2
  - name: dns
    namespace: kube-system
    annotations: {metallb.io/loadBalancerIPs: "203.0.113.53,2001:db8::53", metallb.io/allow-shared-ip: dns}
    selector: {k8s-app: kube-dns}
    ipFamilies: [IPv4, IPv6]
    ports:
      - {name: dns, port: 53, targetPort: 53, protocol: UDP}
      - {name: dns-tcp, port: 53, targetPort: 53, protocol: TCP}
    endpoints: [10.244.1.53, 10.244.2.53, {address: 10.244.3.53, ready: false, serving: false}]
    readinessProbe:
      tcpSocket: {port: 53}
  - name: metrics
    namespace: prod
    type: ClusterIP
    selector: {app: metrics}
    ports: [{port: 9090}]
    endpoints: [10.244.1.90]
"""

POOLS = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: public, namespace: metallb-system}
spec:
  addresses: [203.0.113.10-203.0.113.20, "2001:db8::/124"]
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: internal, namespace: metallb-system}
spec:
  addresses: [10.50.0.0/28]
  autoAssign: false
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: l2, namespace: metallb-system}
spec:
  ipAddressPools: [public, internal]
  interfaces: [eth0, eth1]
"""

SHOP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, namespace: prod, labels: {app: shop}}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop, version: v2}}
    spec:
      containers:
        - name: shop
          image: registry.example/shop:2.1
          ports:
            - {name: http, containerPort: 8080}
            - {name: https, containerPort: 8443}
          readinessProbe:
            httpGet: {path: /healthz, port: http, httpHeaders: [{name: X-Probe, value: lbd}]}
            periodSeconds: 5
            failureThreshold: 2
          livenessProbe:
            tcpSocket: {port: http}
---
apiVersion: v1
kind: Service
metadata:
  name: shop
  namespace: prod
  annotations: {metallb.io/address-pool: public, lbd.io/idle-timeout: 10m}
spec:
  type: LoadBalancer
  selector: {app: shop}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1800}}
  externalTrafficPolicy: Local
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: https, port: 443, targetPort: https}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-8fz2k
  namespace: prod
  labels: {kubernetes.io/service-name: shop}
addressType: IPv4
ports:
  - {name: http, port: 8080}
  - {name: https, port: 8443}
endpoints:
  - addresses: [10.244.1.10]
    conditions: {ready: true}
    nodeName: node-a
  - addresses: [10.244.2.10]
    conditions: {ready: false}
    nodeName: node-b
  - addresses: [10.244.3.10]
    conditions: {ready: false, serving: true, terminating: true}
    nodeName: node-c
"""

DNS_AND_METRICS = """
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: coredns, namespace: kube-system}
    spec:
      selector: {matchLabels: {k8s-app: kube-dns}}
      template:
        metadata: {labels: {k8s-app: kube-dns}}
        spec:
          containers:
            - name: coredns
              ports:
                - {name: dns, containerPort: 53, protocol: UDP}
                - {name: dns-tcp, containerPort: 53, protocol: TCP}
              readinessProbe: {tcpSocket: {port: dns-tcp}}
  - apiVersion: v1
    kind: Service
    metadata:
      name: dns
      namespace: kube-system
      annotations: {metallb.io/loadBalancerIPs: "203.0.113.53,2001:db8::53", metallb.io/allow-shared-ip: dns}
    spec:
      type: LoadBalancer
      selector: {k8s-app: kube-dns}
      ipFamilies: [IPv4, IPv6]
      ipFamilyPolicy: PreferDualStack
      ports:
        - {name: dns, port: 53, targetPort: 53, protocol: UDP}
        - {name: dns-tcp, port: 53, targetPort: dns-tcp, protocol: TCP}
  - apiVersion: v1
    kind: Endpoints
    metadata: {name: dns, namespace: kube-system}
    subsets:
      - addresses: [{ip: 10.244.1.53}, {ip: 10.244.2.53}]
        notReadyAddresses: [{ip: 10.244.3.53}]
        ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]
  - apiVersion: v1
    kind: Service
    metadata: {name: metrics, namespace: prod}
    spec:
      selector: {app: metrics}
      ports: [{port: 9090}]
  - apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: metrics-1, namespace: prod, labels: {kubernetes.io/service-name: metrics}}
    addressType: IPv4
    endpoints: [{addresses: [10.244.1.90]}]
  - apiVersion: v1
    kind: Secret
    metadata: {name: shop-db, namespace: prod}
    stringData: {password: hunter2}
"""


def write_manifests(config_file) -> list[Path]:
    return [
        config_file(POOLS, "manifests/pools.yaml"),
        config_file(SHOP, "manifests/shop.yaml"),
        config_file(DNS_AND_METRICS, "manifests/dns.yaml"),
    ]


def test_realistic_setup_is_equal_both_ways(config_file):
    native = load([config_file(NATIVE, "native.yaml")])
    manifests = load(write_manifests(config_file))
    assert native.warnings == () and manifests.warnings == ()
    assert native.model == manifests.model

    # And the model is the one we meant (equality of two wrong models would prove little).
    model = native.model
    assert model.interfaces == ("eth0", "eth1")
    assert [p.name for p in model.pools] == ["public", "internal"]
    assert [s.key for s in model.services] == ["kube-system/dns", "prod/metrics", "prod/shop"]
    shop = model.service("prod/shop")
    assert shop.session_affinity is SessionAffinity.CLIENT_IP and shop.affinity_timeout_seconds == 1800
    assert [p.target_port for p in shop.ports] == [8080, 8443]
    assert shop.readiness_probe.action.port == 8080 and shop.readiness_probe.period_seconds == 5
    assert [(e.ready, e.serving, e.terminating) for e in shop.endpoints] == [
        (True, True, False), (False, True, False), (False, True, True),
    ]
    dns = model.service("kube-system/dns")
    assert {p.protocol for p in dns.ports} == {Protocol.UDP, Protocol.TCP}
    assert dns.readiness_probe.action.port == 53 and dns.ip_family == 4 and len(dns.requested_ips) == 2
    assert [(e.ready, e.serving, e.terminating) for e in dns.endpoints] == [
        (True, True, False), (True, True, False), (False, False, False),
    ]
    assert not model.service("prod/metrics").exposed


def test_file_order_does_not_change_services(config_file):
    files = write_manifests(config_file)
    models = [load(list(order)).model for order in itertools.permutations(files)]
    # Pools follow declaration order across files; every other part is order-independent here.
    assert all(m.services == models[0].services for m in models)
    assert all(m.interfaces == models[0].interfaces for m in models)


def test_directory_of_manifests_equals_listing_the_files(config_file, tmp_path):
    files = write_manifests(config_file)
    assert load([tmp_path / "manifests"]).model == load(sorted(files)).model


def test_shipped_example_and_manifests_are_the_same_setup():
    native = load([REPO / "config" / "example.yaml"])
    manifests = load([REPO / "config" / "manifests"])
    assert native.model == manifests.model
    assert len(native.model.services) == 4
