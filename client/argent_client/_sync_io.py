"""The blocking client's event stream: `Client.subscribe()` returns an `EventStream`."""

from __future__ import annotations

import socket
from collections.abc import Iterator

from . import _wire as W
from . import protocol as P


class EventStream:
    """Events from `subscribe()`, on a connection of their own.

    Iterate it; it ends when the daemon closes the connection. `close()` (or
    leaving `with`) ends it from this side.
    """

    def __init__(self, sock: socket.socket, reader: W.LineReader, early: list[P.Event]) -> None:
        self._sock: socket.socket | None = sock
        self._reader = reader
        self._early = early

    def __iter__(self) -> Iterator[P.Event]:
        return self

    def __next__(self) -> P.Event:
        if self._early:
            return self._early.pop(0)
        while self._sock is not None:
            event = self._reader.pop_event()
            if event is not None:
                return event
            try:
                data = self._sock.recv(W.RECV_SIZE)
            except TimeoutError:
                raise TimeoutError("no event from argentd within the idle timeout") from None
            except OSError:
                data = b""
            if not data:
                self.close()
                break
            self._reader.feed(data)
        raise StopIteration

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
