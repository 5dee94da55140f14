"""Rate budgets and recovery probes in the engine, with explicit `now`."""

from __future__ import annotations

import pytest

from argent_client.protocol import (
    LeaseParams,
    LeaseResult,
    Limits,
    NoProfileAvailable,
    ReportParams,
)
from argentd.engine import Engine
from argentd.views import metrics

from .test_engine import T0, make, prof

ANT = LeaseParams(provider="anthropic")


def bucket(remaining: int, full_in: float, now: float, limit: int = 5) -> Limits:
    """What Anthropic says: `remaining` of `limit`, full again `full_in` s from `now`."""
    return Limits(requests_limit=limit, requests_remaining=remaining,
                  requests_reset=now + full_in)


def spend(e: Engine, now: float, limits: Limits) -> LeaseResult:
    lease = e.lease(ANT, conn=1, now=now)
    e.release(lease.lease_id, now=now, limits=limits)
    return lease


def test_budget_spent_profile_waits_for_refill() -> None:
    e = make(prof("anthropic:a"))
    spend(e, T0, bucket(0, 0.25, T0))  # empty; 5 per 0.25 s = 20/s
    with pytest.raises(NoProfileAvailable) as err:
        e.lease(ANT, conn=1, now=T0)
    assert err.value.data["retry_after"] == pytest.approx(0.05)
    assert err.value.data["profiles"][0]["state"] == "budget"
    wid = e.wait(LeaseParams(provider="anthropic", wait=5), conn=1, now=T0)
    assert e.next_deadline() == pytest.approx(T0 + 0.05)  # woken by the refill
    e.advance(T0 + 0.05)
    served = e.take_outbox().served
    assert [w for w, r in served if isinstance(r, LeaseResult)] == [wid]


def test_budget_leases_in_flight_are_charged() -> None:
    e = make(prof("anthropic:a"))
    spend(e, T0, bucket(3, 0.1, T0, limit=5))  # 3 left
    for _ in range(3):
        e.lease(ANT, conn=1, now=T0)  # three in flight use them up
    with pytest.raises(NoProfileAvailable):
        e.lease(ANT, conn=1, now=T0)


def test_budget_report_after_later_grants_subtracts_them() -> None:
    e = make(prof("anthropic:a"))
    spend(e, T0, bucket(5, 0.0, T0, limit=10))
    first = e.lease(ANT, conn=1, now=T0)
    for _ in range(4):
        e.lease(ANT, conn=1, now=T0)
    # The first one's response: the provider counted it, not the four after it.
    e.release(first.lease_id, now=T0, limits=bucket(4, 60.0, T0, limit=10))
    requests = e.key_state("anthropic:a").known_budget.requests
    assert requests is not None and requests.at(T0) == pytest.approx(0.0)


def test_budget_most_headroom_first() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    a = e.lease(ANT, conn=1, now=T0)
    b = e.lease(ANT, conn=1, now=T0)
    assert {a.profile, b.profile} == {"anthropic:a", "anthropic:b"}
    e.release(a.lease_id, now=T0, limits=bucket(1, 60.0, T0, limit=10))
    e.release(b.lease_id, now=T0, limits=bucket(8, 60.0, T0, limit=10))
    got = [e.lease(ANT, conn=1, now=T0).profile for _ in range(7)]
    # b has 8 left, a 1: b until they are level, and never a past its budget.
    assert got[:6] == ["anthropic:b"] * 6
    assert got.count("anthropic:a") <= 1


def test_budget_never_reported_behaves_as_before() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    got = [e.lease(ANT, conn=1, now=T0 + i).profile for i in range(4)]
    assert got == ["anthropic:a", "anthropic:b", "anthropic:a", "anthropic:b"]


def test_budget_unified_rejected_cools_until_reset() -> None:
    e = make(prof("anthropic:sub"), prof("anthropic:key", "api-key"))
    lease = e.lease(ANT, conn=1, now=T0)
    assert lease.profile == "anthropic:sub"
    reset = T0 + 5 * 3600
    e.report(ReportParams(kind="rate_limit", lease_id=lease.lease_id, retry_after=1,
                          limits=Limits(unified_status="rejected", unified_reset=reset)),
             conn=1, now=T0)
    assert e.key_state("anthropic:sub").cooling(T0) == reset
    assert e.lease(ANT, conn=1, now=T0 + 10).profile == "anthropic:key"


def test_budget_high_utilization_moves_subscription_behind_siblings() -> None:
    e = make(prof("anthropic:one"), prof("anthropic:two"))
    first = e.lease(ANT, conn=1, now=T0)
    e.release(first.lease_id, now=T0,
              limits=Limits(unified_status="allowed", unified_5h_utilization=0.97))
    other = "anthropic:two" if first.profile == "anthropic:one" else "anthropic:one"
    for i in range(3):  # least recently used would alternate; utilisation wins
        assert e.lease(ANT, conn=1, now=T0 + 1 + i).profile == other


def test_budget_malformed_limits_never_block_forever() -> None:
    e = make(prof("anthropic:a"))
    spend(e, T0, Limits(requests_limit=5, requests_remaining=0, requests_reset=T0 + 1e9))
    e.lease(LeaseParams(provider="anthropic", wait=0), conn=1, now=T0 + 121)


def test_budget_shown_in_status_and_metrics() -> None:
    from argent_client.protocol import ConfigStatus
    from argentd.views import status

    e = make(prof("anthropic:a"))
    spend(e, T0, bucket(2, 0.15, T0))
    view = status(e, ConfigStatus("p", T0), now=T0).profiles[0].budget
    assert view is not None and (view.requests, view.requests_limit) == (2.0, 5)
    text = metrics(e, now=T0)
    assert 'argentd_profile_budget_requests{profile="anthropic:a"} 2.000' in text


def fail(e: Engine, now: float) -> None:
    lease = e.lease(ANT, conn=1, now=now)
    e.report(ReportParams(kind="rate_limit", lease_id=lease.lease_id, retry_after=10),
             conn=1, now=now)


def test_probe_after_three_failures_admits_one_lease_until_success() -> None:
    e = make(prof("anthropic:a", priority=0), prof("anthropic:b", "api-key", priority=1))
    t = T0
    for _ in range(3):  # three failures in a row, each after its cooldown
        fail(e, t)
        t += 11
        e.advance(t)
    probe = e.lease(ANT, conn=1, now=t)
    assert probe.profile == "anthropic:a"  # the probe itself
    assert e.lease(ANT, conn=1, now=t).profile == "anthropic:b"  # not a second one at once
    e.release(probe.lease_id, now=t + 1)  # the probe succeeded
    got = {e.lease(ANT, conn=1, now=t + 1).profile for _ in range(3)}
    assert got == {"anthropic:a"}  # back in front, as many at once as it likes


def test_probe_not_after_fewer_failures() -> None:
    e = make(prof("anthropic:a"))
    fail(e, T0)
    e.advance(T0 + 11)
    e.lease(ANT, conn=1, now=T0 + 11)
    e.lease(ANT, conn=1, now=T0 + 11)  # no probe: two at once are fine
