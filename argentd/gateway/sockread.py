"""Reading a plain TCP socket without trio's `receive_some`, for both sides of the gateway.

trio's `receive_some` spends a failed `recv` before it waits and a scheduler
pass after a read that did not have to wait. `SocketReader.read` reads
straight from the descriptor when data is there, else waits once for the
socket to be readable (under a deadline) and reads then. A read that found
data at once does not yield, so every `UNYIELDED_READS`-th one in a row
does: a body that keeps coming never keeps the daemon's other tasks waiting.
The client side (`http.HttpConnection`) and the upstream pool
(`pool._receive`) each map `OSError` and a timeout to their own errors.
"""

from __future__ import annotations

import os
from typing import Final

import trio

RECV_SIZE: Final = 65536
UNYIELDED_READS: Final = 8
"""Reads in a row that may find data at once before one yields to the other tasks."""


class ReadTimeout(Exception):
    """Nothing arrived within the read's timeout."""


class SocketReader:
    """Reads of one plain TCP socket (the only reader of it while one runs)."""

    __slots__ = ("fd", "sock", "unyielded")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.unyielded = 0
        """Reads in a row that found data at once, without a scheduler pass."""

    async def read(self, timeout: float) -> bytes:
        """Up to `RECV_SIZE` bytes (b"" at the end of the stream). Raises `ReadTimeout`, or
        `OSError` / `trio.ClosedResourceError` when the read fails."""
        try:
            data = os.read(self.fd, RECV_SIZE)  # already there: a body behind its head, a stream
        except BlockingIOError:
            pass
        else:
            self.unyielded += 1
            if self.unyielded >= UNYIELDED_READS:
                self.unyielded = 0
                await trio.lowlevel.checkpoint()
            return data
        self.unyielded = 0
        with trio.CancelScope(deadline=trio.current_time() + timeout):
            while True:
                await trio.lowlevel.wait_readable(self.sock)
                try:
                    return os.read(self.fd, RECV_SIZE)
                except BlockingIOError:
                    continue
        raise ReadTimeout
