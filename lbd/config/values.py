"""Validators for single values: Kubernetes names, ports, IP addresses, endpoints, pool ranges, durations."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from lbd.config.reading import Loc, describe, integer, show
from lbd.model import AddressRange, IPAddress

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
    """A backend address: a unicast IP lbd can connect to (loopback is fine: local.yaml relays
    to 127.0.0.1; IPv4 link-local is a normal neighbour, IPv6 link-local needs a zone)."""
    address = ip_address(value, loc)
    if address is None:
        return None
    problem = _unusable_endpoint(address)
    if problem is not None:
        loc.error(f"{address} {problem}")
        return None
    return address


def _unusable_endpoint(address: IPAddress) -> str | None:
    if address.is_unspecified:
        return "is the unspecified address, not a backend"
    if address.is_multicast:
        return "is a multicast address, not a backend (TCP cannot connect to it)"
    if address == _BROADCAST:
        return "is the broadcast address, not a backend"
    # An IPv4-mapped endpoint works (a dual-stack socket connects to the IPv4 address); a VIP
    # cannot be one (see unusable_vips).
    if isinstance(address, ipaddress.IPv6Address) and address.is_link_local:
        return "is an IPv6 link-local address, which needs a zone (%interface); lbd takes no zones"
    return None


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
    elif _looks_like_ipv6_with_port(value):
        head, _, tail = value.rpartition(":")
        loc.error(
            f"{value!r} is ambiguous: write '[{head}]:{tail}' for port {tail} of {head}, "
            f"or '[{value}]' for the IPv6 address {value}"
        )
        return None
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


def _looks_like_ipv6_with_port(text: str) -> bool:
    """'::1:80': a compressed IPv6 address whose last group reads as a port and whose rest is an
    address too. Both readings are valid IPv6, so the user must say which with brackets."""
    head, _, tail = text.rpartition(":")
    if "::" not in text or not tail.isdigit() or not 0 < int(tail) <= 65535 or head.endswith(":"):
        return False
    try:
        ipaddress.IPv6Address(head)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# What a VIP may be: `check` refuses what `run` could not serve.

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_LOOPBACK = {4: ipaddress.ip_network("127.0.0.0/8"), 6: ipaddress.ip_network("::1/128")}
# Blocks no VIP may come from, and why (the first one a range touches is reported).
_NOT_VIPS: dict[int, tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]] = {
    4: (
        (ipaddress.ip_network("0.0.0.0/32"), "the unspecified address (a listener on it takes every address)"),
        (ipaddress.ip_network("169.254.0.0/16"), "link-local addresses, which are not routed beyond one link"),
        (ipaddress.ip_network("224.0.0.0/4"), "multicast addresses, which cannot accept connections"),
        (ipaddress.ip_network("255.255.255.255/32"), "the broadcast address"),
    ),
    6: (
        (ipaddress.ip_network("::/128"), "the unspecified address (a listener on it takes every address)"),
        (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped addresses; put the IPv4 addresses in an IPv4 range"),
        (ipaddress.ip_network("fe80::/10"), "link-local addresses, which need a zone and are not routed"),
        (ipaddress.ip_network("ff00::/8"), "multicast addresses, which cannot accept connections"),
    ),
}


def unusable_vips(r: AddressRange) -> str | None:
    """Why a pool range holds addresses no VIP may have ('contains ...'), or None."""
    first, last = int(r.first), int(r.last)
    for block, why in _NOT_VIPS[r.version]:
        start, end = int(block.network_address), int(block.broadcast_address)
        if first <= end and start <= last:
            shown = str(block.network_address) if block.num_addresses == 1 else str(block)
            return f"contains {shown}: {why}; a VIP must be a unicast address clients can reach"
    return None


def is_loopback_range(r: AddressRange) -> bool | None:
    """True if every address is loopback, False if none is, None if the range mixes both."""
    block = _LOOPBACK[r.version]
    start, end = int(block.network_address), int(block.broadcast_address)
    first, last = int(r.first), int(r.last)
    if start <= first and last <= end:
        return True
    if last < start or end < first:
        return False
    return None


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


def integer_text(value: Any, loc: Loc, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """An integer given as a number or, as annotation values are strings, as digits ("65536")."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return integer(value, loc, minimum=minimum, maximum=maximum)


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
