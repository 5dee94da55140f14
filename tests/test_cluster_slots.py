"""Cluster-wide `max_concurrent` over a real redis-server: never more leases than slots."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from argent_client.protocol import LeaseNotFound, LeaseResult

from .cluster_hosts import Host, lease_within, prof, wait_until
from .conftest import make_secret
from .redis_server import RedisServer

LIMIT = 2


def out_on(hosts: list[Host], dead: list[list[LeaseResult]], now: float) -> int:
    """Leases out on the shared secret over every host (a lease past its TTL is not,
    even before its host's engine has ticked); a dead host's until their TTL."""
    live = sum(1 for h in hosts for le in h.engine.leases() if le.expires_at > now)
    return live + sum(1 for leases in dead for le in leases if le.expires_at > now)


@pytest.mark.trio
async def test_cluster_slots_three_hosts_never_a_third_lease(redis_server: RedisServer) -> None:
    secret = make_secret("sk-proj-")
    hosts = [Host(n, redis_server.url, [prof("openai:main", secret, max_concurrent=LIMIT)])
             for n in "abc"]
    async with trio.open_nursery() as n:
        for h in hosts:
            await h.start(n)
        got = [await lease_within(h, 1.0) for h in hosts[:2]]
        assert all(got)
        assert out_on(hosts, [], time.time()) == LIMIT
        # The third host is refused at once, and after waiting too: no slot is free.
        assert await lease_within(hosts[2], 0.3) is None
        assert out_on(hosts, [], time.time()) == LIMIT
        # A release on host a frees its slot for host c, which asks while it waits.
        waiting = trio.Event()
        result: list[LeaseResult | None] = []

        async def third() -> None:
            waiting.set()
            result.append(await lease_within(hosts[2], 5.0))

        n.start_soon(third)
        await waiting.wait()
        await trio.sleep(0.05)
        first = got[0]
        assert first is not None
        hosts[0].release(first.lease_id)
        await wait_until(lambda: bool(result), what="the third host's lease")
        assert result[0] is not None
        assert out_on(hosts, [], time.time()) == LIMIT
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_slots_dead_host_frees_its_slots_with_the_ttl(
    redis_server: RedisServer,
) -> None:
    secret = make_secret("sk-proj-")
    a, b = (Host(n, redis_server.url, [prof("openai:main", secret, max_concurrent=1)])
            for n in "ab")
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        held = await lease_within(a, 1.0, ttl=1.0)
        assert held is not None
        a.stop()  # host a dies holding its lease: nothing releases it
        assert await lease_within(b, 0.3) is None
        start = time.monotonic()
        got = await lease_within(b, 5.0)
        assert got is not None
        # Not before the lease's TTL, and not long after it.
        assert time.time() >= held.expires_at - 0.05
        assert time.monotonic() - start < 3.0
        n.cancel_scope.cancel()


@dataclass
class World:
    hosts: list[Host]
    alive: list[bool]
    dead: list[list[LeaseResult]] = field(default_factory=list)
    held: dict[int, list[LeaseResult]] = field(default_factory=dict)
    peak: int = 0


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("lease"), st.integers(0, 2)),
        st.tuples(st.just("release"), st.integers(0, 2)),
        st.tuples(st.just("kill"), st.integers(0, 2)),
        st.tuples(st.just("expire"), st.just(0)),
    ),
    min_size=4,
    max_size=12,
)


async def past_every_ttl(world: World, margin: float = 0.05) -> None:
    """Sleep until every lease out on any host, a dead host's too, is past its TTL
    (plus `margin`): the leases' own deadline, not a fixed 'long enough'."""
    ends = [le.expires_at for h in world.hosts for le in h.engine.leases()]
    ends += [le.expires_at for leases in world.dead for le in leases]
    await trio.sleep(max(0.0, max(ends, default=0.0) - time.time()) + margin)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)
def test_cluster_slots_interleavings_never_exceed_the_limit(
    redis_server: RedisServer, ops: list[tuple[str, int]]
) -> None:
    """Leases, releases, host kills and TTL expiries in any order: at no moment are
    more than LIMIT leases out on the secret, counting a dead host's until their TTL."""
    prefix = "t" + make_secret("")[:12]  # a fresh cluster per example
    secret = make_secret("sk-proj-")

    async def main() -> None:
        hosts = [Host(name, redis_server.url,
                      [prof("openai:main", secret, max_concurrent=LIMIT)], prefix=prefix)
                 for name in "abc"]
        world = World(hosts, [True] * 3, held={i: [] for i in range(3)})
        async with trio.open_nursery() as n:
            for h in hosts:
                await h.start(n)

            async def watch() -> None:
                while True:
                    live = [h for h, ok in zip(hosts, world.alive, strict=True) if ok]
                    count = out_on(live, world.dead, time.time())
                    world.peak = max(world.peak, count)
                    assert count <= LIMIT, f"{count} leases out"
                    await trio.sleep(0.001)

            n.start_soon(watch)
            for op, i in ops:
                if op == "lease" and world.alive[i]:
                    got = await lease_within(hosts[i], 0.2, ttl=0.4)
                    if got is not None:
                        world.held[i].append(got)
                elif op == "release" and world.alive[i] and world.held[i]:
                    le = world.held[i].pop(0)
                    with contextlib.suppress(LeaseNotFound):  # it may have expired meanwhile
                        hosts[i].release(le.lease_id)
                elif op == "kill" and world.alive[i] and sum(world.alive) > 1:
                    world.alive[i] = False
                    hosts[i].stop()
                    world.dead.append(world.held[i])
                elif op == "expire":
                    await past_every_ttl(world)
                    for h in hosts:
                        h.engine.advance(time.time())
                        h.after_change()
            # Liveness: once everything ended, a surviving host gets a lease again.
            await past_every_ttl(world)
            survivor = next(h for h, ok in zip(hosts, world.alive, strict=True) if ok)
            assert await lease_within(survivor, 5.0, ttl=0.4) is not None
            n.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.trio
async def test_cluster_slots_reload_gates_a_new_max_concurrent(redis_server: RedisServer) -> None:
    from argentd.config import Config
    from argentd.model import ProfileSet

    secret = make_secret("sk-proj-")
    a, b = (Host(n, redis_server.url, [prof("openai:main", secret)]) for n in "ab")
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        assert not a.cluster.gates  # no slot gate yet (its budget share is a gate too)
        for h in (a, b):  # both files now say max_concurrent = 1: a reload
            h.engine.load(ProfileSet([prof("openai:main", secret, max_concurrent=1)]),
                          Config(), now=time.time())
            h.cluster.changed()
        await wait_until(lambda: all(h.cluster.gates for h in (a, b)),
                         what="gates after the reload")
        got = await lease_within(a, 10.0)
        assert got is not None
        assert await lease_within(b, 0.3) is None  # one slot, cluster-wide
        a.release(got.lease_id)
        assert await lease_within(b, 10.0) is not None  # (liveness: generous on a busy box)
        n.cancel_scope.cancel()
