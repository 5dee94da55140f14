"""Upstream connections: httpcore pools, sharded so that many at once stay cheap.

httpcore's `AsyncConnectionPool` re-plans every connection on each request
start and end, with a count inside its loop over connections: O(n²) per
request with n connections (measured here: 1,000 concurrent requests through
one pool took ~40 s where the same load over raw sockets took 1.5 s). Shards
of `SHARD` connections keep n small; a request goes to the shard with the
fewest requests in flight (the first on a tie), so a light load stays on
one shard and reuses its kept-alive connections.

httpcore writes a request's head and its body in two sends; each send on
loopback wakes the upstream, which reads a head without its body. `_Stream`
holds a request's writes until the connection first reads (the answer),
then sends them as one (over `FLUSH_AT`, at once): one send and one
wake-up of the upstream per request.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final

import httpcore
from httpcore._backends.trio import TrioBackend, TrioStream

SHARD: Final = 32
"""Connections per httpcore pool."""
FLUSH_AT: Final = 64 * 1024
"""Held writes of more bytes than this go out before the first read."""


class _Stream(TrioStream):
    """httpcore's trio stream with its writes held until the next read."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._held: list[bytes] = []
        self._size = 0
        self._timeout: float | None = None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._held.append(buffer)
        self._size += len(buffer)
        self._timeout = timeout
        if self._size > FLUSH_AT:
            await self._flush()

    async def _flush(self) -> None:
        data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held, self._size = [], 0
        await super().write(data, self._timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._held:
            await self._flush()
        return await super().read(max_bytes, timeout)

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        if self._held:
            await self._flush()
        tls = await super().start_tls(ssl_context, server_hostname, timeout)
        assert isinstance(tls, TrioStream)
        return _Stream(tls._stream)


class _Backend(TrioBackend):
    """httpcore's trio backend whose TCP streams are `_Stream`s."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        stream = await super().connect_tcp(host, port, timeout, local_address, socket_options)
        assert isinstance(stream, TrioStream)
        return _Stream(stream._stream)


class ShardedPool:
    """Several `httpcore.AsyncConnectionPool`s behind one `stream()`."""

    def __init__(self, max_connections: int, *, keepalive_expiry: float = 30.0) -> None:
        shards = max(1, math.ceil(max_connections / SHARD))
        size = max(1, math.ceil(max_connections / shards))
        backend = _Backend()
        self._pools = [
            httpcore.AsyncConnectionPool(max_connections=size, network_backend=backend,
                                         max_keepalive_connections=size,
                                         keepalive_expiry=keepalive_expiry, retries=0)
            for _ in range(shards)
        ]
        self._busy = [0] * shards

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, headers: list[tuple[bytes, bytes]],
                     content: bytes, extensions: dict[str, Any]) -> AsyncIterator[
                         httpcore.Response]:
        """`httpcore.AsyncConnectionPool.stream` on the least busy shard."""
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            async with self._pools[i].stream(method, url, headers=headers, content=content,
                                             extensions=extensions) as resp:
                yield resp
        finally:
            self._busy[i] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
