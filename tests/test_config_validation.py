"""Validation: every rule, and that each error names file, document, line, object, field and fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbd.config import ConfigError, ConfigInvalid, load


def errors_of(*paths: Path | str) -> list[ConfigError]:
    with pytest.raises(ConfigInvalid) as caught:
        load(list(paths))
    assert caught.value.errors, "ConfigInvalid must carry errors"
    return caught.value.errors


def where(error: ConfigError) -> tuple[int | None, int | None, str | None, str | None]:
    return error.doc, error.line, error.obj, error.field


def only(errors: list[ConfigError]) -> ConfigError:
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


# ----------------------------------------------------------------------------- the headline case


def test_port_70000_names_file_service_field_and_problem(config_file):
    path = config_file("""
        services:
          - name: web
            ports:
              - name: http
                port: 70000
    """)
    error = only(errors_of(path))
    assert error.file == str(path)
    assert where(error) == (0, 5, "Service default/web", "services[0].ports[0].port")
    assert error.message == "70000 is not a port (1-65535)"
    assert str(error) == (
        f"{path}: document 0 (line 5): Service default/web: services[0].ports[0].port: 70000 is not a port (1-65535)"
    )


def test_port_70000_in_a_manifest(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: api, namespace: prod}
        spec:
          type: LoadBalancer
          ports:
            - {name: http, port: 70000}
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 7, "Service prod/api", "spec.ports[0].port")
    assert error.message == "70000 is not a port (1-65535)"


def test_all_errors_are_collected(config_file):
    path = config_file("""
        services:
          - name: web
            loadBalancerIp: 192.168.1.5
            ports: [{port: 70000}]
            sessionAffinity: Sticky
    """)
    errors = errors_of(path)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (3, "services[0].loadBalancerIp", "unknown field 'loadBalancerIp' (did you mean 'loadBalancerIP'?)"),
        (4, "services[0].ports[0].port", "70000 is not a port (1-65535)"),
        (5, "services[0].sessionAffinity", "'Sticky' is not one of None | ClientIP"),
    ]


def test_errors_from_several_files_come_in_file_order(config_file):
    a = config_file("services: [{name: a, ports: [{port: 0}]}]", "a.yaml")
    b = config_file("pools: [{name: p, addresses: [bad]}]", "b.yaml")
    c = config_file("services: [{name: c, ports: [{name: x, port: 80, targetPort: nope}]}]", "c.yaml")
    errors = errors_of(c, a, b)
    assert [Path(e.file).name for e in errors] == ["c.yaml", "a.yaml", "b.yaml"]


# ----------------------------------------------------------------------------- unknown fields


@pytest.mark.parametrize(
    ("field", "hint"),
    [
        ("loadBalancerIp", "loadBalancerIP"),
        ("sessionaffinity", "sessionAffinity"),
        ("endpoint", "endpoints"),
        ("readinesProbe", "readinessProbe"),
        ("externalTraficPolicy", "externalTrafficPolicy"),
    ],
)
def test_unknown_service_field_did_you_mean(config_file, field, hint):
    path = config_file(f"""
        services:
          - name: web
            ports: [{{port: 80}}]
            {field}: x
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 4, "Service default/web", f"services[0].{field}")
    assert error.message == f"unknown field {field!r} (did you mean {hint!r}?)"


def test_unknown_port_field_targetport(config_file):
    path = config_file("services: [{name: web, ports: [{port: 80, targetport: 8080}]}]")
    error = only(errors_of(path))
    assert error.field == "services[0].ports[0].targetport"
    assert error.message == "unknown field 'targetport' (did you mean 'targetPort'?)"


def test_unknown_field_without_a_close_match_has_no_hint(config_file):
    path = config_file("services: [{name: web, ports: [{port: 80}], zzzzzz: 1}]")
    assert only(errors_of(path)).message == "unknown field 'zzzzzz'"


def test_unknown_top_level_key(config_file):
    path = config_file("""
        interfaces: [eth0]
        service:
          - name: web
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 2, None, "service")
    assert error.message == "unknown field 'service' (did you mean 'services'?)"


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("pools: [{name: p, adresses: [10.0.0.0/24]}]", "pools[0].adresses",
         "unknown field 'adresses' (did you mean 'addresses'?)"),
        ("services: [{name: w, ports: [{port: 80}], endpoints: [{adress: 10.0.0.1}]}]", "services[0].endpoints[0].adress",
         "unknown field 'adress' (did you mean 'address'?)"),
        ("services: [{name: w, ports: [{port: 80}], readinessProbe: {httpGet: {port: 80, pth: /}}}]",
         "services[0].readinessProbe.httpGet.pth", "unknown field 'pth' (did you mean 'path'?)"),
        ("services: [{name: w, ports: [{port: 80}], readinessProbe: {tcpSocket: {port: 80}, periodSecond: 3}}]",
         "services[0].readinessProbe.periodSecond", "unknown field 'periodSecond' (did you mean 'periodSeconds'?)"),
        ("services: [{name: w, ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIp: {}}}]",
         "services[0].sessionAffinityConfig.clientIp", "unknown field 'clientIp' (did you mean 'clientIP'?)"),
    ],
)
def test_unknown_nested_fields(config_file, text, field, message):
    error = only(errors_of(config_file(text)))
    assert (error.field, error.message) == (field, message)


def test_unknown_manifest_fields_and_lenient_known_ones(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          namspace: prod
          uid: abc
          managedFields: []
        spec:
          type: LoadBalancer
          clusterIPs: [10.96.0.1]
          ipFamilyPolicy: SingleStack
          internalTrafficPolicy: Local
          allocateLoadBalancerNodePorts: false
          loadBalancerIp: 192.168.1.5
          ports: [{port: 80}]
        status: {}
    """)
    errors = errors_of(path)
    assert [(e.line, e.obj, e.field, e.message) for e in errors] == [
        (5, "Service default/web", "metadata.namspace", "unknown field 'namspace' (did you mean 'namespace'?)"),
        (14, "Service default/web", "spec.loadBalancerIp", "unknown field 'loadBalancerIp' (did you mean 'loadBalancerIP'?)"),
    ]


def test_workload_near_misses_are_caught_but_other_pod_fields_pass(config_file):
    path = config_file("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          replicas: 1
          someFutureField: true
          template:
            metadata: {labels: {app: web}}
            spec:
              priorityClassName: high
              someFuturePodField: 1
              containers:
                - name: app
                  image: nginx
                  readinesProbe: {tcpSocket: {port: 80}}
                  ports: [{name: http, containerPort: 80, contanerPort: 1}]
    """)
    errors = errors_of(path)
    assert [(e.obj, e.field, e.message) for e in errors] == [
        ("Deployment default/web", "spec.template.spec.containers[0].readinesProbe",
         "unknown field 'readinesProbe' (did you mean 'readinessProbe'?)"),
        ("Deployment default/web", "spec.template.spec.containers[0].ports[0].contanerPort",
         "unknown field 'contanerPort' (did you mean 'containerPort'?)"),
    ]


# ----------------------------------------------------------------------------- types and values


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ('"abc"', "'abc' is not a port (1-65535)"),
        ("0", "0 is not a port (1-65535)"),
        ("-1", "-1 is not a port (1-65535)"),
        ("true", "true is not a port (1-65535)"),
        ("80.5", "80.5 is not a port (1-65535)"),
        ('"80"', "'80' is not a port (1-65535); write 80 without quotes"),
        ("[80]", "a list is not a port (1-65535)"),
    ],
)
def test_port_values(config_file, port, message):
    path = config_file(f"services: [{{name: web, ports: [{{port: {port}}}]}}]")
    error = only(errors_of(path))
    assert (error.field, error.message) == ("services[0].ports[0].port", message)


def test_target_port_numeric_string_and_names(config_file):
    path = config_file("""
        services:
          - name: web
            ports:
              - {name: a, port: 80, targetPort: "8080"}
              - {name: b, port: 81, targetPort: http}
              - {name: c, port: 82, targetPort: Bad_Name}
    """)
    errors = errors_of(path)
    assert [(e.field, e.message) for e in errors] == [
        ("services[0].ports[0].targetPort", "'8080' is a string, so it would be a port name; write 8080 without quotes"),
        ("services[0].ports[1].targetPort",
         "named targetPort 'http' cannot be resolved in the native format (there are no pods to look it up in); "
         "give the port number"),
        ("services[0].ports[2].targetPort",
         "'Bad_Name' is not a valid port name: use at most 15 lowercase letters, digits and '-', with at least "
         "one letter, no '--', and starting and ending with a letter or digit"),
    ]


def test_wrong_types(config_file):
    path = config_file("""
        interfaces: eth0
        pools:
          - name: p
            addresses: [10.0.0.0/24]
            autoAssign: "yes please"
        services:
          - name: web
            ports: {port: 80}
            selector: {app: 1}
            annotations: [a]
            endpoints: [42]
    """)
    errors = errors_of(path)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (1, "interfaces", "expected a list, got string 'eth0'"),
        (5, "pools[0].autoAssign", "expected true or false, got string 'yes please'"),
        (8, "services[0].ports", "expected a list, got a mapping"),
        (9, "services[0].selector.app", "expected a string, got number 1 (quote it)"),
        (10, "services[0].annotations", "expected a mapping, got a list"),
        (11, "services[0].endpoints[0]", "expected an address ('10.0.0.1', '10.0.0.1:8080') or a mapping, got number 42"),
    ]


def test_missing_required_fields_point_at_the_object(config_file):
    path = config_file("""
        pools:
          - addresses: [10.0.0.0/24]
        services:
          - ports:
              - protocol: UDP
    """)
    errors = errors_of(path)
    assert [(e.line, e.obj, e.field, e.message) for e in errors] == [
        (2, "IPAddressPool pools[0]", "pools[0].name", "required field is missing"),
        (4, "Service services[0]", "services[0].name", "required field is missing"),
        (5, "Service services[0]", "services[0].ports[0].port", "required field is missing"),
    ]


def test_a_non_mapping_item_is_one_error_not_a_cascade(config_file):
    path = config_file("""
        services:
          - web
          - name: api
            ports: [{port: 80}]
            readinessProbe: /health
    """)
    errors = errors_of(path)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (2, "services[0]", "expected a mapping, got string 'web'"),
        (5, "services[1].readinessProbe", "expected a mapping, got string '/health'"),
    ]


def test_a_document_that_is_not_a_mapping(config_file):
    error = only(errors_of(config_file("- just\n- a list\n")))
    assert where(error) == (0, 1, None, None)
    assert "expected a mapping" in error.message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("web", None),
        ("Web", "'Web' is not a valid Service name: use at most 63 lowercase letters, digits and '-', starting "
                "with a letter and ending with a letter or digit (RFC 1035 label) (did you mean 'web'?)"),
        ("1web", "'1web' is not a valid Service name"),
        ("web-", "'web-' is not a valid Service name"),
        ("web.app", "'web.app' is not a valid Service name"),
        ("a" * 64, "is not a valid Service name"),
    ],
)
def test_service_names_are_dns1035_labels(config_file, value, message):
    path = config_file(f"services: [{{name: '{value}', ports: [{{port: 80}}]}}]")
    if message is None:
        assert load([path]).model.services[0].name == value
        return
    error = only(errors_of(path))
    assert error.field == "services[0].name"
    assert message in error.message


def test_namespace_and_port_name_rules(config_file):
    path = config_file("""
        services:
          - name: web
            namespace: My_NS
            ports: [{name: HTTP, port: 80}]
    """)
    errors = errors_of(path)
    assert [e.field for e in errors] == ["services[0].namespace", "services[0].ports[0].name"]
    assert errors[0].obj == "Service My_NS/web"
    assert errors[1].message.startswith("'HTTP' is not a valid port name")


def test_enum_values_are_case_sensitive_with_hints(config_file):
    path = config_file("""
        services:
          - name: web
            type: loadbalancer
            externalTrafficPolicy: local
            ipFamilies: [ipv6]
            ports: [{port: 80, protocol: tcp}, ]
    """)
    errors = errors_of(path)
    assert [(e.field, e.message) for e in errors] == [
        ("services[0].type",
         "'loadbalancer' is not one of LoadBalancer | ClusterIP | NodePort (did you mean 'LoadBalancer'?)"),
        ("services[0].externalTrafficPolicy", "'local' is not one of Cluster | Local (did you mean 'Local'?)"),
        ("services[0].ipFamilies[0]", "'ipv6' is not one of IPv4 | IPv6 (did you mean 'IPv6'?)"),
        ("services[0].ports[0].protocol", "'tcp' is not one of TCP | UDP (did you mean 'TCP'?)"),
    ]


def test_sctp_is_rejected_clearly(config_file):
    path = config_file("services: [{name: web, ports: [{port: 80, protocol: SCTP}]}]")
    assert only(errors_of(path)).message == "SCTP is not supported by lbd (TCP or UDP)"


def test_port_names_unique_required_and_port_protocol_pairs_unique(config_file):
    path = config_file("""
        services:
          - name: web
            ports:
              - {name: http, port: 80}
              - {name: http, port: 81}
              - {port: 82}
              - {name: again, port: 80, protocol: TCP}
              - {name: udp, port: 80, protocol: UDP}
    """)
    errors = errors_of(path)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (5, "services[0].ports[1].name", "duplicate port name 'http' (also ports[0])"),
        (6, "services[0].ports[2].name", "a port name is required when a service has more than one port"),
        (7, "services[0].ports[3].port", "duplicate port 80/TCP (also ports[0])"),
    ]


def test_ip_families(config_file):
    path = config_file("""
        services:
          - {name: a, ipFamilies: [IPv4, IPv6], ports: [{port: 80}]}
          - {name: b, ipFamilies: [IPv4, IPv4], ports: [{port: 80}]}
    """)
    error = only(errors_of(path))
    assert (error.obj, error.message) == ("Service default/b", "expected [IPv4], [IPv6] or both families once each")


# ----------------------------------------------------------------------------- affinity


@pytest.mark.parametrize(("timeout", "ok"), [(1, True), (86400, True), (0, False), (86401, False)])
def test_affinity_timeout_range(config_file, timeout, ok):
    path = config_file(f"""
        services:
          - name: web
            sessionAffinity: ClientIP
            sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}
            ports: [{{port: 80}}]
    """)
    if ok:
        assert load([path]).model.services[0].affinity_timeout_seconds == timeout
        return
    error = only(errors_of(path))
    assert where(error) == (0, 4, "Service default/web", "services[0].sessionAffinityConfig.clientIP.timeoutSeconds")
    assert error.message == f"{timeout} is out of range (1-86400)"


def test_affinity_config_without_client_ip_affinity(config_file):
    path = config_file("""
        services:
          - name: web
            sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
            ports: [{port: 80}]
    """)
    error = only(errors_of(path))
    assert (error.field, error.message) == (
        "services[0].sessionAffinityConfig", "must not be set when sessionAffinity is None",
    )


def test_client_ip_affinity_defaults_to_three_hours(config_file):
    path = config_file("services: [{name: web, sessionAffinity: ClientIP, ports: [{port: 80}]}]")
    assert load([path]).model.services[0].affinity_timeout_seconds == 10800


# ----------------------------------------------------------------------------- requested IPs and annotations


def test_load_balancer_ip_with_annotation_is_an_error(config_file):
    path = config_file("""
        services:
          - name: web
            annotations: {metallb.io/loadBalancerIPs: 192.168.1.5}
            loadBalancerIP: 192.168.1.6
            ports: [{port: 80}]
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 4, "Service default/web", "services[0].loadBalancerIP")
    assert error.message == (
        "cannot be used together with the metallb.io/loadBalancerIPs annotation; keep only the annotation"
    )


def test_load_balancer_ip_with_legacy_annotation_in_a_manifest(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata:
          name: web
          annotations: {metallb.universe.tf/loadBalancerIPs: 192.168.1.5}
        spec:
          type: LoadBalancer
          loadBalancerIP: 192.168.1.6
          ports: [{port: 80}]
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 8, "Service default/web", "spec.loadBalancerIP")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("192.168.1.5,192.168.1.6",
         "'192.168.1.5,192.168.1.6' has more than one IPv4 address (at most one IPv4 and one IPv6)"),
        ("fd00::1, fd00::2", "'fd00::1, fd00::2' has more than one IPv6 address (at most one IPv4 and one IPv6)"),
        ("192.168.1.300", "'192.168.1.300' is not an IP address"),
        ("192.168.1.5,", "'' is not an IP address"),
    ],
)
def test_load_balancer_ips_annotation(config_file, value, message):
    path = config_file(f"""
        services:
          - name: web
            annotations: {{metallb.io/loadBalancerIPs: "{value}"}}
            ports: [{{port: 80}}]
    """)
    error = only(errors_of(path))
    assert (error.field, error.message) == ("services[0].annotations[metallb.io/loadBalancerIPs]", message)


def test_invalid_load_balancer_ip(config_file):
    path = config_file("services: [{name: web, loadBalancerIP: 1.2.3, ports: [{port: 80}]}]")
    assert only(errors_of(path)).message == "'1.2.3' is not an IP address"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"0s"', "'0s' must be greater than 0"),
        ("-5", "-5 must be greater than 0"),
        ('"5 minutes"', "'5 minutes' is not a duration: give seconds (300) or a Go duration such as '300s', '5m' or '1h30m'"),
        ('"5d"', "'5d' is not a duration"),
        ("true", "true is not a duration"),
    ],
)
def test_idle_timeout_errors(config_file, value, message):
    path = config_file(f"""
        services:
          - name: web
            annotations: {{lbd.io/idle-timeout: {value}}}
            ports: [{{port: 80}}]
    """)
    error = only(errors_of(path))
    assert error.field == "services[0].annotations[lbd.io/idle-timeout]"
    assert error.message.startswith(message)


def test_legacy_annotation_warns_naming_file_object_field_and_new_key(config_file):
    path = config_file("""
        services:
          - name: web
            annotations:
              metallb.universe.tf/allow-shared-ip: key
            ports: [{port: 80}]
            endpoints: []
    """)
    loaded = load([path])
    (warning,) = loaded.warnings
    assert warning.file == str(path)
    assert where(warning) == (0, 4, "Service default/web", "services[0].annotations[metallb.universe.tf/allow-shared-ip]")
    assert warning.message == "annotation 'metallb.universe.tf/allow-shared-ip' is deprecated; use 'metallb.io/allow-shared-ip'"
    assert loaded.model.services[0].allow_shared_ip == "key"


def test_legacy_and_new_annotation_disagreeing(config_file):
    path = config_file("""
        services:
          - name: web
            annotations:
              metallb.universe.tf/address-pool: a
              metallb.io/address-pool: b
            ports: [{port: 80}]
    """)
    error = only(errors_of(path))
    assert error.field == "services[0].annotations[metallb.universe.tf/address-pool]"
    assert error.message == "conflicts with 'metallb.io/address-pool' ('b'); keep only 'metallb.io/address-pool'"


def test_other_annotations_are_kept_and_typos_of_ours_warn(config_file):
    path = config_file("""
        services:
          - name: web
            annotations:
              example.com/team: payments
              metallb.io/adress-pool: a
              lbd.io/idle-timout: 5m
              metallb.io/ip-allocated-from-pool: a
            ports: [{port: 80}]
            endpoints: []
    """)
    loaded = load([path])
    assert [(w.line, w.message) for w in loaded.warnings] == [
        (5, "unknown annotation 'metallb.io/adress-pool' is ignored (did you mean 'metallb.io/address-pool'?)"),
        (6, "unknown annotation 'lbd.io/idle-timout' is ignored (did you mean 'lbd.io/idle-timeout'?)"),
    ]
    assert loaded.model.services[0].address_pool is None


def test_annotation_values_must_be_strings(config_file):
    path = config_file("services: [{name: web, annotations: {metallb.io/allow-shared-ip: true}, ports: [{port: 80}]}]")
    assert only(errors_of(path)).message == "expected a non-empty string, got boolean true"


# ----------------------------------------------------------------------------- pools


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("192.168.1.10/24", "'192.168.1.10/24' has host bits set; did you mean '192.168.1.0/24'?"),
        ("fd00::1/64", "'fd00::1/64' has host bits set; did you mean 'fd00::/64'?"),
        ("192.168.1.0/33", "'192.168.1.0/33' is not a CIDR"),
        ("192.168.1.20-192.168.1.10", "'192.168.1.20-192.168.1.10' is backwards: 192.168.1.20 comes after 192.168.1.10"),
        ("192.168.1.1-fd00::1", "'192.168.1.1-fd00::1' mixes IPv4 and IPv6"),
        ("192.168.1.1-192.168.1", "'192.168.1.1-192.168.1' is not a range: both ends of 'first-last' must be IP addresses"),
        ("192.168.1.5", "'192.168.1.5' is a single address; write '192.168.1.5/32'"),
        ("fd00::5", "'fd00::5' is a single address; write 'fd00::5/128'"),
        ("lots", "'lots' is not a CIDR or a range 'first-last'"),
    ],
)
def test_pool_address_entries(config_file, entry, message):
    path = config_file(f"""
        pools:
          - name: default
            addresses:
              - "{entry}"
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 4, "IPAddressPool default", "pools[0].addresses[0]")
    assert error.message == message


def test_pool_needs_addresses(config_file):
    path = config_file("""
        pools:
          - name: a
          - name: b
            addresses: []
    """)
    errors = errors_of(path)
    assert [(e.obj, e.field, e.message) for e in errors] == [
        ("IPAddressPool a", "pools[0].addresses", "required field is missing"),
        ("IPAddressPool b", "pools[1].addresses", "a pool needs at least one address range"),
    ]


def test_overlap_within_a_pool(config_file):
    path = config_file("""
        pools:
          - name: default
            addresses: [192.168.1.0/28, 192.168.1.10-192.168.1.20]
    """)
    error = only(errors_of(path))
    assert (error.obj, error.field) == ("IPAddressPool default", "pools[0].addresses[1]")
    assert error.message == "'192.168.1.10-192.168.1.20' overlaps '192.168.1.0/28' (pools[0].addresses[0]) in the same pool"


def test_overlapping_pools_name_both(config_file):
    first = config_file("""
        pools:
          - {name: blue, addresses: [10.0.0.0/24]}
    """, "a.yaml")
    second = config_file("""
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: green}
        spec:
          addresses:
            - 10.0.0.128-10.0.1.5
    """, "b.yaml")
    error = only(errors_of(first, second))
    assert error.file == str(second)
    assert where(error) == (0, 6, "IPAddressPool green", "spec.addresses[0]")
    assert error.message == (
        f"'10.0.0.128-10.0.1.5' overlaps '10.0.0.0/24' of IPAddressPool blue ({first} line 2); "
        "a VIP can belong to one pool only"
    )


def test_ipv4_and_ipv6_never_overlap(config_file):
    path = config_file("""
        pools:
          - {name: a, addresses: [10.0.0.0/8]}
          - {name: b, addresses: ["fd00::/8"]}
    """)
    assert len(load([path]).model.pools) == 2


def test_duplicate_pool_names(config_file):
    path = config_file("""
        pools:
          - {name: default, addresses: [10.0.0.0/24]}
          - {name: default, addresses: [10.0.1.0/24]}
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 3, "IPAddressPool default", "pools[1].name")
    assert error.message == f"duplicate pool name 'default' (first defined at {path} line 2)"


def test_pool_name_rule(config_file):
    error = only(errors_of(config_file("pools: [{name: My Pool, addresses: [10.0.0.0/24]}]")))
    assert error.field == "pools[0].name" and error.message.startswith("'My Pool' is not a valid pool name")


# ----------------------------------------------------------------------------- services across files


def test_duplicate_services_across_files_and_formats(config_file):
    native = config_file("services: [{name: web, ports: [{port: 80}]}]", "a.yaml")
    manifest = config_file("""
        apiVersion: v1
        kind: Service
        metadata:
          name: web
        spec: {ports: [{port: 80}]}
    """, "b.yaml")
    error = only(errors_of(native, manifest))
    assert error.file == str(manifest)
    assert where(error) == (0, 4, "Service default/web", "metadata.name")
    assert error.message == f"duplicate Service default/web (first defined at {native} line 1)"


def test_same_name_in_other_namespace_is_fine(config_file):
    path = config_file("""
        services:
          - {name: web, ports: [{port: 80}]}
          - {name: web, namespace: other, ports: [{port: 80}]}
    """)
    assert len(load([path]).model.services) == 2


def test_headless_needs_cluster_ip_type(config_file):
    path = config_file("services: [{name: web, clusterIP: None, ports: [{port: 80}]}]")
    error = only(errors_of(path))
    assert (error.field, error.message) == (
        "services[0].clusterIP", "a LoadBalancer service cannot be headless (clusterIP: None needs type ClusterIP)",
    )


# ----------------------------------------------------------------------------- endpoints


def test_endpoint_port_only_for_single_port_services(config_file):
    path = config_file("""
        services:
          - name: web
            ports: [{name: http, port: 80}, {name: https, port: 443}]
            endpoints: [10.0.0.1, "10.0.0.2:8080", {address: 10.0.0.3, port: 9090}]
    """)
    errors = errors_of(path)
    assert [(e.field, e.message) for e in errors] == [
        ("services[0].endpoints[1]",
         "an endpoint port (8080) is allowed only when the service has exactly one port (it has 2); "
         "set targetPort on the ports instead"),
        ("services[0].endpoints[2]",
         "an endpoint port (9090) is allowed only when the service has exactly one port (it has 2); "
         "set targetPort on the ports instead"),
    ]


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ('"10.0.0.300"', "'10.0.0.300' is not an IP address"),
        ('"10.0.0.1:http"', "'10.0.0.1:http': 'http' is not a port (1-65535)"),
        ('"10.0.0.1:70000"', "70000 is not a port (1-65535)"),
        ('"[fd00::1"', "'[fd00::1' is not an endpoint: write '[IPv6]:PORT' or a bare IPv6 address"),
        ('"[fd00::1]8080"', "'[fd00::1]8080' is not an endpoint: write '[IPv6]:PORT' or a bare IPv6 address"),
        ('"0.0.0.0"', "0.0.0.0 is the unspecified address, not a backend"),
        ('"224.0.0.1"', "224.0.0.1 is a multicast address, not a backend (TCP cannot connect to it)"),
        ('"255.255.255.255"', "255.255.255.255 is the broadcast address, not a backend"),
        ('"fe80::1"', "fe80::1 is an IPv6 link-local address, which needs a zone (%interface); lbd takes no zones"),
        ('"::1:80"', "'::1:80' is ambiguous: write '[::1]:80' for port 80 of ::1, or '[::1:80]' for the IPv6 address ::1:80"),
        ('"fd00::5:8080"', "'fd00::5:8080' is ambiguous: write '[fd00::5]:8080' for port 8080 of fd00::5, or '[fd00::5:8080]' for the IPv6 address fd00::5:8080"),
        ('"fe80::1%eth0"', "'fe80::1%eth0' has a zone (%eth0); zones are not allowed here"),
        ("{port: 80}", "required field is missing"),
        ("{address: 10.0.0.1, ready: maybe}", "expected true or false, got string 'maybe'"),
        ('{address: 10.0.0.1, serving: "yes"}', "expected true or false, got string 'yes'"),
        ("{address: 10.0.0.1, terminating: 1}", "expected true or false, got number 1"),
        ("{address: 10.0.0.1, servng: true}", "unknown field 'servng' (did you mean 'serving'?)"),
    ],
)
def test_bad_endpoints(config_file, endpoint, message):
    path = config_file(f"services: [{{name: web, ports: [{{port: 80}}], endpoints: [{endpoint}]}}]")
    error = only(errors_of(path))
    assert error.obj == "Service default/web"
    assert error.field.startswith("services[0].endpoints[0]")
    assert error.message == message


def test_duplicate_endpoints(config_file):
    path = config_file("services: [{name: web, ports: [{port: 80}], endpoints: [10.0.0.1, 10.0.0.2, 10.0.0.1]}]")
    error = only(errors_of(path))
    assert (error.field, error.message) == ("services[0].endpoints[2]", "duplicate endpoint 10.0.0.1 (also endpoints[0])")


# ----------------------------------------------------------------------------- probes


@pytest.mark.parametrize(
    ("probe", "field", "message"),
    [
        ("{periodSeconds: 5}", "services[0].readinessProbe",
         "a probe needs exactly one of httpGet, tcpSocket, grpc or exec (found none)"),
        ("{httpGet: {port: 80}, tcpSocket: {port: 80}}", "services[0].readinessProbe",
         "a probe needs exactly one of httpGet, tcpSocket, grpc or exec (found httpGet, tcpSocket)"),
        ("{httpGet: {port: 80, httpHeaders: [{name: X-A, value: \"a\\r\\nHost: evil\"}]}}",
         "services[0].readinessProbe.httpGet.httpHeaders[0].value", "a header value cannot hold a line break or NUL"),
        ("{grpc: {}}", "services[0].readinessProbe.grpc.port", "required field is missing"),
        ("{httpGet: {path: /}}", "services[0].readinessProbe.httpGet.port", "required field is missing"),
        ("{httpGet: {port: metrics}}", "services[0].readinessProbe.httpGet.port",
         "named port 'metrics' is not resolved: no port of this service has that name "
         "(a named probe port uses that port's targetPort)"),
        ("{httpGet: {port: 80, scheme: http}}", "services[0].readinessProbe.httpGet.scheme",
         "'http' is not one of HTTP | HTTPS (did you mean 'HTTP'?)"),
        ("{httpGet: {port: 80, httpHeaders: [{name: 'Bad Header', value: x}]}}",
         "services[0].readinessProbe.httpGet.httpHeaders[0].name", "'Bad Header' is not an HTTP header name"),
        ("{tcpSocket: {port: 80}, periodSeconds: -1}", "services[0].readinessProbe.periodSeconds",
         "-1 is too small (at least 0)"),
        ("{tcpSocket: {port: 80}, timeoutSeconds: 1.5}", "services[0].readinessProbe.timeoutSeconds",
         "expected an integer, got number 1.5"),
        ("{tcpSocket: {port: 80, host: 10.0.0.1}}", "services[0].readinessProbe.tcpSocket.host",
         "unknown field 'host'"),
    ],
)
def test_probe_errors(config_file, probe, field, message):
    path = config_file(f"services: [{{name: web, ports: [{{name: http, port: 80}}], readinessProbe: {probe}}}]")
    error = only(errors_of(path))
    assert (error.obj, error.field, error.message) == ("Service default/web", field, message)


def test_exec_and_grpc_probes_warn_and_become_tcp_connects(config_file):
    from lbd.config import load
    from lbd.model import Probe, TCPSocketAction

    path = config_file("""
        services:
          - name: db
            ports: [{name: pg, port: 5432, targetPort: 15432}, {name: admin, port: 8080}]
            readinessProbe: {exec: {command: [pg_isready]}, periodSeconds: 3}
            endpoints: []
          - name: api
            ports: [{name: grpc, port: 9090}]
            readinessProbe: {grpc: {port: grpc}}
            endpoints: []
    """)
    loaded = load([path])
    assert loaded.model.service("default/db").readiness_probe == Probe(TCPSocketAction(15432, "exec"), period_seconds=3)
    assert loaded.model.service("default/api").readiness_probe == Probe(TCPSocketAction(9090, "grpc"))
    assert [w.field for w in loaded.warnings] == ["services[0].readinessProbe.exec", "services[1].readinessProbe.grpc"]


def test_named_probe_port_in_a_workload_must_resolve(config_file):
    path = config_file("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web}
        spec:
          template:
            metadata: {labels: {app: web}}
            spec:
              containers:
                - name: app
                  ports: [{name: http, containerPort: 8080}]
                  readinessProbe: {httpGet: {port: health}}
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 11, "Deployment default/web", "spec.template.spec.containers[0].readinessProbe.httpGet.port")
    assert error.message == "named port 'health' is not resolved: no container port has that name"


# ----------------------------------------------------------------------------- manifests


def test_unresolved_named_target_port(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          type: LoadBalancer
          selector: {app: web}
          ports:
            - name: http
              port: 80
              targetPort: web-http
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 10, "Service default/web", "spec.ports[0].targetPort")
    assert error.message == (
        "named targetPort 'web-http' is not resolved: no EndpointSlice or Endpoints port named 'http' for this "
        "Service, and no container port named 'web-http' in a Deployment, StatefulSet or DaemonSet matching "
        "its selector"
    )


def test_conflicting_slice_ports(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{name: http, port: 80, targetPort: http}]}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
        addressType: IPv4
        ports: [{name: http, port: 8080}]
        endpoints: [{addresses: [10.0.0.1]}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-b, labels: {kubernetes.io/service-name: web}}
        addressType: IPv4
        ports: [{name: http, port: 9090}]
        endpoints: [{addresses: [10.0.0.2]}]
    """)
    error = only(errors_of(path))
    assert where(error) == (2, 17, "EndpointSlice default/web-b", "ports[0].port")
    assert error.message == (
        "port 'http' is 9090 here but 8080 in EndpointSlice default/web-a; lbd needs one target port per service port"
    )


def test_endpointslice_address_family_and_fields(config_file):
    path = config_file("""
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
        addressType: IPv6
        endpoints:
          - addresses: [10.0.0.1]
            conditions: {ready: "yes"}
          - {}
        ports: [{name: http, port: 8080, protocol: tcp}]
    """)
    errors = errors_of(path)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (6, "endpoints[0].addresses[0]", "10.0.0.1 is not an IPv6 address (the slice's addressType)"),
        (7, "endpoints[0].conditions.ready", "expected true or false, got string 'yes'"),
        (8, "endpoints[1].addresses", "required field is missing"),
        (9, "ports[0].protocol", "'tcp' is not one of TCP | UDP (did you mean 'TCP'?)"),
    ]


def test_native_endpoint_conditions_name_file_object_and_field(config_file):
    path = config_file("""
        services:
          - name: web
            ports: [{port: 80}]
            endpoints:
              - {address: 10.0.0.1, serving: "yes"}
              - address: 10.0.0.2
                terminating: null
                ready: false
                serving: 0
    """)
    errors = errors_of(path)
    assert [(e.file, *where(e), e.message) for e in errors] == [
        (str(path), 0, 5, "Service default/web", "services[0].endpoints[0].serving",
         "expected true or false, got string 'yes'"),
        (str(path), 0, 9, "Service default/web", "services[0].endpoints[1].serving",
         "expected true or false, got number 0"),
    ]
    assert str(errors[0]) == (
        f"{path}: document 0 (line 5): Service default/web: services[0].endpoints[0].serving: "
        "expected true or false, got string 'yes'"
    )


def test_endpointslice_serving_and_terminating_must_be_booleans(config_file):
    path = config_file("""
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
        addressType: IPv4
        endpoints:
          - addresses: [10.0.0.1]
            conditions: {ready: true, serving: "yes"}
          - addresses: [10.0.0.2]
            conditions:
              terminating: "false"
              servng: true
    """)
    errors = errors_of(path)
    assert [(e.file, *where(e), e.message) for e in errors] == [
        (str(path), 0, 7, "EndpointSlice shop/web-a", "endpoints[0].conditions.serving",
         "expected true or false, got string 'yes'"),
        (str(path), 0, 10, "EndpointSlice shop/web-a", "endpoints[1].conditions.terminating",
         "expected true or false, got string 'false'"),
        (str(path), 0, 11, "EndpointSlice shop/web-a", "endpoints[1].conditions.servng",
         "unknown field 'servng' (did you mean 'serving'?)"),
    ]
    assert str(errors[0]) == (
        f"{path}: document 0 (line 7): EndpointSlice shop/web-a: endpoints[0].conditions.serving: "
        "expected true or false, got string 'yes'"
    )


def test_endpoints_address_needs_ip(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Endpoints
        metadata: {name: web}
        subsets:
          - addresses: [{hostname: a}]
            notReadyAddresses: [{ip: nope}]
    """)
    errors = errors_of(path)
    assert [(e.obj, e.field, e.message) for e in errors] == [
        ("Endpoints default/web", "subsets[0].addresses[0].ip", "required field is missing"),
        ("Endpoints default/web", "subsets[0].notReadyAddresses[0].ip", "'nope' is not an IP address"),
    ]


def test_kind_and_api_version_errors(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Servce
        metadata: {name: a}
        ---
        apiVersion: metallb.io/v1beta2
        kind: IPAddressPool
        metadata: {name: b}
        ---
        kind: Deployment
        metadata: {name: c}
        ---
        apiVersion: v1
        metadata: {name: d}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: Endpoint
        metadata: {name: e}
    """)
    errors = errors_of(path)
    assert [(e.doc, e.line, e.field, e.message) for e in errors] == [
        (0, 2, "kind", "unknown kind 'Servce' (did you mean 'Service'?)"),
        (1, 5, "apiVersion", "'metallb.io/v1beta2' is not the apiVersion of IPAddressPool (expected 'metallb.io/v1beta1')"),
        (2, 9, "apiVersion", "required field is missing (a Deployment is 'apps/v1')"),
        (3, 12, "kind", "required field is missing"),
        (4, 16, "kind", "unknown kind 'Endpoint' (did you mean 'Endpoints'?)"),
    ]


def test_manifest_metadata_errors(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {namespace: Prod}
        spec: {ports: [{port: 80}]}
    """)
    errors = errors_of(path)
    assert [(e.obj, e.field, e.message.split(":")[0]) for e in errors] == [
        ("Service Prod/(unnamed)", "metadata.name", "required field is missing"),
        ("Service Prod/(unnamed)", "metadata.namespace", "'Prod' is not a valid namespace"),
    ]


def test_pool_manifest_errors(config_file):
    path = config_file("""
        apiVersion: metallb.io/v1beta1
        kind: IPAddressPool
        metadata: {name: p}
        spec:
          addresses: [10.0.0.5/24]
          autoassign: true
          serviceAllocation: {priority: 1}
    """)
    with pytest.raises(ConfigInvalid) as caught:
        load([path])
    assert [(e.field, e.message) for e in caught.value.errors] == [
        ("spec.addresses[0]", "'10.0.0.5/24' has host bits set; did you mean '10.0.0.0/24'?"),
        ("spec.autoassign", "unknown field 'autoassign' (did you mean 'autoAssign'?)"),
    ]


def test_manifest_services_not_enforced_fields_warn(config_file):
    path = config_file("""
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          type: LoadBalancer
          loadBalancerSourceRanges: [10.0.0.0/8]
          ports: [{port: 80}]
        ---
        {apiVersion: v1, kind: Endpoints, metadata: {name: web}}
    """)
    (warning,) = load([path]).warnings
    assert (warning.field, warning.message) == (
        "spec.loadBalancerSourceRanges", "loadBalancerSourceRanges is not enforced by lbd; ignored",
    )


# ----------------------------------------------------------------------------- files and YAML


def test_yaml_syntax_error_has_file_doc_and_line(config_file):
    path = config_file("""
        services:
          - {name: web, ports: [{port: 80}]}
        ---
        services: [
          {name: a
    """)
    error = only(errors_of(path))
    assert error.file == str(path) and error.doc == 1 and error.line == 6
    assert error.message.startswith("YAML syntax error: ")


def test_yaml_syntax_error_still_reports_earlier_documents(config_file):
    path = config_file("""
        services: [{name: web, ports: [{port: 0}]}]
        ---
        a: b: c
    """)
    errors = errors_of(path)
    assert [(e.doc, e.line) for e in errors] == [(0, 1), (1, 3)]


def test_duplicate_yaml_keys(config_file):
    path = config_file("""
        services:
          - name: web
            ports: [{port: 80}]
            name: other
    """)
    error = only(errors_of(path))
    assert where(error) == (0, 4, None, None)
    assert error.message == "duplicate key 'name' (first at line 2)"


def test_unsafe_yaml_tags_are_refused(config_file):
    error = only(errors_of(config_file("services: !!python/object/apply:os.system [ls]\n")))
    assert error.line == 1 and "YAML" in error.message


def test_missing_and_unreadable_files(tmp_path, config_file):
    missing = tmp_path / "nope.yaml"
    error = only(errors_of(missing))
    assert error.file == str(missing) and error.message == "cannot read file: No such file or directory"
    if os.geteuid() != 0:  # root reads anything
        locked = config_file("services: []", "locked.yaml")
        locked.chmod(0)
        assert only(errors_of(locked)).message == "cannot read file: Permission denied"


def test_invalid_utf8_is_an_error(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"services: [\xff\xfe\xfd]\n")
    error = only(errors_of(path))
    assert error.file == str(path) and "YAML" in error.message


def test_interface_names(config_file):
    path = config_file("interfaces: [eth0, 'bad/name', 'thisnameiswaytoolong', '']")
    errors = errors_of(path)
    assert [e.field for e in errors] == ["interfaces[1]", "interfaces[2]", "interfaces[3]"]
    assert all("is not an interface name" in e.message for e in errors)
