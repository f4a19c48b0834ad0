"""The httpGet probe's bytes: the request the kubelet would send, and the status line of the answer (pure).

Sans-IO: `request()` builds one HTTP/1.1 GET for a fresh connection (`Connection: close`);
`status()` reads the status code from the first bytes of the answer. The kubelet's rules:
the URL host is `host` or the endpoint's address, the Host header carries the port, a header
in `httpHeaders` replaces the default of the same name (User-Agent, Accept, Host), and a
status in 200-399 is a success (redirects are not followed: a 3xx is an answer).
"""

from __future__ import annotations

from urllib.parse import quote

from lbd import __version__
from lbd.model import HTTPGetAction, IPAddress

USER_AGENT = f"lbd-probe/{__version__}"
# Bytes of an answer read before its status line must be complete (a status line is ~20).
MAX_STATUS_LINE = 4096
# What may stay as it is in a request target; the rest is percent-encoded (as Go's url does).
_PATH_SAFE = "/?&=%:@!$'()*+,;~-._"


class BadResponse(ValueError):
    """The answer does not start with an HTTP status line."""


def request(action: HTTPGetAction, address: IPAddress) -> bytes:
    """The GET the probe sends to `address`."""
    host = action.host or str(address)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal in a Host header
    defaults = {"host": f"{host}:{action.port}", "user-agent": USER_AGENT, "accept": "*/*"}
    names = {"host": "Host", "user-agent": "User-Agent", "accept": "Accept"}
    extra: list[tuple[str, str]] = []
    for name, value in action.headers:
        if name.lower() in defaults:
            defaults[name.lower()] = value
        else:
            extra.append((name, value))
    lines = [f"GET {quote(action.path, safe=_PATH_SAFE)} HTTP/1.1"]
    lines += [f"{names[key]}: {value}" for key, value in defaults.items()]
    lines += [f"{name}: {value}" for name, value in extra]
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1", errors="replace")


def status(received: bytes) -> int | None:
    """The status code once the status line is complete, else None; BadResponse if it cannot be one."""
    end = received.find(b"\n")
    if end < 0:
        if len(received) > MAX_STATUS_LINE or not b"HTTP/".startswith(received[:5]):
            raise BadResponse("not an HTTP answer")
        return None
    parts = received[:end].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise BadResponse("not an HTTP status line")
    return int(parts[1])


def succeeded(code: int) -> bool:
    """The kubelet's rule: 200-399 passes (a redirect is an answer, not followed)."""
    return 200 <= code < 400
