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

`parse_limits` (and `limits_of`), `parse_duration` and `retry_after` live in `headers.py`
(response headers into `protocol.Limits`) and are re-exported here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from .headers import limits_of as limits_of
from .headers import parse_duration as parse_duration
from .headers import parse_limits as parse_limits
from .headers import retry_after
from .protocol import FailureKind

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
