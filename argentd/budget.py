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

With a cluster, `shared` is this host's share of the key's request budget
kept in Redis for every host (cluster_budgets.py): while it is in charge
it alone says when the next grant fits (`ready_at`), each grant spends one
of its tokens and each reading is told to it; the local request bucket is
still kept, for when the host goes on alone.

Subscription tokens also report their windows (`windows`: Anthropic's
`5h` and `7d`, Codex's `primary` and `secondary`), each with a utilisation,
a reset and a status. A rejected window is handled by the engine as a
cooldown until its reset (cooldown.py); a window at the policy's
`window_cap` holds the profile back until it resets (`capped_until`,
readiness reason `window`); a high utilisation moves the profile behind its
siblings (`demoted`). A window whose reset has passed is over: what it said
no longer counts. A value that cannot be true (not a number, a reset more
than MAX_WINDOW ahead) is ignored, so no report blocks a key for long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Protocol

from argent_client.protocol import Budget as BudgetView
from argent_client.protocol import Limits, WindowStatus

MAX_HORIZON: Final = 120.0
"""Seconds: a reset further ahead than this is treated as this far."""
DEMOTE_UTILIZATION: Final = 0.9
"""A subscription window this full moves the profile behind its siblings."""
TOKEN_EMA: Final = 0.2
"""Weight of the newest request in the running mean of tokens per request."""
MAX_WINDOW: Final = 8 * 24 * 3600.0
"""Seconds: a window reset further ahead than this is not believed (weekly is 7 days)."""

WINDOW_FIELDS: Final = (
    ("5h", "unified_5h_utilization", "unified_5h_reset", "unified_5h_status", 1.0),
    ("7d", "unified_7d_utilization", "unified_7d_reset", "unified_7d_status", 1.0),
    ("primary", "codex_primary_used_percent", "codex_primary_reset", None, 100.0),
    ("secondary", "codex_secondary_used_percent", "codex_secondary_reset", None, 100.0),
)
"""(window, utilisation field, reset field, status field, scale) of `Limits`."""


@dataclass(slots=True)
class Window:
    """One subscription window as last reported."""

    utilization: float | None = None
    reset: float | None = None
    status: str | None = None

    def open_at(self, now: float) -> bool:
        """Whether the report still counts at `now` (its reset has not passed)."""
        return self.reset is None or self.reset > now

    @property
    def rejected(self) -> bool:
        """Spent: the provider says `rejected`, or it is used up (Codex says no status)."""
        return self.status == "rejected" or (
            self.status is None and self.utilization is not None and self.utilization >= 1.0)


def _number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


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


class Share(Protocol):
    """This host's share of a cluster-wide request budget (cluster_budgets.BudgetShare)."""

    def ready_at(self, now: float) -> float | None:
        """When the next grant fits the shared budget, or None when the share is
        not in charge (the local prediction decides)."""
        ...

    def take(self, grant: int, now: float) -> None:
        """Grant number `grant` spends from the shared budget."""
        ...

    def observed(self, grant: int | None, limits: Limits, bucket: Bucket, now: float) -> None:
        """A provider reading of `grant`, just taken into the local `bucket`."""
        ...


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
    unified_reset: float | None = None
    windows: dict[str, Window] = field(default_factory=dict)
    shared: Share | None = None
    """With a cluster: the request budget shared by every host (it decides while in
    charge; the local request bucket is still kept, to go on alone)."""

    # ------------------------------------------------------------ decisions

    def ready_at(self, now: float) -> float:
        """When the next grant fits the budget: `now` if it does already.

        A bucket whose refill is unknown never holds a grant back.
        """
        when = now
        shared = self.shared.ready_at(now) if self.shared is not None else None
        if shared is not None:
            when = shared
        elif self.requests is not None:
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
        if not self.windows:
            return False
        return any(w.utilization is not None and w.utilization >= DEMOTE_UTILIZATION
                   for w in self.windows.values())

    def capped_until(self, cap: float, now: float) -> float | None:
        """When every window at or over `cap` utilisation has reset (the latest
        of their resets), or None when none is (a window without a known
        future reset never holds a profile back)."""
        until = None
        for w in self.windows.values():
            u, reset = w.utilization, w.reset
            if u is not None and u >= cap and reset is not None and now < reset:
                until = reset if until is None else max(until, reset)
        return until

    def rejected_until(self, now: float) -> float | None:
        """The latest reset of the rejected windows still open, or None."""
        until = None
        for w in self.windows.values():
            if w.rejected and w.reset is not None and now < w.reset:
                until = w.reset if until is None else max(until, w.reset)
        return until

    # ------------------------------------------------------------ changes

    def grant(self, now: float) -> int:
        """Charge one request (and the mean tokens) to the budget; returns its number."""
        self.grants += 1
        if self.shared is not None:
            self.shared.take(self.grants, now)
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
                self._observe_unified(limits, now)
                self._tell_shared(limits, grant, now)  # still telling, with its token's serial
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
        self._observe_unified(limits, now)
        self._tell_shared(limits, grant, now)

    def _tell_shared(self, limits: Limits, grant: int | None, now: float) -> None:
        if (self.shared is not None and self.requests is not None
                and limits.requests_remaining is not None):
            self.shared.observed(grant, limits, self.requests, now)

    def _observe_unified(self, limits: Limits, now: float) -> None:
        if limits.unified_status is not None:
            self.unified_status = limits.unified_status
        reset = _number(limits.unified_reset)
        if reset is not None:
            self.unified_reset = reset
        for name, u_field, r_field, s_field, scale in WINDOW_FIELDS:
            u = _number(getattr(limits, u_field))
            at = _number(getattr(limits, r_field))
            status = getattr(limits, s_field) if s_field else None
            if u is None and at is None and status is None:
                continue
            w = self.windows.get(name)
            if w is None or not w.open_at(now):
                w = self.windows[name] = Window()  # a new window: the old one's numbers go
            if u is not None:
                w.utilization = max(0.0, u / scale)
            if at is not None:
                w.reset = at if at - now <= MAX_WINDOW else None
            if status is not None:
                w.status = status

    def window_view(self, now: float) -> dict[str, WindowStatus]:
        """The `status` view of the windows still open at `now`."""
        return {name: WindowStatus(utilization=w.utilization, reset=w.reset, status=w.status)
                for name, w in sorted(self.windows.items()) if w.open_at(now)}

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
