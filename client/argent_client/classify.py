"""Classify a provider failure and read a response's rate-limit headers.

Theory of operation: whatever an agent's HTTP stack raised or returned is
reduced, by duck typing only (no import of httpx or any provider SDK), to
four facts — HTTP status, response headers, the parsed error body and
whether it was a timeout or a broken connection. `classify` then decides a
failure kind in a fixed order:

1. an explicit error type in the body — first the codes inside
   `error.details` (`enforced_spend_limit_reached`), then the error's own
   `type` and `code` (`rate_limit_error`, `billing_error`,
   `insufficient_quota`, ...) — the provider saying what happened;
2. the HTTP status (or, when the transport said 200 because the error came
   inside a stream, a numeric `error.code` in the body);
3. a 400 whose message says the credit balance is too low (quota);
4. a timeout or a dropped connection without any status.

Anything else (an ordinary 400, a ValueError in the agent's own code) is
not a credential or provider fault and classifies as None.

`parse_limits` turns `anthropic-ratelimit-*` and `x-ratelimit-*` headers
into a `protocol.Limits`. Every value is parsed on its own: a malformed
or missing field is simply absent, never an exception.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from .protocol import FailureKind, Limits

MAX_MESSAGE: Final = 200
"""A failure message sent to the daemon is cut to this many characters."""


class Failure(msgspec.Struct, frozen=True, omit_defaults=True):
    """A classified provider failure, ready for `report_failure`."""

    kind: FailureKind
    retry_after: float | None = None
    """Seconds from now before the credential is worth trying again."""
    status: int | None = None
    message: str | None = None
    """Short and secret-free: the provider's error type and message, cut to 200 chars."""


# ------------------------------------------------------------ tables

_TYPE_KINDS: Final[dict[str, FailureKind]] = {
    "rate_limit_error": "rate_limit",
    "rate_limit_exceeded": "rate_limit",
    "overloaded_error": "overloaded",
    "billing_error": "quota",
    "insufficient_quota": "quota",
    "authentication_error": "auth",
    "permission_error": "auth",
    "invalid_api_key": "auth",
    "timeout_error": "timeout",
    "api_error": "server_error",
    "enforced_spend_limit_reached": "quota",
    "contract_spend_limit_reached": "quota",
    "spend_limit_reached": "quota",
}
"""Error `type` / `code` strings of Anthropic and OpenAI bodies -> kind.

Also the codes inside `error.details` (`error_code`, `code`, `type`,
`reason`): a 429 whose details say `enforced_spend_limit_reached` is a
monthly spend cap (quota), not a rate limit.
"""

_DETAIL_KEYS: Final = ("error_code", "code", "type", "reason")

_CREDIT_TOO_LOW: Final = re.compile(r"credit balance (is )?too low", re.IGNORECASE)

_TIMEOUT_NAMES: Final = frozenset(
    {"TimeoutError", "TimeoutException", "APITimeoutError", "Timeout", "ReadTimeout",
     "ConnectTimeout", "WriteTimeout", "PoolTimeout", "ReadTimeoutError"}
)
_CONNECTION_NAMES: Final = frozenset(
    {"ConnectionError", "APIConnectionError", "NetworkError", "RemoteProtocolError",
     "ConnectError", "ReadError", "WriteError", "ServerDisconnectedError",
     "ClientConnectionError", "ProtocolError"}
)
"""Class names (anywhere in the MRO) of a broken or refused connection."""

# Things in a provider's message that may be (part of) a credential.
_SECRETISH: Final = re.compile(
    r"(sk-[A-Za-z0-9_\-*]{6,}|AIza[0-9A-Za-z_\-]{6,}|[A-Za-z0-9_\-]{32,})"
)


# ------------------------------------------------------------ classify


def classify(exc_or_response: object, *, now: float | None = None) -> Failure | None:
    """The failure `exc_or_response` stands for, or None if it is no provider fault.

    Accepts an httpx `HTTPStatusError`, an anthropic/openai SDK
    `APIStatusError`, `APITimeoutError`, `APIConnectionError`, httpx
    transport errors, `TimeoutError`, `ConnectionError`, or a bare response
    object (`status_code` and `headers`). `now` (Unix seconds, default the
    clock) turns reset timestamps into `retry_after`. Never raises.
    """
    try:
        return _classify(exc_or_response, time.time() if now is None else now)
    except Exception:  # pragma: no cover - duck typing met something truly odd
        return None


def _classify(obj: object, now: float) -> Failure | None:
    response = _response_of(obj)
    status = _status_of(obj, response)
    headers = headers_of(obj) or {}
    body = _body_of(obj, response)
    err = _error_member(body)
    etype = _str(err.get("type")) or _str(err.get("code"))
    ecode = _str(err.get("code"))
    emsg = _str(err.get("message"))
    details = _detail_codes(err.get("details"))
    body_code = err.get("code") if isinstance(err.get("code"), int) else None
    if (status is None or status < 400) and isinstance(body_code, int) and body_code >= 400:
        # An error delivered inside a 200 stream (OpenRouter puts the status in `code`).
        status = body_code
    if status is not None and status < 400 and not etype:
        return None

    # The details are the most specific word: they go first.
    kind: FailureKind | None = next(
        (_TYPE_KINDS[c] for c in (*details, etype, ecode) if c in _TYPE_KINDS), None)
    if kind is None and status is not None:
        kind = _status_kind(status, emsg)
    if kind is None and status is None:
        if _is_named(obj, _TIMEOUT_NAMES) or isinstance(obj, TimeoutError):
            kind = "timeout"
        elif _is_named(obj, _CONNECTION_NAMES) or isinstance(obj, ConnectionError):
            kind = "server_error"
    if kind is None:
        return None
    known = [c for c in details if c in _TYPE_KINDS and c != etype]
    message = _message(obj, etype, emsg, status, known[0] if known else None)
    return Failure(
        kind=kind,
        retry_after=retry_after(headers, now=now, kind=kind),
        status=status,
        message=message,
    )


def _status_kind(status: int, message: str | None) -> FailureKind | None:
    if status == 429:
        return "rate_limit"
    if status == 402:
        return "quota"
    if status in (401, 403):
        return "auth"
    if status in (503, 529):
        return "overloaded"
    if status == 408:
        return "timeout"
    if 500 <= status < 600:
        return "server_error"
    if status == 400 and message and _CREDIT_TOO_LOW.search(message):
        return "quota"
    return None


def _is_named(obj: object, names: frozenset[str]) -> bool:
    return isinstance(obj, BaseException) and any(
        cls.__name__ in names for cls in type(obj).__mro__
    )


def _response_of(obj: object) -> object | None:
    """The HTTP response inside an exception, or `obj` itself if it is one."""
    if isinstance(obj, BaseException):
        try:
            response = getattr(obj, "response", None)
        except Exception:  # httpx raises RuntimeError for a request error's `.response`
            return None
        return response if response is not None and hasattr(response, "headers") else None
    if hasattr(obj, "headers") and (hasattr(obj, "status_code") or hasattr(obj, "status")):
        return obj
    return None


def _status_of(obj: object, response: object | None) -> int | None:
    for holder in (obj, response):
        if holder is None:
            continue
        for attr in ("status_code", "status"):
            value = getattr(holder, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
                return value
    return None


def headers_of(obj: object) -> Mapping[str, str] | None:
    """The response headers of `obj`: a Mapping itself, a response, or an exception's response.

    Covers httpx responses, the SDKs' raw responses (`.headers`, or
    `.http_response.headers` for the legacy wrappers) and exceptions with a
    `.response`. Returns None when there are none.
    """
    if isinstance(obj, Mapping):
        return obj
    candidates: list[object] = [obj]
    if isinstance(obj, BaseException):
        try:
            candidates = [getattr(obj, "response", None), obj]
        except Exception:  # httpx raises RuntimeError for a request error's `.response`
            candidates = [obj]
    else:
        candidates.append(getattr(obj, "http_response", None))
    for cand in candidates:
        headers = getattr(cand, "headers", None) if cand is not None else None
        if headers is not None and hasattr(headers, "items"):
            return headers  # type: ignore[no-any-return]
    return None


def _body_of(obj: object, response: object | None) -> object:
    body = getattr(obj, "body", None) if isinstance(obj, BaseException) else None
    if body is not None:
        return body
    if response is None:
        return None
    json_method = getattr(response, "json", None)
    if not callable(json_method):
        return None
    try:
        return json_method()
    except Exception:  # not JSON, not read yet (a stream), or no body at all
        return None


def _error_member(body: object) -> dict[str, Any]:
    """The error object of a body: `body["error"]` when present, else the body."""
    if not isinstance(body, Mapping):
        return {}
    inner = body.get("error")
    if isinstance(inner, Mapping):
        return dict(inner)
    return dict(body)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _detail_codes(details: object) -> list[str]:
    """The code strings of an `error.details` member: a mapping or a list of them."""
    items = details if isinstance(details, list) else [details]
    return [code for item in items if isinstance(item, Mapping)
            for key in _DETAIL_KEYS if (code := _str(item.get(key))) is not None]


def _message(obj: object, etype: str | None, emsg: str | None, status: int | None,
             detail: str | None = None) -> str:
    if etype or emsg:
        text = ": ".join(part for part in (etype, emsg) if part)
        if detail:
            text = f"{text} ({detail})"
    elif isinstance(obj, BaseException):
        text = type(obj).__name__
        if status is not None:
            text = f"HTTP {status} ({text})"
    else:
        text = f"HTTP {status}"
    return scrub(text)


def scrub(text: str, *, secrets: tuple[str, ...] = ()) -> str:
    """`text` with anything that may be a credential masked, cut to `MAX_MESSAGE` chars."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = _SECRETISH.sub("<redacted>", text)
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return text


# ------------------------------------------------------------ headers


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    out: dict[str, str] = {}
    try:
        for key, value in headers.items():
            if isinstance(key, bytes):
                key = key.decode("latin-1")
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(key, str) and isinstance(value, str):
                out.setdefault(key.lower(), value.strip())
    except Exception:
        return out
    return out


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _timestamp(value: str | None) -> float | None:
    """Unix seconds of an RFC 3339 timestamp, or of a plain number of Unix seconds."""
    if value is None:
        return None
    number = _float(value)
    if number is not None:
        # Large numbers are Unix times; milliseconds when absurdly large.
        return number / 1000.0 if number > 1e11 else number
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
                        "ns": 1e-9}


def parse_duration(value: str | None) -> float | None:
    """Seconds of an OpenAI/Go-style duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`) or a number."""
    if value is None:
        return None
    text = value.strip()
    number = _float(text)
    if number is not None:
        return number
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _openai_reset(value: str | None, now: float) -> float | None:
    """An `x-ratelimit-reset-*` value as Unix seconds.

    OpenAI sends a duration; OpenRouter and others a Unix timestamp (seconds
    or milliseconds). A bare number small enough to be a duration is one.
    """
    number = _float(value)
    if number is not None and number > 1e9:
        return _timestamp(value)
    seconds = parse_duration(value)
    return None if seconds is None else now + seconds


def parse_limits(headers: Mapping[str, str] | None, now: float | None = None) -> Limits | None:
    """The rate-limit budget a response's headers state, or None if they state none.

    Reads `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`
    (falling back to the tighter of `-input-tokens-*`/`-output-tokens-*`),
    the subscription `anthropic-ratelimit-unified-*` headers and
    `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI durations
    become `now + duration`). Lookup is case-insensitive; a malformed value
    leaves its field unset. Never raises.
    """
    if now is None:
        now = time.time()
    try:
        h = _lower(headers)
        fields = _anthropic_limits(h) | _unified_limits(h) | _openai_limits(h, now)
    except Exception:  # pragma: no cover - every parser above is already total
        return None
    fields = {k: v for k, v in fields.items() if v is not None}
    return Limits(**fields) if fields else None


def _anthropic_limits(h: dict[str, str]) -> dict[str, Any]:
    pre = "anthropic-ratelimit-"
    out: dict[str, Any] = {
        "requests_limit": _int(h.get(pre + "requests-limit")),
        "requests_remaining": _int(h.get(pre + "requests-remaining")),
        "requests_reset": _timestamp(h.get(pre + "requests-reset")),
    }
    present = [fam for fam in ("tokens", "input-tokens", "output-tokens")
               if any(f"{pre}{fam}-{part}" in h for part in ("limit", "remaining", "reset"))]
    chosen: str | None = None
    if "tokens" in present:
        chosen = "tokens"
    elif present:
        # No combined figure: report the family with the least left.
        def left(fam: str) -> float:
            value = _int(h.get(f"{pre}{fam}-remaining"))
            return math.inf if value is None else value

        chosen = min(present, key=left)
    if chosen is not None:
        out |= {
            "tokens_limit": _int(h.get(pre + f"{chosen}-limit")),
            "tokens_remaining": _int(h.get(pre + f"{chosen}-remaining")),
            "tokens_reset": _timestamp(h.get(pre + f"{chosen}-reset")),
        }
    return out


def _unified_limits(h: dict[str, str]) -> dict[str, Any]:
    pre = "anthropic-ratelimit-unified-"
    status = h.get(pre + "status")
    reset = _timestamp(h.get(pre + "reset"))
    if reset is None:
        # No overall reset: take the window that is rejecting, else the sooner one.
        windows = [(h.get(pre + f"{w}-status"), _timestamp(h.get(pre + f"{w}-reset")))
                   for w in ("5h", "7d")]
        rejected = [r for s, r in windows if s == "rejected" and r is not None]
        resets = [r for _, r in windows if r is not None]
        reset = max(rejected) if rejected else (min(resets) if resets else None)
    return {
        "unified_status": status.lower() if status and status.isprintable() else None,
        "unified_5h_utilization": _float(h.get(pre + "5h-utilization")),
        "unified_7d_utilization": _float(h.get(pre + "7d-utilization")),
        "unified_reset": reset,
    }


def _openai_limits(h: dict[str, str], now: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for what in ("requests", "tokens"):
        out[f"{what}_limit"] = _int(h.get(f"x-ratelimit-limit-{what}"))
        out[f"{what}_remaining"] = _int(h.get(f"x-ratelimit-remaining-{what}"))
        out[f"{what}_reset"] = _openai_reset(h.get(f"x-ratelimit-reset-{what}"), now)
    # OpenRouter and others: unsuffixed headers count requests.
    if out["requests_limit"] is None:
        out["requests_limit"] = _int(h.get("x-ratelimit-limit"))
    if out["requests_remaining"] is None:
        out["requests_remaining"] = _int(h.get("x-ratelimit-remaining"))
    if out["requests_reset"] is None:
        out["requests_reset"] = _openai_reset(h.get("x-ratelimit-reset"), now)
    return {k: v for k, v in out.items() if v is not None}


def retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None, kind: str = "rate_limit"
) -> float | None:
    """Seconds to wait that `headers` state, or None.

    `retry-after-ms` wins over `retry-after` (seconds or an HTTP date).
    Without either, a `rate_limit`/`quota` takes the reset of the exhausted
    limit (`remaining` 0) — the latest one if several are spent — or else
    the earliest future reset; a subscription whose unified status is
    `rejected` waits for `unified_reset`. Never negative; never raises.
    """
    if now is None:
        now = time.time()
    h = _lower(headers)
    ms = _float(h.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = h.get("retry-after")
    if raw is not None:
        seconds = _float(raw)
        if seconds is not None:
            return seconds
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - now)
    if kind not in ("rate_limit", "quota"):
        return None
    limits = parse_limits(h, now=now)
    if limits is None:
        return None
    if limits.unified_status == "rejected" and limits.unified_reset is not None:
        return max(0.0, limits.unified_reset - now)
    pairs = [(limits.requests_remaining, limits.requests_reset),
             (limits.tokens_remaining, limits.tokens_reset)]
    pairs += _extra_token_pairs(h)
    future = [(left, at) for left, at in pairs if at is not None and at > now]
    spent = [at for left, at in future if left == 0]
    if spent:
        return max(spent) - now
    if future:
        return min(at for _, at in future) - now
    return None


def _extra_token_pairs(h: dict[str, str]) -> list[tuple[int | None, float | None]]:
    pre = "anthropic-ratelimit-"
    return [(_int(h.get(pre + f"{fam}-remaining")), _timestamp(h.get(pre + f"{fam}-reset")))
            for fam in ("input-tokens", "output-tokens")]
