"""Admin API: a tiny HTTP/1.0 JSON API on a unix socket (mode 0600; no TCP port for control).

HTTP so that operators can also use `curl --unix-socket /run/lbd/admin.sock http://lbd/v1/services`.
The server only moves bytes: the daemon hands it a table of routes ((method, path) -> handler);
a handler gets the request's query parameters and returns what to send as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import stat
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from lbd.errors import CannotStart
from lbd.preflight import private_dir

log = structlog.get_logger()

MAX_REQUEST_BYTES = 8192  # request line + headers; the API takes no bodies
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler sees of a request."""

    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)

    def param(self, name: str, default: str | None = None) -> str | None:
        """The last value of query parameter `name`."""
        values = self.query.get(name)
        return values[-1] if values else default


class AdminError(Exception):
    """A handler's way to answer 4xx: the status and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request], Awaitable[Any]]


class AdminServer:
    """Serves GET routes as JSON and POST routes as actions, one request per connection."""

    def __init__(self, path: Path, routes: Mapping[tuple[str, str], Handler]) -> None:
        self.path = path
        self.routes = routes
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        private_dir(self.path.parent, "--admin-socket")  # nobody else may plant a socket or file here
        self._remove_stale_socket()
        old_umask = os.umask(0o177)  # created 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        log.info("admin_listening", socket=str(self.path))

    def _remove_stale_socket(self) -> None:
        """Take over a socket left by a crashed daemon; never a live daemon's, never a file."""
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise CannotStart(f"{self.path} exists and is not a socket; choose another --admin-socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            self.path.unlink(missing_ok=True)
            return
        except OSError:
            pass
        finally:
            probe.close()
        raise CannotStart(f"another lbd daemon answers on {self.path}; stop it or choose another --admin-socket")

    async def close(self) -> None:
        """Stop serving and remove the socket, if this server made it (never another daemon's)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
            url = urllib.parse.urlsplit(target)
            handler = self.routes.get((method, url.path))
            if handler is None:
                status, body = 404, {"error": f"no route {method} {url.path}"}
            else:
                try:
                    request = Request(method, url.path, urllib.parse.parse_qs(url.query))
                    status, body = 200, await handler(request)
                except AdminError as exc:
                    status, body = exc.status, {"error": str(exc)}
                except Exception as exc:  # an API error must not take the daemon down
                    log.exception("admin_handler_failed", path=target)
                    status, body = 500, {"error": str(exc) or type(exc).__name__}
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            status, body = 400, {"error": "bad request"}
        except OSError:  # the client went away
            writer.close()
            return
        payload = json.dumps(body, indent=1).encode()
        reason = http.client.responses.get(status, "")
        writer.write(
            f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


class AdminUnavailable(Exception):
    """No daemon answers on the socket."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("lbd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def request(path: Path, method: str, route: str, timeout: float = 10.0) -> Any:
    """Call the daemon's admin API; raises AdminUnavailable with a message a user can act on."""
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, route)
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"null")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AdminUnavailable(
            f"no lbd daemon answers on {path} ({exc.strerror}); is `lbd run` running? "
            "Use --admin-socket to point at another socket."
        ) from exc
    except PermissionError as exc:
        raise AdminUnavailable(f"cannot open {path}: permission denied (the socket is 0600; run as root)") from exc
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
        raise AdminUnavailable(f"the daemon on {path} did not answer properly: {exc}") from exc
    finally:
        conn.close()
    if resp.status != 200:
        raise AdminUnavailable(f"the daemon answered {resp.status}: {body.get('error') if body else ''}")
    return body
