"""Kubernetes/MetalLB manifests: the kinds lbd reads, how they join, what is skipped."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from lbd.config import ConfigInvalid, load
from lbd.config import manifests as manifests_module
from lbd.model import (
    AddressRange,
    Endpoint,
    HTTPGetAction,
    Pool,
    Probe,
    Protocol,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TCPSocketAction,
    TrafficPolicy,
)

REPO = Path(__file__).resolve().parent.parent
ip = ipaddress.ip_address

POOL = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: default, namespace: metallb-system}
spec:
  addresses: [192.168.1.240-192.168.1.250, "fd00::/120"]
  avoidBuggyIPs: true
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: front}}
    spec:
      nodeSelector: {disk: ssd}
      containers:
        - name: sidecar
          image: envoy
          ports: [{name: admin, containerPort: 9901}]
        - name: app
          image: nginx
          ports:
            - {name: http, containerPort: 8080}
            - {name: metrics, containerPort: 9090}
          readinessProbe:
            httpGet: {path: /ready, port: http}
            periodSeconds: 3
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
"""


@pytest.fixture
def logs(monkeypatch):
    """Log events of lbd.config.manifests, even if another test already cached its logger."""
    # structlog's lazy logger binds for good on first use when caching is configured (lbd.log
    # does), and a level filter set by another test would drop debug events: start clean.
    saved = structlog.get_config()
    structlog.reset_defaults()
    monkeypatch.setattr(manifests_module, "log", structlog.get_logger())
    try:
        with capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)


def errors_of(paths: list[Path]) -> list[str]:
    with pytest.raises(ConfigInvalid) as caught:
        load(paths)
    return [str(e) for e in caught.value.errors]


def test_ipaddresspool_and_l2advertisement(config_file):
    path = config_file(POOL + """
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: a}
spec: {interfaces: [eth0, eth1], ipAddressPools: [default]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: b}
spec: {interfaces: [eth1, eth2]}
""")
    loaded = load([path])
    assert loaded.model.interfaces == ("eth0", "eth1", "eth2")
    assert loaded.model.pools == (
        Pool(
            "default",
            (AddressRange(ip("192.168.1.240"), ip("192.168.1.250")), AddressRange(ip("fd00::"), ip("fd00::ff"))),
            avoid_buggy_ips=True,
        ),
    )


def test_l2advertisement_without_interfaces_adds_none(config_file):
    # MetalLB announces on every interface then; lbd's empty list means "choose per VIP".
    path = config_file("""
        apiVersion: metallb.io/v1beta1
        kind: L2Advertisement
        metadata: {name: all}
        ---
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: p}
        spec: {addresses: [192.0.2.0/28]}
    """)
    loaded = load([path])
    assert loaded.model.interfaces == () and loaded.warnings == ()


def test_named_target_port_and_probe_through_deployment(config_file):
    path = config_file(DEPLOYMENT + "---" + SERVICE)
    web = load([path]).model.service("default/web")
    assert web.ports == (ServicePort("http", 80, 8080, Protocol.TCP),)
    # Probe from the first container that has one; its named port resolved in that container.
    assert web.readiness_probe == Probe(HTTPGetAction(8080, "/ready"), period_seconds=3)
    assert web.selector == (("app", "web"),)
    assert web.endpoints == ()


def test_workload_must_match_selector_and_namespace(config_file):
    other_ns = DEPLOYMENT.replace("metadata: {name: web}", "metadata: {name: web, namespace: other}")
    path = config_file(other_ns + "---" + SERVICE)
    errors = errors_of([path])
    assert len(errors) == 1
    assert "Service default/web: spec.ports[0].targetPort: named targetPort 'http' is not resolved" in errors[0]


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_statefulset_and_daemonset_resolve_too(config_file, kind):
    path = config_file(DEPLOYMENT.replace("kind: Deployment", f"kind: {kind}") + "---" + SERVICE)
    assert load([path]).model.service("default/web").ports[0].target_port == 8080


def test_named_target_port_through_endpointslice(config_file):
    path = config_file(SERVICE + """
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8081, protocol: TCP}]
endpoints:
  - addresses: [10.0.0.1]
    nodeName: node-a
  - addresses: [10.0.0.2]
    conditions: {ready: false, serving: true, terminating: false}
  - addresses: [10.0.0.3, 10.0.0.4]
    conditions: {ready: true}
""")
    web = load([path]).model.service("default/web")
    assert web.ports == (ServicePort("http", 80, 8081, Protocol.TCP),)
    assert web.endpoints == (
        Endpoint(ip("10.0.0.1"), node_name="node-a"),  # no conditions.ready: ready, as Kubernetes says
        Endpoint(ip("10.0.0.2"), ready=False),
        Endpoint(ip("10.0.0.3")),
        Endpoint(ip("10.0.0.4")),
    )


@pytest.mark.parametrize(
    ("conditions", "ready", "serving", "terminating"),
    [
        ("", True, True, False),  # no conditions at all: ready, serving, not terminating
        ("conditions: {}", True, True, False),
        ("conditions: {ready: true}", True, True, False),
        ("conditions: {ready: false}", False, True, False),  # an absent serving is true (discovery/v1)
        ("conditions: {ready: true, serving: true, terminating: false}", True, True, False),
        ("conditions: {ready: false, serving: true, terminating: true}", False, True, True),  # draining
        ("conditions: {ready: false, serving: false, terminating: true}", False, False, True),
        ("conditions: {ready: false, serving: true, terminating: false}", False, True, False),
        ("conditions: {serving: false}", True, False, False),
        ("conditions: {terminating: true}", True, True, True),
    ],
)
def test_endpointslice_conditions(config_file, conditions, ready, serving, terminating):
    path = config_file(SERVICE + f"""
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-abc12, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
  - addresses: [10.0.0.1, 10.0.0.2]
    {conditions}
""")
    endpoints = load([path]).model.service("default/web").endpoints
    assert endpoints == tuple(
        Endpoint(ip(a), None, None, ready, serving, terminating) for a in ("10.0.0.1", "10.0.0.2")
    )


def test_endpoints_v1_addresses_are_serving_and_not_ready_ones_are_not(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {ports: [{port: 5432}]}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: db}
        subsets: [{addresses: [{ip: 10.0.0.1}], notReadyAddresses: [{ip: 10.0.0.2}], ports: [{port: 5432}]}]
    """)
    ready, not_ready = load([path]).model.service("default/db").endpoints
    assert (ready.ready, ready.serving, ready.terminating) == (True, True, False)
    assert (not_ready.ready, not_ready.serving, not_ready.terminating) == (False, False, False)


def test_endpointslice_port_wins_over_deployment(config_file):
    path = config_file(DEPLOYMENT + "---" + SERVICE + """
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 7000}]
endpoints: [{addresses: [10.0.0.1]}]
""")
    assert load([path]).model.service("default/web").ports[0].target_port == 7000


def test_unnamed_single_port_matches_unnamed_slice_port(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {ports: [{port: 5432}]}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: db-1, labels: {kubernetes.io/service-name: db}}
        addressType: IPv6
        ports: [{port: 15432}]
        endpoints: [{addresses: ["fd00::1"]}]
    """)
    db = load([path]).model.service("default/db")
    assert db.ports[0].target_port == 15432
    assert db.endpoints == (Endpoint(ip("fd00::1")),)


def test_endpoints_v1_with_not_ready_addresses(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: data}
        spec:
          ports: [{name: pg, port: 5432, targetPort: pg}]
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: db, namespace: data}
        subsets:
          - addresses: [{ip: 10.0.0.1, nodeName: n1}, {ip: 10.0.0.2}]
            notReadyAddresses: [{ip: 10.0.0.3, targetRef: {kind: Pod, name: db-2}}]
            ports: [{name: pg, port: 5433}]
    """)
    db = load([path]).model.service("data/db")
    assert db.ports == (ServicePort("pg", 5432, 5433),)
    assert db.endpoints == (
        Endpoint(ip("10.0.0.1"), node_name="n1"),
        Endpoint(ip("10.0.0.2")),
        Endpoint(ip("10.0.0.3"), ready=False, serving=False, terminating=False),
    )


def test_endpointslices_are_preferred_over_endpoints(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {ports: [{port: 5432}]}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: db}
        subsets: [{addresses: [{ip: 10.0.0.9}], ports: [{port: 5432}]}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: db-1, labels: {kubernetes.io/service-name: db}}
        addressType: IPv4
        endpoints: [{addresses: [10.0.0.1]}]
    """)
    assert load([path]).model.service("default/db").endpoints == (Endpoint(ip("10.0.0.1")),)


def test_service_spec_fields_and_ignored_kubernetes_fields(config_file, logs):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata:
          name: shop
          namespace: prod
          uid: 0d1c0c5e-1111-2222-3333-444455556666
          resourceVersion: "123"
          creationTimestamp: "2024-01-01T00:00:00Z"
          labels: {app: shop}
          annotations:
            metallb.io/loadBalancerIPs: 192.168.1.241
            lbd.io/idle-timeout: "120"
            kubectl.kubernetes.io/last-applied-configuration: "{}"
        spec:
          type: LoadBalancer
          clusterIP: 10.96.0.20
          clusterIPs: [10.96.0.20]
          ipFamilies: [IPv4]
          ipFamilyPolicy: SingleStack
          internalTrafficPolicy: Cluster
          allocateLoadBalancerNodePorts: true
          loadBalancerClass: metallb.io/metallb
          externalTrafficPolicy: Local
          healthCheckNodePort: 31000
          sessionAffinity: ClientIP
          sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
          selector: {app: shop}
          ports:
            - {name: https, port: 443, targetPort: 8443, nodePort: 30443, appProtocol: https, protocol: TCP}
        status:
          loadBalancer: {ingress: [{ip: 192.168.1.241}]}
    """)
    loaded = load([path])
    # lbd cannot check the class (MetalLB serves only its own): said, by name; and no endpoint object.
    assert [(w.obj, w.field) for w in loaded.warnings] == [
        ("Service prod/shop", None), ("Service prod/shop", "spec.loadBalancerClass")]
    assert "loadBalancerClass 'metallb.io/metallb' is not checked" in loaded.warnings[1].message
    assert loaded.warnings[0].message.startswith(
        "no endpoints: lbd takes them from EndpointSlices labelled kubernetes.io/service-name=shop in namespace prod")
    shop = loaded.model.service("prod/shop")
    assert shop.requested_ips == (ip("192.168.1.241"),)
    assert shop.idle_timeout_seconds == 120.0
    assert shop.ip_family == 4
    assert shop.external_traffic_policy is TrafficPolicy.LOCAL
    assert shop.session_affinity is SessionAffinity.CLIENT_IP and shop.affinity_timeout_seconds == 60
    assert shop.ports == (ServicePort("https", 443, 8443),)


def test_cluster_ip_nodeport_and_headless_are_parsed_not_exposed(config_file):
    # A v1 Service without spec.type is ClusterIP, as in Kubernetes (a native service is LoadBalancer).
    path = config_file("""
        apiVersion: v1
        kind: List
        items:
          - {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {ports: [{port: 80}]}}
          - {apiVersion: v1, kind: Service, metadata: {name: b}, spec: {type: NodePort, ports: [{port: 80, nodePort: 30080}]}}
          - {apiVersion: v1, kind: Service, metadata: {name: c}, spec: {clusterIP: None, ports: [{port: 80}]}}
    """)
    services = {s.name: s for s in load([path]).model.services}
    assert not any(s.exposed for s in services.values())
    assert services["a"].type is ServiceType.CLUSTER_IP
    assert services["b"].type is ServiceType.NODE_PORT
    assert services["c"].headless and services["c"].ports == (ServicePort("", 80, 80),)


def test_external_name_services_are_skipped(config_file, logs):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: ext}
        spec: {type: ExternalName, externalName: example.com}
        ---
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: p}
        spec: {addresses: [192.0.2.0/28]}
    """)
    assert load([path]).model.services == ()
    assert any(e["event"] == "manifest_skipped" and e.get("reason") == "ExternalName" for e in logs)


def test_kind_list_multi_doc_and_defaults(config_file):
    path = config_file("""
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Service
            metadata: {name: a}
            spec: {ports: [{port: 80}]}
          - apiVersion: v1
            kind: Service
            metadata: {name: b, namespace: other}
            spec: {ports: [{port: 53, protocol: UDP}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: c}
        spec: {ports: [{port: 443}]}
    """)
    assert [s.key for s in load([path]).model.services] == ["default/a", "default/c", "other/b"]


def test_errors_inside_a_list_name_the_item(config_file):
    path = config_file("""
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Service
            metadata: {name: a}
            spec:
              ports: [{port: 70000}]
    """)
    assert errors_of([path]) == [
        f"{path}: document 0 (line 8): Service default/a: items[0].spec.ports[0].port: 70000 is not a port (1-65535)"
    ]


def test_other_kinds_are_skipped_with_a_debug_log(config_file, logs):
    path = config_file("""
        apiVersion: v1
        kind: Secret
        metadata: {name: tls}
        data: {x: ""}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: cm}
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: ing}
        ---
        apiVersion: monitoring.coreos.com/v1
        kind: ServiceMonitor
        metadata: {name: sm}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: ns}
        ---
        apiVersion: metallb.io/v1beta2
        kind: BGPPeer
        metadata: {name: peer}
        ---
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: p}
        spec: {addresses: [192.0.2.0/28]}
    """)
    loaded = load([path])
    assert loaded.model.services == ()
    # MetalLB's BGP kinds are not skipped quietly: a MetalLB user would expect them to act.
    (warning,) = loaded.warnings
    assert (warning.obj, warning.line) == ("BGPPeer peer", 22)
    assert warning.message.startswith("lbd announces VIPs with ARP/NDP only")
    skipped = [(e["kind"], e["name"], e["file"]) for e in logs if e["event"] == "manifest_skipped"]
    assert skipped == [
        ("Secret", "tls", str(path)), ("ConfigMap", "cm", str(path)), ("Ingress", "ing", str(path)),
        ("ServiceMonitor", "sm", str(path)), ("Namespace", "ns", str(path)),
    ]
    assert all(e["log_level"] == "debug" for e in logs if e["event"] == "manifest_skipped")


def test_directory_loading_is_sorted_and_joins_across_files(tmp_path, config_file):
    config_file(SERVICE, "conf.d/20-service.yml")
    config_file(DEPLOYMENT, "conf.d/30-deployment.yaml")
    config_file(POOL, "conf.d/10-pool.yaml")
    config_file("not: yaml config", "conf.d/README.txt")
    config_file("garbage: [", "conf.d/.#10-pool.yaml")  # an editor lock file: not config
    loaded = load([tmp_path / "conf.d"])
    assert [Path(s).name for s in loaded.sources] == ["10-pool.yaml", "20-service.yml", "30-deployment.yaml"]
    assert loaded.model.service("default/web").ports[0].target_port == 8080
    assert loaded.model.pools[0].name == "default"


def test_a_file_given_twice_is_read_once(tmp_path, config_file):
    path = config_file(POOL, "d/pool.yaml")
    assert load([tmp_path / "d", path]).sources == (str(tmp_path / "d" / "pool.yaml"),)


def test_empty_directory_warns(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "pools.yaml").write_text("pools: [{name: p, addresses: [192.0.2.0/28]}]\n")
    (warning,) = load([tmp_path / "empty", tmp_path / "pools.yaml"]).warnings
    assert "no *.yaml or *.yml files" in warning.message


def test_an_empty_directory_alone_is_an_empty_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigInvalid) as caught:
        load([tmp_path / "empty"])
    assert [e.file for e in caught.value.errors] == [str(tmp_path / "empty")]
    assert "config is empty" in caught.value.errors[0].message


def test_native_and_manifest_files_mix(config_file):
    pools = config_file("""
        interfaces: [eth0]
        pools: [{name: default, addresses: [10.0.0.0/24]}]
    """, "native.yaml")
    services = config_file(SERVICE.replace("targetPort: http", "targetPort: 8080"), "svc.yaml")
    model = load([pools, services]).model
    assert model.pools[0].name == "default" and model.service("default/web").ports[0].target_port == 8080


def test_legacy_annotations_warn_in_manifests(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          annotations:
            metallb.universe.tf/address-pool: default
            metallb.universe.tf/loadBalancerIPs: 192.168.1.10
            metallb.universe.tf/allow-shared-ip: key
        spec: {ports: [{port: 80}]}
    """)
    loaded = load([path])
    web = loaded.model.service("default/web")
    assert (web.address_pool, web.requested_ips, web.allow_shared_ip) == ("default", (ip("192.168.1.10"),), "key")
    assert [(w.line, w.obj, w.field, w.message) for w in loaded.warnings] == [
        (6, "Service default/web", "metadata.annotations[metallb.universe.tf/address-pool]",
         "annotation 'metallb.universe.tf/address-pool' is deprecated; use 'metallb.io/address-pool'"),
        (7, "Service default/web", "metadata.annotations[metallb.universe.tf/loadBalancerIPs]",
         "annotation 'metallb.universe.tf/loadBalancerIPs' is deprecated; use 'metallb.io/loadBalancerIPs'"),
        (8, "Service default/web", "metadata.annotations[metallb.universe.tf/allow-shared-ip]",
         "annotation 'metallb.universe.tf/allow-shared-ip' is deprecated; use 'metallb.io/allow-shared-ip'"),
    ]


def test_tcp_probe_with_named_port_from_another_container(config_file):
    path = config_file("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: db}
        spec:
          template:
            metadata: {labels: {app: db}}
            spec:
              containers:
                - {name: pg, ports: [{name: pg, containerPort: 5432}]}
                - name: checker
                  readinessProbe: {tcpSocket: {port: pg}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {selector: {app: db}, ports: [{port: 5432}]}
    """)
    assert load([path]).model.service("default/db").readiness_probe == Probe(TCPSocketAction(5432))


def test_exec_probe_in_a_workload_warns_and_falls_back_to_a_tcp_connect_on_the_target_port(config_file):
    path = config_file("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: db}
        spec:
          template:
            metadata: {labels: {app: db}}
            spec:
              containers:
                - name: pg
                  readinessProbe: {exec: {command: [pg_isready]}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {selector: {app: db}, ports: [{port: 5432}]}
    """)
    loaded = load([path])
    assert loaded.model.service("default/db").readiness_probe == Probe(TCPSocketAction(5432, "exec"))
    (warning,) = loaded.warnings
    assert warning.obj == "Deployment default/db"
    assert warning.field == "spec.template.spec.containers[0].readinessProbe.exec"
    assert "exec probes cannot run from a load balancer" in warning.message
    assert "TCP connect to the service's first targetPort" in warning.message


def test_grpc_probe_in_a_workload_warns_and_falls_back_to_a_tcp_connect_on_its_port(config_file):
    path = config_file("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: api}
        spec:
          template:
            metadata: {labels: {app: api}}
            spec:
              containers:
                - name: api
                  ports: [{name: grpc, containerPort: 9090}]
                  readinessProbe: {grpc: {port: 9091, service: health}, periodSeconds: 2}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: api}
        spec: {selector: {app: api}, ports: [{port: 80, targetPort: grpc}]}
    """)
    loaded = load([path])
    assert loaded.model.service("default/api").readiness_probe == Probe(TCPSocketAction(9091, "grpc"), period_seconds=2)
    (warning,) = loaded.warnings
    assert warning.field == "spec.template.spec.containers[0].readinessProbe.grpc"
    assert "TCP connect to port 9091 instead" in warning.message


def test_endpointslice_without_service_label_or_service_warns(config_file):
    path = config_file("""
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: custom}
        addressType: IPv4
        endpoints: [{addresses: [10.0.0.1]}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: orphan-1, labels: {kubernetes.io/service-name: gone}}
        addressType: IPv4
        endpoints: [{addresses: [10.0.0.1]}]
        ---
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: p}
        spec: {addresses: [192.0.2.0/28]}
    """)
    first, second = load([path]).warnings
    assert first.obj == "EndpointSlice default/custom" and "kubernetes.io/service-name" in first.message
    assert second.obj == "EndpointSlice default/orphan-1" and "no Service default/gone" in second.message


def test_fqdn_endpointslice_is_ignored_with_a_warning(config_file):
    path = config_file("""
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: f, labels: {kubernetes.io/service-name: x}}
        addressType: FQDN
        endpoints: [{addresses: [example.com]}]
        ---
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: p}
        spec: {addresses: [192.0.2.0/28]}
    """)
    (warning,) = load([path]).warnings
    assert warning.field == "addressType" and "FQDN" in warning.message


def test_duplicate_addresses_across_slices_are_kept_once(config_file):
    slice_doc = """
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
endpoints: [{{addresses: [{addresses}]}}]
"""
    path = config_file(
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {ports: [{port: 5432}]}"
        + slice_doc.format(name="db-a", addresses="10.0.0.1")
        + slice_doc.format(name="db-b", addresses="10.0.0.1")
    )
    assert load([path]).model.service("default/db").endpoints == (Endpoint(ip("10.0.0.1")),)


def test_shipped_manifests_load_cleanly(logs):
    loaded = load([REPO / "config" / "manifests"])
    assert loaded.warnings == ()
    assert [Path(s).name for s in loaded.sources] == sorted(Path(s).name for s in loaded.sources)
    model = loaded.model
    nginx = model.service("default/nginx-demo")
    assert nginx.exposed and nginx.ports == (ServicePort("http", 80, 80, Protocol.TCP),)
    assert len(nginx.endpoints) == 3 and nginx.readiness_probe is not None
    assert not model.service("default/redis").exposed
    skipped = {e["kind"] for e in logs if e["event"] == "manifest_skipped"}
    assert {"Secret", "ConfigMap", "Ingress"} <= skipped


def test_a_kubectl_dump_loads_without_complaints(config_file):
    # What `kubectl get svc,endpointslices,deploy -o yaml` prints: server-filled fields everywhere.
    path = config_file("""
        apiVersion: v1
        kind: List
        metadata: {resourceVersion: ""}
        items:
        - apiVersion: v1
          kind: Service
          metadata:
            annotations:
              kubectl.kubernetes.io/last-applied-configuration: |
                {"apiVersion":"v1","kind":"Service"}
              metallb.io/ip-allocated-from-pool: default
            creationTimestamp: 2024-05-01T10:00:00Z
            name: web
            namespace: default
            resourceVersion: "1234"
            uid: 6f1c2a9e-0000-4000-8000-000000000001
            managedFields:
            - apiVersion: v1
              fieldsType: FieldsV1
              fieldsV1: {"f:spec": {"f:ports": {}}}
              manager: kubectl-client-side-apply
              operation: Update
              time: 2024-05-01T10:00:00Z
          spec:
            allocateLoadBalancerNodePorts: true
            clusterIP: 10.96.100.7
            clusterIPs: [10.96.100.7]
            externalTrafficPolicy: Cluster
            internalTrafficPolicy: Cluster
            ipFamilies: [IPv4]
            ipFamilyPolicy: SingleStack
            ports:
            - name: http
              nodePort: 31380
              port: 80
              protocol: TCP
              targetPort: http
            selector: {app: web}
            sessionAffinity: None
            type: LoadBalancer
          status:
            loadBalancer:
              ingress:
              - ip: 192.168.1.240
                ipMode: VIP
        - addressType: IPv4
          apiVersion: discovery.k8s.io/v1
          endpoints:
          - addresses: [10.244.0.11]
            conditions: {ready: true, serving: true, terminating: false}
            nodeName: node-a
            targetRef: {kind: Pod, name: web-5d9c-abcde, namespace: default, uid: 1}
            zone: z1
          kind: EndpointSlice
          metadata:
            annotations:
              endpoints.kubernetes.io/last-change-trigger-time: "2024-05-01T10:00:05Z"
            generateName: web-
            generation: 3
            labels:
              endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
              kubernetes.io/service-name: web
            name: web-x7k2p
            namespace: default
            ownerReferences:
            - {apiVersion: v1, blockOwnerDeletion: true, controller: true, kind: Service, name: web, uid: 1}
          ports:
          - {name: http, port: 8080, protocol: TCP}
        - apiVersion: apps/v1
          kind: Deployment
          metadata:
            annotations: {deployment.kubernetes.io/revision: "1"}
            generation: 1
            labels: {app: web}
            name: web
            namespace: default
          spec:
            progressDeadlineSeconds: 600
            replicas: 1
            revisionHistoryLimit: 10
            selector: {matchLabels: {app: web}}
            strategy:
              rollingUpdate: {maxSurge: 25%, maxUnavailable: 25%}
              type: RollingUpdate
            template:
              metadata:
                creationTimestamp: null
                labels: {app: web}
              spec:
                containers:
                - image: nginx:1.25
                  imagePullPolicy: IfNotPresent
                  name: nginx
                  ports:
                  - {containerPort: 8080, name: http, protocol: TCP}
                  readinessProbe:
                    failureThreshold: 3
                    httpGet: {path: /, port: http, scheme: HTTP}
                    periodSeconds: 10
                    successThreshold: 1
                    timeoutSeconds: 1
                  resources: {}
                  terminationMessagePath: /dev/termination-log
                  terminationMessagePolicy: File
                dnsPolicy: ClusterFirst
                restartPolicy: Always
                schedulerName: default-scheduler
                securityContext: {}
                terminationGracePeriodSeconds: 30
          status:
            availableReplicas: 1
            conditions: []
        - apiVersion: apps/v1
          kind: DeploymentList
          items: []
    """)
    loaded = load([path])
    assert loaded.warnings == ()
    web = loaded.model.service("default/web")
    assert web.ports == (ServicePort("http", 80, 8080, Protocol.TCP),)
    assert web.endpoints == (Endpoint(ip("10.244.0.11"), node_name="node-a"),)
    assert web.readiness_probe == Probe(HTTPGetAction(8080, "/"))
