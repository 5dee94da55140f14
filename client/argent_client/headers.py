"""Read a provider response's rate-limit headers into `Limits` and `retry_after`.

Theory of operation: every header is parsed on its own, into its own
`protocol.Limits` field; a missing or malformed header leaves its field
unset and never raises. The families read:

- `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (the API
  key budget; falling back to the tighter of `-input-tokens-*` and
  `-output-tokens-*`);
- the subscription windows `anthropic-ratelimit-unified-*`: the combined
  `-status` and `-reset`, each window's `-5h-`/`-7d-` `status`, `reset`,
  `utilization`, and `-representative-claim`, `-fallback`,
  `-overage-status`;
- Codex's `x-codex-{primary,secondary}-used-percent` with `-reset-at`
  (Unix seconds, what codex-rs reads) or, from older servers,
  `-reset-after-seconds`, and `-window-minutes`;
- `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI sends
  durations, OpenRouter Unix timestamps in ms).

Window values feed cooldowns and caps, so a bad one must not lock a key
out for good. The rule, applied to every window field:

- a utilisation (a fraction) or a used percentage is kept when finite and
  >= 0; a little over full (up to 1.5 x, as providers report when overage
  ran) is clamped to full (1.0, 100); anything larger, negative or
  non-numeric is absent;
- a reset is Unix seconds (milliseconds when absurdly large, or RFC 3339)
  and is clamped to `now` plus the window's length: 5 hours for the
  `5h` window, 7 days for `7d` and the combined reset, the reported
  `-window-minutes` (at most 7 days, else 7 days) for a Codex window; a
  reset in the past is kept as reported (the window is over: it blocks
  nothing);
- a status or claim is lowercased and kept only if it is a short token
  (`[a-z0-9_.-]`, up to 40 characters).
"""

from __future__ import annotations

import email.utils
import functools
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from .protocol import Limits

HOUR: Final = 3600.0
DAY: Final = 24 * HOUR
WINDOW_SECONDS: Final = {"5h": 5 * HOUR, "7d": 7 * DAY}
"""How far ahead a window's reset may lie; a later one is clamped to this."""
MAX_RESET_AHEAD: Final = 7 * DAY
"""The farthest any subscription reset may lie ahead (the combined and Codex resets)."""
OVERFULL: Final = 1.5
"""A utilisation up to this many times full is clamped to full; above it is nonsense."""

_TOKEN: Final = re.compile(r"[a-z0-9_.\-]{1,40}")


def lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """`headers` as a plain dict with lowercase names and stripped values.

    Bytes are decoded as latin-1; non-string names or values are skipped;
    the first of repeated names wins. Never raises.
    """
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
    return _remembered_timestamp(value) if len(value) <= 40 else _parse_timestamp(value)


@functools.lru_cache(maxsize=1024)
def _remembered_timestamp(value: str) -> float | None:
    """`_parse_timestamp`, remembered (a reset repeats in every answer until it passes;
    `fromisoformat` was the dearest part of reading an answer's limits)."""
    return _parse_timestamp(value)


def _parse_timestamp(value: str) -> float | None:
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


def _reset(value: str | None, now: float, ahead: float) -> float | None:
    """A window reset, clamped to `now + ahead` (see the module's rule)."""
    at = _timestamp(value)
    return None if at is None else min(at, now + ahead)


def _fraction(value: str | None, full: float = 1.0) -> float | None:
    """A utilisation (full = 1.0) or a percentage (full = 100), per the module's rule."""
    number = _float(value)
    if number is None or number > full * OVERFULL:
        return None
    return min(number, full)


def _token(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    return text if _TOKEN.fullmatch(text) else None


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


_UNIFIED: Final = "anthropic-ratelimit-unified-"
"""The subscription windows' headers (a part of the `anthropic` family)."""
_FAMILY_OF: Final = {"anthropic-ratelimit-": "anthropic", "x-codex-": "codex",
                     "x-ratelimit-": "openai"}
"""A header name's first two dash-separated words (and dash) -> the family it belongs to."""
_FAMILY_INITIALS: Final = frozenset(name[0] for name in _FAMILY_OF)


def parse_limits(headers: Mapping[str, str] | None, now: float | None = None) -> Limits | None:
    """The rate-limit budget and windows a response's headers state, or None if none.

    `now` (Unix seconds, default the clock) turns durations into resets and
    bounds window resets (module docstring). Lookup is case-insensitive; a
    malformed value leaves its field unset. Never raises.
    """
    return limits_of(lower_headers(headers), time.time() if now is None else now)


def limits_of(h: dict[str, str], now: float) -> Limits | None:
    """`parse_limits` of headers already as `lower_headers` gives them (lowercase
    names, stripped values): the gateway has them so for every answer."""
    try:
        # Only the families whose headers are there (an absent one gives only Nones,
        # and no two families share a field but `_openai_limits`, which drops its Nones).
        fields: dict[str, Any] = {}
        families = {_FAMILY_OF.get(k[:k.find("-", k.find("-") + 1) + 1]) for k in h
                    if k[:1] in _FAMILY_INITIALS}
        if "anthropic" in families:
            fields |= _anthropic_limits(h)
            if any(k.startswith(_UNIFIED) for k in h):
                fields |= _unified_limits(h, now)
        if "codex" in families:
            fields |= _codex_limits(h, now)
        if "openai" in families:
            fields |= _openai_limits(h, now)
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


def _unified_limits(h: dict[str, str], now: float) -> dict[str, Any]:
    """The subscription windows of `anthropic-ratelimit-unified-*`.

    Without a combined `-reset`, `unified_reset` is the latest reset of a
    rejected window, else the sooner window reset.
    """
    pre = _UNIFIED
    out: dict[str, Any] = {
        "unified_status": _token(h.get(pre + "status")),
        "unified_representative_claim": _token(h.get(pre + "representative-claim")),
        "unified_fallback": _token(h.get(pre + "fallback")),
        "unified_overage_status": _token(h.get(pre + "overage-status")),
    }
    for window, ahead in WINDOW_SECONDS.items():
        out[f"unified_{window}_status"] = _token(h.get(pre + f"{window}-status"))
        out[f"unified_{window}_reset"] = _reset(h.get(pre + f"{window}-reset"), now, ahead)
        out[f"unified_{window}_utilization"] = _fraction(h.get(pre + f"{window}-utilization"))
    reset = _reset(h.get(pre + "reset"), now, MAX_RESET_AHEAD)
    if reset is None:
        windows = [(out[f"unified_{w}_status"], out[f"unified_{w}_reset"]) for w in WINDOW_SECONDS]
        rejected = [r for s, r in windows if s == "rejected" and r is not None]
        resets = [r for _, r in windows if r is not None]
        reset = max(rejected) if rejected else (min(resets) if resets else None)
    out["unified_reset"] = reset
    return out


def _codex_limits(h: dict[str, str], now: float) -> dict[str, Any]:
    """The ChatGPT-plan windows of `x-codex-{primary,secondary}-*`.

    `-reset-at` wins over `now + -reset-after-seconds`; the reset is bounded
    by the window's `-window-minutes` (module docstring).
    """
    out: dict[str, Any] = {}
    for window in ("primary", "secondary"):
        pre = f"x-codex-{window}-"
        minutes = _float(h.get(pre + "window-minutes"))
        ahead = MAX_RESET_AHEAD if not minutes else min(minutes * 60.0, MAX_RESET_AHEAD)
        reset = _reset(h.get(pre + "reset-at"), now, ahead)
        if reset is None:
            after = _float(h.get(pre + "reset-after-seconds"))
            reset = None if after is None else now + min(after, ahead)
        out[f"codex_{window}_used_percent"] = _fraction(h.get(pre + "used-percent"), 100.0)
        out[f"codex_{window}_reset"] = reset
    return out


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
    Without either, a `rate_limit`/`quota` waits for the latest reset of a
    spent subscription window (a `rejected` unified status or window, a
    Codex window at 100 %), else takes the reset of the exhausted limit
    (`remaining` 0) — the latest one if several are spent — or else the
    earliest future reset. Never negative; never raises.
    """
    if now is None:
        now = time.time()
    h = lower_headers(headers)
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
    windows = spent_window_resets(limits)
    if windows:
        return max(0.0, max(windows) - now)
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


def spent_window_resets(limits: Limits) -> list[float]:
    """The resets of the subscription windows `limits` says are spent.

    A `rejected` unified status counts with `unified_reset`; a rejected
    `5h`/`7d` window with its own reset; a Codex window at 100 % with its
    reset. Windows without a reset are left out.
    """
    out: list[float] = []
    if limits.unified_status == "rejected" and limits.unified_reset is not None:
        out.append(limits.unified_reset)
    for status, reset in ((limits.unified_5h_status, limits.unified_5h_reset),
                          (limits.unified_7d_status, limits.unified_7d_reset)):
        if status == "rejected" and reset is not None:
            out.append(reset)
    for used, reset in ((limits.codex_primary_used_percent, limits.codex_primary_reset),
                        (limits.codex_secondary_used_percent, limits.codex_secondary_reset)):
        if used is not None and used >= 100.0 and reset is not None:
            out.append(reset)
    return out


def _extra_token_pairs(h: dict[str, str]) -> list[tuple[int | None, float | None]]:
    pre = "anthropic-ratelimit-"
    return [(_int(h.get(pre + f"{fam}-remaining")), _timestamp(h.get(pre + f"{fam}-reset")))
            for fam in ("input-tokens", "output-tokens")]
