"""HTTP/1.1 on trio streams, parsed by httptools: the gateway's client side.

Theory of operation: one task per client connection feeds what it reads to
an `httptools.HttpRequestParser`, whose callbacks queue events (a request
head, body parts, its end). For each request the handler gets an
`Exchange`: the request head, `body()` to read the body (bounded: over the
limit raises `BodyTooLarge`, a declared Content-Length over it before any
byte is read), and `start` / `send` / `end` to answer, streaming (with the
answer's Content-Length when it has one, else chunked; an HTTP/1.0 client
gets the end of the connection). Every write waits until the client has
taken the bytes, within `write` seconds, so a client that stops reading
holds one chunk and its socket buffers, never more, and is dropped when the
time is up (`ClientGone`). Keep-alive connections wait `idle` seconds for
the next request head; a head or body must arrive within `header` seconds.
A connection whose request body was not read, whose client asked to close,
or whose answer broke off, is closed after the answer instead of kept.

Why httptools (llhttp, Node.js's parser, in C) and not h11, which the
gateway used first: h11 cost ~0.3 ms of CPU per request on this 2-core VM
(about 220 Python calls to read a request and write its answer); the
parsing is the kept library's either way, and what is left here is writing
a status line, headers and chunk sizes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final

import httptools
import trio

from .sockread import RECV_SIZE, ReadTimeout, SocketReader

log = logging.getLogger("argentd.gateway")

MAX_HEAD: Final = 64 * 1024
"""A request head (request line and headers) larger than this gets 431."""
NO_BODY_STATUS: Final = frozenset({204, 304})


class ClientGone(Exception):
    """The client closed, reset, or stopped reading for longer than the write timeout."""


class BodyTooLarge(Exception):
    """The request body is larger than the limit."""


class BadRequest(Exception):
    """The request cannot be read (broken framing, too slow)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


_REASONS: Final = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
"""Status code -> reason phrase (an unknown code gets none)."""


class _Head:
    __slots__ = ("expect_continue", "headers", "keep_alive", "method", "target", "version")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                 version: str, keep_alive: bool) -> None:
        self.method = method.decode("ascii", "replace")
        self.target = target.decode("ascii", "replace")
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        """llhttp's verdict from the version and `Connection`, as the head ends."""
        self.expect_continue = any(name == b"expect" and value.lower() == b"100-continue"
                                   for name, value in headers)


_END: Final = None
"""The event that ends a request's body."""


class _Events:
    """httptools callbacks: a queue of `_Head`, body parts (bytes) and `_END`."""

    def __init__(self) -> None:
        self.queue: deque[_Head | bytes | None] = deque()
        self.parser: httptools.HttpRequestParser | None = None
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self.in_head = False
        self.head_size = 0
        self.too_big = False
        """Whether a head over `MAX_HEAD` was read (its request is never handled)."""

    def on_message_begin(self) -> None:
        self._url, self._headers = [], []
        self.in_head = True
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value.strip()))
        self.head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.in_head = False
        if self.head_size > MAX_HEAD:
            self.too_big = True
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        parser = self.parser
        self.queue.append(_Head(parser.get_method(), url, self._headers,
                                parser.get_http_version(), parser.should_keep_alive()))

    def on_body(self, body: bytes) -> None:
        self.queue.append(body)

    def on_message_complete(self) -> None:
        self.queue.append(_END)


class Exchange:
    """One request and its answer on a client connection."""

    def __init__(self, conn: HttpConnection, head: _Head) -> None:
        self._conn = conn
        self.method = head.method
        self.target = head.target
        self.headers = head.headers
        self.http_version = head.version.encode("ascii")
        self._head = head
        self.started = False
        """Whether the answer has begun (after it, no other answer is possible)."""
        self.finished = False
        """Whether the whole answer went out."""
        self.body_read = False
        self.keep = head.keep_alive
        """Whether the connection may carry the next request after this answer."""
        self._out = b""
        self._chunked = False
        self._bodyless = head.method == "HEAD"

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
        if self._head.expect_continue and not conn.events.queue:
            await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            event = await conn.next_event(conn.timeouts_header)
            if event is _END:
                self.body_read = True
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if isinstance(event, bytes):
                size += len(event)
                if size > limit:
                    raise BodyTooLarge
                parts.append(event)
            else:
                raise BadRequest("a request head inside the request body")

    async def until_gone(self) -> None:
        """Return when the client closes its connection (it gave up on the answer).

        Bytes it sends meanwhile (a pipelined next request) are kept for the
        parser, up to `MAX_HEAD`; past that the watch stops (and never returns).
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
                conn.feed(bytes(data))
            except BadRequest:
                log.debug("client sent bytes the parser refuses after its request")
                self.keep = False
                return
        await trio.sleep_forever()

    def _head_bytes(self, status: int, headers: list[tuple[bytes, bytes]],
                    length: int | None) -> bytes:
        """The status line and headers; `length` None: the body's end is not known yet."""
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b""))]
        has_length = False
        for name, value in headers:
            low = name.lower()
            if low == b"content-length":
                has_length = True
            elif low == b"transfer-encoding" or low == b"connection":
                continue
            parts += (name, b": ", value, b"\r\n")
        if status in NO_BODY_STATUS or 100 <= status < 200:
            self._bodyless = True
        elif length is not None and not has_length:
            parts += (b"content-length: ", str(length).encode("ascii"), b"\r\n")
        elif length is None and not has_length and not self._bodyless:
            if self.http_version == b"1.1":
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep = False  # HTTP/1.0: the body ends with the connection
        if not self.body_read:
            self.keep = False
        if not self.keep:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _framed(self, data: bytes) -> bytes:
        if not data or self._bodyless:
            return b""
        if self._chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Begin the answer: its head goes out with the first part of the body (one
        write instead of two; the head alone is of no use to the client)."""
        self.started = True
        self._out = self._head_bytes(status, headers, None)

    async def send(self, data: bytes) -> None:
        """Send part of the answer's body."""
        framed = self._framed(data)
        if framed:
            out, self._out = self._out + framed, b""
            await self._conn.write(out)

    async def end(self, data: bytes = b"") -> None:
        """Finish the answer, after its last part `data` (one write for both)."""
        self.finished = True
        out = self._out + self._framed(data)
        if self._chunked:
            out += b"0\r\n\r\n"
        self._out = b""
        await self._conn.write(out)

    async def answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole answer at once."""
        self.started = True
        self.finished = True
        head = self._head_bytes(status, headers, len(body))
        await self._conn.write(head + (b"" if self._bodyless else body))


Handler = Callable[[Exchange], Awaitable[None]]


class HttpConnection:
    """A server-side HTTP/1.1 connection over a trio stream."""

    def __init__(self, stream: trio.abc.Stream, *, header: float, idle: float,
                 write: float) -> None:
        self.stream = stream
        self._reader = SocketReader(stream.socket) if isinstance(stream, trio.SocketStream) \
            else None
        """Reads straight from the socket (`sockread`); None on another stream."""
        self._fd = self._reader.fd if self._reader is not None else None
        """The socket's descriptor, for a send without a trip through trio's scheduler
        (a trio `send_all` that succeeds at once still yields: one more epoll pass)."""
        self.events = _Events()
        self.parser = httptools.HttpRequestParser(self.events)
        self.events.parser = self.parser
        self._head_size = 0
        self.timeouts_header = header
        self.timeouts_idle = idle
        self.timeouts_write = write

    def close(self) -> None:
        """Break the parser's reference cycle (it holds its callbacks, they hold it)."""
        self.events.parser = None

    async def write(self, data: bytes) -> None:
        """Send `data`: at once when the socket takes it all (most answers), else the
        rest as the client reads, within the write timeout. Raises `ClientGone`."""
        if not data:
            return
        sent = 0
        if self._fd is not None:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise ClientGone(type(exc).__name__) from None
            if sent == len(data):
                return
        # A bare cancel scope, not `fail_after` (a generator context manager).
        try:
            with trio.CancelScope(deadline=trio.current_time() + self.timeouts_write) as scope:
                await self.stream.send_all(memoryview(data)[sent:] if sent else data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ClientGone(type(exc).__name__) from None
        if scope.cancelled_caught:
            raise ClientGone("the client stopped reading")

    def feed(self, data: bytes) -> None:
        """Give the parser what the client sent. Raises `BadRequest`."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise BadRequest("protocol upgrades are not supported") from None
        except httptools.HttpParserError as exc:
            raise BadRequest(f"malformed request: {exc}") from None
        if self.events.in_head:  # a head still coming: count what it has taken so far
            self._head_size += len(data)
        else:
            self._head_size = 0
        if self.events.too_big or self._head_size > MAX_HEAD:
            self.events.queue.clear()
            raise BadRequest("request head too large", 431)

    async def next_event(self, timeout: float) -> _Head | bytes | None:
        """The next request event, reading as needed. Raises `BadRequest`, `ClientGone`
        or `EOFError` (the client closed between requests)."""
        queue = self.events.queue
        while not queue:
            data = await (self._read_socket(timeout) if self._reader is not None
                          else self._read_stream(timeout))
            if not data:
                raise EOFError
            self.feed(data)
        return queue.popleft()

    async def _read_socket(self, timeout: float) -> bytes:
        """One read straight from the socket (`sockread`)."""
        assert self._reader is not None
        try:
            return await self._reader.read(timeout)
        except ReadTimeout:
            raise BadRequest("the client was too slow") from None
        except (trio.ClosedResourceError, OSError):
            raise ClientGone("read failed") from None

    async def _read_stream(self, timeout: float) -> bytes:
        data = b""
        try:
            with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
                data = bytes(await self.stream.receive_some(RECV_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise ClientGone("read failed") from None
        if scope.cancelled_caught:
            raise BadRequest("the client was too slow")
        return data

    async def serve(self, handler: Handler) -> None:
        """Answer requests until the client closes or the connection must end."""
        first = True
        try:
            while True:
                try:
                    event = await self.next_event(self.timeouts_header if first
                                                  else self.timeouts_idle)
                except BadRequest as exc:
                    await self._refuse(exc)
                    return
                except EOFError:
                    return
                first = False
                if not isinstance(event, _Head):
                    return  # body bytes with no head: cannot happen, but never reuse
                exchange = Exchange(self, event)
                await handler(exchange)
                if not (exchange.finished and exchange.keep and exchange.body_read):
                    return
        finally:
            self.close()

    async def _refuse(self, exc: BadRequest) -> None:
        """Answer a request that cannot be read."""
        status = exc.status
        body = b"bad request\n" if status == 400 else b"request head too large\n"
        data = (b"HTTP/1.1 %d %b\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%b" % (status, _REASONS.get(status, b""), len(body),
                                                      body))
        with contextlib.suppress(ClientGone):
            await self.write(data)
