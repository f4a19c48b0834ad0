"""Kubernetes and MetalLB manifests -> the same model the native format gives.

Read kinds: IPAddressPool, L2Advertisement, Service, EndpointSlice, Endpoints, and the
Deployment/StatefulSet/DaemonSet whose pods a Service selects (for its readinessProbe and
named ports). MetalLB kinds lbd does not act on (BGP) get a warning (lbd/config/metallb.py);
everything else is skipped with a debug log. Objects are collected from all files first and
joined at the end, because a Service and its EndpointSlices may sit in different files.

Strictness: the fields lbd reads, and their neighbours, are checked (unknown ones get a "did
you mean"); valid Kubernetes fields lbd does not use are listed and let through.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from lbd.config import metallb, pools, probes
from lbd.config import values as v
from lbd.config.annotations import ServiceAnnotations, service_annotations
from lbd.config.collected import Collected
from lbd.config.reading import Fields, Loc, choice, describe, show
from lbd.config.services import (
    PROTOCOLS,
    SERVICE_NAME_LABEL,
    SERVICE_SPEC_FIELDS,
    PlacedService,
    SpecDraft,
    build_service,
    no_endpoints_in_manifests,
    service_spec,
)
from lbd.config.yamlsrc import YMap
from lbd.model import DEFAULT_NAMESPACE, Endpoint, Probe, ServicePort, ServiceType

log = structlog.get_logger()

OBJECT_FIELDS = ("apiVersion", "kind", "metadata", "spec")
OBJECT_IGNORED = ("status",)
METADATA_FIELDS = ("name", "namespace", "labels", "annotations")
METADATA_IGNORED = (
    "uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "generateName",
    "ownerReferences", "finalizers", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds",
)
LIST_FIELDS = ("apiVersion", "kind", "items")

SERVICE_SPEC_IGNORED = (
    "clusterIPs", "ipFamilyPolicy", "internalTrafficPolicy", "allocateLoadBalancerNodePorts",
    "healthCheckNodePort", "publishNotReadyAddresses", "loadBalancerClass", "externalName",
    "trafficDistribution", "externalIPs", "loadBalancerSourceRanges",
)
# Valid, but they change who may connect or where: say that lbd does not do it.
SERVICE_SPEC_NOT_ENFORCED = ("externalIPs", "loadBalancerSourceRanges")
SERVICE_PORT_IGNORED = ("nodePort", "appProtocol")

POOL_SPEC_FIELDS = ("addresses", "autoAssign", "avoidBuggyIPs")

SLICE_FIELDS = ("apiVersion", "kind", "metadata", "addressType", "endpoints", "ports")
SLICE_ENDPOINT_FIELDS = ("addresses", "conditions", "nodeName")
SLICE_ENDPOINT_IGNORED = ("hostname", "targetRef", "zone", "hints", "deprecatedTopology")
CONDITION_FIELDS = ("ready", "serving", "terminating")
ENDPOINT_PORT_FIELDS = ("name", "port", "protocol")
ENDPOINT_PORT_IGNORED = ("appProtocol",)
ENDPOINTS_FIELDS = ("apiVersion", "kind", "metadata", "subsets")
SUBSET_FIELDS = ("addresses", "notReadyAddresses", "ports")
ADDRESS_FIELDS = ("ip", "nodeName")
ADDRESS_IGNORED = ("hostname", "targetRef")

# Workloads are big types; we read a corner of them and only reject near-misses of that corner.
WORKLOAD_SPEC_IGNORED = (
    "replicas", "selector", "strategy", "minReadySeconds", "revisionHistoryLimit", "paused",
    "progressDeadlineSeconds", "serviceName", "podManagementPolicy", "updateStrategy",
    "volumeClaimTemplates", "persistentVolumeClaimRetentionPolicy", "ordinals",
)
POD_SPEC_IGNORED = (
    "initContainers", "ephemeralContainers", "volumes", "restartPolicy", "terminationGracePeriodSeconds",
    "activeDeadlineSeconds", "dnsPolicy", "nodeSelector", "serviceAccountName", "serviceAccount",
    "automountServiceAccountToken", "nodeName", "hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace",
    "securityContext", "imagePullSecrets", "hostname", "subdomain", "affinity", "schedulerName",
    "tolerations", "hostAliases", "priorityClassName", "priority", "dnsConfig", "readinessGates",
    "runtimeClassName", "enableServiceLinks", "preemptionPolicy", "overhead",
    "topologySpreadConstraints", "setHostnameAsFQDN", "os", "hostUsers", "schedulingGates",
    "resourceClaims", "resources",
)
CONTAINER_FIELDS = ("name", "ports", "readinessProbe")
CONTAINER_IGNORED = (
    "image", "command", "args", "workingDir", "envFrom", "env", "resources", "resizePolicy",
    "restartPolicy", "volumeMounts", "volumeDevices", "livenessProbe", "startupProbe", "lifecycle",
    "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy", "securityContext",
    "stdin", "stdinOnce", "tty",
)
CONTAINER_PORT_FIELDS = ("name", "containerPort", "protocol")
CONTAINER_PORT_IGNORED = ("hostPort", "hostIP")
PROBE_IGNORED = ("terminationGracePeriodSeconds",)

# Kinds that are surely not typos of ours, so "did you mean" never fires on them.
_WELL_KNOWN_KINDS = frozenset({
    "Secret", "ConfigMap", "Ingress", "IngressClass", "Namespace", "ServiceAccount", "Pod", "ReplicaSet",
    "ReplicationController", "Job", "CronJob", "PersistentVolume", "PersistentVolumeClaim", "StorageClass",
    "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "NetworkPolicy", "ServiceMonitor",
    "PodMonitor", "HorizontalPodAutoscaler", "PodDisruptionBudget", "LimitRange", "ResourceQuota",
    "CustomResourceDefinition", "Node", "Event", "BGPPeer", "BGPAdvertisement", "BFDProfile",
    "Community", "ServiceL2Status", "ServiceBGPStatus",
})


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """metadata of an object we read, validated."""

    name: str | None
    namespace: str
    labels: dict[str, str]
    annotations: Any
    name_loc: Loc
    annotations_loc: Loc


@dataclass(frozen=True, slots=True)
class ServiceDraft:
    """A Service whose named targetPorts, endpoints and probe come from other objects."""

    name: str
    namespace: str
    spec: SpecDraft
    annotations: ServiceAnnotations
    name_loc: Loc


@dataclass(frozen=True, slots=True)
class EndpointGroup:
    """Addresses that share a port list: one EndpointSlice, or one subset of an Endpoints."""

    source: str  # "EndpointSlice default/web-abc", for messages
    endpoints: tuple[Endpoint, ...]
    ports: dict[str, tuple[int, Loc]]  # port name ("" when unnamed) -> number


@dataclass(frozen=True, slots=True)
class Container:
    """What a Service can take from one container: its named ports and readinessProbe."""

    ports: dict[str, int]  # named container ports
    probe: Probe | None


@dataclass(frozen=True, slots=True)
class Workload:
    """A Deployment/StatefulSet/DaemonSet, reduced to what a Service can take from it."""

    source: str
    namespace: str
    labels: dict[str, str]
    containers: tuple[Container, ...]

    def selected_by(self, selector: tuple[tuple[str, str], ...]) -> bool:
        return bool(selector) and all(self.labels.get(k) == value for k, value in selector)


@dataclass(frozen=True, slots=True)
class _Target:
    """Which service some endpoints belong to, and where they said so."""

    namespace: str
    service: str
    loc: Loc


@dataclass(slots=True)
class ManifestSet:
    """Manifests gathered from every file, joined into services by `resolve`."""

    services: list[ServiceDraft] = field(default_factory=list)
    slices: list[tuple[_Target, EndpointGroup]] = field(default_factory=list)
    endpoints: list[tuple[_Target, EndpointGroup]] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)
    advertisements: list[metallb.Advertisement] = field(default_factory=list)

    # ---------------------------------------------------------------------------- reading

    def add(self, content: YMap, loc: Loc, into: Collected) -> None:
        """Read one object (or a `kind: List` of them) from a document."""
        kind, api_version = content.get("kind"), content.get("apiVersion")
        if not isinstance(kind, str) or not kind:
            loc.key("kind", content.value_line("kind")).error(
                "required field is missing" if kind is None else f"expected a string, got {describe(kind)}"
            )
            return
        meta = content.get("metadata")
        raw_name = meta.get("name") if isinstance(meta, YMap) else None
        reader = _READERS.get(kind)
        if reader is None:
            close = difflib.get_close_matches(kind, list(_READERS), n=1, cutoff=0.8)
            # DeploymentList & co. (raw API lists) are near our names but are not typos.
            if close and kind not in _WELL_KNOWN_KINDS and not kind.endswith("List"):
                loc.key("kind", content.value_line("kind")).error(
                    f"unknown kind {kind!r} (did you mean {close[0]!r}?)"
                )
            elif (why := metallb.skipped_kind(kind, api_version)) is not None:
                loc.of(f"{kind} {raw_name if isinstance(raw_name, str) else '(unnamed)'}").warn(why)
            else:
                log.debug("manifest_skipped", kind=kind, name=raw_name, file=loc.file)
            return
        expected_api, read = reader
        if api_version != expected_api:
            where = loc.key("apiVersion", content.value_line("apiVersion"))
            if api_version is None:
                where.error(f"required field is missing (a {kind} is {expected_api!r})")
            else:
                where.error(f"{show(api_version)} is not the apiVersion of {kind} (expected {expected_api!r})")
            return
        read(self, content, loc, into)

    def _list(self, content: YMap, loc: Loc, into: Collected) -> None:
        f = Fields(content, loc, LIST_FIELDS, ignored=("metadata",))
        for _, item, where in f.items("items"):
            if isinstance(item, YMap):
                self.add(item, where, into)
            else:
                where.error(f"expected a Kubernetes object, got {describe(item)}")

    @staticmethod
    def _metadata(f: Fields, rule: v.NameRule, what: str) -> ObjectMeta:
        m = f.sub("metadata", METADATA_FIELDS, ignored=METADATA_IGNORED)
        object_name = v.name(m.get("name"), m.at("name"), rule, what) if m.require("name") else None
        namespace: str | None = DEFAULT_NAMESPACE
        if "namespace" in m:
            namespace = v.name(m.get("namespace"), m.at("namespace"), v.DNS1123_LABEL, "namespace")
        return ObjectMeta(
            object_name, namespace or DEFAULT_NAMESPACE, m.string_map("labels"), m.get("annotations"),
            m.at("name"), m.at("annotations"),
        )

    @staticmethod
    def _object_loc(content: YMap, loc: Loc, kind: str, namespaced: bool = True) -> Loc:
        """`loc` naming the object ("Service default/web") before its metadata is validated."""
        meta = content.get("metadata")
        given = meta.get("name") if isinstance(meta, YMap) else None
        given_ns = meta.get("namespace") if isinstance(meta, YMap) else None
        label = given if isinstance(given, str) else "(unnamed)"
        if namespaced:
            label = f"{given_ns if isinstance(given_ns, str) else DEFAULT_NAMESPACE}/{label}"
        return loc.of(f"{kind} {label}")

    def _pool(self, content: YMap, loc: Loc, into: Collected) -> None:
        f = Fields(content, self._object_loc(content, loc, "IPAddressPool", namespaced=False),
                   OBJECT_FIELDS, ignored=OBJECT_IGNORED)
        meta = self._metadata(f, v.DNS1123_SUBDOMAIN, "pool name")
        spec = f.sub("spec", POOL_SPEC_FIELDS, ignored=("serviceAllocation",))
        if "serviceAllocation" in spec:
            spec.key_at("serviceAllocation").warn("serviceAllocation is not supported by lbd; ignored")
        draft = pools.pool(meta.name or "", spec, meta.name_loc)
        if meta.name is not None:
            into.pools.append(draft)

    def _l2_advertisement(self, content: YMap, loc: Loc, into: Collected) -> None:
        here = self._object_loc(content, loc, "L2Advertisement", namespaced=False)
        f = Fields(content, here, OBJECT_FIELDS, ignored=OBJECT_IGNORED)
        meta = self._metadata(f, v.DNS1123_SUBDOMAIN, "name")
        spec = f.sub("spec", metallb.L2_SPEC_FIELDS, ignored=metallb.L2_SPEC_IGNORED)
        # No interfaces: MetalLB announces on every interface; lbd with none picks, per VIP, the
        # interface whose subnet holds it. Same intent (unless another one lists some: checked).
        self.advertisements.append(metallb.read_advertisement(spec, meta.name, here, into))

    def _service(self, content: YMap, loc: Loc, into: Collected) -> None:
        f = Fields(content, self._object_loc(content, loc, "Service"), OBJECT_FIELDS, ignored=OBJECT_IGNORED)
        meta = self._metadata(f, v.DNS1035_LABEL, "Service name")
        spec_fields = f.sub("spec", SERVICE_SPEC_FIELDS, ignored=SERVICE_SPEC_IGNORED)
        if spec_fields.get("type") == "ExternalName":  # a DNS alias: nothing to balance
            log.debug("manifest_skipped", kind="Service", name=meta.name, file=loc.file, reason="ExternalName")
            return
        for key in SERVICE_SPEC_NOT_ENFORCED:
            if key in spec_fields:
                spec_fields.key_at(key).warn(f"{key} is not enforced by lbd; ignored")
        if "loadBalancerClass" in spec_fields:
            given = spec_fields.get("loadBalancerClass")
            spec_fields.key_at("loadBalancerClass").warn(metallb.load_balancer_class(given))
        spec = service_spec(spec_fields, ServiceType.CLUSTER_IP, port_ignored=SERVICE_PORT_IGNORED)
        annotations = service_annotations(meta.annotations, meta.annotations_loc)
        if meta.name is not None:
            self.services.append(ServiceDraft(meta.name, meta.namespace, spec, annotations, meta.name_loc))

    def _endpoint_ports(self, f: Fields, key: str) -> dict[str, tuple[int, Loc]]:
        ports: dict[str, tuple[int, Loc]] = {}
        for _, item, where in f.items(key):
            p = Fields(item, where, ENDPOINT_PORT_FIELDS, ignored=ENDPOINT_PORT_IGNORED)
            port_name = p.string("name", default="") or ""
            if "protocol" in p:
                choice(p.get("protocol"), p.at("protocol"), PROTOCOLS, None)
            # A slice port without a number means "all ports" (never for a Service's slices).
            if "port" in p and (number := v.port(p.get("port"), p.at("port"))) is not None:
                ports.setdefault(port_name, (number, p.at("port")))
        return ports

    def _endpoint_slice(self, content: YMap, loc: Loc, into: Collected) -> None:
        here = self._object_loc(content, loc, "EndpointSlice")
        f = Fields(content, here, SLICE_FIELDS)
        meta = self._metadata(f, v.DNS1123_SUBDOMAIN, "name")
        address_type = f.string("addressType", required=True)
        family = {"IPv4": 4, "IPv6": 6}.get(address_type or "")
        if address_type == "FQDN":
            f.at("addressType").warn("FQDN EndpointSlices are not supported by lbd; this slice is ignored")
            return
        if address_type is not None and family is None:
            choice(address_type, f.at("addressType"), {"IPv4": 4, "IPv6": 6, "FQDN": 0}, 0)
        endpoints: list[Endpoint] = []
        for _, item, where in f.items("endpoints"):
            e = Fields(item, where, SLICE_ENDPOINT_FIELDS, ignored=SLICE_ENDPOINT_IGNORED)
            # discovery/v1: an absent ready or serving "should be interpreted as true" (kube-proxy
            # does: endpointslicecache.go), an absent terminating as false.
            conditions = e.sub("conditions", CONDITION_FIELDS)
            ready = conditions.boolean("ready", True)
            serving = conditions.boolean("serving", True)
            terminating = conditions.boolean("terminating", False)
            node_name = e.string("nodeName")
            for _, address_value, address_loc in e.items("addresses", required=True):
                address = v.endpoint_ip(address_value, address_loc)
                if address is None:
                    continue
                if family is not None and address.version != family:
                    address_loc.error(f"{address} is not an {address_type} address (the slice's addressType)")
                    continue
                endpoints.append(Endpoint(address, None, node_name, ready, serving, terminating))
        ports = self._endpoint_ports(f, "ports")
        service_name = meta.labels.get(SERVICE_NAME_LABEL)
        if service_name is None:
            here.warn(f"no label {SERVICE_NAME_LABEL!r}: this slice belongs to no Service and is ignored")
            return
        group = EndpointGroup(here.obj or "EndpointSlice", tuple(endpoints), ports)
        self.slices.append((_Target(meta.namespace, service_name, here), group))

    def _endpoints(self, content: YMap, loc: Loc, into: Collected) -> None:
        here = self._object_loc(content, loc, "Endpoints")
        f = Fields(content, here, ENDPOINTS_FIELDS)
        meta = self._metadata(f, v.DNS1035_LABEL, "Endpoints name (the Service's name)")
        if meta.name is not None and not f.get("subsets"):  # what Kubernetes writes for no pods
            self.endpoints.append((_Target(meta.namespace, meta.name, here), EndpointGroup(here.obj or "", (), {})))
        for _, subset, where in f.items("subsets"):
            s = Fields(subset, where, SUBSET_FIELDS)
            endpoints: list[Endpoint] = []
            # v1 Endpoints has no serving or terminating: a not-ready address is neither serving
            # nor known to be terminating (what the EndpointSlice mirroring controller writes).
            for key, ready in (("addresses", True), ("notReadyAddresses", False)):
                for _, item, address_loc in s.items(key):
                    a = Fields(item, address_loc, ADDRESS_FIELDS, ignored=ADDRESS_IGNORED)
                    address = v.endpoint_ip(a.get("ip"), a.at("ip")) if a.require("ip") else None
                    if address is not None:
                        endpoints.append(
                            Endpoint(address, None, a.string("nodeName"), ready, serving=ready, terminating=False)
                        )
            group = EndpointGroup(here.obj or "Endpoints", tuple(endpoints), self._endpoint_ports(s, "ports"))
            if meta.name is not None:
                self.endpoints.append((_Target(meta.namespace, meta.name, here), group))

    def _workload(self, content: YMap, loc: Loc, into: Collected) -> None:
        kind = content["kind"]
        here = self._object_loc(content, loc, kind)
        f = Fields(content, here, OBJECT_FIELDS, ignored=OBJECT_IGNORED)
        meta = self._metadata(f, v.DNS1123_SUBDOMAIN, f"{kind} name")
        spec = f.sub("spec", ("template",), ignored=WORKLOAD_SPEC_IGNORED, closed=False)
        template = spec.sub("template", ("metadata", "spec"))
        labels = template.sub("metadata", METADATA_FIELDS, ignored=METADATA_IGNORED).string_map("labels")
        pod = template.sub("spec", ("containers",), ignored=POD_SPEC_IGNORED, closed=False)

        raw_containers = [
            (Fields(item, where, CONTAINER_FIELDS, ignored=CONTAINER_IGNORED, closed=False), where)
            for _, item, where in pod.items("containers")
        ]
        named_ports = [self._container_ports(c) for c, _ in raw_containers]
        pod_ports: dict[str, int] = {}
        for ports in named_ports:
            for port_name, number in ports.items():
                pod_ports.setdefault(port_name, number)
        containers: list[Container] = []
        for (c, _), ports in zip(raw_containers, named_ports):
            probe = None
            if "readinessProbe" in c:
                # The kubelet resolves a named probe port in the container's own ports.
                def resolve(port_name: str, own: dict[str, int] = ports) -> int | None:
                    return own.get(port_name, pod_ports.get(port_name))

                probe = probes.probe(
                    c.get("readinessProbe"), c.at("readinessProbe"), resolve,
                    "no container port has that name", ignored=PROBE_IGNORED,
                )
            containers.append(Container(ports, probe))
        self.workloads.append(Workload(here.obj or kind, meta.namespace, labels, tuple(containers)))

    @staticmethod
    def _container_ports(c: Fields) -> dict[str, int]:
        named: dict[str, int] = {}
        for _, item, where in c.items("ports"):
            p = Fields(item, where, CONTAINER_PORT_FIELDS, ignored=CONTAINER_PORT_IGNORED)
            number = v.port(p.get("containerPort"), p.at("containerPort")) if p.require("containerPort") else None
            if "protocol" in p:
                choice(p.get("protocol"), p.at("protocol"), {**PROTOCOLS, "SCTP": None}, None)
            if "name" in p:
                port_name = v.name(p.get("name"), p.at("name"), v.IANA_SVC_NAME, "port name")
                if port_name is not None and number is not None:
                    named.setdefault(port_name, number)
        return named

    # ---------------------------------------------------------------------------- joining

    def resolve(self, into: Collected) -> None:
        """Join endpoints and workloads to their Services and add the Services to `into`."""
        keys = {(d.namespace, d.name) for d in self.services}
        for target, group in (*self.slices, *self.endpoints):
            if (target.namespace, target.service) not in keys:
                target.loc.warn(
                    f"no Service {target.namespace}/{target.service} among the manifests; its endpoints are ignored"
                )
        for draft in self.services:
            into.services.append(self._join(draft))
        metallb.check_advertisements(self.advertisements, into.pools)

    def _groups(self, draft: ServiceDraft) -> list[EndpointGroup]:
        # Like kube-proxy: EndpointSlices when there are any, the older Endpoints otherwise.
        slices = [g for t, g in self.slices if (t.namespace, t.service) == (draft.namespace, draft.name)]
        if slices:
            return slices
        return [g for t, g in self.endpoints if (t.namespace, t.service) == (draft.namespace, draft.name)]

    def _join(self, draft: ServiceDraft) -> PlacedService:
        groups = self._groups(draft)
        workloads = [
            w for w in self.workloads if w.namespace == draft.namespace and w.selected_by(draft.spec.selector)
        ]
        ports: list[ServicePort] = []
        for port in draft.spec.ports:
            target = _endpoint_port(groups, port.name)
            if target is None and isinstance(port.target, str):
                target = _container_port(workloads, port.target)
                if target is None:
                    port.target_loc.error(
                        f"named targetPort {port.target!r} is not resolved: no EndpointSlice or Endpoints "
                        f"port named {port.name!r} for this Service, and no container port named "
                        f"{port.target!r} in a Deployment, StatefulSet or DaemonSet matching its selector"
                    )
                    continue
            if target is None:
                target = int(port.target)
            ports.append(ServicePort(port.name, port.port, target, port.protocol))

        endpoints: dict[Any, Endpoint] = {}
        for group in groups:
            for endpoint in group.endpoints:
                # An address may show up in two slices while Kubernetes moves it: keep the first.
                endpoints.setdefault(endpoint.address, endpoint)

        probe = next((c.probe for w in workloads for c in w.containers if c.probe is not None), None)
        probe = probes.for_service(probe, ports)
        service = build_service(
            draft.name, draft.namespace, draft.spec, draft.annotations, tuple(ports),
            tuple(endpoints.values()), probe,
        )
        if service.exposed and not groups:  # no endpoint object at all: `0/0` in the table, no clue why
            hint = no_endpoints_in_manifests(draft.namespace, draft.name, workloads[0].source if workloads else None)
            replace(draft.name_loc, path="").warn(hint)
        return PlacedService(service, draft.name_loc)


def _endpoint_port(groups: list[EndpointGroup], port_name: str) -> int | None:
    """The number endpoint objects give a service port (that is how kube-proxy resolves names)."""
    found: tuple[int, EndpointGroup] | None = None
    for group in groups:
        if port_name not in group.ports:
            continue
        number, where = group.ports[port_name]
        if found is None:
            found = (number, group)
        elif found[0] != number:
            where.error(
                f"port {port_name!r} is {number} here but {found[0]} in {found[1].source}; "
                "lbd needs one target port per service port"
            )
    return found[0] if found else None


def _container_port(workloads: list[Workload], port_name: str) -> int | None:
    return next((c.ports[port_name] for w in workloads for c in w.containers if port_name in c.ports), None)


_Reader = Callable[[ManifestSet, YMap, Loc, Collected], None]
# kind -> (the apiVersion it must have, its reader)
_READERS: dict[str, tuple[str, _Reader]] = {
    "List": ("v1", ManifestSet._list),
    "IPAddressPool": ("metallb.io/v1beta1", ManifestSet._pool),
    "L2Advertisement": ("metallb.io/v1beta1", ManifestSet._l2_advertisement),
    "Service": ("v1", ManifestSet._service),
    "EndpointSlice": ("discovery.k8s.io/v1", ManifestSet._endpoint_slice),
    "Endpoints": ("v1", ManifestSet._endpoints),
    "Deployment": ("apps/v1", ManifestSet._workload),
    "StatefulSet": ("apps/v1", ManifestSet._workload),
    "DaemonSet": ("apps/v1", ManifestSet._workload),
}
