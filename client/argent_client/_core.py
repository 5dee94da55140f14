"""What a lease is and what happens at its end, for both clients, sans I/O.

`LeaseBase` is the part of a lease object that does not talk to the daemon
(its fields, `observe`, `record_usage`, the failure it would report);
`env_lease` builds the client-side environment fallback lease. No socket is
touched here; the wall clock and `os.environ` are read only where a caller
passes no `now` / `environ` (the env fallback, `observe`).

Theory of operation — the decisions at a lease's end are *steps*:
generators that yield what they need done (`Call` a daemon method, `Invoke`
the caller's function, `Adopt` a failover's next lease, `Relet`: lease
again) and get the answer sent back in, or the exception thrown in. The
blocking client runs them with `Client._run`, the async one with
`AsyncClient._run`; each is a few lines of transport, the decisions are
written once:

- `exit_steps`: leaving a `with` block. A clean exit releases with success;
  an exception `classify` recognises is reported; any other (an agent bug,
  Ctrl-C, cancellation) releases without blaming the credential.
- `report_steps`: a failure report. When the daemon no longer knows the
  lease (its TTL ran out while an SDK waited out a long `retry-after`, or
  the connection dropped) the report goes again by `profile`: the failure
  belongs to the credential, and the spent key must not stay ready.
- `failover_steps`: `call_with_failover`'s loop.

A `Call` marked `cleanup` runs while an exception is on its way out: the
async client shields it from cancellation (bounded in time).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgspec

from . import protocol as P
from .classify import Failure, classify, headers_of, parse_limits, scrub
from .providers import FALLBACK_ENV, auth_headers, normalise_provider

log = logging.getLogger("argent_client")

LOCAL_PREFIX: Final = "env-local-"
"""Lease ids of client-side environment fallback leases (never sent to a daemon)."""
ENV_TTL: Final = 3600.0
"""`expires_at` of a local env lease without `ttl` (nothing enforces it)."""


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

    def release_params(self, usage: P.Usage | None = None, *,
                       success: bool = True) -> P.ReleaseParams:
        """The `release` params: the observed limits and `usage` (default: recorded)."""
        return P.ReleaseParams(lease_id=self.lease_id, usage=usage or self.usage,
                               limits=self.limits, success=success)

    def report_params(
        self, failure: Failure, *, failover: bool, model: str | None = None,
        by_profile: bool = False,
    ) -> P.ReportParams:
        """The `report_failure` params for `failure` on this lease.

        `model` is None unless the caller knows the limit was per model: the
        lease's own model only says what was asked (a 5-hour subscription
        cap or a spent balance is account-wide), and a report that names a
        model cools the profile for that model alone. `by_profile` names the
        profile instead of the lease (for a lease the daemon no longer knows).
        """
        return P.ReportParams(
            kind=failure.kind,
            lease_id=None if by_profile else self.result.lease_id,
            profile=self.result.profile if by_profile else None,
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


# ------------------------------------------------------------ steps (module doc)


@dataclass(frozen=True, slots=True)
class Call:
    """Send `method` with `params`; the step gets the typed result or the exception."""

    method: str
    params: msgspec.Struct
    cleanup: bool = False


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call the caller's function with `lease`; the step gets what it returned or raised."""

    lease: LeaseBase


@dataclass(frozen=True, slots=True)
class Adopt:
    """Wrap a failover's next lease in the client's lease class; the step gets it."""

    result: P.LeaseResult


@dataclass(frozen=True, slots=True)
class Relet:
    """Lease again with the loop's own arguments; the step gets the new lease."""


Op: TypeAlias = Call | Invoke | Adopt | Relet
Steps: TypeAlias = Generator[Op, Any, Any]


class Runner:
    """Drives steps for a client: `next()` gives each op until None, then `value`.

    The client sets `answer` (what the op gave) or `error` (what it raised)
    before asking for the next op; an error is thrown into the steps.
    """

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self.answer: Any = None
        self.error: BaseException | None = None
        self.value: Any = None

    def next(self) -> Op | None:
        error, self.error = self.error, None
        try:
            op = self._steps.throw(error) if error is not None else self._steps.send(self.answer)
        except StopIteration as stop:
            self.value = stop.value
            return None
        self.answer = None
        return op


def release_steps(lease: LeaseBase, *, quiet: bool, raising: bool = True,
                  cleanup: bool = False, usage: P.Usage | None = None,
                  success: bool = True) -> Steps:
    """Release `lease` (once; a local env lease sends nothing).

    `usage` replaces the recorded usage; `success=False` ends the lease
    without claiming the credential worked (its failure counts stay).

    Not `quiet`: every error is raised (`LeaseNotFound` when the daemon no
    longer knows it). `quiet`: a lease already gone only logs a warning, and
    any other `ArgentError` too unless `raising`.
    """
    if lease.ended:
        return
    lease.ended = True
    if lease.local:
        return
    params = lease.release_params(usage, success=success)
    if not quiet:
        yield Call("release", params, cleanup)
        return
    try:
        yield Call("release", params, cleanup)
    except (P.LeaseNotFound, P.DaemonUnavailable) as err:
        log.warning("lease %s was already gone at release: %s", lease.lease_id, err)
    except P.ArgentError as err:
        if raising:
            raise
        log.warning("could not release lease %s: %s", lease.lease_id, err)


def report_steps(lease: LeaseBase, failure: Failure, *, failover: bool,
                 model: str | None = None, cleanup: bool = False) -> Steps:
    """Report `failure` on `lease` and end it; the step's value is the `ReportResult`."""
    result, _ = yield from _report(lease, failure, failover, model, cleanup)
    return result


def _report(
    lease: LeaseBase, failure: Failure, failover: bool, model: str | None, cleanup: bool
) -> Generator[Op, Any, tuple[P.ReportResult, bool]]:
    """(the daemon's answer, whether it went by profile because the lease was gone)."""
    lease.ended = True
    if lease.local:
        return local_report(), False
    try:
        params = lease.report_params(failure, failover=failover, model=model)
        result: P.ReportResult = yield Call("report_failure", params, cleanup)
        return result, False
    except P.LeaseNotFound:
        log.info("lease %s ended before its %s report; reporting it on profile %s",
                 lease.lease_id, failure.kind, lease.profile)
    # No failover by profile: the daemon would pick the next lease without this
    # lease's model, route or session (`failover_steps` leases again instead).
    params = lease.report_params(failure, failover=False, model=model, by_profile=True)
    result = yield Call("report_failure", params, cleanup)
    return result, True


def exit_steps(lease: LeaseBase, exc: BaseException | None) -> Steps:
    """Leaving a lease's `with` block with `exc` (or cleanly): release or report."""
    if lease.ended:
        return
    failure = lease.failure_for(exc) if exc is not None else None
    if failure is None:
        yield from release_steps(lease, quiet=True, raising=exc is None,
                                 cleanup=exc is not None)
        return
    try:
        yield from _report(lease, failure, False, None, True)
    except P.ArgentError as err:
        log.warning("could not report %s on lease %s: %s", failure.kind, lease.lease_id, err)


def failover_steps(lease: LeaseBase, *, attempts: int, wait: float | None) -> Steps:
    """`call_with_failover`: invoke, and on a classified failure move to the next lease.

    The step's value is what the caller's function returned (see
    `Client.call_with_failover` for the rules).
    """
    for attempt in range(1, attempts + 1):
        try:
            value = yield Invoke(lease)
        except BaseException as exc:
            failure = None if lease.ended else lease.failure_for(exc)
            if failure is None:
                yield from release_steps(lease, quiet=True, raising=False, cleanup=True)
                raise
            last = attempt == attempts
            failed = lease.profile
            try:
                report, by_profile = yield from _report(lease, failure, not last, None, False)
            except P.ArgentError as err:
                log.warning("could not report %s: %s", failure.kind, err)
                raise exc from None
            if last:
                raise
            if report.next is not None:
                lease = yield Adopt(report.next)
            elif wait is not None or by_profile:
                try:
                    lease = yield Relet()
                except P.ArgentError:
                    raise exc from None
            else:
                raise
            log.info("%s on %s; trying %s", failure.kind, failed, lease.profile)
            continue
        yield from release_steps(lease, quiet=True, raising=False)
        return value
    raise AssertionError("unreachable")  # pragma: no cover
