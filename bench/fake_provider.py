"""A fake Anthropic Messages API that rate-limits per key, for `bench/goodput.py`.

Run it alone to poke at it by hand:

    python bench/fake_provider.py --shape steady --show-keys
    curl -si -X POST localhost:PORT/v1/messages -H 'x-api-key: KEY' -d '{}'

Theory of operation
-------------------
Each key has a token bucket of `burst` requests refilled at `rate` per
second, as Anthropic's request limits are. The token is taken when the
request *arrives* (a real limiter counts a request before it serves it);
the answer leaves `latency` seconds later (a timer, not CPU). A request
that finds the bucket below one token is answered 429 with Anthropic's
`rate_limit_error` body and an integer `retry-after` of at least 1 s (the
whole seconds until one token is back, rounded up), as Anthropic sends.
Every answer of an API key carries `anthropic-ratelimit-requests-limit`
(the bucket's capacity), `-remaining` (whole tokens left after this
request) and `-reset` (RFC 3339: when the bucket is full again).

A *subscription* key (an OAuth/setup token, `Authorization: Bearer`) also
has a window quota: `window_quota` requests per `window_seconds` (the
"5-hour" window, time-compressed), windows counted from the last reset,
and optionally a second, longer one: `week_quota` per `week_seconds` (the
"weekly" window). Past either quota it answers 429 with
`anthropic-ratelimit-unified-status: rejected` and
`anthropic-ratelimit-unified-reset` (Unix seconds) until that window ends;
every answer of it carries the `-unified-*` headers as Anthropic sends
them: per window `-5h-`/`-7d-` `status`, `utilization` and `reset`
(`allowed_warning` from 80 %), the combined `-status` and `-reset` (the
spent window's, else the fuller one's), `-representative-claim`
(`five_hour` or `seven_day`: the fuller window), `-fallback: available`
and `-overage-status: rejected`.

`Limiter` is the pure part (explicit `now`, no I/O); `serve` wraps it in a
small asyncio HTTP/1.1 keep-alive server on 127.0.0.1, light enough not to
be the bottleneck of a few hundred requests a second. Admin routes, which
need no key and have no latency: `GET /admin/stats` (per-key counts since
the last reset, by label — never the key) and `POST /admin/reset` (buckets
full, windows restarted, counts zeroed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

ResetPrecision = Literal["s", "ms"]

DEFAULT_LATENCY: Final = 0.020
"""Seconds between a request's arrival and its answer."""
WARNING_UTILIZATION: Final = 0.8
"""A subscription window this full answers `allowed_warning`."""
MAX_HEAD: Final = 64 * 1024
"""A request head longer than this closes the connection."""


# ---------------------------------------------------------------- shapes


@dataclass(frozen=True, slots=True)
class KeyShape:
    """The limits of one key, without the key itself."""

    rate: float
    """Refill, requests per second."""
    burst: int
    """Bucket capacity (also `anthropic-ratelimit-requests-limit`)."""
    window_quota: int | None = None
    """Subscription only: requests allowed per window (the "5-hour" one)."""
    window_seconds: float | None = None
    week_quota: int | None = None
    """Subscription only, optional: requests allowed per "weekly" window."""
    week_seconds: float | None = None

    @property
    def subscription(self) -> bool:
        return self.window_quota is not None


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A key the fake provider knows: its secret, a label for reports, its limits."""

    label: str
    key: str
    shape: KeyShape

    def __repr__(self) -> str:  # the key is fake, but keep habits good
        return f"KeySpec(label={self.label!r}, shape={self.shape!r})"


SHAPES: Final[dict[str, tuple[KeyShape, ...]]] = {
    "steady": (KeyShape(20, 5),) * 3,
    "bursty": (KeyShape(10, 60),) * 3,
    "slow-key": (KeyShape(20, 5), KeyShape(20, 5), KeyShape(2, 5)),
    "subscription": (
        KeyShape(20, 5, window_quota=50, window_seconds=5.0),
        KeyShape(20, 5),
        KeyShape(20, 5),
    ),
    "windows": (
        KeyShape(60, 20, window_quota=150, window_seconds=10.0, week_quota=700,
                 week_seconds=600.0),
        KeyShape(60, 20),
    ),
}
"""Provider shapes of the goodput benchmark (issue 7): three keys each.

`steady`: 3 keys, burst 5, 20 req/s. `bursty`: large buckets (60) refilled
slowly (10 req/s). `slow-key`: one key at a tenth of the others' rate.
`subscription`: the first key is a subscription allowed 50 requests per
5 s window (10 req/s on average, half its bucket's rate), then rejected
until the window ends. `windows` (issue 14, two keys): a subscription with
a "5-hour" window of 150 requests per 10 s and a "weekly" one of 700 per
600 s (so it does not reset during a run), beside one API key; the
client-mix run of `bench/goodput_windows.py` uses it.
"""


def make_keys(shape: tuple[KeyShape, ...]) -> list[KeySpec]:
    """Fresh fake secrets for `shape`: `sk-ant-oat01-` for a subscription, else `sk-ant-api03-`."""
    out = []
    for i, s in enumerate(shape):
        prefix = "sk-ant-oat01-bench" if s.subscription else "sk-ant-api03-bench"
        out.append(KeySpec(label=f"k{i}", key=prefix + secrets.token_urlsafe(30), shape=s))
    return out


def capacity(shape: KeyShape, seconds: float) -> float:
    """The most requests `shape` can answer 200 in `seconds` from a reset (full bucket).

    A plain key: `burst + rate * seconds`. A subscription key: per window,
    the lesser of its quota and what its bucket allows in that window
    (`burst + rate * window length`) — an upper bound, since the bucket
    holds at most `burst` at any window's start.
    """
    if shape.window_quota is None or shape.window_seconds is None:
        return shape.burst + shape.rate * seconds
    total = 0.0
    start = 0.0
    while start < seconds:
        length = min(shape.window_seconds, seconds - start)
        total += min(shape.window_quota, shape.burst + shape.rate * length)
        start += shape.window_seconds
    if shape.week_quota is not None and shape.week_seconds is not None:
        total = min(total, shape.week_quota * math.ceil(seconds / shape.week_seconds))
    return total


# ---------------------------------------------------------------- limiter


@dataclass(slots=True)
class Counts:
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    """429 because the request bucket was empty."""
    rejected: int = 0
    """429 because the subscription window was spent."""

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "ok": self.ok,
                "429": self.rate_limited + self.rejected,
                "rate_limited": self.rate_limited, "rejected": self.rejected}


@dataclass(slots=True)
class KeyState:
    """One key's bucket, window and counts; times are the limiter's monotonic clock."""

    spec: KeySpec
    tokens: float
    t: float
    window_start: float
    window_used: int = 0
    week_start: float = 0.0
    week_used: int = 0
    counts: Counts = field(default_factory=Counts)

    def refill(self, now: float) -> None:
        s = self.spec.shape
        if now > self.t:
            self.tokens = min(float(s.burst), self.tokens + (now - self.t) * s.rate)
            self.t = now

    def roll_window(self, now: float) -> None:
        w = self.spec.shape.window_seconds
        if w is not None and now >= self.window_start + w:
            self.window_start += w * math.floor((now - self.window_start) / w)
            self.window_used = 0
        w = self.spec.shape.week_seconds
        if w is not None and now >= self.week_start + w:
            self.week_start += w * math.floor((now - self.week_start) / w)
            self.week_used = 0

    def windows(self) -> list[tuple[str, int, int, float]]:
        """(name, used, quota, end) of each subscription window, `5h` first."""
        s = self.spec.shape
        out = []
        if s.window_quota is not None and s.window_seconds is not None:
            out.append(("5h", self.window_used, s.window_quota,
                        self.window_start + s.window_seconds))
        if s.week_quota is not None and s.week_seconds is not None:
            out.append(("7d", self.week_used, s.week_quota, self.week_start + s.week_seconds))
        return out

    def spent_until(self) -> float | None:
        """When the latest spent window ends (monotonic), or None if none is spent."""
        ends = [end for _, used, quota, end in self.windows() if used >= quota]
        return max(ends) if ends else None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer: status, headers (without framing) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


OK_BODY: Final = _json({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-bench",
    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
    "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1},
})
RATE_LIMIT_BODY: Final = _json({"type": "error", "error": {
    "type": "rate_limit_error",
    "message": "This request would exceed the rate limit for your organization. "
               "Please try again later."}})
REJECTED_BODY: Final = _json({"type": "error", "error": {
    "type": "rate_limit_error",
    "message": "This request would exceed your subscription's usage limit."}})
AUTH_BODY: Final = _json({"type": "error", "error": {
    "type": "authentication_error", "message": "invalid x-api-key"}})


def rfc3339(unix: float, precision: ResetPrecision) -> str:
    """`unix` as RFC 3339 UTC; whole seconds are rounded *up* (full by then, not before)."""
    if precision == "s":
        return datetime.fromtimestamp(math.ceil(unix), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = datetime.fromtimestamp(math.ceil(unix * 1000) / 1000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class Limiter:
    """Per-key buckets and subscription windows; every call takes the times it needs.

    `now` is a monotonic clock for the arithmetic, `wall` the Unix time the
    headers speak in (they move together; only headers need the wall clock).
    """

    def __init__(self, keys: list[KeySpec], *, now: float,
                 reset_precision: ResetPrecision = "ms") -> None:
        self.keys = keys
        self.precision: ResetPrecision = reset_precision
        self.unknown_key = 0
        self._by_secret: dict[str, KeyState] = {}
        self.reset(now)

    def reset(self, now: float) -> None:
        """Buckets full, windows restarting at `now`, counts zeroed."""
        self.started = now
        self.unknown_key = 0
        self._by_secret = {
            k.key: KeyState(spec=k, tokens=float(k.shape.burst), t=now, window_start=now,
                            week_start=now)
            for k in self.keys
        }

    def decide(self, secret: str | None, *, now: float, wall: float) -> Decision:
        """Count a request that arrived at `now` with `secret`; returns the answer."""
        ks = self._by_secret.get(secret) if secret else None
        if ks is None:
            self.unknown_key += 1
            return Decision(401, [], AUTH_BODY)
        ks.counts.requests += 1
        ks.refill(now)
        ks.roll_window(now)
        shape = ks.spec.shape
        headers: list[tuple[str, str]] = []
        spent_until = ks.spent_until()
        if spent_until is not None:
            ks.counts.rejected += 1
            headers += self._request_headers(ks, now, wall)
            headers += self._unified_headers(ks, now, wall)
            wait = spent_until - now
            headers.append(("retry-after", str(max(1, math.ceil(wait)))))
            return Decision(429, headers, REJECTED_BODY)
        if ks.tokens < 1.0:
            ks.counts.rate_limited += 1
            headers += self._request_headers(ks, now, wall)
            if shape.subscription:
                headers += self._unified_headers(ks, now, wall)
            wait = (1.0 - ks.tokens) / shape.rate
            headers.append(("retry-after", str(max(1, math.ceil(wait)))))
            return Decision(429, headers, RATE_LIMIT_BODY)
        ks.tokens -= 1.0
        ks.window_used += 1
        ks.week_used += 1
        ks.counts.ok += 1
        headers += self._request_headers(ks, now, wall)
        if shape.subscription:
            headers += self._unified_headers(ks, now, wall)
        return Decision(200, headers, OK_BODY)

    def _request_headers(self, ks: KeyState, now: float, wall: float) -> list[tuple[str, str]]:
        s = ks.spec.shape
        full_in = (s.burst - ks.tokens) / s.rate
        return [
            ("anthropic-ratelimit-requests-limit", str(s.burst)),
            ("anthropic-ratelimit-requests-remaining", str(max(0, math.floor(ks.tokens)))),
            ("anthropic-ratelimit-requests-reset", rfc3339(wall + full_in, self.precision)),
        ]

    def _unified_headers(self, ks: KeyState, now: float, wall: float) -> list[tuple[str, str]]:
        pre = "anthropic-ratelimit-unified-"
        headers: list[tuple[str, str]] = []
        views = []
        for name, used, quota, end in ks.windows():
            util = min(1.0, used / quota)
            if used >= quota:
                status = "rejected"
            elif util >= WARNING_UTILIZATION:
                status = "allowed_warning"
            else:
                status = "allowed"
            reset = math.ceil(wall + end - now)
            views.append((name, status, util, reset))
            headers += [(f"{pre}{name}-status", status),
                        (f"{pre}{name}-utilization", f"{util:.2f}"),
                        (f"{pre}{name}-reset", str(reset))]
        rejected = [v for v in views if v[1] == "rejected"]
        # The window that binds: the spent one that ends last, else the fuller one.
        claim = max(rejected, key=lambda v: v[3]) if rejected else max(views, key=lambda v: v[2])
        worst = "rejected" if rejected else (
            "allowed_warning" if any(v[1] == "allowed_warning" for v in views) else "allowed")
        headers += [
            (pre + "status", worst),
            (pre + "reset", str(claim[3])),
            (pre + "representative-claim", "five_hour" if claim[0] == "5h" else "seven_day"),
            (pre + "fallback", "available"),
            (pre + "overage-status", "rejected"),
        ]
        return headers

    def stats(self, now: float) -> dict[str, Any]:
        """Counts per key label since the last reset, and the seconds elapsed."""
        keys = {}
        for ks in self._by_secret.values():
            s = ks.spec.shape
            keys[ks.spec.label] = {
                **ks.counts.as_dict(), "rate": s.rate, "burst": s.burst,
                "window_quota": s.window_quota, "window_seconds": s.window_seconds,
                "week_quota": s.week_quota, "week_seconds": s.week_seconds,
                "windows": {name: {"used": used, "quota": quota}
                            for name, used, quota, _ in ks.windows()},
            }
        return {"elapsed": now - self.started, "unknown_key": self.unknown_key, "keys": keys}


# ---------------------------------------------------------------- HTTP


_REASONS: Final = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                   411: "Length Required", 429: "Too Many Requests"}


def _frame(status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
             "content-type: application/json",
             f"content-length: {len(body)}",
             f"request-id: req_bench{secrets.token_hex(6)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def secret_of(headers: dict[str, str]) -> str | None:
    """The key a request carries: `x-api-key`, else an `Authorization: Bearer` token."""
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; answers leave in request order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.out: deque[list[bytes | None]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.closing:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._answer_now(400, [], b"", close=True)
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._answer_now(411, [], b"", close=True)
                return
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self._answer_now(400, [], b"", close=True)
                return
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            close = headers.get("connection", "").lower() == "close" or (
                len(parts) > 2 and parts[2] == "HTTP/1.0")
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) > 1 else ("", "")
            self._route(method, path, headers, close)

    def _route(self, method: str, path: str, headers: dict[str, str], close: bool) -> None:
        srv = self.server
        now = time.monotonic()
        if method == "POST" and path == "/v1/messages":
            d = srv.limiter.decide(secret_of(headers), now=now, wall=time.time())
            self._answer_later(srv.latency, _frame(d.status, d.headers, d.body, close=close),
                               close)
        elif method == "GET" and path == "/admin/stats":
            self._answer_now(200, [], _json(srv.limiter.stats(now)), close=close)
        elif method == "POST" and path == "/admin/reset":
            srv.limiter.reset(now)
            self._answer_now(200, [], b'{"reset":true}', close=close)
        else:
            self._answer_now(404, [], b'{"type":"error","error":{"type":"not_found_error"}}',
                             close=close)

    def _answer_now(self, status: int, headers: list[tuple[str, str]], body: bytes, *,
                    close: bool) -> None:
        self.out.append([_frame(status, headers, body, close=close)])
        self.closing = self.closing or close
        self._flush()

    def _answer_later(self, delay: float, data: bytes, close: bool) -> None:
        slot: list[bytes | None] = [None]
        self.out.append(slot)
        self.closing = self.closing or close

        def ready() -> None:
            slot[0] = data
            self._flush()

        asyncio.get_running_loop().call_later(delay, ready)

    def _flush(self) -> None:
        while self.out and (data := self.out[0][0]) is not None:
            self.out.popleft()
            if self.transport is not None:
                self.transport.write(data)
        if self.closing and not self.out and self.transport is not None:
            self.transport.close()


@dataclass
class Server:
    """The limiter, the latency and the listening socket's port once bound."""

    limiter: Limiter
    latency: float = DEFAULT_LATENCY
    port: int = 0


async def serve(server: Server, host: str = "127.0.0.1", *,
                started: asyncio.Future[int] | None = None) -> None:
    """Serve until cancelled; sets `server.port` and resolves `started` with it once bound."""
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: _Conn(server), host, server.port, backlog=1024)
    server.port = srv.sockets[0].getsockname()[1]
    if started is not None:
        started.set_result(server.port)
    async with srv:
        await srv.serve_forever()


# ---------------------------------------------------------------- config and main


def write_config(path: str, keys: list[KeySpec], *, latency: float,
                 reset_precision: ResetPrecision) -> None:
    """Write what `--config` reads (mode 0600: it holds the keys)."""
    data = {"latency": latency, "reset_precision": reset_precision,
            "keys": [{"label": k.label, "key": k.key, "rate": k.shape.rate,
                      "burst": k.shape.burst, "window_quota": k.shape.window_quota,
                      "window_seconds": k.shape.window_seconds,
                      "week_quota": k.shape.week_quota,
                      "week_seconds": k.shape.week_seconds} for k in keys]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def read_config(path: str) -> tuple[list[KeySpec], float, ResetPrecision]:
    """Keys, latency and reset precision from a `write_config` file."""
    with open(path) as f:
        data = json.load(f)
    keys = [KeySpec(label=k["label"], key=k["key"],
                    shape=KeyShape(rate=float(k["rate"]), burst=int(k["burst"]),
                                   window_quota=k.get("window_quota"),
                                   window_seconds=k.get("window_seconds"),
                                   week_quota=k.get("week_quota"),
                                   week_seconds=k.get("week_seconds")))
            for k in data["keys"]]
    precision = data.get("reset_precision", "ms")
    if precision not in ("s", "ms"):
        raise ValueError(f"reset_precision must be 's' or 'ms', not {precision!r}")
    return keys, float(data.get("latency", DEFAULT_LATENCY)), precision


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; prints `LISTENING <port>` on stdout once bound."""
    parser = argparse.ArgumentParser(description="A fake, rate-limiting Anthropic Messages API.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a JSON file from write_config (keys, latency, precision)")
    src.add_argument("--shape", choices=sorted(SHAPES), help="fresh keys of a built-in shape")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--latency", type=float, default=DEFAULT_LATENCY,
                        help="seconds per answer with --shape (0.020)")
    parser.add_argument("--reset-precision", choices=["s", "ms"], default="ms",
                        help="RFC 3339 resets in whole seconds (rounded up) or ms (with --shape)")
    parser.add_argument("--show-keys", action="store_true",
                        help="with --shape, print the generated (fake) keys on stderr")
    opts = parser.parse_args(argv)
    if opts.config:
        keys, latency, precision = read_config(opts.config)
    else:
        keys, latency, precision = make_keys(SHAPES[opts.shape]), opts.latency, \
            opts.reset_precision
        if opts.show_keys:
            for k in keys:
                print(f"{k.label} {k.key} {k.shape}", file=sys.stderr)
    server = Server(Limiter(keys, now=time.monotonic(), reset_precision=precision),
                    latency=latency, port=opts.port)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[int] = loop.create_future()
        task = asyncio.create_task(serve(server, started=started))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        port = await started
        print(f"LISTENING {port}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
