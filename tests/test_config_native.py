"""The native config format: what valid input turns into, defaults included."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lbd.config import ConfigInvalid, Loaded, load
from lbd.model import (
    AddressRange,
    Endpoint,
    HTTPGetAction,
    Pool,
    Probe,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    SessionAffinity,
    TCPSocketAction,
    TrafficPolicy,
)

REPO = Path(__file__).resolve().parent.parent
ip = ipaddress.ip_address


def test_minimal_service_gets_kubernetes_defaults(config_file):
    path = config_file("""
        services:
          - name: web
            ports: [{port: 80}]
    """)
    loaded = load([path])
    assert isinstance(loaded, Loaded)
    assert loaded.sources == (str(path),)
    # Not an error (endpoints: [] is accepted as meant), but a missing list is worth a word.
    (warning,) = loaded.warnings
    assert (warning.obj, warning.field) == ("Service default/web", "services[0]")
    assert warning.message.startswith("no endpoints: list the backends under `endpoints:`")
    assert loaded.model.services == (Service(name="web", ports=(ServicePort("", 80, 80, Protocol.TCP),)),)
    web = loaded.model.services[0]
    assert web.namespace == "default"
    assert web.type is ServiceType.LOAD_BALANCER and web.exposed
    assert web.session_affinity is SessionAffinity.NONE and web.affinity_timeout_seconds == 10800
    assert web.external_traffic_policy is TrafficPolicy.CLUSTER
    assert web.readiness_probe is None and web.idle_timeout_seconds is None
    assert web.requested_ips == () and web.address_pool is None and web.ip_family is None


def test_pool_defaults_and_ranges(config_file):
    path = config_file("""
        pools:
          - name: default
            addresses: [192.168.1.200-192.168.1.250, 192.168.1.0/28, " 10.1.0.1 - 10.1.0.2 "]
          - name: manual
            addresses: [10.0.0.0/24]
            autoAssign: false
            avoidBuggyIPs: true
    """)
    pools = load([path]).model.pools
    assert pools == (
        Pool(
            "default",
            (
                AddressRange(ip("192.168.1.200"), ip("192.168.1.250")),
                AddressRange(ip("192.168.1.0"), ip("192.168.1.15")),
                AddressRange(ip("10.1.0.1"), ip("10.1.0.2")),
            ),
        ),
        Pool("manual", (AddressRange(ip("10.0.0.0"), ip("10.0.0.255")),), auto_assign=False, avoid_buggy_ips=True),
    )


def test_ipv6_pools_endpoints_and_requests(config_file):
    path = config_file("""
        pools:
          - name: v6
            addresses: ["fd00::10-fd00::20", "fd00:1::/120"]
        services:
          - name: web6
            ipFamilies: [IPv6]
            annotations: {metallb.io/loadBalancerIPs: "fd00::15, 192.168.1.5"}
            ports: [{port: 443}]
            endpoints: ["fd00::5", "[fd00::6]:8443", {address: "fd00::7", port: 9443}, "::ffff:10.0.0.1"]
    """)
    model = load([path]).model
    assert model.pools[0].ranges == (
        AddressRange(ip("fd00::10"), ip("fd00::20")),
        AddressRange(ip("fd00:1::"), ip("fd00:1::ff")),
    )
    web6 = model.services[0]
    assert web6.ip_family == 6
    assert web6.requested_ips == (ip("fd00::15"), ip("192.168.1.5"))
    assert web6.endpoints == (
        Endpoint(ip("fd00::5")),
        Endpoint(ip("fd00::6"), 8443),
        Endpoint(ip("fd00::7"), 9443),
        Endpoint(ip("::ffff:10.0.0.1")),
    )


def test_full_service_from_the_brief(config_file):
    path = config_file("""
        interfaces: [eth0]
        pools:
          - name: default
            addresses: [192.168.1.200-192.168.1.250]
        services:
          - name: web
            namespace: shop
            annotations: {metallb.io/address-pool: default, metallb.io/allow-shared-ip: web-key,
                          lbd.io/idle-timeout: 1h30m, example.com/owner: me}
            loadBalancerIP: 192.168.1.205
            sessionAffinity: ClientIP
            sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
            externalTrafficPolicy: Local
            selector: {tier: web, app: shop}
            ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
            endpoints: [10.0.0.11, 10.0.0.12, "10.0.0.13:9090",
                        {address: 10.0.0.14, nodeName: node-b}, {address: 10.0.0.15, ready: false}]
            readinessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 5}
    """)
    model = load([path]).model
    assert model.interfaces == ("eth0",)
    assert model.service("shop/web") == Service(
        name="web",
        namespace="shop",
        ports=(ServicePort("http", 80, 8080, Protocol.TCP),),
        endpoints=(
            Endpoint(ip("10.0.0.11")),
            Endpoint(ip("10.0.0.12")),
            Endpoint(ip("10.0.0.13"), 9090),
            Endpoint(ip("10.0.0.14"), node_name="node-b"),
            Endpoint(ip("10.0.0.15"), ready=False),
        ),
        selector=(("app", "shop"), ("tier", "web")),  # sorted: declaration order must not matter
        requested_ips=(ip("192.168.1.205"),),
        address_pool="default",
        allow_shared_ip="web-key",
        session_affinity=SessionAffinity.CLIENT_IP,
        affinity_timeout_seconds=600,
        external_traffic_policy=TrafficPolicy.LOCAL,
        readiness_probe=Probe(HTTPGetAction(8080, "/health"), period_seconds=5),
        idle_timeout_seconds=5400.0,
    )


@pytest.mark.parametrize(
    ("written", "ready", "serving", "terminating"),
    [
        ("{address: 10.0.0.1}", True, True, False),
        ("{address: 10.0.0.1, ready: true}", True, True, False),
        ("{address: 10.0.0.1, ready: false}", False, True, False),  # an absent serving is true, as in a slice
        ("{address: 10.0.0.1, ready: false, serving: true, terminating: true}", False, True, True),
        ("{address: 10.0.0.1, ready: false, serving: false, terminating: true}", False, False, True),
        ("{address: 10.0.0.1, serving: false}", True, False, False),
        ("{address: 10.0.0.1, terminating: false}", True, True, False),
        ("10.0.0.1", True, True, False),
    ],
)
def test_endpoint_conditions(config_file, written, ready, serving, terminating):
    path = config_file(f"services: [{{name: web, ports: [{{port: 80}}], endpoints: [{written}]}}]")
    (endpoint,) = load([path]).model.service("default/web").endpoints
    assert (endpoint.ready, endpoint.serving, endpoint.terminating) == (ready, serving, terminating)
    assert endpoint == Endpoint(ip("10.0.0.1"), None, None, ready, serving, terminating)


def test_endpoint_port_overrides_target_port(config_file):
    path = config_file("""
        services:
          - name: web
            ports: [{port: 80, targetPort: 8080}]
            endpoints: ["10.0.0.1", "10.0.0.2:9090"]
    """)
    web = load([path]).model.services[0]
    assert [e.target_port(web.ports[0]) for e in web.endpoints] == [8080, 9090]


def test_udp_and_same_port_on_both_protocols(config_file):
    path = config_file("""
        services:
          - name: dns
            ports:
              - {name: dns-udp, port: 53, protocol: UDP}
              - {name: dns-tcp, port: 53, targetPort: 5353}
    """)
    dns = load([path]).model.services[0]
    assert dns.ports == (ServicePort("dns-udp", 53, 53, Protocol.UDP), ServicePort("dns-tcp", 53, 5353, Protocol.TCP))
    assert dns.port_keys == {(Protocol.UDP, 53), (Protocol.TCP, 53)}


def test_probe_defaults_and_fields(config_file):
    path = config_file("""
        services:
          - name: a
            ports: [{name: web, port: 80, targetPort: 8080}]
            readinessProbe:
              httpGet:
                port: web
                scheme: HTTPS
                host: example.test
                httpHeaders: [{name: X-Probe, value: lbd}]
          - name: b
            ports: [{port: 5432}]
            readinessProbe:
              tcpSocket: {port: 5432}
              initialDelaySeconds: 3
              timeoutSeconds: 2
              periodSeconds: 0        # Kubernetes defaults a 0 to 10
              successThreshold: 2
              failureThreshold: 5
    """)
    a, b = load([path]).model.services
    # A named probe port is the service port of that name, i.e. its targetPort.
    assert a.readiness_probe == Probe(HTTPGetAction(8080, "/", "HTTPS", "example.test", (("X-Probe", "lbd"),)))
    assert a.readiness_probe.period_seconds == 10 and a.readiness_probe.failure_threshold == 3
    assert b.readiness_probe == Probe(
        TCPSocketAction(5432), period_seconds=10, timeout_seconds=2, success_threshold=2,
        failure_threshold=5, initial_delay_seconds=3,
    )


def test_probe_path_without_slash_is_joined_like_the_kubelet(config_file):
    path = config_file("""
        services:
          - name: a
            ports: [{port: 80}]
            readinessProbe: {httpGet: {port: 80, path: healthz}}
    """)
    assert load([path]).model.services[0].readiness_probe.action.path == "/healthz"


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("300", 300.0), ("300s", 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("500ms", 0.5), ("90", 90.0)],
)
def test_idle_timeout_durations(config_file, written, seconds):
    path = config_file(f"""
        services:
          - name: a
            annotations: {{lbd.io/idle-timeout: "{written}"}}
            ports: [{{port: 80}}]
    """)
    assert load([path]).model.services[0].idle_timeout_seconds == seconds


def test_idle_timeout_as_a_number(config_file):
    path = config_file("""
        services:
          - name: a
            annotations: {lbd.io/idle-timeout: 45}
            ports: [{port: 80}]
    """)
    assert load([path]).model.services[0].idle_timeout_seconds == 45.0


def test_service_types_and_headless(config_file):
    path = config_file("""
        services:
          - {name: lb, ports: [{port: 80}]}
          - {name: internal, type: ClusterIP, ports: [{port: 80}]}
          - {name: np, type: NodePort, ports: [{port: 80}]}
          - {name: headless, type: ClusterIP, clusterIP: None}
    """)
    services = {s.name: s for s in load([path]).model.services}
    assert services["lb"].exposed
    assert not services["internal"].exposed and services["internal"].type is ServiceType.CLUSTER_IP
    assert not services["np"].exposed and services["np"].type is ServiceType.NODE_PORT
    assert services["headless"].headless and not services["headless"].exposed and services["headless"].ports == ()


def test_services_are_sorted_by_namespace_then_name(config_file):
    path = config_file("""
        services:
          - {name: b, ports: [{port: 80}]}
          - {name: a, namespace: zeta, ports: [{port: 80}]}
          - {name: a, ports: [{port: 80}]}
          - {name: c, namespace: alpha, ports: [{port: 80}]}
    """)
    assert [s.key for s in load([path]).model.services] == ["alpha/c", "default/a", "default/b", "zeta/a"]


def test_interfaces_are_deduplicated_in_order_across_documents(config_file):
    path = config_file("""
        interfaces: [eth1, eth0]
        ---
        interfaces: [eth0, eth2, eth1]
        pools: [{name: p, addresses: [192.0.2.0/28]}]
    """)
    assert load([path]).model.interfaces == ("eth1", "eth0", "eth2")


def test_files_merge_and_pools_keep_declaration_order(config_file):
    first = config_file("""
        pools:
          - {name: zz, addresses: [10.0.0.0/24]}
    """, "1.yaml")
    second = config_file("""
        pools:
          - {name: aa, addresses: [10.0.1.0/24]}
        services:
          - {name: web, annotations: {metallb.io/address-pool: zz}, ports: [{port: 80}]}
    """, "2.yaml")
    loaded = load([first, second])
    assert [p.name for p in loaded.model.pools] == ["zz", "aa"]
    assert loaded.model.services[0].address_pool == "zz"
    assert loaded.sources == (str(first), str(second))


def test_unknown_pool_reference_is_not_an_error(config_file):
    path = config_file("""
        services:
          - {name: web, annotations: {metallb.io/address-pool: nowhere}, ports: [{port: 80}]}
    """)
    assert load([path]).model.services[0].address_pool == "nowhere"


def test_empty_files_and_documents_are_an_empty_config_error(config_file):
    # A truncated file (config management, `> lbd.yaml`, a full disk) must not remove every service.
    for text, name in (("", "empty.yaml"), ("---\n---\n", "docs.yaml"), ("# all commented out\n", "c.yaml"),
                       ("interfaces: [eth0]\n", "only-interfaces.yaml")):
        path = config_file(text, name)
        with pytest.raises(ConfigInvalid) as caught:
            load([path])
        (error,) = caught.value.errors
        assert error.file == str(path)
        assert error.message.startswith("config is empty: no pools and no services")


def test_empty_config_names_every_file_read(config_file):
    first, second = config_file("", "a.yaml"), config_file("---\n", "b.yaml")
    with pytest.raises(ConfigInvalid) as caught:
        load([first, second])
    assert caught.value.errors[0].file == f"{first}, {second}"


def test_pools_without_services_are_not_empty(config_file):
    assert load([config_file("pools: [{name: p, addresses: [192.0.2.0/28]}]")]).model.services == ()


def test_a_single_path_string_is_one_path(config_file):
    path = config_file("pools: [{name: p, addresses: [192.0.2.0/28]}]")
    assert load(str(path)).sources == (str(path),)  # type: ignore[arg-type]


def test_yaml_merge_keys_work(config_file):
    path = config_file("""
        services:
          - &base
            name: a
            ports: [{port: 80}]
            sessionAffinity: ClientIP
          - <<: *base
            name: b
    """)
    a, b = load([path]).model.services
    assert b.session_affinity is SessionAffinity.CLIENT_IP and b.ports == a.ports and b.name == "b"


def test_shipped_example_loads_cleanly():
    loaded = load([REPO / "config" / "example.yaml"])
    assert loaded.warnings == ()
    model = loaded.model
    assert model.interfaces == ("eth0",)
    assert model.pools == (Pool("default", (AddressRange(ip("198.18.100.240"), ip("198.18.100.250")),)),)
    nginx = model.service("default/nginx-demo")
    assert nginx is not None and nginx.exposed
    assert nginx.ports == (ServicePort("http", 80, 80, Protocol.TCP),)
    assert [str(e.address) for e in nginx.endpoints] == ["10.244.0.11", "10.244.0.12", "10.244.0.13"]
    assert nginx.readiness_probe == Probe(HTTPGetAction(80, "/"), period_seconds=5)
    assert model.service("default/cart").session_affinity is SessionAffinity.CLIENT_IP
    assert Protocol.UDP in {p.protocol for p in model.service("default/dns").ports}
    assert not model.service("default/redis").exposed


def test_shipped_local_config_loads_cleanly():
    loaded = load([REPO / "config" / "local.yaml"])
    assert loaded.warnings == ()
    assert loaded.model.interfaces == ()
    (local,) = loaded.model.pools
    assert local.name == "local" and all(r.first in ipaddress.ip_network("127.0.0.0/8") for r in local.ranges)
    (echo,) = loaded.model.services
    assert echo.name == "echo"
    assert echo.ports == (ServicePort("http", 8080, 18080, Protocol.TCP),)
    assert echo.endpoints == (Endpoint(ip("127.0.0.1")),)


def test_invalid_config_raises_with_errors_list(config_file):
    path = config_file("services: [{name: web, ports: [{port: 0}]}]")
    with pytest.raises(ConfigInvalid) as caught:
        load([path])
    assert len(caught.value.errors) == 1
    assert "0 is not a port (1-65535)" in str(caught.value)
