"""Leases in flight on the other hosts, so a rate-budget reading counts them too.

A provider's `remaining` counts the requests it has seen, from every host.
The engine's prediction takes its own leases in flight off a reading (they
may not have been counted yet, budget.py); with a cluster, the other
hosts' leases in flight are just as uncounted. Each host says how many
leases it has out on each budgeted secret when that changes (and every
`RESEND` seconds while nonzero, so a dead host's count fades after
`STALE`); each reading taken here is lowered by the others' count at once.

Pure: the cluster task sends and receives; every call takes `now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from .keystate import KeyState

RESEND: Final = 1.0
"""Seconds between repeats of a nonzero count."""
STALE: Final = 3.0
"""Seconds after which a host's count no longer counts."""


@dataclass(slots=True)
class InFlight:
    remote: dict[str, dict[str, tuple[int, float]]] = field(default_factory=dict)
    """key -> host -> (leases out there, when it said so)."""
    sent: dict[str, tuple[int, float]] = field(default_factory=dict)
    """key -> (the count this host last said, when)."""
    readings: dict[str, int] = field(default_factory=dict)
    """key -> the budget's `reported_grant` when last looked at."""

    def others(self, key: str, now: float) -> int:
        hosts = self.remote.get(key)
        if not hosts:
            return 0
        return sum(n for n, at in hosts.values() if now - at < STALE)

    def heard(self, host: str, counts: Mapping[str, int], now: float) -> None:
        for key, n in counts.items():
            self.remote.setdefault(key, {})[host] = (int(n), now)

    def to_send(self, actives: Iterable[tuple[str, int]], now: float) -> dict[str, int]:
        """The counts to say now: changed ones, and nonzero ones due again."""
        out: dict[str, int] = {}
        for key, n in actives:
            last = self.sent.get(key)
            if last is None or last[0] != n or (n and now - last[1] >= RESEND):
                out[key] = n
                self.sent[key] = (n, now)
        return out

    def after_change(self, key: str, ks: KeyState, now: float) -> bool:
        """If `ks` just took a provider reading, lower it by the other hosts' leases
        in flight; returns whether it took one (its key now has a budget)."""
        budget = ks.budget
        if budget is None:
            return False
        if self.readings.get(key) == budget.reported_grant:
            return False
        self.readings[key] = budget.reported_grant
        others = self.others(key, now)
        if others:
            if budget.requests is not None:
                budget.requests.take(float(others), now)
            if budget.tokens is not None and budget.token_cost:
                budget.tokens.take(others * budget.token_cost, now)
        return True
