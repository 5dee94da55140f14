"""The waiter queue (`argentd/waiters.py`): indexed by what waiters ask, so
an engine call tries only the waiters it may serve."""

from __future__ import annotations

from typing import Any

from argent_client.protocol import LeaseParams, LeaseResult

from .test_engine import HOUR, T0, lease, make, prof, report

W = 2000


class Counting:
    """Counts the engine's lease attempts (each walks a provider's tiers)."""

    def __init__(self, e: Any) -> None:
        self.n = 0
        inner = e._try_lease

        def counted(*args: Any, **kw: Any) -> Any:
            self.n += 1
            return inner(*args, **kw)

        e._try_lease = counted


def test_waiters_queueing_many_is_linear_and_other_providers_do_not_touch_them() -> None:
    e = make(prof("anthropic:a"), prof("openai:x"))
    report(e, T0, "rate_limit", profile="anthropic:a")  # cooling for 60 s
    tries = Counting(e)
    wait = LeaseParams(provider="anthropic", wait=HOUR)
    wids = [e.wait(wait, conn=1 + i % 3, now=T0 + i * 1e-3) for i in range(W)]
    # Only the first in line was tried: everyone behind it asks the same.
    assert tries.n == 1
    tries.n = 0
    for _ in range(100):  # another provider's traffic leaves them alone
        got = lease(e, T0 + 3, provider="openai")
        e.release(got.lease_id, now=T0 + 3)
    assert tries.n == 100
    assert e.waiters_of(1) == len(range(0, W, 3))
    tries.n = 0
    e.advance(T0 + 60)  # the cooldown ends: every waiter is served, in order
    served = e.take_outbox().served
    assert [wid for wid, _ in served] == wids
    assert all(isinstance(r, LeaseResult) for _, r in served)
    assert tries.n == W
    assert e.waiters_of(1) == 0 and not e.has_waiters()


def test_waiters_busy_profile_serves_one_per_release_without_retrying_the_rest() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    held = lease(e, T0, provider="anthropic")
    tries = Counting(e)
    wait = LeaseParams(provider="anthropic", wait=HOUR)
    wids = [e.wait(wait, conn=1, now=T0) for _ in range(W)]
    assert tries.n == 1
    tries.n = 0
    got = [held.lease_id]
    for i in range(10):
        e.release(got[-1], now=T0 + i + 1)
        (wid, result), = e.take_outbox().served
        assert wid == wids[i] and isinstance(result, LeaseResult)
        got.append(result.lease_id)
    assert tries.n == 20  # per release: the one served, then the next one refused


def test_waiters_of_a_connection_are_counted_and_dropped_with_it() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    lease(e, T0, provider="anthropic")
    wait = LeaseParams(provider="anthropic", wait=HOUR)
    first = [e.wait(wait, conn=7, now=T0) for _ in range(3)]
    e.wait(LeaseParams(provider="anthropic", model="m", wait=HOUR), conn=7, now=T0)
    e.wait(wait, conn=8, now=T0)
    assert (e.waiters_of(7), e.waiters_of(8), e.waiters_of(9)) == (4, 1, 0)
    e.cancel_wait(first[0])
    assert e.waiters_of(7) == 3
    e.disconnect(7, now=T0)
    assert (e.waiters_of(7), e.waiters_of(8)) == (0, 1)


def test_waiters_of_two_groups_are_served_in_arrival_order() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    held = lease(e, T0, provider="anthropic")
    plain = LeaseParams(provider="anthropic", wait=HOUR)
    model = LeaseParams(provider="anthropic", model="m", wait=HOUR)
    order = [e.wait(p, conn=1, now=T0) for p in (model, plain, model, plain)]
    out = []
    for i in range(4):
        e.release(held.lease_id, now=T0 + i + 1)
        (wid, result), = e.take_outbox().served
        assert isinstance(result, LeaseResult)
        out.append(wid)
        held = result
    assert out == order
