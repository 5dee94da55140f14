"""One client connection of the server: a non-blocking socket, its write lock, its bounds.

The server (`server.py`) owns what a connection does; this module holds
only how its bytes move and what the server counts against it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Final

import trio

__all__ = ["GONE", "RECV_SIZE", "Conn"]

GONE: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)
"""What a read or write raises when the peer has gone (or we closed it)."""
RECV_SIZE: Final = 65536


@dataclass(eq=False)
class Conn:
    """One client connection over a non-blocking stdlib socket.

    Reads and writes call the socket directly and only wait (through trio's
    `wait_readable`/`wait_writable`) when it would block: one readiness wait,
    one recv and one send per request, where trio's socket wrappers spend a
    failing recv and extra checkpoints on each.
    """

    id: int
    sock: socket.socket
    lock: trio.StrictFIFOLock = field(default_factory=trio.StrictFIFOLock)
    events: trio.MemorySendChannel[bytes] | None = None
    closed: bool = False
    partial: int = 0
    """Bytes of an unfinished line held for it (counted against `MAX_BUFFERED`)."""
    waiting: int = 0
    """Its `lease` requests parked until a profile is ready (at most `MAX_WAITING`)."""
    reloads: int = 0
    """Its `reload` requests in flight (at most `MAX_RELOADS`)."""
    warned_notify: bool = False

    async def recv(self) -> bytes:
        """The next bytes from the peer (b"" at EOF)."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError("connection closed")
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue

    async def send(self, data: bytes) -> None:
        """Write all of `data`; raises OSError if the peer is gone."""
        if self.closed:
            raise trio.ClosedResourceError("connection closed")
        if not self.lock.locked():
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n == len(data):
                return
            data = data[n:]
        # Taking the lock before any wait keeps concurrent writers in order.
        async with self.lock:
            view = memoryview(data)
            while view:
                if self.closed:
                    raise trio.ClosedResourceError("connection closed")
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    n = self.sock.send(view)
                except (BlockingIOError, InterruptedError):
                    continue
                view = view[n:]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
