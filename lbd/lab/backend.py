"""A lab backend: HTTP, a TCP name+echo port and a UDP name+echo port, all naming the backend.

    python -m lbd.lab.backend --name backend-1 [--http-port 8080] [--tcp-port 9000]
                                  [--udp-port 9001] [--fail-file PATH] [--max-seconds 3600]

- HTTP (GET/HEAD): `/` answers 200 "backend-1\\n"; `/health` answers 200 "ok backend-1\\n", or
  503 while unhealthy. `POST /fail` makes it unhealthy, `POST /recover` healthy again; so does
  creating/removing `--fail-file`. Every answer has `X-Backend: <name>`; connections close after
  one answer.
- TCP: on connect, sends "backend-1\\n", then echoes until EOF.
- UDP: answers each datagram with "backend-1\\n" followed by the datagram.

Listens on all addresses (dual stack). Prints READY on stdout once everything listens; logs to
stderr. Bounded: exits after --max-seconds, on SIGTERM/SIGINT, or when its parent dies; each
connection is limited in size and idle time, and the number of connections is capped.
Stdlib only, so it starts fast in a namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import signal
import socket
import sys
from pathlib import Path

HTTP_PORT = 8080
TCP_PORT = 9000
UDP_PORT = 9001
MAX_SECONDS = 3600.0  # a forgotten backend goes away by itself after an hour
IDLE_TIMEOUT = 30.0  # seconds a connection may stay silent
MAX_REQUEST_HEAD = 16 * 1024  # bytes of request line + headers
MAX_CONNECTIONS = 512
PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when our parent (the test or the lab) goes away."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Backend:
    def __init__(self, name: str, fail_file: Path | None) -> None:
        self.name = name
        self.fail_file = fail_file
        self.failing = False
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)

    @property
    def healthy(self) -> bool:
        return not self.failing and not (self.fail_file is not None and self.fail_file.exists())

    async def http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self.slots:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
                method, path = self._request_line(head)
                length = self._content_length(head)
                if length:
                    await asyncio.wait_for(reader.readexactly(min(length, MAX_REQUEST_HEAD)), IDLE_TIMEOUT)
                status, body = self._route(method, path)
                reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
                response = (
                    f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nX-Backend: {self.name}\r\nConnection: close\r\n\r\n"
                ).encode()
                writer.write(response + (b"" if method == "HEAD" else body))
                await writer.drain()
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError, ValueError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def _request_line(self, head: bytes) -> tuple[str, str]:
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        return method, target.split("?", 1)[0]

    def _content_length(self, head: bytes) -> int:
        for line in head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length":
                return int(value.strip())
        return 0

    def _route(self, method: str, path: str) -> tuple[int, bytes]:
        if method in ("GET", "HEAD"):
            if path == "/":
                return 200, f"{self.name}\n".encode()
            if path in ("/health", "/healthz"):
                return (200, f"ok {self.name}\n".encode()) if self.healthy else (503, f"failing {self.name}\n".encode())
            return 404, b"not found\n"
        if method == "POST" and path in ("/fail", "/recover"):
            self.failing = path == "/fail"
            print(f"{self.name}: {'failing' if self.failing else 'recovered'}", file=sys.stderr, flush=True)
            return 200, f"{path[1:]} {self.name}\n".encode()
        return 405, b"method not allowed\n"

    async def stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self.slots:
            try:
                writer.write(f"{self.name}\n".encode())
                await writer.drain()
                while data := await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT):
                    writer.write(data)
                    await writer.drain()
            except (asyncio.TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


class NameEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.prefix = f"{name}\n".encode()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.prefix + data, addr)


def dual_stack_udp(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    return sock


async def serve(args: argparse.Namespace) -> None:
    backend = Backend(args.name, args.fail_file)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http = await asyncio.start_server(backend.http, port=args.http_port, reuse_address=True,
                                      limit=MAX_REQUEST_HEAD)
    stream = await asyncio.start_server(backend.stream, port=args.tcp_port, reuse_address=True)
    transport, _ = await loop.create_datagram_endpoint(lambda: NameEcho(args.name), sock=dual_stack_udp(args.udp_port))
    print(f"READY {args.name} http={args.http_port} tcp={args.tcp_port} udp={args.udp_port}", flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    http.close()
    stream.close()
    transport.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="lbd lab backend")
    parser.add_argument("--name", required=True)
    parser.add_argument("--http-port", type=int, default=HTTP_PORT)
    parser.add_argument("--tcp-port", type=int, default=TCP_PORT)
    parser.add_argument("--udp-port", type=int, default=UDP_PORT)
    parser.add_argument("--fail-file", type=Path, default=None)
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    args = parser.parse_args()
    die_with_parent()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
