"""The httpGet probe's request and status line (lbd.health.http): the kubelet's rules, sans-IO."""

from __future__ import annotations

import ipaddress

import pytest

from lbd import __version__
from lbd.health import http
from lbd.model import HTTPGetAction

V4 = ipaddress.ip_address("198.18.0.11")
V6 = ipaddress.ip_address("2001:db8::11")


def head(raw: bytes) -> tuple[str, dict[str, str]]:
    text = raw.decode("latin-1")
    assert text.endswith("\r\n\r\n")
    first, *lines = text[:-4].split("\r\n")
    return first, dict(line.split(": ", 1) for line in lines)


def test_request_has_the_kubelets_defaults_and_closes_the_connection() -> None:
    first, headers = head(http.request(HTTPGetAction(8080, "/health"), V4))
    assert first == "GET /health HTTP/1.1"
    assert headers == {
        "Host": "198.18.0.11:8080",
        "User-Agent": f"lbd-probe/{__version__}",
        "Accept": "*/*",
        "Connection": "close",
    }


def test_ipv6_host_is_bracketed_and_host_field_names_the_virtual_host() -> None:
    assert head(http.request(HTTPGetAction(80), V6))[1]["Host"] == "[2001:db8::11]:80"
    assert head(http.request(HTTPGetAction(80, host="app.example"), V6))[1]["Host"] == "app.example:80"


def test_http_headers_replace_defaults_of_the_same_name_and_add_the_rest() -> None:
    action = HTTPGetAction(80, "/ready?full=1", headers=(("host", "svc.local"), ("User-Agent", "mine"), ("X-Probe", "a b")))
    first, headers = head(http.request(action, V4))
    assert first == "GET /ready?full=1 HTTP/1.1"
    assert headers["Host"] == "svc.local" and headers["User-Agent"] == "mine" and headers["X-Probe"] == "a b"
    assert "host" not in headers


def test_unsafe_path_characters_are_percent_encoded() -> None:
    assert head(http.request(HTTPGetAction(80, "/a b\r\nX: y"), V4))[0] == "GET /a%20b%0D%0AX:%20y HTTP/1.1"


@pytest.mark.parametrize(
    ("received", "code"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
        (b"HTTP/1.1 301 Moved\n", 301),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/1.1 20", None),
        (b"HTT", None),
        (b"", None),
    ],
)
def test_status(received: bytes, code: int | None) -> None:
    assert http.status(received) == code


@pytest.mark.parametrize(
    "received",
    [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/2 200\r\n", b"HTTP/1.1 OK 200\r\n", b"hello", b"HTTP/1.1 " + b"9" * 5000],
)
def test_not_an_http_answer(received: bytes) -> None:
    with pytest.raises(http.BadResponse):
        http.status(received)


def test_200_to_399_pass_and_redirects_are_answers() -> None:
    assert [http.succeeded(c) for c in (199, 200, 302, 399, 400, 404, 503)] == [False, True, True, True, False, False, False]
