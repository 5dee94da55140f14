"""Shared rate budgets between in-process hosts over a real redis-server (cluster_budgets.py)."""

from __future__ import annotations

import math
import time

import pytest
import trio

from argent_client.protocol import Limits

from .cluster_hosts import Host, lease_within, prof, wait_until
from .conftest import make_secret
from .redis_server import RedisServer

BURST, RATE = 5, 20.0


class FakeBucket:
    """The provider's side of one key: a token bucket taken at each request's arrival."""

    def __init__(self) -> None:
        self.level = float(BURST)
        self.t = time.time()
        self.ok = self.rejected = 0

    def arrive(self, now: float) -> Limits:
        self.level = min(BURST, self.level + RATE * (now - self.t))
        self.t = now
        if self.level >= 1:
            self.level -= 1
            self.ok += 1
        else:
            self.rejected += 1
        return Limits(requests_limit=BURST, requests_remaining=math.floor(self.level),
                      requests_reset=now + (BURST - self.level) / RATE)


def hosts_of(url: str, secret: str, n: int) -> list[Host]:
    return [Host(f"h{i}", url, [prof("anthropic:k", secret)]) for i in range(n)]


@pytest.mark.trio
async def test_cluster_budgets_three_hosts_never_overdraw_one_key(
    redis_server: RedisServer,
) -> None:
    """Three hosts, four agents each, one key of burst 5 at 20 requests/s: together
    they send no more than the key allows (per host each would spend it all)."""
    bucket = FakeBucket()
    hosts = hosts_of(redis_server.url, make_secret("sk-ant-api03-"), 3)
    seconds = 2.0
    async with trio.open_nursery() as n:
        for h in hosts:
            await h.start(n)
        bucket = FakeBucket()
        stop = time.monotonic() + seconds

        async def agent(h: Host) -> None:
            while time.monotonic() < stop:
                got = await lease_within(h, 1.0, provider="anthropic")
                if got is None:
                    continue
                await trio.sleep(0.005)  # the request on its way
                limits = bucket.arrive(time.time())
                await trio.sleep(0.005)  # the answer on its way back
                h.release(got.lease_id, limits=limits)

        async with trio.open_nursery() as agents:
            for h in hosts:
                for _ in range(4):
                    agents.start_soon(agent, h)
        shares = [h.cluster.budgets.by_key for h in hosts]
        n.cancel_scope.cancel()
    assert all(s and next(iter(s.values())).rate for s in shares)  # every host shared it
    capacity = BURST + RATE * seconds
    # Overdrawn requests: none, but a stalled loop on a loaded box may cost one or two.
    assert bucket.rejected <= 2, (bucket.ok, bucket.rejected)
    assert bucket.ok >= 0.5 * capacity, (bucket.ok, capacity)  # and it was used, not starved


async def share_in_charge(hosts: list[Host]) -> None:
    """A reading on the first host; every host's share of the key then decides."""
    a = hosts[0]
    got = a.lease()
    a.release(got.lease_id, limits=Limits(requests_limit=BURST, requests_remaining=BURST - 1,
                                          requests_reset=time.time() + 1 / RATE))

    def in_charge() -> bool:
        for h in hosts:
            ks = h.engine.key_state("anthropic:k")
            if ks.budget is None or ks.budget.shared is None:
                return False
            if ks.budget.shared.ready_at(time.time()) is None:
                return False
        return True

    await wait_until(in_charge, what="every host's share in charge")


@pytest.mark.trio
async def test_cluster_budgets_fall_back_to_the_local_budget_when_redis_is_gone(
    redis_server: RedisServer,
) -> None:
    hosts = hosts_of(redis_server.url, make_secret("sk-ant-api03-"), 2)
    async with trio.open_nursery() as n:
        for h in hosts:
            await h.start(n)
        await share_in_charge(hosts)
        redis_server.kill()
        a = hosts[0]
        await wait_until(lambda: not a.cluster.connected, what="a sees Redis gone")
        ks = a.engine.key_state("anthropic:k")
        assert ks.budget is not None and ks.budget.shared is not None
        assert ks.budget.shared.ready_at(time.time()) is None  # the local prediction decides
        for _ in range(3):
            t = time.monotonic()
            got = await lease_within(a, 2.0, provider="anthropic")
            assert got is not None and time.monotonic() - t < 0.5
            a.release(got.lease_id)
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_budgets_a_stalled_redis_holds_a_lease_at_most_fallback_after(
    redis_server: RedisServer,
) -> None:
    from argentd.cluster_budgets import FALLBACK_AFTER

    hosts = hosts_of(redis_server.url, make_secret("sk-ant-api03-"), 2)
    async with trio.open_nursery() as n:
        for h in hosts:
            await h.start(n)
        await share_in_charge(hosts)
        a = hosts[0]
        redis_server.pause()
        try:
            slowest = 0.0
            start = time.monotonic()
            while time.monotonic() - start < 1.5:
                t = time.monotonic()
                got = await lease_within(a, 3.0, provider="anthropic")
                assert got is not None
                slowest = max(slowest, time.monotonic() - t)
                a.release(got.lease_id)
        finally:
            redis_server.resume()
        # The tokens in hand go first, then an ask that Redis does not answer holds
        # the next lease FALLBACK_AFTER at most (+ slack for a loaded machine).
        assert slowest < FALLBACK_AFTER + 0.3, slowest
        n.cancel_scope.cancel()


def test_budget_share_rules_without_redis() -> None:
    """The share's pure rules: tokens valid or booked, the fallback, the first lease."""
    from argentd.cluster_budgets import FALLBACK_AFTER, FIRST_WAIT, BudgetShare

    pokes: list[str] = []
    share = BudgetShare("k", pokes.append, connected=True)
    # Rate unknown: one lease at a time, for FIRST_WAIT at most.
    assert share.open(0, 0.0) and share.ready_at(0.0) is None
    share.granted(0, 0.0)
    assert not share.open(1, 0.5) and share.open(1, FIRST_WAIT)
    share.rate, share.limit, share.last_demand = RATE, BURST, 10.0
    assert share.due(10.0)
    args = share.ask(10.0)
    assert args[0] == "1" and share.ready_at(10.1) == 10.0 + FALLBACK_AFTER
    assert share.ready_at(10.0 + FALLBACK_AFTER) is None  # Redis slow: the local budget
    # A token valid now and one booked 50 ms ahead.
    assert share.took([7, "-1.0", "20.0", 0, 50], 1, 10.2)
    assert share.ready_at(10.2) == 10.2
    share.take(1, 10.2)
    assert share.grants == {1: (6, 10.2)} and share.ready_at(10.2) == 10.25
    share.take(2, 10.21)  # before the booked token is valid: granted without one
    assert share.untokened == 1 and 2 not in share.grants
    share.set_connected(False)
    assert share.ready_at(10.3) is None and not share.tokens
