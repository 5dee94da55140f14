"""Rate-limit headers -> `Limits`: real-looking header sets, missing and malformed values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from argent_client._core import LeaseBase
from argent_client.classify import parse_duration, parse_limits
from argent_client.protocol import LeaseResult, Limits

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

ROWS: list[tuple[str, Any, Limits | None]] = [
    ("anthropic-api-key", ANTHROPIC_API_KEY, Limits(
        requests_limit=50, requests_remaining=49, requests_reset=NOW + 1.2,
        tokens_limit=90000, tokens_remaining=88000, tokens_reset=NOW + 2)),
    ("anthropic-split-tokens-takes-tighter", ANTHROPIC_SPLIT_TOKENS, Limits(
        tokens_limit=10000, tokens_remaining=500, tokens_reset=NOW + 3)),
    ("anthropic-subscription", SUBSCRIPTION, Limits(
        unified_status="allowed", unified_5h_utilization=0.42, unified_7d_utilization=0.13,
        unified_reset=NOW + 3600)),
    ("anthropic-subscription-rejected-7d", SUBSCRIPTION_REJECTED_7D, Limits(
        unified_status="rejected", unified_7d_utilization=1.0, unified_reset=NOW + 2 * 86400)),
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
