"""Rate budgets: what a profile may still spend before its provider says 429.

Theory of operation
-------------------
A provider's response tells the budget of the key it was sent with:
`limit`, `remaining` and `reset` (when the bucket is full again) for requests
and for tokens. We model each as a token bucket that refills linearly to
`limit` by `reset`, so its rate is `(limit - remaining) / (reset - now)`.

A report is a reading *after* the provider counted the reported request.
Other leases still out on the same key may or may not have been counted
(requests overtake each other on the way), so the level becomes
`remaining - other_leases_in_flight`: never more than the truth. A reading
older than one already taken (by grant order) is ignored. Between reports,
each grant takes one request (and the average tokens per request) from the
prediction, and time adds the refill back.

A bucket whose level is below what a grant costs makes the profile not
ready until the refill; `ready_at` says when, and the engine wakes its
waiters then. What we cannot trust never blocks a profile for long: a
bucket without a refill rate never blocks, a `reset` further than
`MAX_HORIZON` ahead counts as `MAX_HORIZON`, and a report with impossible
numbers is ignored.

Subscription tokens also report a unified 5-hour/weekly window: `rejected`
is handled by the engine as a cooldown until `unified_reset`, and a high
utilisation moves the profile behind its siblings (`demoted`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from argent_client.protocol import Budget as BudgetView
from argent_client.protocol import Limits

MAX_HORIZON: Final = 120.0
"""Seconds: a reset further ahead than this is treated as this far."""
DEMOTE_UTILIZATION: Final = 0.9
"""A subscription window this full moves the profile behind its siblings."""
TOKEN_EMA: Final = 0.2
"""Weight of the newest request in the running mean of tokens per request."""


@dataclass(slots=True)
class Bucket:
    """A token bucket as far as we can predict it."""

    limit: float
    level: float
    rate: float | None
    """Refill per second, or None when no report has told it yet."""
    t: float
    """When `level` was last brought up to date."""

    def at(self, now: float) -> float:
        """The predicted level at `now`."""
        if self.rate is None or now <= self.t:
            return min(self.level, self.limit)
        return min(self.limit, self.level + self.rate * (now - self.t))

    def take(self, amount: float, now: float) -> None:
        self.level = self.at(now) - amount
        self.t = max(now, self.t)

    def ready_at(self, need: float, now: float) -> float | None:
        """When the level reaches `need`: `now` if it has, None if no refill is known."""
        level = self.at(now)
        if level >= need:
            return now
        if not self.rate:
            return None
        # Never further than the horizon: a skewed rate or an absurd usage
        # report must not hold a key for longer than a provider window.
        return now + min((need - level) / self.rate, MAX_HORIZON)

    def observe(
        self, limit: int | None, remaining: int | None, reset: float | None,
        spent_since: float, now: float,
    ) -> None:
        """Take a provider reading, minus what was spent after it."""
        if limit is not None and limit > 0:
            self.limit = float(limit)
        if remaining is None or remaining < 0 or self.limit <= 0:
            return
        remaining = min(remaining, int(self.limit))
        if reset is not None:
            horizon = min(max(reset - now, 0.0), MAX_HORIZON)
            missing = self.limit - remaining
            if horizon > 0 and missing > 0:
                self.rate = missing / horizon
            elif horizon == 0:
                remaining = int(self.limit)  # full again by now (or the clocks disagree)
        self.level = remaining - spent_since
        self.t = now


def _bucket(limit: int | None, remaining: int | None) -> Bucket | None:
    if remaining is None or remaining < 0:
        return None
    cap = float(limit) if limit is not None and limit > 0 else float(max(remaining, 1))
    return Bucket(limit=cap, level=float(remaining), rate=None, t=0.0)


@dataclass(slots=True)
class Budget:
    """Everything the provider told us about one key's budget."""

    requests: Bucket | None = None
    tokens: Bucket | None = None
    grants: int = 0
    """Leases granted on this key so far (numbers each grant)."""
    reported_grant: int = 0
    """The newest grant a reading came back for (older readings are stale)."""
    token_cost: float | None = None
    """Running mean of tokens per request, from the usage on releases."""
    token_grants: dict[int, float] = field(default_factory=dict)
    """Tokens charged to each grant not yet settled by its usage."""
    unified_status: str | None = None
    unified_5h: float | None = None
    unified_7d: float | None = None
    unified_reset: float | None = None

    # ------------------------------------------------------------ decisions

    def ready_at(self, now: float) -> float:
        """When the next grant fits the budget: `now` if it does already.

        A bucket whose refill is unknown never holds a grant back.
        """
        when = now
        if self.requests is not None:
            t = self.requests.ready_at(1.0, now)
            if t is not None:
                when = max(when, t)
        if self.tokens is not None and self.token_cost:
            need = min(self.token_cost, self.tokens.limit)
            t = self.tokens.ready_at(need, now)
            if t is not None:
                when = max(when, t)
        return when

    def headroom(self, now: float) -> float:
        """Fraction of the request budget left (1.0 when unknown)."""
        if self.requests is None or self.requests.limit <= 0:
            return 1.0
        return max(0.0, self.requests.at(now)) / self.requests.limit

    @property
    def demoted(self) -> bool:
        """A subscription window nearly used up: lease its siblings first."""
        h5, d7 = self.unified_5h, self.unified_7d
        return (h5 is not None and h5 >= DEMOTE_UTILIZATION) or (
            d7 is not None and d7 >= DEMOTE_UTILIZATION
        )

    # ------------------------------------------------------------ changes

    def grant(self, now: float) -> int:
        """Charge one request (and the mean tokens) to the budget; returns its number."""
        self.grants += 1
        if self.requests is not None:
            self.requests.take(1.0, now)
        if self.tokens is not None and self.token_cost:
            self.tokens.take(self.token_cost, now)
            self.token_grants[self.grants] = self.token_cost
        return self.grants

    def settle(self, grant: int | None, tokens: int | None, now: float) -> None:
        """A lease ended; `tokens` is what its request really used, if known."""
        charged = self.token_grants.pop(grant, 0.0) if grant is not None else 0.0
        if tokens is None or tokens < 0:
            return
        self.token_cost = (
            float(tokens) if self.token_cost is None
            else (1 - TOKEN_EMA) * self.token_cost + TOKEN_EMA * tokens
        )
        if self.tokens is not None and charged:
            self.tokens.take(tokens - charged, now)

    def observe(self, limits: Limits, grant: int | None, in_flight: int, now: float) -> None:
        """Take a provider reading reported with lease number `grant`.

        `in_flight` counts the *other* leases out on this key: requests may
        reach the provider in any order, so none of them is taken as counted
        (conservative: at worst a few requests of headroom are left unused
        until the next reading). A reading from a lease granted before the
        newest one already read is stale and leaves the buckets alone.
        """
        if grant is not None:
            if grant < self.reported_grant:
                self._observe_unified(limits)
                return
            self.reported_grant = grant
        since = max(0, in_flight)
        if limits.requests_remaining is not None:
            if self.requests is None:
                self.requests = _bucket(limits.requests_limit, limits.requests_remaining)
            if self.requests is not None:
                self.requests.observe(limits.requests_limit, limits.requests_remaining,
                                      limits.requests_reset, since, now)
        if limits.tokens_remaining is not None:
            if self.tokens is None:
                self.tokens = _bucket(limits.tokens_limit, limits.tokens_remaining)
            if self.tokens is not None:
                pending = sum(c for g, c in self.token_grants.items() if g != grant)
                self.tokens.observe(limits.tokens_limit, limits.tokens_remaining,
                                    limits.tokens_reset, pending, now)
        self._observe_unified(limits)

    def _observe_unified(self, limits: Limits) -> None:
        if limits.unified_status is not None:
            self.unified_status = limits.unified_status
        if limits.unified_5h_utilization is not None:
            self.unified_5h = limits.unified_5h_utilization
        if limits.unified_7d_utilization is not None:
            self.unified_7d = limits.unified_7d_utilization
        if limits.unified_reset is not None:
            self.unified_reset = limits.unified_reset

    # ------------------------------------------------------------ views

    def view(self, now: float) -> BudgetView | None:
        """The `status` view of this budget, or None when nothing was reported."""
        if self.requests is None and self.tokens is None and self.unified_status is None:
            return None
        refill = self.ready_at(now)
        return BudgetView(
            requests=None if self.requests is None else round(self.requests.at(now), 3),
            requests_limit=None if self.requests is None else int(self.requests.limit),
            tokens=None if self.tokens is None else round(self.tokens.at(now), 1),
            tokens_limit=None if self.tokens is None else int(self.tokens.limit),
            refill_at=refill if refill > now else None,
            unified_status=self.unified_status,
        )
