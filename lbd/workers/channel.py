"""The control plane <-> worker channel: messages, with file descriptors, over a unix socket pair.

A message is a tuple of plain data (plans, readiness, counts), pickled: both ends are lbd of
the same install, started by each other, so pickle is safe here and keeps the dataclasses as
they are. A frame is `length (u32) | fd count (u16) | pickle`; fds ride with the frame's first
byte (SCM_RIGHTS) and are taken in order. `Framer` is the sans-IO part; `Channel` moves bytes
on the event loop, buffering what the peer cannot take yet (never blocking the loop).
"""

from __future__ import annotations

import array
import asyncio
import collections
import os
import pickle
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

import structlog

log = structlog.get_logger("lbd.workers")

HEADER = struct.Struct("!IH")
MAX_FDS_PER_READ = 16
READ_SIZE = 256 * 1024
Message = tuple[Any, ...]


class ChannelError(Exception):
    """The peer sent something that is not a frame (a bug: both ends are lbd)."""


class Framer:
    """Bytes and fds in, (message, fds) out; pure."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.fds: collections.deque[int] = collections.deque()

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> list[tuple[Message, list[int]]]:
        self.buffer += data
        self.fds.extend(fds)
        out = []
        while len(self.buffer) >= HEADER.size:
            length, nfds = HEADER.unpack_from(self.buffer)
            end = HEADER.size + length
            if len(self.buffer) < end or len(self.fds) < nfds:
                break
            message = pickle.loads(memoryview(self.buffer)[HEADER.size:end])
            del self.buffer[:end]
            out.append((message, [self.fds.popleft() for _ in range(nfds)]))
        return out

    def close(self) -> None:
        """Close fds that arrived for frames that never completed."""
        while self.fds:
            os.close(self.fds.popleft())


def frame(message: Message, nfds: int = 0) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body), nfds) + body


class Channel:
    """One end of the pair, on the running loop. `on_message(message, fds)` owns the fds it gets;
    `on_close()` is called once, when the peer is gone (EOF or error)."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: Callable[[Message, list[int]], None],
        on_close: Callable[[], None],
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.on_message = on_message
        self.on_close = on_close
        self.loop = asyncio.get_running_loop()
        self.framer = Framer()
        self.pending: collections.deque[tuple[memoryview, list[int]]] = collections.deque()
        self.closed = False
        self._writing = False
        self.loop.add_reader(sock.fileno(), self._readable)

    def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        """Queue a message (the fds are duplicated by the kernel at send; the caller keeps its own)."""
        if self.closed:
            return
        self.pending.append((memoryview(frame(message, len(fds))), list(fds)))
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        while self.pending:
            data, fds = self.pending[0]
            try:
                if fds:
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    sent = self.sock.sendmsg([data], ancillary)
                else:
                    sent = self.sock.send(data)
            except BlockingIOError:
                break
            except OSError:
                self._closed()
                return
            if sent < len(data):
                self.pending[0] = (data[sent:], [])  # the fds went with the first byte
                break
            self.pending.popleft()
        want = bool(self.pending)
        if want != self._writing:
            self._writing = want
            if want:
                self.loop.add_writer(self.sock.fileno(), self._flush)
            else:
                self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        fd_space = socket.CMSG_SPACE(MAX_FDS_PER_READ * 4)
        for _ in range(64):
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(READ_SIZE, fd_space)
            except BlockingIOError:
                return
            except OSError:
                self._closed()
                return
            fds: list[int] = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    received = array.array("i")
                    received.frombytes(payload[: len(payload) - len(payload) % 4])
                    fds.extend(received)
            if not data and not fds:
                self._closed()
                return
            for message, message_fds in self.framer.feed(data, fds):
                if self.closed:
                    for fd in message_fds:
                        os.close(fd)
                    continue
                self.on_message(message, message_fds)

    def _closed(self) -> None:
        if self.closed:
            return
        self.close()
        self.on_close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fileno = self.sock.fileno()
        if fileno >= 0:
            self.loop.remove_reader(fileno)
            if self._writing:
                self.loop.remove_writer(fileno)
        self.sock.close()
        self.framer.close()
        self.pending.clear()
