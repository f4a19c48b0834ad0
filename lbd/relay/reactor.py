"""The relay core below asyncio's transports: one edge-triggered epoll, nested in the event loop.

asyncio's transports cost a new TCP connection ~16-18 us of Python and ~24 syscalls (uvloop's
getsockname/getpeername per transport, SO_ERROR per connect, one epoll wait per connection).
Here the relay's sockets are registered once, edge-triggered, in an epoll set of our own whose
fd sits in the loop (`add_reader`): one loop wake-up hands over every ready socket in a batch,
and a handler reads and writes the raw sockets itself (lbd.relay.tcp_connection). Timers,
admin, probes and netlink stay on the loop.

Rules the handlers rely on:
- a socket's fd is closed only after the batch that may still name it (`close`): a fd number
  freed mid-batch could be reused by a socket accepted later in the same batch, which would
  then receive the closed socket's stale event;
- closing a fd removes it from the epoll set (no epoll_ctl DEL), so handlers `forget` it here;
- edge-triggered means a handler must remember a socket that still has data; one that stops
  early to be fair to the others asks to be called again (`again`) after the batch.
"""

from __future__ import annotations

import select
import socket
import weakref
from asyncio import AbstractEventLoop
from typing import Protocol

IN, OUT, ERR, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
RDHUP, ET = select.EPOLLRDHUP, select.EPOLLET

# Events taken per epoll_wait, and batches per loop wake-up before giving the loop a turn.
MAX_EVENTS = 256
MAX_BATCHES = 8


class Handler(Protocol):
    def on_event(self, fd: int, events: int) -> None: ...


class Resumable(Protocol):
    def resume(self) -> None: ...


class Reactor:
    """The epoll set of one event loop (`Reactor.of(loop)`); lives as long as the loop."""

    _of: weakref.WeakKeyDictionary[AbstractEventLoop, Reactor] = weakref.WeakKeyDictionary()

    __slots__ = ("loop", "ep", "handlers", "_closing", "_again", "_in_batch", "_again_armed", "__weakref__")

    @classmethod
    def of(cls, loop: AbstractEventLoop) -> Reactor:
        reactor = cls._of.get(loop)
        if reactor is None or reactor.ep.closed:
            reactor = cls._of[loop] = cls(loop)
        return reactor

    def __init__(self, loop: AbstractEventLoop) -> None:
        # A proxy: the registry's key must not be kept alive by its own value (the loop holds
        # the reactor through add_reader, so the reactor goes with the loop).
        self.loop: AbstractEventLoop = weakref.proxy(loop)
        self.ep = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self._closing: list[socket.socket] = []
        self._again: list[Resumable] = []
        self._in_batch = False
        self._again_armed = False
        loop.add_reader(self.ep.fileno(), self._ready)

    # -- registrations -------------------------------------------------------------------

    def add(self, fd: int, handler: Handler, mask: int) -> None:
        self.ep.register(fd, mask)
        self.handlers[fd] = handler

    def modify(self, fd: int, mask: int) -> None:
        self.ep.modify(fd, mask)

    def remove(self, fd: int) -> None:
        """Take a fd out that stays open (handed to someone else, e.g. a splice pump)."""
        self.handlers.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass

    def close(self, sock: socket.socket) -> None:
        """Forget the socket's fd and close it once the batch under way is over."""
        self.handlers.pop(sock.fileno(), None)
        if self._in_batch:
            self._closing.append(sock)
        else:
            sock.close()

    def again(self, handler: Resumable) -> None:
        """Call `handler.resume()` after this batch (it stopped early with data left, to be fair)."""
        self._again.append(handler)
        if not self._again_armed:
            self._again_armed = True
            self.loop.call_soon(self._resume)

    # -- dispatch --------------------------------------------------------------------------

    def _ready(self) -> None:
        poll, handlers = self.ep.poll, self.handlers
        self._in_batch = True
        try:
            for _ in range(MAX_BATCHES):
                events = poll(0, MAX_EVENTS)
                for fd, mask in events:
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler.on_event(fd, mask)
                if self._closing:
                    self._close_pending()
                if len(events) < MAX_EVENTS:
                    break
        finally:
            self._in_batch = False
            if self._closing:
                self._close_pending()

    def _close_pending(self) -> None:
        closing, self._closing = self._closing, []
        for sock in closing:
            sock.close()

    def _resume(self) -> None:
        self._again_armed = False
        waiting, self._again = self._again, []
        self._in_batch = True
        try:
            for handler in waiting:
                handler.resume()
        finally:
            self._in_batch = False
            if self._closing:
                self._close_pending()

    def shutdown(self) -> None:
        """Stop watching (the loop is closing); registered sockets belong to their owners."""
        if not self.ep.closed:
            try:
                self.loop.remove_reader(self.ep.fileno())
            except Exception:  # the loop may be closed already
                pass
            self.ep.close()
        self.handlers.clear()
