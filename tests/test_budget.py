"""Rate-budget arithmetic, with explicit `now`."""

from __future__ import annotations

import pytest

from argent_client.protocol import Limits
from argentd.budget import MAX_HORIZON, Bucket, Budget


def test_bucket_refill_is_linear_and_capped() -> None:
    b = Bucket(limit=5, level=0, rate=20, t=100.0)
    assert b.at(100.0) == 0
    assert b.at(100.1) == pytest.approx(2.0)
    assert b.at(101.0) == 5  # capped at the limit
    assert b.ready_at(1.0, 100.0) == pytest.approx(100.05)


def test_budget_rate_from_reset() -> None:
    bud = Budget()
    # Anthropic-style: 5 requests per bucket, empty now, full again in 0.25 s.
    bud.observe(Limits(requests_limit=5, requests_remaining=0, requests_reset=100.25),
                grant=None, in_flight=0, now=100.0)
    assert bud.requests is not None
    assert bud.requests.rate == pytest.approx(20.0)
    assert bud.ready_at(100.0) == pytest.approx(100.05)
    assert bud.ready_at(100.05) == pytest.approx(100.05)


def test_budget_grants_spend_and_refill() -> None:
    bud = Budget()
    bud.observe(Limits(requests_limit=5, requests_remaining=2, requests_reset=100.15),
                grant=None, in_flight=0, now=100.0)
    bud.grant(100.0)
    bud.grant(100.0)
    assert bud.ready_at(100.0) == pytest.approx(100.05)  # 0 left, 20/s refill
    bud.grant(100.05)
    assert bud.requests is not None and bud.requests.at(100.05) == pytest.approx(0.0)


def test_budget_leases_in_flight_are_not_counted_by_the_report() -> None:
    bud = Budget()
    bud.observe(Limits(requests_limit=10, requests_remaining=10), grant=None, in_flight=0,
                now=0.0)
    first = bud.grant(1.0)
    bud.grant(1.0)
    bud.grant(1.0)
    # The reply to the first lease: the provider counted it (9 left) but not
    # the two granted after it, which are still on their way.
    bud.observe(Limits(requests_limit=10, requests_remaining=9, requests_reset=31.0),
                grant=first, in_flight=2, now=1.0)
    assert bud.requests is not None and bud.requests.at(1.0) == pytest.approx(7.0)


def test_budget_report_by_profile_assumes_in_flight_uncounted() -> None:
    bud = Budget()
    bud.observe(Limits(requests_limit=10, requests_remaining=6, requests_reset=20.0),
                grant=None, in_flight=2, now=0.0)
    assert bud.requests is not None and bud.requests.at(0.0) == pytest.approx(4.0)


def test_budget_stale_report_older_than_its_reset_means_full() -> None:
    bud = Budget()
    bud.observe(Limits(requests_limit=5, requests_remaining=0, requests_reset=90.0),
                grant=None, in_flight=0, now=100.0)
    assert bud.requests is not None and bud.requests.at(100.0) == 5
    assert bud.ready_at(100.0) == 100.0


def test_budget_report_contradicting_the_prediction_wins() -> None:
    bud = Budget()
    bud.observe(Limits(requests_limit=5, requests_remaining=5, requests_reset=100.0),
                grant=None, in_flight=0, now=100.0)
    g = bud.grant(100.0)
    # We predicted 4 left; the provider says it is empty (another client?).
    bud.observe(Limits(requests_limit=5, requests_remaining=0, requests_reset=101.0),
                grant=g, in_flight=0, now=100.1)
    assert bud.ready_at(100.1) == pytest.approx(100.1 + 0.9 / 5)  # 5 per 0.9 s


def test_budget_skewed_far_future_reset_is_capped() -> None:
    bud = Budget()
    bud.observe(Limits(requests_limit=5, requests_remaining=0, requests_reset=1e12),
                grant=None, in_flight=0, now=0.0)
    assert bud.ready_at(0.0) <= MAX_HORIZON


@pytest.mark.parametrize(
    "limits",
    [
        Limits(requests_remaining=0),  # no reset, no limit: unknown refill
        Limits(requests_limit=0, requests_remaining=0, requests_reset=5.0),
        Limits(requests_limit=5, requests_remaining=-3, requests_reset=5.0),
        Limits(requests_limit=-1, requests_remaining=None, requests_reset=None),
        Limits(tokens_limit=1000, tokens_remaining=0),
        Limits(unified_status="allowed", unified_5h_utilization=float("nan")),
    ],
)
def test_budget_malformed_reports_never_block_forever(limits: Limits) -> None:
    bud = Budget()
    bud.observe(limits, grant=None, in_flight=0, now=0.0)
    bud.grant(0.0)
    assert bud.ready_at(0.0) <= MAX_HORIZON
    assert bud.ready_at(MAX_HORIZON + 1) == MAX_HORIZON + 1


def test_budget_tokens_use_reported_usage() -> None:
    bud = Budget()
    bud.observe(Limits(tokens_limit=1000, tokens_remaining=1000, tokens_reset=60.0),
                grant=None, in_flight=0, now=0.0)
    g = bud.grant(0.0)  # no usage known yet: tokens are not charged
    bud.settle(g, 400, 0.1)
    assert bud.token_cost == 400
    g = bud.grant(0.2)  # charged 400 up front
    assert bud.tokens is not None and bud.tokens.at(0.2) == pytest.approx(600)
    bud.settle(g, 100, 0.3)  # used less than charged: the difference comes back
    assert bud.tokens.at(0.3) == pytest.approx(900)
    bud.observe(Limits(tokens_limit=1000, tokens_remaining=0, tokens_reset=10.3),
                grant=None, in_flight=0, now=0.3)
    assert bud.ready_at(0.3) > 0.3  # the mean request needs more than is left


def test_budget_demoted_by_high_subscription_utilization() -> None:
    bud = Budget()
    bud.observe(Limits(unified_status="allowed", unified_5h_utilization=0.5),
                grant=None, in_flight=0, now=0.0)
    assert not bud.demoted
    bud.observe(Limits(unified_7d_utilization=0.95), grant=None, in_flight=0, now=0.0)
    assert bud.demoted


def test_budget_view() -> None:
    bud = Budget()
    assert bud.view(0.0) is None
    bud.observe(Limits(requests_limit=5, requests_remaining=0, requests_reset=0.25),
                grant=None, in_flight=0, now=0.0)
    view = bud.view(0.0)
    assert view is not None
    assert (view.requests, view.requests_limit) == (0.0, 5)
    assert view.refill_at == pytest.approx(0.05)


def test_budget_out_of_order_reading_is_ignored() -> None:
    bud = Budget()
    bud.observe(Limits(requests_limit=10, requests_remaining=10), grant=None, in_flight=0,
                now=0.0)
    early, late = bud.grant(1.0), bud.grant(1.0)
    # The later lease's reply comes back first: its reading is the newer one.
    bud.observe(Limits(requests_limit=10, requests_remaining=8, requests_reset=31.0),
                grant=late, in_flight=1, now=1.0)
    assert bud.requests is not None and bud.requests.at(1.0) == pytest.approx(7.0)
    bud.observe(Limits(requests_limit=10, requests_remaining=9, requests_reset=31.0),
                grant=early, in_flight=0, now=1.0)  # stale: changes nothing
    assert bud.requests.at(1.0) == pytest.approx(7.0)
