"""The cluster's books between in-process hosts over a real redis-server."""

from __future__ import annotations

import time

import pytest
import trio

from .cluster_hosts import Host, prof, wait_until
from .conftest import make_secret
from .redis_server import RedisServer

PROPAGATION_BOUND = 0.5
"""Seconds a change may take to reach another host in a test on a loaded machine
(the DESIGN target, 50 ms p99, is measured by bench/cluster.py)."""


def same_keys() -> tuple[str, str]:
    return make_secret("sk-ant-api03-"), make_secret("sk-ant-api03-")


@pytest.mark.trio
async def test_cluster_cooldown_reaches_other_host(redis_server: RedisServer) -> None:
    s1, s2 = same_keys()
    a = Host("a", redis_server.url, [prof("anthropic:x", s1), prof("anthropic:y", s2)])
    b = Host("b", redis_server.url, [prof("anthropic:x", s1), prof("anthropic:y", s2)])
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        lease = a.lease()
        a.report(lease_id=lease.lease_id, kind="rate_limit", retry_after=600)
        key = a.engine.profile(lease.profile).secret.key
        took = await wait_until(lambda: b.engine.key_state(lease.profile).cooling(time.time())
                                is not None, what="cooldown on b")
        assert took < PROPAGATION_BOUND
        until = a.engine.key_state(lease.profile).cooling(time.time())
        assert b.engine.key_state(lease.profile).cooling(time.time()) == until
        for _ in range(3):
            got = b.lease()
            assert got.profile != lease.profile
            b.release(got.lease_id)
        assert key in b.cluster.books
        n.cancel_scope.cancel()
