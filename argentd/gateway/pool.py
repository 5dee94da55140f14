"""Upstream connections: httpcore pools, sharded so that many at once stay cheap.

httpcore's `AsyncConnectionPool` re-plans every connection on each request
start and end, with a count inside its loop over connections: O(n²) per
request with n connections (measured here: 1,000 concurrent requests through
one pool took ~40 s where the same load over raw sockets took 1.5 s). Shards
of `SHARD` connections keep n small; a request goes to the shard with the
fewest requests in flight (the first on a tie), so a light load stays on
one shard and reuses its kept-alive connections.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import httpcore

SHARD: Final = 32
"""Connections per httpcore pool."""


class ShardedPool:
    """Several `httpcore.AsyncConnectionPool`s behind one `stream()`."""

    def __init__(self, max_connections: int, *, keepalive_expiry: float = 30.0) -> None:
        shards = max(1, math.ceil(max_connections / SHARD))
        size = max(1, math.ceil(max_connections / shards))
        self._pools = [
            httpcore.AsyncConnectionPool(max_connections=size,
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
