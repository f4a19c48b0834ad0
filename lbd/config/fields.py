"""Shared validators for both config formats: names, ports, IPs, ranges, probes, durations.

Every validator takes the value and a `Loc` (file, document, line, object, field path), reports
what is wrong through `Loc.error` and returns a usable value or None, so that one pass over a
file collects every error instead of stopping at the first. `Fields` reads one YAML mapping
against a declared list of field names and reports the unknown ones with a "did you mean".
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lbd.config.errors import ConfigError
from lbd.config.yamlsrc import YMap, YSeq
from lbd.model import (
    DEFAULT_AFFINITY_TIMEOUT_SECONDS,
    MAX_AFFINITY_TIMEOUT_SECONDS,
    AddressRange,
    Endpoint,
    HTTPGetAction,
    IPAddress,
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

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Where we are, and where problems go


@dataclass(slots=True)
class Issues:
    """Every error and warning found while loading, in the order found."""

    errors: list[ConfigError] = field(default_factory=list)
    warnings: list[ConfigError] = field(default_factory=list)


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Loc:
    """A place in the input (file, document, line, object, field path) that can report problems."""

    issues: Issues
    file: str
    doc: int | None = None
    line: int | None = None
    obj: str | None = None
    path: str = ""

    def _issue(self, message: str) -> ConfigError:
        return ConfigError(self.file, message, self.doc, self.line, self.obj, self.path or None)

    def error(self, message: str) -> None:
        self.issues.errors.append(self._issue(message))

    def warn(self, message: str) -> None:
        self.issues.warnings.append(self._issue(message))

    def key(self, name: object, line: int | None = None) -> Loc:
        """The location of field `name` below this one (on `line`, or this line if unknown)."""
        text = str(name)
        if _PLAIN_KEY.fullmatch(text):
            path = f"{self.path}.{text}" if self.path else text
        else:  # annotation and label keys contain '/' and '.': keep them readable
            path = f"{self.path}[{text}]"
        return Loc(self.issues, self.file, self.doc, line if line is not None else self.line, self.obj, path)

    def index(self, position: int, line: int | None = None) -> Loc:
        line = line if line is not None else self.line
        return Loc(self.issues, self.file, self.doc, line, self.obj, f"{self.path}[{position}]")

    def of(self, obj: str) -> Loc:
        """The same place, now naming the object it belongs to."""
        return Loc(self.issues, self.file, self.doc, self.line, obj, self.path)

    def where(self) -> str:
        """A short "file line N" for messages that point at another place."""
        return f"{self.file} line {self.line}" if self.line is not None else self.file


# --------------------------------------------------------------------------------------------
# Messages


def describe(value: Any) -> str:
    """What a wrong value is, for "expected X, got Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value}"


def show(value: Any) -> str:
    """A value as the user wrote it: strings quoted, numbers and booleans bare."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def closest(word: str, candidates: Collection[str]) -> str | None:
    """The candidate `word` was probably meant to be, if any."""
    folded = {c.lower(): c for c in candidates}
    if word.lower() in folded:  # targetport -> targetPort: a case slip beats any fuzzy match
        return folded[word.lower()]
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, candidates: Collection[str]) -> str:
    """' (did you mean 'X'?)' when a candidate is close to `word`, else ''."""
    meant = closest(word, candidates)
    return f" (did you mean {meant!r}?)" if meant is not None else ""


# --------------------------------------------------------------------------------------------
# Reading a mapping field by field


class Fields:
    """One YAML mapping read against declared field names; unknown keys are reported up front.

    `ignored` names are valid (Kubernetes knows them) but unused by lbd. With `closed=False` only
    unknown keys close to a `known` one are errors: for big Kubernetes types we read a corner of.
    A missing or null mapping reads as empty; something else (a list, a string) is an error.
    """

    __slots__ = ("data", "loc", "valid", "_misspelled")

    def __init__(
        self,
        value: Any,
        loc: Loc,
        known: Collection[str],
        *,
        ignored: Collection[str] = (),
        closed: bool = True,
    ) -> None:
        self.loc = loc
        # Not a mapping at all: say so once, not once per field it then lacks.
        self.valid = isinstance(value, YMap) or value is None
        if isinstance(value, YMap):
            self.data = value
        else:
            if value is not None:
                loc.error(f"expected a mapping, got {describe(value)}")
            self.data = YMap(loc.line or 0)
        self._misspelled: set[str] = set()  # known names that an unknown key was a near-miss of
        for key in self.data:
            if key in known or key in ignored:
                continue
            meant = closest(str(key), [*known, *ignored] if closed else known)
            if closed or meant is not None:
                hint = f" (did you mean {meant!r}?)" if meant is not None else ""
                loc.key(key, self.data.key_line(key)).error(f"unknown field {str(key)!r}{hint}")
            if meant is not None:
                self._misspelled.add(meant)

    def __contains__(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def at(self, key: str) -> Loc:
        """Where `key`'s value is, or the object itself when the field is missing."""
        return self.loc.key(key, self.data.value_line(key))

    def key_at(self, key: str) -> Loc:
        return self.loc.key(key, self.data.key_line(key))

    def require(self, key: str) -> bool:
        if key in self:
            return True
        if self.valid and key not in self._misspelled:  # "did you mean 'address'?" already said it
            self.at(key).error("required field is missing")
        return False

    def sub(self, key: str, known: Collection[str], **kwargs: Any) -> Fields:
        return Fields(self.get(key), self.at(key), known, **kwargs)

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        if key not in self:
            if required:
                self.require(key)
            return default
        value = self.get(key)
        if not isinstance(value, str):
            self.at(key).error(f"expected a string, got {describe(value)}")
            return default
        return value

    def integer(self, key: str, default: int | None = None, *, minimum: int | None = None,
                maximum: int | None = None, required: bool = False) -> int | None:
        if key not in self:
            if required:
                self.require(key)
            return default
        return integer(self.get(key), self.at(key), minimum=minimum, maximum=maximum, default=default)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.at(key).error(f"expected true or false, got {describe(value)}")
            return default
        return value

    def choice(self, key: str, options: Mapping[str, T], default: T) -> T:
        if key not in self:
            return default
        return choice(self.get(key), self.at(key), options, default)

    def items(self, key: str, *, required: bool = False) -> Iterator[tuple[int, Any, Loc]]:
        """(index, item, location) for each item of a list field."""
        if key not in self:
            if required:
                self.require(key)
            return
        value = self.get(key)
        if not isinstance(value, YSeq):
            self.at(key).error(f"expected a list, got {describe(value)}")
            return
        here = self.at(key)
        for position, item in enumerate(value):
            yield position, item, here.index(position, value.item_line(position))

    def string_map(self, key: str) -> dict[str, str]:
        """A map of strings, like labels or a selector."""
        if key not in self:
            return {}
        value = self.get(key)
        if not isinstance(value, YMap):
            self.at(key).error(f"expected a mapping, got {describe(value)}")
            return {}
        here = self.at(key)
        result: dict[str, str] = {}
        for name, item in value.items():
            where = here.key(name, value.value_line(name))
            if not isinstance(name, str):
                where.error(f"a key must be a string, got {describe(name)}")
            elif not isinstance(item, str):
                where.error(f"expected a string, got {describe(item)} (quote it)")
            else:
                result[name] = item
        return result


def integer(value: Any, loc: Loc, *, minimum: int | None = None, maximum: int | None = None,
            default: int | None = None) -> int | None:
    # bool is an int in Python, but `true` is never a number in a config.
    if not isinstance(value, int) or isinstance(value, bool):
        loc.error(f"expected an integer, got {describe(value)}")
        return default
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        loc.error(f"{value} is out of range ({minimum}-{maximum})")
        return default
    if minimum is not None and value < minimum:
        loc.error(f"{value} is too small (at least {minimum})")
        return default
    if maximum is not None and value > maximum:
        loc.error(f"{value} is too large (at most {maximum})")
        return default
    return value


def choice(value: Any, loc: Loc, options: Mapping[str, T], default: T) -> T:
    """One of the fixed spellings in `options` (Kubernetes enums are case-sensitive)."""
    if isinstance(value, str) and value in options:
        return options[value]
    allowed = " | ".join(options)
    hint = did_you_mean(value, options) if isinstance(value, str) else ""
    loc.error(f"{show(value)} is not one of {allowed}{hint}")
    return default


# --------------------------------------------------------------------------------------------
# Names


@dataclass(frozen=True, slots=True)
class NameRule:
    """A Kubernetes name syntax: a pattern, a length limit and how to explain it."""

    pattern: re.Pattern[str]
    max_length: int
    explained: str
    needs_letter: bool = False


_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1035_LABEL = NameRule(
    re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?"), 63,
    "at most 63 lowercase letters, digits and '-', starting with a letter and ending with a "
    "letter or digit (RFC 1035 label)",
)
DNS1123_LABEL = NameRule(
    re.compile(_LABEL), 63,
    "at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit "
    "(RFC 1123 label)",
)
DNS1123_SUBDOMAIN = NameRule(
    re.compile(rf"{_LABEL}(\.{_LABEL})*"), 253,
    "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit "
    "(RFC 1123 subdomain)",
)
# IANA service name: what a named port (containerPort name, targetPort, probe port) must be.
IANA_SVC_NAME = NameRule(
    re.compile(r"[a-z0-9]([a-z0-9]|-(?!-))*[a-z0-9]|[a-z0-9]"), 15,
    "at most 15 lowercase letters, digits and '-', with at least one letter, no '--', and "
    "starting and ending with a letter or digit",
    needs_letter=True,
)


def name(value: Any, loc: Loc, rule: NameRule, what: str) -> str | None:
    """A name that follows `rule`; `what` says what it names ("Service name")."""
    if not isinstance(value, str):
        loc.error(f"expected a string, got {describe(value)}")
        return None
    valid = (
        0 < len(value) <= rule.max_length
        and rule.pattern.fullmatch(value) is not None
        and (not rule.needs_letter or any(c.isalpha() for c in value))
    )
    if valid:
        return value
    hint = ""
    lowered = value.lower()
    if lowered != value and rule.pattern.fullmatch(lowered) and len(lowered) <= rule.max_length:
        hint = f" (did you mean {lowered!r}?)"
    loc.error(f"{value!r} is not a valid {what}: use {rule.explained}{hint}")
    return None


# --------------------------------------------------------------------------------------------
# Ports, addresses, ranges, durations


def port(value: Any, loc: Loc) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    hint = ""
    if isinstance(value, str) and value.isdigit():
        hint = f"; write {value} without quotes"
    loc.error(f"{show(value)} is not a port (1-65535){hint}")
    return None


def port_or_name(value: Any, loc: Loc) -> int | str | None:
    """Kubernetes' IntOrString for ports: a number, or the name of a container port."""
    if isinstance(value, str):
        if value.isdigit():  # Kubernetes reads "8080" as a name, and rejects it
            loc.error(f"{value!r} is a string, so it would be a port name; write {value} without quotes")
            return None
        return name(value, loc, IANA_SVC_NAME, "port name")
    return port(value, loc)


def ip_address(value: Any, loc: Loc) -> IPAddress | None:
    if not isinstance(value, str):
        loc.error(f"expected an IP address, got {describe(value)}")
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        loc.error(f"{value!r} is not an IP address")
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        loc.error(f"{value!r} has a zone (%{address.scope_id}); zones are not allowed here")
        return None
    return address


def endpoint_ip(value: Any, loc: Loc) -> IPAddress | None:
    """A backend address: any unicast IP (loopback is fine: local.yaml relays to 127.0.0.1)."""
    address = ip_address(value, loc)
    if address is None:
        return None
    if address.is_unspecified or address.is_multicast:
        kind = "unspecified" if address.is_unspecified else "multicast"
        loc.error(f"{address} is a {kind} address, not a backend")
        return None
    return address


def endpoint_text(value: str, loc: Loc) -> tuple[IPAddress, int | None] | None:
    """'10.0.0.1', '10.0.0.1:8080', 'fd00::5', '[fd00::5]:8080'."""
    host, port_text = value, None
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            loc.error(f"{value!r} is not an endpoint: write '[IPv6]:PORT' or a bare IPv6 address")
            return None
        host, port_text = inside, (rest[1:] if rest else None)
    elif value.count(":") == 1:  # one colon: IPv4:PORT; more colons: a bare IPv6 address
        host, port_text = value.split(":")
    address = endpoint_ip(host, loc)
    if address is None:
        return None
    if port_text is None:
        return address, None
    if not port_text.isdigit():
        loc.error(f"{value!r}: {port_text!r} is not a port (1-65535)")
        return None
    number = port(int(port_text), loc)
    return (address, number) if number is not None else None


def address_range(value: Any, loc: Loc) -> AddressRange | None:
    """A MetalLB pool entry: 'first-last' (one family, first <= last) or a CIDR."""
    if not isinstance(value, str):
        loc.error(f"expected a CIDR or a range 'first-last', got {describe(value)}")
        return None
    text = value.strip()  # MetalLB trims spaces too
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                loc.error(f"{text!r} is not a CIDR")
                return None
            loc.error(f"{text!r} has host bits set; did you mean {str(loose)!r}?")
            return None
        return AddressRange(network.network_address, network.broadcast_address)
    if "-" in text:
        first_text, _, last_text = (part.strip() for part in text.partition("-"))
        try:
            first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
        except ValueError:
            loc.error(f"{text!r} is not a range: both ends of 'first-last' must be IP addresses")
            return None
        if first.version != last.version:
            loc.error(f"{text!r} mixes IPv4 and IPv6")
            return None
        if first > last:
            loc.error(f"{text!r} is backwards: {first} comes after {last}")
            return None
        return AddressRange(first, last)
    try:
        single = ipaddress.ip_address(text)
    except ValueError:
        loc.error(f"{text!r} is not a CIDR or a range 'first-last'")
        return None
    loc.error(f"{text!r} is a single address; write '{single}/{single.max_prefixlen}'")
    return None


# Go's time.ParseDuration units, in seconds.
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_PLAIN_SECONDS = re.compile(r"\d+(\.\d*)?|\.\d+")


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration string ('300s', '5m', '1h30m', '1.5h'), None if it isn't one."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    if body == "0":
        return 0.0
    total, position = 0.0, 0
    while position < len(body):
        part = _DURATION_PART.match(body, position)
        if part is None:
            return None
        total += float(part[1]) * _DURATION_UNITS[part[2]]
        position = part.end()
    return sign * total if position else None


def duration(value: Any, loc: Loc) -> float | None:
    """Seconds, given as a number, a numeric string or a Go duration; must be > 0."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        seconds = float(text) if _PLAIN_SECONDS.fullmatch(text) else go_duration(text)
    if seconds is None:
        loc.error(
            f"{show(value)} is not a duration: give seconds (300) or a Go duration such as "
            "'300s', '5m' or '1h30m'"
        )
        return None
    if not seconds > 0:
        loc.error(f"{show(value)} must be greater than 0")
        return None
    return seconds


def interface_name(value: Any, loc: Loc) -> str | None:
    """A Linux interface name (what the kernel's dev_valid_name accepts)."""
    if not isinstance(value, str):
        loc.error(f"expected an interface name, got {describe(value)}")
        return None
    if (
        not 0 < len(value) <= 15
        or value in (".", "..")
        or any(c in "/:" or c.isspace() for c in value)
    ):
        loc.error(f"{value!r} is not an interface name (1-15 characters, no '/', ':' or spaces)")
        return None
    return value


# --------------------------------------------------------------------------------------------
# Probes

PROBE_FIELDS = (
    "httpGet", "tcpSocket", "initialDelaySeconds", "timeoutSeconds", "periodSeconds",
    "successThreshold", "failureThreshold",
)
# Valid in Kubernetes, but lbd can only run httpGet and tcpSocket checks from outside.
UNSUPPORTED_PROBE_ACTIONS = ("exec", "grpc")
HTTP_GET_FIELDS = ("path", "port", "host", "scheme", "httpHeaders")
_SCHEMES = {"HTTP": "HTTP", "HTTPS": "HTTPS"}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token

# Kubernetes defaults a 0 to these (SetDefaults_Probe), so 0 means "default" here too.
_PROBE_DEFAULTED = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}


def probe(
    value: Any,
    loc: Loc,
    resolve_port: Callable[[str], int | None],
    unresolved: str,
    *,
    ignored: Collection[str] = (),
    unsupported_is_error: bool = True,
) -> Probe | None:
    """A readinessProbe. Named ports go through `resolve_port`; `unresolved` explains a miss.

    An exec/grpc probe is an error when `unsupported_is_error` (native format) and a warning
    otherwise (a real cluster's manifests are valid, lbd just cannot run that check).
    """
    f = Fields(value, loc, (*PROBE_FIELDS, *UNSUPPORTED_PROBE_ACTIONS), ignored=ignored)
    if not f.valid:
        return None
    actions = [k for k in ("httpGet", "tcpSocket", *UNSUPPORTED_PROBE_ACTIONS) if k in f]
    if len(actions) != 1:
        which = "none" if not actions else ", ".join(actions)
        loc.error(f"a probe needs exactly one of httpGet or tcpSocket (found {which})")
        return None
    action_name = actions[0]
    if action_name in UNSUPPORTED_PROBE_ACTIONS:
        message = f"{action_name} probes are not supported by lbd; use httpGet or tcpSocket"
        if unsupported_is_error:
            f.key_at(action_name).error(message)
        else:
            f.key_at(action_name).warn(message + " (this probe is ignored)")
        return None

    def probe_port(g: Fields) -> int | None:
        if not g.require("port"):
            return None
        given = port_or_name(g.get("port"), g.at("port"))
        if isinstance(given, str):
            resolved = resolve_port(given)
            if resolved is None:
                g.at("port").error(f"named port {given!r} is not resolved: {unresolved}")
            return resolved
        return given

    action: HTTPGetAction | TCPSocketAction | None
    if action_name == "httpGet":
        g = f.sub("httpGet", HTTP_GET_FIELDS)
        number = probe_port(g)
        path = g.string("path", default="/") or "/"
        # The kubelet joins host and path with '/', so 'health' means '/health'.
        path = path if path.startswith("/") else f"/{path}"
        headers: list[tuple[str, str]] = []
        for _, header, where in g.items("httpHeaders"):
            h = Fields(header, where, ("name", "value"))
            header_name = h.string("name", required=True)
            if header_name is not None and not _HEADER_NAME.fullmatch(header_name):
                h.at("name").error(f"{header_name!r} is not an HTTP header name")
                header_name = None
            header_value = h.string("value", default="")
            if header_name is not None and header_value is not None:
                headers.append((header_name, header_value))
        scheme = g.choice("scheme", _SCHEMES, "HTTP")
        host = g.string("host")
        action = None if number is None else HTTPGetAction(number, path, scheme, host or None, tuple(headers))
    else:
        g = f.sub("tcpSocket", ("port",))
        number = probe_port(g)
        action = None if number is None else TCPSocketAction(number)

    timings = {
        key: f.integer(key, minimum=0, default=0) or _PROBE_DEFAULTED[key] for key in _PROBE_DEFAULTED
    }
    initial_delay = f.integer("initialDelaySeconds", 0, minimum=0) or 0
    if action is None:
        return None
    return Probe(
        action,
        period_seconds=timings["periodSeconds"],
        timeout_seconds=timings["timeoutSeconds"],
        success_threshold=timings["successThreshold"],
        failure_threshold=timings["failureThreshold"],
        initial_delay_seconds=initial_delay,
    )


# --------------------------------------------------------------------------------------------
# Service annotations

POOL_ANNOTATION = "metallb.io/address-pool"
IPS_ANNOTATION = "metallb.io/loadBalancerIPs"
SHARED_ANNOTATION = "metallb.io/allow-shared-ip"
IDLE_TIMEOUT_ANNOTATION = "lbd.io/idle-timeout"
METALLB_PREFIX = "metallb.io/"
LEGACY_METALLB_PREFIX = "metallb.universe.tf/"  # MetalLB < 0.14 spelling, still accepted
KNOWN_ANNOTATIONS = (POOL_ANNOTATION, IPS_ANNOTATION, SHARED_ANNOTATION, IDLE_TIMEOUT_ANNOTATION)
# Annotations MetalLB itself writes back on services: valid, not ours to read.
_METALLB_STATUS_ANNOTATIONS = ("metallb.io/ip-allocated-from-pool",)


@dataclass(frozen=True, slots=True)
class ServiceAnnotations:
    """The annotations lbd reads from a Service, already typed."""

    address_pool: str | None = None
    requested_ips: tuple[IPAddress, ...] = ()
    allow_shared_ip: str | None = None
    idle_timeout_seconds: float | None = None
    requested_ips_loc: Loc | None = None  # where loadBalancerIPs was given (None: it wasn't)


def _requested_ips(value: str, loc: Loc) -> tuple[IPAddress, ...]:
    addresses: list[IPAddress] = []
    for part in value.split(","):
        address = ip_address(part.strip(), loc)
        if address is None:
            continue
        if any(a.version == address.version for a in addresses):
            loc.error(f"{value!r} has more than one IPv{address.version} address (at most one IPv4 and one IPv6)")
            continue
        addresses.append(address)
    return tuple(addresses)


def service_annotations(value: Any, loc: Loc) -> ServiceAnnotations:
    """Read the annotations lbd understands; others are kept out of the model, not rejected."""
    if value is None:
        return ServiceAnnotations()
    if not isinstance(value, YMap):
        loc.error(f"expected a mapping, got {describe(value)}")
        return ServiceAnnotations()
    # Fold legacy keys into the new ones (the new spelling wins when both are given).
    chosen: dict[str, tuple[Any, Loc]] = {}
    for key, item in value.items():
        where = loc.key(key, value.value_line(key))
        if not isinstance(key, str):
            where.error(f"an annotation key must be a string, got {describe(key)}")
            continue
        current = key
        if key.startswith(LEGACY_METALLB_PREFIX):
            current = METALLB_PREFIX + key.removeprefix(LEGACY_METALLB_PREFIX)
            if current in KNOWN_ANNOTATIONS:
                loc.key(key, value.key_line(key)).warn(
                    f"annotation {key!r} is deprecated; use {current!r}"
                )
                if current in value:
                    if value[current] != item:
                        where.error(f"conflicts with {current!r} ({show(value[current])}); keep only {current!r}")
                    continue
        if current in KNOWN_ANNOTATIONS:
            chosen[current] = (item, where)
        elif current.startswith(("lbd.io/", METALLB_PREFIX)) and current not in _METALLB_STATUS_ANNOTATIONS:
            hint = did_you_mean(current, KNOWN_ANNOTATIONS)
            if current.startswith("lbd.io/") or hint:  # lbd.io/ is ours: every key there must be known
                loc.key(key, value.key_line(key)).warn(f"unknown annotation {key!r} is ignored{hint}")

    def text(key: str) -> tuple[str | None, Loc | None]:
        if key not in chosen:
            return None, None
        item, where = chosen[key]
        if not isinstance(item, str) or not item.strip():
            where.error(f"expected a non-empty string, got {describe(item)}")
            return None, where
        return item.strip(), where

    pool, _ = text(POOL_ANNOTATION)
    shared, _ = text(SHARED_ANNOTATION)
    ips_text, ips_loc = text(IPS_ANNOTATION)
    requested = _requested_ips(ips_text, ips_loc) if ips_text and ips_loc else ()
    idle = None
    if IDLE_TIMEOUT_ANNOTATION in chosen:
        idle = duration(*chosen[IDLE_TIMEOUT_ANNOTATION])
    return ServiceAnnotations(pool, requested, shared, idle, ips_loc)


# --------------------------------------------------------------------------------------------
# Service spec fields shared by the native format and v1 Service

SERVICE_SPEC_FIELDS = (
    "type", "ports", "selector", "loadBalancerIP", "sessionAffinity", "sessionAffinityConfig",
    "externalTrafficPolicy", "ipFamilies", "clusterIP",
)
SERVICE_PORT_FIELDS = ("name", "port", "targetPort", "protocol")

SERVICE_TYPES = {t.value: t for t in ServiceType}
PROTOCOLS = {p.value: p for p in Protocol}
AFFINITIES = {a.value: a for a in SessionAffinity}
TRAFFIC_POLICIES = {p.value: p for p in TrafficPolicy}
IP_FAMILIES = {"IPv4": 4, "IPv6": 6}


@dataclass(frozen=True, slots=True)
class PortDraft:
    """A service port whose targetPort may still be a name."""

    name: str
    port: int
    target: int | str
    protocol: Protocol
    target_loc: Loc


@dataclass(frozen=True, slots=True)
class SpecDraft:
    """The spec part of a Service, validated; named target ports are resolved later."""

    type: ServiceType
    ports: tuple[PortDraft, ...]
    selector: tuple[tuple[str, str], ...]
    load_balancer_ip: IPAddress | None
    load_balancer_ip_loc: Loc
    session_affinity: SessionAffinity
    affinity_timeout_seconds: int
    external_traffic_policy: TrafficPolicy
    ip_family: int | None
    headless: bool


def _protocol(value: Any, loc: Loc) -> Protocol:
    if value == "SCTP":
        loc.error("SCTP is not supported by lbd (TCP or UDP)")
        return Protocol.TCP
    return choice(value, loc, PROTOCOLS, Protocol.TCP)


def service_ports(f: Fields, *, ignored: Collection[str], required: bool) -> tuple[PortDraft, ...]:
    """spec.ports with Kubernetes' rules: names unique and required when several; (protocol, port) unique."""
    entries = list(f.items("ports"))
    given = f.get("ports")
    if required and f.valid and (given is None or (isinstance(given, YSeq) and not given)):
        f.at("ports").error("a service needs at least one port")
    drafts: list[PortDraft] = []
    names: dict[str, int] = {}
    keys: dict[tuple[Protocol, int], int] = {}
    for position, item, where in entries:
        p = Fields(item, where, SERVICE_PORT_FIELDS, ignored=ignored)
        port_name = ""
        if "name" in p:
            port_name = name(p.get("name"), p.at("name"), DNS1123_LABEL, "port name") or ""
            if port_name in names:
                p.at("name").error(f"duplicate port name {port_name!r} (also ports[{names[port_name]}])")
            names.setdefault(port_name, position)
        elif len(entries) > 1:
            p.at("name").error("a port name is required when a service has more than one port")
        number = port(p.get("port"), p.at("port")) if p.require("port") else None
        protocol = _protocol(p.get("protocol"), p.at("protocol")) if "protocol" in p else Protocol.TCP
        target: int | str | None = number
        if "targetPort" in p:
            target = port_or_name(p.get("targetPort"), p.at("targetPort"))
        if number is None or target is None:
            continue
        if (protocol, number) in keys:
            p.at("port").error(f"duplicate port {number}/{protocol} (also ports[{keys[protocol, number]}])")
        keys.setdefault((protocol, number), position)
        drafts.append(PortDraft(port_name, number, target, protocol, p.at("targetPort")))
    return tuple(drafts)


def service_spec(f: Fields, default_type: ServiceType, *, port_ignored: Collection[str] = ()) -> SpecDraft:
    """The fields a native service and a v1 Service spec share, with Kubernetes' defaults.

    `default_type` differs: a native service is there to be load-balanced, while a v1 Service
    without spec.type is a ClusterIP one, as in Kubernetes.
    """
    kind = f.choice("type", SERVICE_TYPES, default_type)

    headless = False
    if "clusterIP" in f:
        cluster_ip = f.get("clusterIP")
        if cluster_ip == "None":
            headless = True
            if kind is not ServiceType.CLUSTER_IP:
                f.at("clusterIP").error(f"a {kind} service cannot be headless (clusterIP: None needs type ClusterIP)")
        elif cluster_ip != "":
            ip_address(cluster_ip, f.at("clusterIP"))  # checked, not used: lbd serves VIPs, not cluster IPs

    ports = service_ports(f, ignored=port_ignored, required=not headless)

    selector = f.string_map("selector")

    load_balancer_ip = None
    if f.get("loadBalancerIP") not in (None, ""):
        load_balancer_ip = ip_address(f.get("loadBalancerIP"), f.at("loadBalancerIP"))

    affinity = f.choice("sessionAffinity", AFFINITIES, SessionAffinity.NONE)
    timeout = DEFAULT_AFFINITY_TIMEOUT_SECONDS
    if "sessionAffinityConfig" in f:
        if affinity is SessionAffinity.NONE:
            f.at("sessionAffinityConfig").error("must not be set when sessionAffinity is None")
        config = f.sub("sessionAffinityConfig", ("clientIP",))
        client_ip = config.sub("clientIP", ("timeoutSeconds",))
        timeout = client_ip.integer(
            "timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT_SECONDS, minimum=1, maximum=MAX_AFFINITY_TIMEOUT_SECONDS
        ) or DEFAULT_AFFINITY_TIMEOUT_SECONDS

    policy = f.choice("externalTrafficPolicy", TRAFFIC_POLICIES, TrafficPolicy.CLUSTER)

    ip_family = None
    families = [choice(v, where, IP_FAMILIES, 0) for _, v, where in f.items("ipFamilies")]
    if len(families) > 2 or (len(families) == 2 and families[0] == families[1]):
        f.at("ipFamilies").error("expected [IPv4], [IPv6] or both families once each")
    elif families and families[0]:
        ip_family = families[0]

    return SpecDraft(
        kind, ports, tuple(sorted(selector.items())), load_balancer_ip, f.at("loadBalancerIP"),
        affinity, timeout, policy, ip_family, headless,
    )


def build_service(
    service_name: str,
    namespace: str,
    spec: SpecDraft,
    annotations: ServiceAnnotations,
    ports: tuple[ServicePort, ...],
    endpoints: tuple[Endpoint, ...],
    readiness_probe: Probe | None,
) -> Service:
    """The model Service, after checking what only the whole service can tell."""
    requested = annotations.requested_ips
    if spec.load_balancer_ip is not None:
        if annotations.requested_ips_loc is not None:
            spec.load_balancer_ip_loc.error(
                f"cannot be used together with the {IPS_ANNOTATION} annotation; keep only the annotation"
            )
        requested = (spec.load_balancer_ip,)
    return Service(
        name=service_name,
        namespace=namespace,
        type=spec.type,
        ports=ports,
        endpoints=endpoints,
        selector=spec.selector,
        requested_ips=requested,
        address_pool=annotations.address_pool,
        allow_shared_ip=annotations.allow_shared_ip,
        ip_family=spec.ip_family,
        session_affinity=spec.session_affinity,
        affinity_timeout_seconds=spec.affinity_timeout_seconds,
        external_traffic_policy=spec.external_traffic_policy,
        readiness_probe=readiness_probe,
        idle_timeout_seconds=annotations.idle_timeout_seconds,
        headless=spec.headless,
    )


# --------------------------------------------------------------------------------------------
# Pools, and what a file contributes to the model


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


@dataclass(frozen=True, slots=True)
class PlacedService:
    """A built Service and where its name was given, for duplicate errors."""

    service: Service
    name_loc: Loc


@dataclass(slots=True)
class Collected:
    """What the documents read so far contribute to the model, with where each piece came from."""

    issues: Issues
    interfaces: list[str] = field(default_factory=list)
    pools: list[PoolDraft] = field(default_factory=list)
    services: list[PlacedService] = field(default_factory=list)


def check_services(services: list[PlacedService]) -> None:
    seen: dict[str, PlacedService] = {}
    for placed in services:
        first = seen.setdefault(placed.service.key, placed)
        if first is not placed:
            placed.name_loc.error(
                f"duplicate Service {placed.service.key} (first defined at {first.name_loc.where()})"
            )
