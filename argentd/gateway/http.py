"""HTTP/1.1 on trio streams, framed by h11: the gateway's client side.

Theory of operation: one task per client connection drives an
`h11.Connection`. For each request it hands the handler an `Exchange`: the
request head, `body()` to read the body (bounded: over the limit raises
`BodyTooLarge`, a declared Content-Length over it before any byte is read),
and `start` / `send` / `end` to answer, streaming. Every write waits until
the client has taken the bytes, within `write` seconds, so a client that
stops reading holds one chunk and its socket buffers, never more, and is
dropped when the time is up (`ClientGone`). Keep-alive connections wait
`idle` seconds for the next request head; a head or body must arrive within
`header` seconds. A connection whose request body was not read, or whose
answer broke off, is closed after the answer instead of kept.

Measured against hypercorn's trio worker (ASGI) on this machine: an h11
loop like this one answers a keep-alive request in ~0.42-0.69 ms p50
where hypercorn took ~1.02-1.09 ms (docs/gateway.md, "HTTP stack").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import h11
import trio

log = logging.getLogger("argentd.gateway")

RECV_SIZE: Final = 65536
MAX_HEAD: Final = 64 * 1024
"""A request head (request line and headers) larger than this gets 431."""


class ClientGone(Exception):
    """The client closed, reset, or stopped reading for longer than the write timeout."""


class BodyTooLarge(Exception):
    """The request body is larger than the limit."""


class BadRequest(Exception):
    """The request cannot be read (broken framing, too slow)."""


class Exchange:
    """One request and its answer on a client connection."""

    def __init__(self, conn: HttpConnection, request: h11.Request) -> None:
        self._conn = conn
        self.method = request.method.decode("ascii", "replace")
        self.target = request.target.decode("ascii", "replace")
        self.headers: list[tuple[bytes, bytes]] = list(request.headers)
        self.http_version = request.http_version
        self.started = False
        """Whether the answer has begun (after it, no other answer is possible)."""
        self._head: bytes | None = b""
        self.finished = False
        """Whether the whole answer went out."""
        self.body_read = False

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    async def body(self, limit: int) -> bytes:
        """The whole request body. Raises `BodyTooLarge`, `BadRequest` or `ClientGone`."""
        declared = self.header(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        conn = self._conn
        parts: list[bytes] = []
        size = 0
        if conn.h11.they_are_waiting_for_100_continue:
            await conn.write(conn.h11.send(h11.InformationalResponse(
                status_code=100, headers=[])) or b"")
        while True:
            event = await conn.next_event(conn.timeouts_header)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise BodyTooLarge
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.body_read = True
                return b"".join(parts)
            else:
                raise BadRequest("the connection ended inside the request body")

    async def until_gone(self) -> None:
        """Return when the client closes its connection (it gave up on the answer).

        Bytes it sends meanwhile (a pipelined next request) are kept for h11,
        up to `MAX_HEAD`; past that the watch stops (and never returns).
        """
        conn = self._conn
        kept = 0
        while kept <= MAX_HEAD:
            try:
                data = await conn.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("client connection broke: %s", type(exc).__name__)
                return
            if not data:
                log.debug("client closed its connection")
                return
            kept += len(data)
            try:
                conn.h11.receive_data(bytes(data))
            except h11.RemoteProtocolError:
                log.debug("client sent bytes h11 refuses after its request")
                return
        await trio.sleep_forever()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Begin the answer: its head goes out with the first part of the body (one
        write instead of two; the head alone is of no use to the client)."""
        if not self.body_read:
            headers = [*headers, (b"connection", b"close")]
        self.started = True
        self._head = self._conn.h11.send(h11.Response(status_code=status, headers=headers))

    async def send(self, data: bytes) -> None:
        """Send part of the answer's body."""
        if data:
            out = self._conn.h11.send(h11.Data(data=data)) or b""
            if self._head:
                out, self._head = self._head + out, b""
            await self._conn.write(out)

    async def end(self, data: bytes = b"") -> None:
        """Finish the answer, after its last part `data` (one write for both)."""
        self.finished = True
        h = self._conn.h11
        out = (h.send(h11.Data(data=data)) or b"") if data else b""
        out += h.send(h11.EndOfMessage()) or b""
        if self._head:
            out, self._head = self._head + out, b""
        await self._conn.write(out)

    async def answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole answer at once."""
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        if not self.body_read:
            headers.append((b"connection", b"close"))
        self.started = True
        self.finished = True
        h = self._conn.h11
        data = h.send(h11.Response(status_code=status, headers=headers)) or b""
        data += (h.send(h11.Data(data=body)) or b"") + (h.send(h11.EndOfMessage()) or b"")
        await self._conn.write(data)


Handler = Callable[[Exchange], Awaitable[None]]


class HttpConnection:
    """An h11 server connection over a trio stream."""

    def __init__(self, stream: trio.abc.Stream, *, header: float, idle: float,
                 write: float) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.timeouts_header = header
        self.timeouts_idle = idle
        self.timeouts_write = write

    async def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            with trio.fail_after(self.timeouts_write):
                await self.stream.send_all(data)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                OSError) as exc:
            raise ClientGone(type(exc).__name__) from None

    async def next_event(self, timeout: float) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event, reading as needed. Raises `BadRequest` or `ClientGone`."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadRequest(str(exc)) from None
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                with trio.fail_after(timeout):
                    data = await self.stream.receive_some(RECV_SIZE)
            except trio.TooSlowError:
                raise BadRequest("the client was too slow") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                raise ClientGone("read failed") from None
            try:
                self.h11.receive_data(bytes(data))
            except h11.RemoteProtocolError as exc:
                raise BadRequest(str(exc)) from None

    async def serve(self, handler: Handler) -> None:
        """Answer requests until the client closes or the connection must end."""
        first = True
        while True:
            try:
                event = await self.next_event(self.timeouts_header if first
                                              else self.timeouts_idle)
            except BadRequest as exc:
                await self._refuse(exc)
                return
            first = False
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or a client that went quiet
            exchange = Exchange(self, event)
            await handler(exchange)
            if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is not h11.DONE:
                return
            if self.h11.our_state is not h11.DONE:
                return  # an answer that broke off: the connection cannot be reused
            try:
                self.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _refuse(self, exc: BadRequest) -> None:
        """Answer a request that cannot be read, when h11 still allows an answer."""
        if self.h11.our_state is not h11.SEND_RESPONSE and self.h11.our_state is not h11.IDLE:
            return
        too_big = "exceeded" in str(exc) or "maximum" in str(exc)
        status = 431 if too_big else 400
        body = b"bad request\n" if status == 400 else b"request head too large\n"
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=[
                (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")])) or b""
            data += (self.h11.send(h11.Data(data=body)) or b"")
            data += (self.h11.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            return
        with contextlib.suppress(ClientGone):
            await self.write(data)
