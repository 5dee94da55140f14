"""Upstream HTTP/1.1: kept-alive connections per origin, answers parsed by httptools.

Theory of operation: `Pool.stream(method, url, ...)` takes a connection to
the URL's origin (an idle one, else a new one within the pool's limit),
sends the request's head and body in one write, and yields a `Response` as
soon as its head is parsed; `Response.aiter_stream()` yields the body as it
arrives (one part per read, de-chunked by the parser). A connection goes
back to its origin's idle list when its answer was read to the end and both
sides allow keep-alive; otherwise it is closed. An idle connection that
became readable (the upstream closed it or sent garbage) or is older than
`keepalive_expiry` is never reused; a reused connection that the upstream
closed before the first byte of the answer (the keep-alive race) is retried
once on a new one. Every connect, write and read has its own timeout
(`Timeouts`); faults are `Timeout`, `NetworkError` or `ProtocolError`.

Why not httpcore (httpx's transport), which the gateway used first: on
this 2-core VM it cost ~0.25 ms of CPU per request in its own code and its
h11 (about 700 Python calls), and its pool re-plans every connection at
each request start and end (1,000 concurrent requests through one pool took
~40 s where raw sockets took 1.5 s). httptools is llhttp (Node.js's parser)
in C: the framing is a kept library's, the pooling is this module's.
"""

from __future__ import annotations

import os
import select
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Final

import httptools
import trio

from .sockread import RECV_SIZE, ReadTimeout, SocketReader

MAX_HEAD: Final = 256 * 1024
"""An answer head (status line and headers) larger than this is a protocol error."""


class UpstreamError(Exception):
    """An upstream try that got no usable answer."""


class Timeout(UpstreamError):
    """Connect, write or read took longer than its timeout."""


class NetworkError(UpstreamError):
    """The connection could not be made, or broke."""


class ProtocolError(UpstreamError):
    """The upstream's bytes are not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    read: float
    write: float
    pool: float


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> bytes:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("ascii")


def split_url(url: str) -> tuple[Origin, bytes]:
    """`"https://host:port/path?q"` -> (its origin, b"/path?q"). Raises `ValueError`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    slash = rest.find("/")
    authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    if authority.startswith("["):
        host, _, tail = authority[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        raise ValueError(f"no host in URL {url!r}")
    port = int(port_text) if port_text else (443 if scheme == "https" else 80)
    return Origin(scheme, host, port), target.encode("ascii")


class _Parse:
    """httptools callbacks for one answer."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.done = False
        self.body: list[bytes] = []
        self.framed = False
        """Whether the answer says where its body ends (Content-Length or chunked)."""
        self.keep = False
        """Whether both sides allow another request on the connection (read as the head
        ends: once the answer is complete, llhttp has forgotten)."""
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low == b"content-length" or low == b"transfer-encoding":
            self.framed = True
        self.headers.append((name, value.strip()))

    def on_headers_complete(self) -> None:
        self.head_done = True
        assert self.parser is not None
        self.keep = self.parser.should_keep_alive()
        self.parser = None  # no cycle between the parser and its callbacks

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class _Conn:
    def __init__(self, origin: Origin, stream: trio.abc.Stream, sock: trio.socket.SocketType,
                 ) -> None:
        self.origin = origin
        self.stream = stream
        self.sock = sock
        self.fd = sock.fileno()
        self.plain = isinstance(stream, trio.SocketStream)
        """No TLS: a send may go straight to the socket (`Pool._send`)."""
        self.idle_since = 0.0
        self.reused = False
        self.reader = SocketReader(sock) if self.plain else None
        """Reads straight from the socket (`sockread`); None with TLS."""

    def looks_closed(self) -> bool:
        """Whether an idle connection has something to read (EOF, a reset, garbage)."""
        try:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), suppress(trio.BrokenResourceError, OSError):
            await trio.aclose_forcefully(self.stream)


class Response:
    """An upstream answer whose head is read; its body streams from `aiter_stream`."""

    def __init__(self, parser: httptools.HttpResponseParser, parse: _Parse, conn: _Conn,
                 read_timeout: float, head_only: bool) -> None:
        self.status = parser.get_status_code()
        self.headers = parse.headers
        self._parser = parser
        self._parse = parse
        self._conn = conn
        self._read = read_timeout
        self.complete = head_only
        """Whether the whole answer was read."""
        self.keep = parse.keep and not head_only
        """Whether the connection may carry another request after this answer."""

    async def aiter_stream(self) -> AsyncIterator[bytes]:
        """The body, a part per read from upstream."""
        parse = self._parse
        while not self.complete:
            if parse.body:
                data = parse.body[0] if len(parse.body) == 1 else b"".join(parse.body)
                parse.body.clear()
                yield data
            if parse.done:
                self.complete = True
                return
            data = await _receive(self._conn, self._read)
            if not data:
                if parse.framed:
                    raise NetworkError("the upstream closed the connection inside its answer")
                self.complete, self.keep = True, False  # a body ended by the connection's end
                return
            _feed(self._parser, data)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep


async def _receive(conn: _Conn, timeout: float) -> bytes:
    """One read, within `timeout` seconds: without TLS straight from the socket
    (`sockread`), else through trio's `SSLStream`."""
    if conn.reader is None:
        return await _receive_tls(conn, timeout)
    try:
        return await conn.reader.read(timeout)
    except ReadTimeout:
        raise Timeout("read") from None
    except (trio.ClosedResourceError, OSError) as exc:
        raise NetworkError(f"read failed: {type(exc).__name__}") from None


async def _receive_tls(conn: _Conn, timeout: float) -> bytes:
    data = b""
    try:
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            data = bytes(await conn.stream.receive_some(RECV_SIZE))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise NetworkError(f"read failed: {type(exc).__name__}") from None
    if scope.cancelled_caught:
        raise Timeout("read")
    return data


def _feed(parser: httptools.HttpResponseParser, data: bytes) -> None:
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        raise ProtocolError("the upstream switched protocols") from None
    except httptools.HttpParserError as exc:
        raise ProtocolError(f"bad answer: {exc}") from None


def _request_head(method: str, target: bytes, origin: Origin,
                  headers: list[tuple[bytes, bytes]], length: int) -> bytes:
    parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", origin.authority,
             b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if length or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        parts += (b"content-length: ", str(length).encode("ascii"), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class Pool:
    """Kept-alive upstream connections, at most `max_connections` open at once."""

    def __init__(self, max_connections: int, *, keepalive_expiry: float = 30.0,
                 tls: ssl.SSLContext | None = None) -> None:
        self._slots = trio.Semaphore(max_connections)
        self._idle: dict[Origin, deque[_Conn]] = {}
        self._expiry = keepalive_expiry
        self._tls = tls
        """How https upstreams are verified (default: certifi's CAs, as httpx does)."""
        self._closed = False

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            try:
                import certifi

                ctx = ssl.create_default_context(cafile=certifi.where())
            except ImportError:  # pragma: no cover - certifi comes with httpx
                ctx = ssl.create_default_context()
            ctx.set_alpn_protocols(["http/1.1"])
            self._tls = ctx
        return self._tls

    def _take_idle(self, origin: Origin) -> _Conn | None:
        idle = self._idle.get(origin)
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self._expiry and not conn.looks_closed():
                conn.reused = True
                return conn
            self._drop_soon(conn)
        return None

    def _drop_soon(self, conn: _Conn) -> None:
        """Close an idle connection now (no await: a closed socket needs none)."""
        conn.sock.close()
        self._slots.release()

    def _evict_one(self) -> bool:
        """Close the oldest idle connection of any origin, freeing its slot."""
        oldest: deque[_Conn] | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest[0].idle_since):
                oldest = idle
        if oldest is None:
            return False
        self._drop_soon(oldest.popleft())
        return True

    async def _connect(self, origin: Origin, t: Timeouts) -> _Conn:
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            if not self._evict_one():
                try:
                    with trio.fail_after(t.pool):
                        await self._slots.acquire()
                except trio.TooSlowError:
                    raise Timeout("no free upstream connection") from None
            else:
                self._slots.acquire_nowait()
        tcp: trio.SocketStream | None = None
        try:
            with trio.fail_after(t.connect):
                tcp = await trio.open_tcp_stream(origin.host, origin.port)
                stream: trio.abc.Stream = tcp
                if origin.scheme == "https":
                    tls = trio.SSLStream(tcp, self._tls_context(), server_hostname=origin.host,
                                         https_compatible=True)
                    await tls.do_handshake()
                    stream = tls
        except BaseException as exc:
            self._slots.release()
            if tcp is not None:
                tcp.socket.close()  # a TLS handshake that failed or timed out
            if isinstance(exc, trio.TooSlowError):
                raise Timeout("connect") from None
            if isinstance(exc, OSError | trio.BrokenResourceError | ssl.SSLError):
                raise NetworkError(f"connect failed: {exc}") from None
            raise
        return _Conn(origin, stream, tcp.socket)

    def _put_back(self, conn: _Conn) -> None:
        if self._closed:
            self._drop_soon(conn)
            return
        now = conn.idle_since = trio.current_time()
        idle = self._idle.setdefault(conn.origin, deque())
        while idle and now - idle[0].idle_since >= self._expiry:
            self._drop_soon(idle.popleft())  # the oldest, never taken again in time
        idle.append(conn)

    async def _close(self, conn: _Conn) -> None:
        await conn.aclose()
        self._slots.release()

    async def _send(self, conn: _Conn, data: bytes, t: Timeouts) -> None:
        """Send `data`: without TLS, straight to the socket when it takes it all (a trio
        `send_all` that succeeds at once still costs a scheduler pass), else via trio."""
        sent = 0
        if conn.plain:
            try:
                sent = os.write(conn.fd, data)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise NetworkError(f"write failed: {type(exc).__name__}") from None
            if sent == len(data):
                return
            data = data[sent:]
        try:
            with trio.CancelScope(deadline=trio.current_time() + t.write) as scope:
                await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise NetworkError(f"write failed: {type(exc).__name__}") from None
        if scope.cancelled_caught:
            raise Timeout("write")

    async def _exchange(self, conn: _Conn, data: bytes, t: Timeouts,
                        head_only: bool) -> Response:
        """Send the request and read the answer's head."""
        await self._send(conn, data, t)
        parse = _Parse()
        parser = httptools.HttpResponseParser(parse)
        parse.parser = parser
        size = 0
        while not parse.head_done:
            chunk = await _receive(conn, t.read)
            if not chunk:
                raise NetworkError("the upstream closed the connection before answering")
            size += len(chunk)
            _feed(parser, chunk)
            if parse.head_done and 100 <= parser.get_status_code() < 200:
                raise ProtocolError("the upstream sent an interim (1xx) answer")
            if not parse.head_done and size > MAX_HEAD:
                raise ProtocolError("the upstream's answer head is too large")
        return Response(parser, parse, conn, t.read, head_only)

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, headers: list[tuple[bytes, bytes]],
                     content: bytes, timeouts: Timeouts) -> AsyncIterator[Response]:
        """Send the request; the answer, its head read. Raises `UpstreamError`."""
        try:
            origin, target = split_url(url)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        data = _request_head(method, target, origin, headers, len(content)) + content
        head_only = method == "HEAD"
        conn = self._take_idle(origin) or await self._connect(origin, timeouts)
        try:
            resp = await self._exchange(conn, data, timeouts, head_only)
        except NetworkError:
            await self._close(conn)
            if not conn.reused:
                raise
            # The keep-alive race: the upstream closed it as we sent. Once more, on a new one.
            conn = await self._connect(origin, timeouts)
            try:
                resp = await self._exchange(conn, data, timeouts, head_only)
            except BaseException:
                await self._close(conn)
                raise
        except BaseException:
            await self._close(conn)
            raise
        try:
            yield resp
        except BaseException:
            await self._close(conn)
            raise
        if resp.reusable:
            self._put_back(conn)
        else:
            await self._close(conn)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._drop_soon(idle.pop())
        self._idle.clear()
