"""The async client's transport: one pipelined connection and the event stream.

`_Conn` lets any number of tasks use one connection at once (see `aio`'s
theory of operation); `AsyncEventStream` is what `AsyncClient.subscribe()`
returns. Both feed what they read to `_wire`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import anyio
import anyio.abc
import msgspec

from . import _wire as W
from . import protocol as P

_STREAM_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                  OSError)


class _Conn:
    """One connection; safe to use from many tasks at once."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.reader = W.LineReader()
        self.book = W.CallBook()
        self.send_lock = anyio.Lock()
        self.read_lock = anyio.Lock()
        self.replies: dict[int, P.Incoming] = {}
        self.broken = False
        self.fresh = True
        """Nothing has arrived on this connection yet."""

    async def _send(self, data: bytes) -> None:
        try:
            async with self.send_lock:
                await self.stream.send(data)
        except _STREAM_ERRORS as exc:
            self.broken = True
            raise W.send_error(exc) from None

    async def call(self, method: str, params: msgspec.Struct | None) -> P.Incoming:
        """Send a request and return its reply; raises `Broken` (`NotSent`: it never left)."""
        if self.broken:
            raise W.NotSent("connection already broken")
        rid, line = self.book.start(method, params)
        try:
            await self._send(line)
            while rid not in self.replies:
                async with self.read_lock:
                    if rid in self.replies:
                        break
                    if self.broken:
                        raise W.Broken("connection broken")
                    await self._read_one()
            return self.replies.pop(rid)
        except BaseException:
            self.replies.pop(rid, None)
            self.book.abandon(rid)
            raise
        finally:
            self.book.finish(rid)

    async def _read_one(self) -> None:
        line = self.reader.pop_line()
        while line is None:
            try:
                data = await self.stream.receive(W.RECV_SIZE)
            except _STREAM_ERRORS as exc:
                self.broken = True
                raise W.Broken(str(exc) or type(exc).__name__) from None
            self.fresh = False
            self.reader.feed(data)
            line = self.reader.pop_line()
        try:
            outcome = self.book.on_line(line)
        except W.Broken:
            self.broken = True
            raise
        if isinstance(outcome, W.Reply):
            self.replies[outcome.id] = outcome.message
        elif isinstance(outcome, bytes):
            await self._send(outcome)

    async def aclose(self) -> None:
        self.broken = True
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(*_STREAM_ERRORS):
                await self.stream.aclose()


class AsyncEventStream:
    """Events from `subscribe()`: `async for event in stream`; ends on EOF or `aclose()`.

    It subscribes when entered (`async with`), awaited, or first iterated;
    events before that are not seen. Prefer `async with client.subscribe()
    as events:` so the connection closes when the block ends. Raises
    `DaemonUnavailable` when it cannot subscribe.
    """

    def __init__(self, opener: Callable[[], Awaitable[tuple[_Conn, list[P.Event]]]]) -> None:
        self._opener = opener
        self._conn: _Conn | None = None
        self._early: list[P.Event] = []
        self._closed = False

    async def _ensure(self) -> _Conn:
        if self._conn is None:
            self._conn, self._early = await self._opener()
        return self._conn

    def __await__(self) -> Generator[Any, None, AsyncEventStream]:
        async def opened() -> AsyncEventStream:
            await self._ensure()
            return self

        return opened().__await__()

    def __aiter__(self) -> AsyncIterator[P.Event]:
        return self

    async def __anext__(self) -> P.Event:
        conn = await self._ensure() if not self._closed else None
        if self._early:
            return self._early.pop(0)
        while conn is not None and not self._closed:
            event = conn.reader.pop_event()
            if event is not None:
                return event
            try:
                data = await conn.stream.receive(W.RECV_SIZE)
            except _STREAM_ERRORS:
                await self.aclose()
                break
            conn.reader.feed(data)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._conn is not None:
                await self._conn.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        await self._ensure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
