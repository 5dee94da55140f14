"""What the blocking and the async client share: no I/O, no clock of its own.

`LineReader` cuts bytes into lines; `CallBook` numbers requests and decides
what an incoming line means for them; `LeaseBase` is the part of a lease
object that does not talk to the daemon (its fields, `observe`,
`record_usage`, the failure it would report); `env_lease` builds the
client-side environment fallback lease. `Client` (client.py) and
`AsyncClient` (aio.py) add the sockets.

Retrying after a broken connection: every request is retried once on a
fresh connection except those that could grant a *detached* lease — a
`lease` with `detached=True` and a `report_failure` with `failover=True`.
A lease bound to a connection ends when that connection closes, so
re-sending an attached `lease` can never leave two leases behind; a
detached one that the daemon granted just before the line dropped would
live on until its TTL, so those are not sent twice (the caller gets
`DaemonUnavailable` and decides).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from . import protocol as P
from .classify import Failure, classify, headers_of, parse_limits, scrub
from .providers import FALLBACK_ENV, auth_headers, normalise_provider

log = logging.getLogger("argent_client")

MAX_REPLY: Final = 64 * 1024 * 1024
"""A daemon line longer than this is treated as a broken connection."""
LOCAL_PREFIX: Final = "env-local-"
"""Lease ids of client-side environment fallback leases (never sent to a daemon)."""
ENV_TTL: Final = 3600.0
"""`expires_at` of a local env lease without `ttl` (nothing enforces it)."""


class Broken(Exception):
    """The connection to the daemon broke (EOF, EPIPE, ECONNRESET)."""


class NotSent(Broken):
    """The connection was found broken before the request left: resending is safe."""


class LineReader:
    """Accumulates bytes and hands out complete lines (without the newline)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pop_line(self) -> bytes | None:
        """The next complete line, or None; raises `Broken` for an endless line."""
        at = self._buf.find(b"\n")
        if at < 0:
            if len(self._buf) > MAX_REPLY:
                raise Broken("the daemon sent a line longer than 64 MiB")
            return None
        line = bytes(self._buf[:at])
        del self._buf[: at + 1]
        return line


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to a request still waited for."""

    id: int
    message: P.Incoming


class CallBook:
    """Request ids of one connection and what became of them.

    Ids increase per connection. A request whose caller gave up (timeout,
    cancellation) is *abandoned*: its late reply is dropped — except a
    granted lease, which is released at once so it does not sit idle
    until the connection closes.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.pending: dict[int, str] = {}
        self.abandoned: dict[int, str] = {}

    def start(self, method: str, params: msgspec.Struct | None) -> tuple[int, bytes]:
        """A new request: its id and the line to send."""
        rid = next(self._ids)
        self.pending[rid] = method
        return rid, P.encode_request(method, params, rid)

    def finish(self, rid: int) -> None:
        self.pending.pop(rid, None)

    def abandon(self, rid: int) -> None:
        method = self.pending.pop(rid, None)
        if method is not None:
            self.abandoned[rid] = method

    def on_line(self, line: bytes) -> Reply | bytes | None:
        """What an incoming line means.

        Returns a `Reply` for a pending request, the bytes of a release to
        send for an abandoned lease that was granted, or None (an event
        notification, a stale reply). Raises `Broken` for a line that is
        not JSON-RPC.
        """
        try:
            msg = P.decode_incoming(line)
        except P.ParseError as exc:
            raise Broken(str(exc)) from None
        if not isinstance(msg.id, int):
            return None
        if msg.id in self.pending:
            return Reply(msg.id, msg)
        method = self.abandoned.pop(msg.id, None)
        if method == "lease" and msg.error is msgspec.UNSET:
            try:
                lease_id = P.decode_result("lease", msg.result).lease_id
            except msgspec.DecodeError:
                return None
            rid = next(self._ids)
            self.abandoned[rid] = "release"
            log.debug("releasing lease %s whose request was given up", lease_id)
            return P.encode_request("release", P.ReleaseParams(lease_id=lease_id), rid)
        return None


def peer_closed(sock: socket.socket) -> bool:
    """Whether the daemon already closed `sock` (e.g. it restarted since the last call).

    Peeks without blocking or consuming, so a request is never sent into a
    connection that is known to be dead (which would then count as the one
    retry, or not be retried at all).
    """
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, TimeoutError):
        return False
    except OSError:
        return True


def timeval(timeout: float | None) -> bytes:
    """`timeout` as the `struct timeval` of SO_RCVTIMEO/SO_SNDTIMEO (0: wait forever)."""
    if timeout is None:
        return struct.pack("ll", 0, 0)
    timeout = max(timeout, 0.001)  # 0 would mean forever
    sec = int(timeout)
    return struct.pack("ll", sec, int((timeout - sec) * 1e6))


def result_of(method: str, msg: P.Incoming) -> Any:
    """The typed result of a reply; raises the `ArgentError` the daemon sent."""
    if msg.error is not msgspec.UNSET:
        raise P.error_from_wire(msg.error)
    try:
        return P.decode_result(method, msg.result)
    except msgspec.DecodeError as exc:
        raise P.InternalError(f"unexpected {method!r} result from argentd: {exc}") from None


def retry_safe(method: str, params: msgspec.Struct | None) -> bool:
    """Whether `method` may be sent again after the connection broke (module doc)."""
    if isinstance(params, P.LeaseParams):
        return not params.detached
    if isinstance(params, P.ReportParams):
        return not params.failover
    return method != "subscribe"


def unavailable(path: object, exc: BaseException) -> P.DaemonUnavailable:
    """The error for a socket that cannot be reached."""
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return P.DaemonUnavailable(
        f"cannot reach argentd at {path} ({reason}); start it with `argentd` "
        "(or `argentctl service install`)",
        socket=str(path),
        reason="unreachable",
    )


def timed_out(path: object, method: str, seconds: float | None) -> P.DaemonUnavailable:
    return P.DaemonUnavailable(
        f"argentd at {path} did not answer {method!r} within {seconds:g}s",
        socket=str(path),
        reason="timeout",
    )


def connection_lost(path: object, method: str, retried: bool) -> P.DaemonUnavailable:
    why = (
        "again after a retry on a new connection"
        if retried
        else "and it was not retried because it may have granted a detached lease"
    )
    return P.DaemonUnavailable(
        f"the connection to argentd at {path} broke during {method!r} {why}",
        socket=str(path),
        reason="connection_lost",
    )


def default_client_name() -> str:
    """`program[pid]`: what `status` shows as a lease's client."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{prog}[{os.getpid()}]"


def lease_params(
    client: str | None,
    provider: str | None,
    route: str | None,
    model: str | None,
    session: str | None,
    ttl: float | None,
    wait: float | None,
    detached: bool,
) -> P.LeaseParams:
    if provider is None and route is None:
        raise ValueError("lease needs a provider or a route")
    return P.LeaseParams(
        provider=provider,
        route=route,
        model=model,
        session=session,
        ttl=ttl,
        wait=float(wait or 0.0),
        detached=detached,
        client=client,
    )


def call_timeout(timeout: float | None, wait: float | None) -> float | None:
    """The socket timeout for a call that may wait `wait` seconds in the daemon."""
    if timeout is None:
        return None
    return timeout + (wait or 0.0)


# ------------------------------------------------------------ env fallback

_warned: set[str] = set()


def is_local(lease_id: str) -> bool:
    return lease_id.startswith(LOCAL_PREFIX)


def env_lease(
    provider: str | None,
    model: str | None,
    ttl: float | None,
    *,
    environ: Mapping[str, str] | None = None,
    now: float | None = None,
) -> P.LeaseResult | None:
    """A lease from the caller's own environment for `provider`, or None.

    The variables are DESIGN's environment fallback (`providers.FALLBACK_ENV`).
    Logs a warning once per provider per process, naming the variable, never
    its value.
    """
    if provider is None:
        return None
    provider = normalise_provider(provider)
    env = os.environ if environ is None else environ
    for var, type_ in FALLBACK_ENV.get(provider, ()):
        token = env.get(var, "").strip()
        if not token:
            continue
        if provider not in _warned:
            _warned.add(provider)
            log.warning(
                "argentd is unreachable: using %s from this process's environment for %s "
                "(no rotation, no shared cooldowns)",
                var,
                provider,
            )
        return P.LeaseResult(
            lease_id=LOCAL_PREFIX + secrets.token_hex(8),
            profile=f"{provider}:env",
            provider=provider,
            type=type_,
            token=token,
            label=f"environment ({var})",
            headers=auth_headers(provider, type_, token),
            expires_at=(time.time() if now is None else now) + (ttl or ENV_TTL),
            source="env",
            model=model,
        )
    return None


# ------------------------------------------------------------ lease objects


_USAGE_FIELDS: Final = (
    ("input_tokens", ("input_tokens", "prompt_tokens")),
    ("output_tokens", ("output_tokens", "completion_tokens")),
    ("cache_read_input_tokens", ("cache_read_input_tokens",)),
    ("cache_creation_input_tokens", ("cache_creation_input_tokens",)),
)


def usage_of(obj: object) -> P.Usage | None:
    """A `Usage` from a `Usage`, a mapping, an SDK usage object or a message with `.usage`."""
    if isinstance(obj, P.Usage):
        return obj
    if not isinstance(obj, Mapping) and hasattr(obj, "usage") and not hasattr(obj, "input_tokens"):
        obj = obj.usage
    values: dict[str, int] = {}
    for field, names in _USAGE_FIELDS:
        for name in names:
            value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                values[field] = value
                break
    return P.Usage(**values) if values else None


def add_usage(a: P.Usage | None, b: P.Usage | None) -> P.Usage | None:
    if a is None or b is None:
        return a or b
    summed: dict[str, int] = {}
    for field, _ in _USAGE_FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        if x is not None or y is not None:
            summed[field] = (x or 0) + (y or 0)
    return P.Usage(**summed)


class LeaseBase:
    """A granted lease as the agent sees it; the token never shows in its repr."""

    def __init__(self, result: P.LeaseResult) -> None:
        self.result = result
        self.token: str = result.token
        """The secret itself."""
        self.headers: dict[str, str] = dict(result.headers)
        """The HTTP headers that carry the secret, as the provider expects them."""
        self.provider: str = result.provider
        self.model: str | None = result.model
        self.profile: str = result.profile
        self.lease_id: str = result.lease_id
        self.source: P.Source = result.source
        self.label: str = result.label
        self.type: P.ProfileType = result.type
        self.expires_at: float = result.expires_at
        self.limits: P.Limits | None = None
        """The last rate-limit headers `observe` saw; sent with release or report."""
        self.usage: P.Usage | None = None
        """Token usage summed by `record_usage`; sent with release."""
        self.ended = False

    @property
    def local(self) -> bool:
        """Whether this is a client-side environment fallback lease (no daemon involved)."""
        return is_local(self.result.lease_id)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.result.lease_id} profile={self.result.profile!r} "
            f"provider={self.result.provider!r} model={self.result.model!r} "
            f"source={self.result.source!r} token=<redacted>>"
        )

    __str__ = __repr__

    def observe(self, response: object, *, now: float | None = None) -> P.Limits | None:
        """Take the rate-limit headers of a provider response; returns what was parsed.

        `response` is an httpx response, an SDK raw response (anything with
        `.headers`), an exception carrying a `.response`, or a Mapping of
        headers. The latest non-empty result is kept and sent with the
        release or failure report; a response without such headers keeps the
        previous one.
        """
        limits = parse_limits(headers_of(response), now=now)
        if limits is not None:
            self.limits = limits
        return limits

    def record_usage(self, usage: object) -> P.Usage | None:
        """Add a response's token usage (a `Usage`, a mapping, an SDK usage or message).

        Returns the running total, which `release` sends.
        """
        self.usage = add_usage(self.usage, usage_of(usage))
        return self.usage

    def failure_for(self, exc: BaseException) -> Failure | None:
        """The failure to report for `exc` leaving the lease block, or None.

        Also takes the rate-limit headers of the error response. The message
        is scrubbed of this lease's secret.
        """
        if not isinstance(exc, Exception):
            return None  # KeyboardInterrupt, cancellation: not the provider's doing
        failure = classify(exc)
        if failure is None:
            return None
        self.observe(exc)
        if failure.message:
            failure = msgspec.structs.replace(
                failure, message=scrub(failure.message, secrets=(self.result.token,))
            )
        return failure

    def report_params(
        self, failure: Failure, *, failover: bool, model: str | None = None
    ) -> P.ReportParams:
        """The `report_failure` params for `failure` on this lease.

        `model` is None unless the caller knows the limit was per model: the
        lease's own model only says what was asked (a 5-hour subscription
        cap or a spent balance is account-wide), and a report that names a
        model cools the profile for that model alone.
        """
        return P.ReportParams(
            kind=failure.kind,
            lease_id=self.result.lease_id,
            retry_after=failure.retry_after,
            status=failure.status,
            message=failure.message,
            model=model,
            limits=self.limits,
            failover=failover,
        )


def local_report() -> P.ReportResult:
    """What reporting on a local env lease answers: nothing changes, no next lease."""
    return P.ReportResult(profile_state="ready")
