"""The failure classification table: one row per signal, near misses included.

The fake classes below stand in for third-party exception *shapes* (the
anthropic/openai SDKs' `APIStatusError`, `APITimeoutError`,
`APIConnectionError`, aiohttp's `ClientResponseError`): `classify` knows
them only by duck typing. httpx rows use real httpx objects.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from argent_client.classify import MAX_MESSAGE, Failure, classify, retry_after, scrub

NOW = 1_750_000_000.0
REQ = httpx.Request("POST", "https://api.example.test/v1/messages")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


class FakeResponse:
    """Shaped like an httpx.Response as the SDKs hold it."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None,
                 body: Any = None) -> None:
        self.status_code = status_code
        self.headers = httpx.Headers(headers or {})
        self._body = body

    def json(self) -> Any:
        if self._body is None:
            raise ValueError("no JSON body")
        return self._body


class APIStatusError(Exception):
    """Shaped like anthropic.APIStatusError / openai.APIStatusError."""

    def __init__(self, status_code: int, body: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code
        self.body = body
        self.response = FakeResponse(status_code, headers, body)


class RateLimitError(APIStatusError):
    """The SDKs subclass APIStatusError per status; only the shape matters."""


class APIConnectionError(Exception):
    def __init__(self, message: str = "Connection error.") -> None:
        super().__init__(message)
        self.request = REQ


class APITimeoutError(APIConnectionError):
    def __init__(self) -> None:
        super().__init__("Request timed out.")


class ClientResponseError(Exception):
    """Shaped like aiohttp.ClientResponseError: `.status`, `.headers`, no body."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}")
        self.status = status
        self.headers = headers or {}


def httpx_error(status: int, *, json: Any = None, headers: dict[str, str] | None = None,
                text: str | None = None) -> httpx.HTTPStatusError:
    if json is not None:
        response = httpx.Response(status, json=json, headers=headers, request=REQ)
    else:
        response = httpx.Response(status, text=text or "", headers=headers, request=REQ)
    return httpx.HTTPStatusError(f"status {status}", request=REQ, response=response)


def anthropic_body(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def openai_body(type_: str | None, code: str | None, message: str) -> dict[str, Any]:
    # The openai SDK's `.body` is the `error` member itself.
    return {"message": message, "type": type_, "param": None, "code": code}


OPENROUTER_402 = {
    "error": {
        "code": 402,
        "message": "Key limit exceeded. Manage it using https://openrouter.ai/settings/keys",
        "metadata": {"limit_source": "key"},
    }
}

ROWS: list[tuple[str, object, tuple[str, float | None, int | None] | None]] = [
    # --- rate limits
    ("httpx-429-retry-after-seconds",
     httpx_error(429, json=anthropic_body("rate_limit_error", "Number of requests exceeded"),
                 headers={"retry-after": "30"}),
     ("rate_limit", 30.0, 429)),
    ("sdk-429-retry-after-http-date",
     RateLimitError(429, anthropic_body("rate_limit_error", "slow down"),
                    {"Retry-After": http_date(NOW + 120)}),
     ("rate_limit", 120.0, 429)),
    ("429-retry-after-ms-wins",
     RateLimitError(429, None, {"retry-after-ms": "1500", "retry-after": "2"}),
     ("rate_limit", 1.5, 429)),
    ("429-anthropic-reset-of-exhausted-limit",
     RateLimitError(429, anthropic_body("rate_limit_error", "too many requests"), {
         "anthropic-ratelimit-requests-remaining": "0",
         "anthropic-ratelimit-requests-reset": rfc3339(NOW + 20),
         "anthropic-ratelimit-tokens-remaining": "5000",
         "anthropic-ratelimit-tokens-reset": rfc3339(NOW + 5),
     }),
     ("rate_limit", 20.0, 429)),
    ("429-anthropic-earliest-future-reset",
     RateLimitError(429, None, {
         "anthropic-ratelimit-requests-remaining": "3",
         "anthropic-ratelimit-requests-reset": rfc3339(NOW + 40),
         "anthropic-ratelimit-input-tokens-remaining": "10",
         "anthropic-ratelimit-input-tokens-reset": rfc3339(NOW + 7),
         "anthropic-ratelimit-output-tokens-reset": rfc3339(NOW - 100),
     }),
     ("rate_limit", 7.0, 429)),
    ("429-openai-duration-reset",
     APIStatusError(429, openai_body("requests", "rate_limit_exceeded", "Rate limit reached"), {
         "x-ratelimit-remaining-requests": "0",
         "x-ratelimit-reset-requests": "6m0s",
         "x-ratelimit-remaining-tokens": "100",
         "x-ratelimit-reset-tokens": "20ms",
     }),
     ("rate_limit", 360.0, 429)),
    ("429-subscription-rejected-until-unified-reset",
     RateLimitError(429, anthropic_body("rate_limit_error", "5-hour limit reached"), {
         "anthropic-ratelimit-unified-status": "rejected",
         "anthropic-ratelimit-unified-reset": str(int(NOW + 3 * 3600)),
     }),
     ("rate_limit", 3 * 3600.0, 429)),
    ("429-no-hint", RateLimitError(429), ("rate_limit", None, 429)),
    ("near-miss-429-mentions-billing",
     RateLimitError(429, anthropic_body(
         "rate_limit_error",
         "This request would exceed your rate limit; see the billing page to raise it")),
     ("rate_limit", None, 429)),
    ("near-miss-429-billing-no-type",
     httpx_error(429, text="Too many requests. Check billing settings for higher tiers."),
     ("rate_limit", None, 429)),
    ("body-type-without-status",
     APIStatusError(200, anthropic_body("rate_limit_error", "mid-stream")),
     ("rate_limit", None, 200)),
    # --- quota
    ("openai-429-insufficient-quota",
     APIStatusError(429, openai_body("insufficient_quota", "insufficient_quota",
                                     "You exceeded your current quota")),
     ("quota", None, 429)),
    ("402", httpx_error(402, text="Payment Required"), ("quota", None, 402)),
    ("openrouter-402-limit-source", httpx_error(402, json=OPENROUTER_402), ("quota", None, 402)),
    ("openrouter-402-inside-200-stream",
     FakeResponse(200, {}, OPENROUTER_402), ("quota", None, 402)),
    ("anthropic-400-credit-balance-too-low",
     APIStatusError(400, anthropic_body(
         "invalid_request_error",
         "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
         "Billing to upgrade or purchase credits.")),
     ("quota", None, 400)),
    ("anthropic-billing-error-type",
     APIStatusError(400, anthropic_body("billing_error", "billing problem")),
     ("quota", None, 400)),
    ("near-miss-ordinary-400",
     APIStatusError(400, anthropic_body("invalid_request_error",
                                        "messages: at least one message is required")),
     None),
    ("near-miss-400-mentions-billing",
     httpx_error(400, json=anthropic_body("invalid_request_error",
                                          "max_tokens too large for your billing tier")),
     None),
    ("openai-429-enforced-spend-limit-in-details",
     APIStatusError(429, {**openai_body("requests", "rate_limit_exceeded", "Spend limit reached"),
                          "details": {"error_code": "enforced_spend_limit_reached"}}),
     ("quota", None, 429)),
    ("httpx-429-contract-spend-limit-in-details",
     httpx_error(429, json={"error": {"type": "rate_limit_error", "message": "limit",
                                      "details": {"error_code": "contract_spend_limit_reached"}}},
                 headers={"retry-after": "30"}),
     ("quota", 30.0, 429)),
    ("429-details-as-a-list",
     httpx_error(429, json={"error": {"code": 429, "message": "cap",
                                      "details": [{"@type": "ErrorInfo"},
                                                  {"reason": "enforced_spend_limit_reached"}]}}),
     ("quota", None, 429)),
    ("near-miss-429-details-say-nothing-known",
     httpx_error(429, json={"error": {"type": "rate_limit_error", "message": "slow",
                                      "details": {"error_code": "requests_per_minute"}}}),
     ("rate_limit", None, 429)),
    ("near-miss-429-details-not-a-mapping",
     httpx_error(429, json={"error": {"type": "rate_limit_error", "details": "spend limit"}}),
     ("rate_limit", None, 429)),
    # --- auth
    ("401-authentication-error",
     APIStatusError(401, anthropic_body("authentication_error", "invalid x-api-key")),
     ("auth", None, 401)),
    ("403-permission-error",
     APIStatusError(403, anthropic_body("permission_error", "not allowed")), ("auth", None, 403)),
    ("401-bare-httpx", httpx_error(401), ("auth", None, 401)),
    ("openai-invalid-api-key-code",
     APIStatusError(401, openai_body(None, "invalid_api_key", "Incorrect API key provided")),
     ("auth", None, 401)),
    # --- overloaded / server / timeout
    ("529-overloaded-error",
     APIStatusError(529, anthropic_body("overloaded_error", "Overloaded")),
     ("overloaded", None, 529)),
    ("503-with-retry-after", httpx_error(503, headers={"retry-after": "10"}),
     ("overloaded", 10.0, 503)),
    ("overloaded-inside-200-stream",
     APIStatusError(200, anthropic_body("overloaded_error", "Overloaded")),
     ("overloaded", None, 200)),
    ("500-api-error", APIStatusError(500, anthropic_body("api_error", "Internal server error")),
     ("server_error", None, 500)),
    ("502-html-body", httpx_error(502, text="<html>Bad Gateway</html>"),
     ("server_error", None, 502)),
    ("408", httpx_error(408), ("timeout", None, 408)),
    ("sdk-timeout", APITimeoutError(), ("timeout", None, None)),
    ("sdk-connection-error", APIConnectionError(), ("server_error", None, None)),
    ("httpx-read-timeout", httpx.ReadTimeout("timed out", request=REQ), ("timeout", None, None)),
    ("httpx-connect-error", httpx.ConnectError("refused", request=REQ),
     ("server_error", None, None)),
    ("httpx-remote-protocol-error",
     httpx.RemoteProtocolError("peer closed connection", request=REQ),
     ("server_error", None, None)),
    ("builtin-timeout", TimeoutError(), ("timeout", None, None)),
    ("socket-timeout", TimeoutError("timed out"), ("timeout", None, None)),
    ("connection-reset", ConnectionResetError(104, "Connection reset by peer"),
     ("server_error", None, None)),
    ("aiohttp-shaped-429", ClientResponseError(429, {"Retry-After": "3"}),
     ("rate_limit", 3.0, 429)),
    # --- not a provider failure
    ("value-error", ValueError("bad input in the agent's own code"), None),
    ("key-error", KeyError("content"), None),
    ("404", httpx_error(404, json={"error": {"type": "not_found_error", "message": "model"}}),
     None),
    ("413", httpx_error(413, json=anthropic_body("request_too_large", "too big")), None),
    ("bare-200-response", httpx.Response(200, json={"type": "message"}, request=REQ), None),
    ("bare-429-response", httpx.Response(429, headers={"retry-after": "4"}, request=REQ),
     ("rate_limit", 4.0, 429)),
    ("none", None, None),
    ("a-string", "429", None),
]


@pytest.mark.parametrize(("obj", "expected"), [(o, e) for _, o, e in ROWS],
                         ids=[name for name, _, _ in ROWS])
def test_classify_table(obj: object, expected: tuple[str, float | None, int | None] | None) -> None:
    failure = classify(obj, now=NOW)
    if expected is None:
        assert failure is None
        return
    assert failure is not None
    kind, wait, status = expected
    assert failure.kind == kind
    assert failure.status == status
    if wait is None:
        assert failure.retry_after is None
    else:
        assert failure.retry_after == pytest.approx(wait, abs=1e-3)


def test_classify_message_has_type_and_text() -> None:
    exc = RateLimitError(429, anthropic_body("rate_limit_error", "Number of requests exceeded"))
    failure = classify(exc, now=NOW)
    assert failure == Failure(kind="rate_limit", status=429,
                              message="rate_limit_error: Number of requests exceeded")


def test_classify_message_without_body_names_status_and_class() -> None:
    failure = classify(httpx_error(502, text="<html>" + "x" * 5000 + "</html>"), now=NOW)
    assert failure is not None
    assert failure.message == "HTTP 502 (HTTPStatusError)"


def test_classify_message_is_cut_to_200_chars() -> None:
    exc = APIStatusError(529, anthropic_body("overloaded_error", "word " * 400))
    failure = classify(exc, now=NOW)
    assert failure is not None and failure.message is not None
    assert len(failure.message) == MAX_MESSAGE
    assert failure.message.endswith("…")


def test_classify_message_masks_echoed_keys() -> None:
    key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
    exc = APIStatusError(401, openai_body("invalid_request_error", "invalid_api_key",
                                          f"Incorrect API key provided: {key}."))
    failure = classify(exc, now=NOW)
    assert failure is not None and failure.message is not None
    assert failure.kind == "auth"
    assert key not in failure.message
    assert key[-12:] not in failure.message
    assert "<redacted>" in failure.message


def test_classify_unread_stream_response_uses_status() -> None:
    response = httpx.Response(429, stream=httpx.ByteStream(b"{}"), request=REQ)
    exc = httpx.HTTPStatusError("429", request=REQ, response=response)
    failure = classify(exc, now=NOW)
    assert failure is not None
    assert (failure.kind, failure.status) == ("rate_limit", 429)


def test_classify_request_error_without_response() -> None:
    # httpx raises RuntimeError when `.response` of a bare RequestError is read.
    exc = httpx.ReadError("connection reset")
    assert classify(exc, now=NOW) == Failure(kind="server_error", message="ReadError")


@pytest.mark.parametrize(
    ("headers", "kind", "expected"),
    [
        ({"retry-after": "0"}, "rate_limit", 0.0),
        ({"retry-after": "-5"}, "rate_limit", None),
        ({"retry-after": "soon"}, "rate_limit", None),
        ({"retry-after": http_date(NOW - 60)}, "rate_limit", 0.0),
        ({"retry-after-ms": "abc", "retry-after": "7"}, "rate_limit", 7.0),
        ({"anthropic-ratelimit-requests-reset": rfc3339(NOW + 9)}, "overloaded", None),
        ({"anthropic-ratelimit-requests-reset": rfc3339(NOW + 9)}, "quota", 9.0),
        ({"anthropic-ratelimit-requests-reset": "garbage"}, "rate_limit", None),
        ({"anthropic-ratelimit-requests-reset": rfc3339(NOW - 9)}, "rate_limit", None),
        ({
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": rfc3339(NOW + 10),
            "anthropic-ratelimit-output-tokens-remaining": "0",
            "anthropic-ratelimit-output-tokens-reset": rfc3339(NOW + 50),
        }, "rate_limit", 50.0),
        ({}, "rate_limit", None),
    ],
    ids=["zero", "negative", "word", "past-date", "bad-ms", "reset-not-for-overloaded",
         "reset-for-quota", "bad-reset", "past-reset", "latest-spent", "empty"],
)
def test_retry_after_table(headers: dict[str, str], kind: str, expected: float | None) -> None:
    got = retry_after(headers, now=NOW, kind=kind)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-3)


def test_scrub_masks_given_secret_and_collapses_space() -> None:
    secret = "tok-" + "q" * 10
    assert scrub(f"bad  token\n{secret} here", secrets=(secret,)) == "bad token <redacted> here"


def test_classify_message_names_the_detail_code() -> None:
    failure = classify(httpx_error(429, json={"error": {
        "type": "rate_limit_error", "message": "Monthly spend limit reached",
        "details": {"error_code": "enforced_spend_limit_reached"}}}), now=NOW)
    assert failure is not None
    assert failure.message == (
        "rate_limit_error: Monthly spend limit reached (enforced_spend_limit_reached)")
