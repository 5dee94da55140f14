"""Rate-limit headers -> `Limits`: real-looking header sets, missing and malformed values."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from argent_client import Client
from argent_client import headers as H
from argent_client._core import LeaseBase
from argent_client.classify import parse_duration, parse_limits, retry_after
from argent_client.protocol import LeaseResult, Limits

from .conftest import make_secret

NOW = 1_750_000_000.0


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


ANTHROPIC_API_KEY = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": rfc3339(NOW + 1.2),
    "anthropic-ratelimit-tokens-limit": "90000",
    "anthropic-ratelimit-tokens-remaining": "88000",
    "anthropic-ratelimit-tokens-reset": rfc3339(NOW + 2),
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "79000",
    "anthropic-ratelimit-input-tokens-reset": rfc3339(NOW + 1),
    "anthropic-ratelimit-output-tokens-limit": "10000",
    "anthropic-ratelimit-output-tokens-remaining": "9000",
    "anthropic-ratelimit-output-tokens-reset": rfc3339(NOW + 3),
    "request-id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    "content-type": "application/json",
}

ANTHROPIC_SPLIT_TOKENS = {
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "anthropic-ratelimit-input-tokens-remaining": "79000",
    "anthropic-ratelimit-input-tokens-reset": rfc3339(NOW + 1),
    "anthropic-ratelimit-output-tokens-limit": "10000",
    "anthropic-ratelimit-output-tokens-remaining": "500",
    "anthropic-ratelimit-output-tokens-reset": rfc3339(NOW + 3),
}

SUBSCRIPTION = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-5h-utilization": "0.42",
    "anthropic-ratelimit-unified-5h-reset": str(int(NOW + 3600)),
    "anthropic-ratelimit-unified-7d-status": "allowed",
    "anthropic-ratelimit-unified-7d-utilization": "0.13",
    "anthropic-ratelimit-unified-7d-reset": str(int(NOW + 5 * 86400)),
    "anthropic-ratelimit-unified-reset": str(int(NOW + 3600)),
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
}

SUBSCRIPTION_REJECTED_7D = {
    "anthropic-ratelimit-unified-status": "rejected",
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-5h-reset": rfc3339(NOW + 3600),
    "anthropic-ratelimit-unified-7d-status": "rejected",
    "anthropic-ratelimit-unified-7d-utilization": "1.0",
    "anthropic-ratelimit-unified-7d-reset": rfc3339(NOW + 2 * 86400),
}

OPENAI = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "29000",
    "x-ratelimit-reset-tokens": "6m0s",
    "openai-processing-ms": "312",
}

OPENROUTER = {
    "X-RateLimit-Limit": "20",
    "X-RateLimit-Remaining": "0",
    "X-RateLimit-Reset": str(int((NOW + 60) * 1000)),
}

MALFORMED = {
    "anthropic-ratelimit-requests-limit": "fifty",
    "anthropic-ratelimit-requests-remaining": "-1",
    "anthropic-ratelimit-requests-reset": "tomorrow",
    "anthropic-ratelimit-tokens-limit": "90000",
    "anthropic-ratelimit-tokens-remaining": "1e3",
    "anthropic-ratelimit-tokens-reset": "2025-13-45T99:00:00Z",
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-5h-utilization": "NaN",
    "anthropic-ratelimit-unified-7d-utilization": "inf",
    "anthropic-ratelimit-unified-reset": "",
}

# ---------------------------------------------------------------- subscription windows
# Real header sets (names and value shapes as Anthropic and the ChatGPT backend send
# them, as Claude Code and codex-rs read them), then the bad values the module's rule is
# for: none may raise, none may hold a key out past its window's length.

U = "anthropic-ratelimit-unified-"
HOUR, DAY = 3600.0, 86400.0

CLAUDE_MAX = {
    U + "status": "allowed",
    U + "5h-status": "allowed",
    U + "5h-reset": str(int(NOW + 7200)),
    U + "5h-utilization": "0.03",
    U + "7d-status": "allowed",
    U + "7d-reset": str(int(NOW + 3 * DAY)),
    U + "7d-utilization": "0.07",
    U + "representative-claim": "five_hour",
    U + "fallback": "available",
    U + "fallback-percentage": "0.5",
    U + "reset": str(int(NOW + 7200)),
    U + "overage-status": "rejected",
    U + "overage-disabled-reason": "org_level_disabled",
}

CLAUDE_5H_REJECTED_OVERFULL = {
    U + "status": "rejected",
    U + "5h-status": "rejected",
    U + "5h-reset": str(int(NOW + 1800)),
    U + "5h-utilization": "1.01",
    U + "7d-status": "allowed_warning",
    U + "7d-reset": str(int(NOW + 4 * DAY)),
    U + "7d-utilization": "0.91",
    U + "representative-claim": "five_hour",
    U + "reset": str(int(NOW + 1800)),
    U + "overage-status": "allowed_warning",
}

CLAUDE_RESET_IN_THE_PAST = {
    U + "status": "rejected",
    U + "5h-status": "rejected",
    U + "5h-reset": str(int(NOW - 600)),
    U + "5h-utilization": "1.0",
}

CLAUDE_HUGE_RESETS = {
    U + "status": "rejected",
    U + "5h-status": "rejected",
    U + "5h-reset": "99999999999999999",
    U + "7d-status": "rejected",
    U + "7d-reset": "9999-12-31T23:59:59Z",
    U + "reset": "1e300",
}

CLAUDE_MALFORMED = {
    U + "status": "ALLOWED",
    U + "5h-status": " Rejected ",
    U + "5h-reset": "-5",
    U + "5h-utilization": "-0.2",
    U + "7d-status": "",
    U + "7d-reset": "soon",
    U + "7d-utilization": "1.6",
    U + "representative-claim": "five hour",
    U + "fallback": "avail\x00able",
    U + "overage-status": "x" * 41,
    U + "reset": "NaN",
}

CLAUDE_NON_NUMERIC = {
    U + "5h-utilization": "inf",
    U + "7d-utilization": "0x10",
    U + "5h-reset": "1,750,000,000",
    U + "7d-reset": "Infinity",
}

CODEX_PLUS = {
    "x-codex-primary-used-percent": "42",
    "x-codex-primary-window-minutes": "300",
    "x-codex-primary-reset-at": str(int(NOW + 9000)),
    "x-codex-secondary-used-percent": "94.5",
    "x-codex-secondary-window-minutes": "10080",
    "x-codex-secondary-reset-at": str(int(NOW + 400_000)),
    "x-codex-primary-over-secondary-limit-percent": "0",
    "x-codex-plan-type": "plus",
    "x-codex-active-limit": "premium",
    "x-codex-credits-has-credits": "False",
    "x-codex-credits-balance": "0",
}

CODEX_RESET_AFTER_SECONDS = {  # what older backends sent instead of -reset-at
    "x-codex-primary-used-percent": "12.5",
    "x-codex-primary-window-minutes": "300",
    "x-codex-primary-reset-after-seconds": "600",
    "x-codex-secondary-used-percent": "40",
    "x-codex-secondary-window-minutes": "10080",
    "x-codex-secondary-reset-after-seconds": "486400",
}

CODEX_BOTH_RESETS = {
    "x-codex-primary-used-percent": "7",
    "x-codex-primary-reset-at": str(int(NOW + 100)),
    "x-codex-primary-reset-after-seconds": "5000",
}

CODEX_SPENT = {
    "x-codex-primary-used-percent": "100",
    "x-codex-primary-window-minutes": "300",
    "x-codex-primary-reset-at": str(int(NOW + 3600)),
    "x-codex-secondary-used-percent": "101.3",
    "x-codex-secondary-window-minutes": "10080",
    "x-codex-secondary-reset-after-seconds": "200000",
}

CODEX_MALFORMED = {
    "x-codex-primary-used-percent": "151",
    "x-codex-primary-window-minutes": "300",
    "x-codex-primary-reset-after-seconds": "1e12",
    "x-codex-secondary-used-percent": "-3",
    "x-codex-secondary-window-minutes": "garbage",
    "x-codex-secondary-reset-at": "99999999999999999",
}

CODEX_OVERFULL_PAST = {
    "x-codex-primary-used-percent": "150",
    "x-codex-primary-reset-at": str(int(NOW - 60)),
    "x-codex-secondary-used-percent": "abc",
    "x-codex-secondary-reset-after-seconds": "-5",
}

WINDOW_ROWS: list[tuple[str, Any, Limits | None]] = [
    ("claude-max-all-headers", CLAUDE_MAX, Limits(
        unified_status="allowed", unified_reset=NOW + 7200,
        unified_5h_status="allowed", unified_5h_reset=NOW + 7200, unified_5h_utilization=0.03,
        unified_7d_status="allowed", unified_7d_reset=NOW + 3 * DAY, unified_7d_utilization=0.07,
        unified_representative_claim="five_hour", unified_fallback="available",
        unified_overage_status="rejected")),
    ("claude-5h-rejected-1.01-is-full", CLAUDE_5H_REJECTED_OVERFULL, Limits(
        unified_status="rejected", unified_reset=NOW + 1800,
        unified_5h_status="rejected", unified_5h_reset=NOW + 1800, unified_5h_utilization=1.0,
        unified_7d_status="allowed_warning", unified_7d_reset=NOW + 4 * DAY,
        unified_7d_utilization=0.91, unified_representative_claim="five_hour",
        unified_overage_status="allowed_warning")),
    ("claude-reset-in-the-past-kept", CLAUDE_RESET_IN_THE_PAST, Limits(
        unified_status="rejected", unified_reset=NOW - 600, unified_5h_status="rejected",
        unified_5h_reset=NOW - 600, unified_5h_utilization=1.0)),
    ("claude-huge-resets-clamped-to-window", CLAUDE_HUGE_RESETS, Limits(
        unified_status="rejected", unified_reset=NOW + 7 * DAY, unified_5h_status="rejected",
        unified_5h_reset=NOW + 5 * HOUR, unified_7d_status="rejected",
        unified_7d_reset=NOW + 7 * DAY)),
    ("claude-malformed-values-absent", CLAUDE_MALFORMED, Limits(
        unified_status="allowed", unified_5h_status="rejected")),
    ("claude-non-numeric-absent", CLAUDE_NON_NUMERIC, None),
    ("codex-plus", CODEX_PLUS, Limits(
        codex_primary_used_percent=42.0, codex_primary_reset=NOW + 9000,
        codex_secondary_used_percent=94.5, codex_secondary_reset=NOW + 400_000)),
    ("codex-reset-after-seconds", CODEX_RESET_AFTER_SECONDS, Limits(
        codex_primary_used_percent=12.5, codex_primary_reset=NOW + 600,
        codex_secondary_used_percent=40.0, codex_secondary_reset=NOW + 486_400)),
    ("codex-reset-at-wins", CODEX_BOTH_RESETS, Limits(
        codex_primary_used_percent=7.0, codex_primary_reset=NOW + 100)),
    ("codex-spent-101-is-full", CODEX_SPENT, Limits(
        codex_primary_used_percent=100.0, codex_primary_reset=NOW + 3600,
        codex_secondary_used_percent=100.0, codex_secondary_reset=NOW + 200_000)),
    ("codex-malformed-clamped-or-absent", CODEX_MALFORMED, Limits(
        codex_primary_reset=NOW + 5 * HOUR, codex_secondary_reset=NOW + 7 * DAY)),
    ("codex-150-is-full-reset-in-the-past", CODEX_OVERFULL_PAST, Limits(
        codex_primary_used_percent=100.0, codex_primary_reset=NOW - 60)),
]
"""Each window header set -> the Limits it reads as (every field, unset ones None)."""

ROWS: list[tuple[str, Any, Limits | None]] = [
    ("anthropic-api-key", ANTHROPIC_API_KEY, Limits(
        requests_limit=50, requests_remaining=49, requests_reset=NOW + 1.2,
        tokens_limit=90000, tokens_remaining=88000, tokens_reset=NOW + 2)),
    ("anthropic-split-tokens-takes-tighter", ANTHROPIC_SPLIT_TOKENS, Limits(
        tokens_limit=10000, tokens_remaining=500, tokens_reset=NOW + 3)),
    ("anthropic-subscription", SUBSCRIPTION, Limits(
        unified_status="allowed", unified_5h_utilization=0.42, unified_7d_utilization=0.13,
        unified_reset=NOW + 3600, unified_5h_status="allowed", unified_5h_reset=NOW + 3600,
        unified_7d_status="allowed", unified_7d_reset=NOW + 5 * 86400,
        unified_representative_claim="five_hour")),
    ("anthropic-subscription-rejected-7d", SUBSCRIPTION_REJECTED_7D, Limits(
        unified_status="rejected", unified_7d_utilization=1.0, unified_reset=NOW + 2 * 86400,
        unified_5h_status="allowed", unified_5h_reset=NOW + 3600, unified_7d_status="rejected",
        unified_7d_reset=NOW + 2 * 86400)),
    *WINDOW_ROWS,
    ("openai-durations", OPENAI, Limits(
        requests_limit=500, requests_remaining=499, requests_reset=NOW + 0.12,
        tokens_limit=30000, tokens_remaining=29000, tokens_reset=NOW + 360)),
    ("openrouter-ms-timestamp", OPENROUTER, Limits(
        requests_limit=20, requests_remaining=0, requests_reset=NOW + 60)),
    ("mixed-case-names", {"Anthropic-RateLimit-Requests-Limit": "5",
                          "ANTHROPIC-RATELIMIT-REQUESTS-REMAINING": "4"},
     Limits(requests_limit=5, requests_remaining=4)),
    ("malformed-values-are-absent", MALFORMED, Limits(
        tokens_limit=90000, unified_status="allowed")),
    ("openai-malformed-duration", {"x-ratelimit-reset-requests": "5 minutes",
                                   "x-ratelimit-limit-requests": "10"},
     Limits(requests_limit=10)),
    ("unix-seconds-reset", {"x-ratelimit-reset": str(int(NOW + 30))},
     Limits(requests_reset=NOW + 30)),
    ("no-rate-limit-headers", {"content-type": "application/json", "request-id": "req_1"}, None),
    ("empty", {}, None),
    ("none", None, None),
]


@pytest.mark.parametrize(("headers", "expected"), [(h, e) for _, h, e in ROWS],
                         ids=[name for name, _, _ in ROWS])
def test_parse_limits_table(headers: Any, expected: Limits | None) -> None:
    got = parse_limits(headers, now=NOW)
    if expected is None:
        assert got is None
        return
    assert got is not None
    for field in expected.__struct_fields__:
        want, have = getattr(expected, field), getattr(got, field)
        if isinstance(want, float):
            assert have == pytest.approx(want, abs=1e-3), field
        else:
            assert have == want, field


@pytest.mark.parametrize("headers", [h for _, h, _ in ROWS if h], ids=[n for n, h, _ in ROWS if h])
def test_limits_of_lowered_headers_equals_parse_limits(headers: Any) -> None:
    # The gateway's path: its headers already lowered; twice, as the second meets
    # every reset remembered by the first.
    lowered = H.lower_headers(headers)
    for _ in range(2):
        assert H.limits_of(lowered, NOW) == parse_limits(headers, now=NOW)


def test_parse_limits_remembers_short_timestamps_only() -> None:
    remembered = H._remembered_timestamp
    remembered.cache_clear()
    long = "2026-11-26T23:00:00Z" + "0" * 40  # what a broken upstream might send
    assert parse_limits({"anthropic-ratelimit-requests-reset": long}, now=NOW) is None
    assert remembered.cache_info().currsize == 0
    got = parse_limits({"anthropic-ratelimit-requests-reset": "2026-11-26T23:00:00Z"}, now=NOW)
    assert got is not None and got.requests_reset == 1795734000.0
    assert remembered.cache_info().currsize == 1


def test_parse_limits_takes_httpx_headers() -> None:
    headers = httpx.Headers(list(OPENAI.items()))
    got = parse_limits(headers, now=NOW)
    assert got is not None and got.requests_limit == 500


def test_parse_limits_defaults_now_to_the_clock() -> None:
    got = parse_limits({"x-ratelimit-reset-requests": "1s"})
    assert got is not None and got.requests_reset is not None
    assert got.requests_reset > NOW


def test_parse_limits_survives_non_string_values() -> None:
    weird: dict[Any, Any] = {"x-ratelimit-limit-requests": 5, None: "x", b"x-ratelimit-limit": b"7"}
    got = parse_limits(weird, now=NOW)
    assert got == Limits(requests_limit=7)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5),
     ("7m12.345s", 432.345), ("", None), ("5 minutes", None), ("s", None), ("1x", None),
     ("-3s", None)],
)
def test_parse_duration_table(text: str, seconds: float | None) -> None:
    got = parse_duration(text)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


def _lease() -> LeaseBase:
    return LeaseBase(LeaseResult(
        lease_id="l1", profile="anthropic:one", provider="anthropic", type="api-key",
        token="sk-ant-api03-" + "z" * 40, label="One", headers={}, expires_at=NOW + 60,
        source="profile"))


class RawResponse:
    """Shaped like an SDK raw/legacy response: the httpx response sits in `.http_response`."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.http_response = httpx.Response(200, headers=headers)


def test_lease_observe_httpx_response() -> None:
    lease = _lease()
    got = lease.observe(httpx.Response(200, headers=OPENAI), now=NOW)
    assert got is not None and lease.limits == got
    assert got.tokens_reset == pytest.approx(NOW + 360)


def test_lease_observe_sdk_raw_response_and_mapping() -> None:
    lease = _lease()
    lease.observe(RawResponse(ANTHROPIC_API_KEY), now=NOW)
    assert lease.limits is not None and lease.limits.requests_remaining == 49
    lease.observe({"anthropic-ratelimit-requests-remaining": "48"}, now=NOW)
    assert lease.limits == Limits(requests_remaining=48)


def test_lease_observe_keeps_last_limits_when_response_has_none() -> None:
    lease = _lease()
    lease.observe(OPENROUTER, now=NOW)
    before = lease.limits
    assert lease.observe({"content-type": "text/plain"}, now=NOW) is None
    assert lease.observe(object(), now=NOW) is None
    assert lease.limits == before is not None


def test_lease_observe_error_response() -> None:
    lease = _lease()
    request = httpx.Request("POST", "https://api.example.test")
    response = httpx.Response(429, headers=OPENAI, request=request)
    lease.observe(httpx.HTTPStatusError("429", request=request, response=response), now=NOW)
    assert lease.limits is not None and lease.limits.requests_limit == 500


# ---------------------------------------------------------------- windows: retry_after, bounds


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        (CLAUDE_5H_REJECTED_OVERFULL, 1800.0),
        (SUBSCRIPTION_REJECTED_7D, 2 * DAY),  # the rejected window, not the sooner 5h one
        (CLAUDE_RESET_IN_THE_PAST, 0.0),  # already over: nothing to wait for
        (CLAUDE_HUGE_RESETS, 7 * DAY),
        (CODEX_SPENT, 200_000.0),  # the latest spent window
        (CODEX_OVERFULL_PAST, 0.0),
        (CLAUDE_MALFORMED, None),  # a rejected window without a reset says no wait
        (CODEX_PLUS, None),  # nothing spent: a window is no reason to wait
    ],
    ids=["5h-rejected", "7d-rejected", "past", "huge", "codex-spent", "codex-past",
         "no-reset", "codex-unspent"],
)
def test_retry_after_waits_for_the_spent_window(headers: dict[str, str],
                                                seconds: float | None) -> None:
    got = retry_after(headers, now=NOW, kind="rate_limit")
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds, abs=1e-3)


def test_retry_after_header_wins_over_windows() -> None:
    assert retry_after({**CLAUDE_5H_REJECTED_OVERFULL, "retry-after": "30"}, now=NOW) == 30.0


def test_spent_window_resets_lists_each_rejected_or_full_window() -> None:
    limits = parse_limits({**CLAUDE_5H_REJECTED_OVERFULL, U + "7d-status": "rejected"}, now=NOW)
    assert limits is not None
    assert sorted(H.spent_window_resets(limits)) == [NOW + 1800, NOW + 1800, NOW + 4 * DAY]
    assert H.spent_window_resets(Limits(codex_primary_used_percent=99.9,
                                        codex_primary_reset=NOW)) == []


WINDOW_NAMES = [U + f"{w}-{p}" for w in ("5h", "7d") for p in ("status", "reset", "utilization")]
WINDOW_NAMES += [U + "status", U + "reset", U + "representative-claim", U + "fallback",
                 U + "overage-status"]
WINDOW_NAMES += [f"x-codex-{w}-{p}" for w in ("primary", "secondary")
                 for p in ("used-percent", "reset-at", "reset-after-seconds", "window-minutes")]

_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-10**20, max_value=10**20).map(str),
    st.floats(min_value=NOW - DAY, max_value=NOW + 30 * DAY).map(lambda t: str(int(t))),
    st.sampled_from(["", " ", "rejected", "allowed", "1.01", "9999-12-31T23:59:59Z", "\x00"]),
    st.text(max_size=60),
)


def assert_bounded(limits: Limits | None) -> None:
    """No window field can hold a key out past its window, and every fraction is in range."""
    if limits is None:
        return
    for name, ahead in (("unified_5h_reset", 5 * HOUR), ("unified_7d_reset", 7 * DAY),
                        ("unified_reset", 7 * DAY), ("codex_primary_reset", 7 * DAY),
                        ("codex_secondary_reset", 7 * DAY)):
        value = getattr(limits, name)
        assert value is None or value <= NOW + ahead + 1e-6, name
    for name, full in (("unified_5h_utilization", 1.0), ("unified_7d_utilization", 1.0),
                       ("codex_primary_used_percent", 100.0),
                       ("codex_secondary_used_percent", 100.0)):
        value = getattr(limits, name)
        assert value is None or 0.0 <= value <= full, name
    for name in ("unified_status", "unified_5h_status", "unified_7d_status",
                 "unified_representative_claim", "unified_fallback", "unified_overage_status"):
        value = getattr(limits, name)
        assert value is None or re.fullmatch(r"[a-z0-9_.\-]{1,40}", value), name


@pytest.mark.parametrize("headers", [h for _, h, _ in ROWS], ids=[n for n, _, _ in ROWS])
def test_window_fields_are_bounded_for_every_row(headers: Any) -> None:
    assert_bounded(parse_limits(headers, now=NOW))


@given(st.dictionaries(st.sampled_from(WINDOW_NAMES), _numbers, max_size=len(WINDOW_NAMES)))
def test_window_headers_never_raise_nor_block_past_the_window(headers: dict[str, str]) -> None:
    assert_bounded(parse_limits(headers, now=NOW))
    wait = retry_after(headers, now=NOW, kind="quota")
    assert wait is None or 0.0 <= wait <= 7 * DAY + 1e-6


# ---------------------------------------------------------------- through the daemon


def test_observed_windows_cap_background_and_show_in_status(daemon_factory: Any) -> None:
    """A real unified header set, observed by the client, caps the background client only."""
    d = daemon_factory()
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text("[policy.clients.background]\nwindow_cap = 0.6\n")
    d.write_profiles({
        "anthropic:sub": {"provider": "anthropic", "type": "setup-token",
                          "token": make_secret(), "label": "Sub"},
        "anthropic:paid": {"provider": "anthropic", "type": "api-key",
                           "token": make_secret("sk-ant-api03-"), "label": "Paid"},
    })
    d.start()
    now = time.time()
    seen = {
        U + "status": "allowed",
        U + "5h-status": "allowed",
        U + "5h-utilization": "0.2",
        U + "5h-reset": str(int(now + 3 * HOUR)),
        U + "7d-status": "allowed_warning",
        U + "7d-utilization": "0.61",
        U + "7d-reset": str(int(now + 2 * DAY)),
        U + "representative-claim": "seven_day",
    }
    with Client(str(d.socket), client_name="background", fallback_env=False) as bg, \
            Client(str(d.socket), client_name="interactive", fallback_env=False) as person:
        with bg.lease("anthropic") as lease:
            assert lease.profile == "anthropic:sub"
            lease.observe(httpx.Response(200, headers=seen))
        with bg.lease("anthropic") as lease:
            assert lease.profile == "anthropic:paid"  # at its 60 % cap until the 7d reset
        with person.lease("anthropic") as lease:
            assert lease.profile == "anthropic:sub"
        status = bg.status()
    sub = next(p for p in status.profiles if p.id == "anthropic:sub")
    week = sub.windows["7d"]
    assert (week.utilization, week.status) == (0.61, "allowed_warning")
    assert week.reset == pytest.approx(int(now + 2 * DAY))
