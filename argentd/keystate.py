"""What argentd knows about one secret: cooldowns, errors, budget, usage.

State is per *secret* (`Secret.key`), not per profile id: two profiles that
hold one secret share one cooldown, and a changed secret starts clean.
`KeySnapshot` (in snapshot.py) is its persistent part. The cooldown fields
are written by `cooldown.py`, the counts by the engine; whether the key may
be leased is read by `readiness.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from argent_client.protocol import Usage

from .budget import Budget
from .snapshot import KeySnapshot

_NO_BUDGET: Final = Budget()
"""Read-only stand-in for keys without a budget; never changed."""

PROBE_AFTER: Final = 3
"""Failures in a row after which a profile leaving its cooldown is probed first."""


class Gate(Protocol):
    """A limit on a secret's leases kept outside the engine (the cluster's slots).

    `open` is read by `readiness` (pure); `granted` and `refused` tell the
    gate's owner what selection did, so it can plan its slots.
    """

    def open(self, active: int, now: float) -> bool:
        """Whether one more lease may go out while `active` are out on this secret."""
        ...

    def granted(self, active: int, now: float) -> None:
        """A lease is being granted; `active` were out before it."""
        ...

    def refused(self, active: int, now: float) -> None:
        """A lease was asked for and nothing was ready (perhaps because of this gate)."""
        ...


@dataclass(slots=True)
class KeyState:
    cooldown_until: float | None = None
    cooldown_kind: str | None = None
    model_cooldowns: dict[str, float] = field(default_factory=dict)
    streak: dict[str, int] = field(default_factory=dict)
    """Consecutive failures per kind since the last success (drives backoff)."""
    error_count: int = 0
    invalid: bool = False
    last_error: str | None = None
    last_used: float | None = None
    requests: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    budget: Budget | None = None
    """The provider's rate budget as last reported, predicted forward (not persisted:
    it refills within a minute or two). Made on first use: 10,000 idle profiles
    carry none."""
    orphaned_at: float | None = None
    """Since when no loaded profile holds this secret (books.py), or None."""
    active: int = 0
    """Leases out on this secret, over every profile that holds it."""
    proven: bool = False
    """A lease on this secret has succeeded (a first `auth` failure then only cools it)."""
    probe_at: float | None = None
    """During a long `quota` cooldown: when the next early-reset probe is admitted."""
    probing: bool = False
    """Out of a cooldown after PROBE_AFTER failures in a row: one lease at a time
    until a success."""
    gate: Gate | None = None
    """Set by the cluster for a secret with `max_concurrent`: the slots this host holds."""

    def cooling(self, now: float, model: str | None = None) -> float | None:
        """The end of the cooldown that blocks `model` at `now`, or None."""
        until = self.cooldown_until if self.cooldown_until and self.cooldown_until > now else None
        if model is not None:
            m = self.model_cooldowns.get(model)
            if m is not None and m > now and (until is None or m > until):
                until = m
        return until

    @property
    def known_budget(self) -> Budget:
        """The budget to read (an empty one when nothing was ever counted)."""
        return self.budget if self.budget is not None else _NO_BUDGET

    def own_budget(self) -> Budget:
        """The budget to change, made on first use."""
        if self.budget is None:
            self.budget = Budget()
        return self.budget

    def granted(self, now: float) -> int:
        """A lease on this secret was granted at `now`; returns its grant number."""
        self.last_used = now
        self.requests += 1
        self.active += 1
        return self.own_budget().grant(now)

    def released(
        self, grant: int, usage: Usage | None, now: float, *, success: bool = True
    ) -> bool:
        """Lease number `grant` on this secret ended, having used `usage`; with
        `success` it ended well: the error counts reset and probing ends.
        Returns whether a persisted count changed."""
        changed = False
        if success:
            changed = bool(self.error_count or self.streak or self.probing or not self.proven)
            self.proven = True
            self.streak.clear()
            self.error_count = 0
            self.probing = False
        tokens = None
        if usage is not None:
            self.input_tokens += usage.input_tokens or 0
            self.output_tokens += usage.output_tokens or 0
            if usage.input_tokens is not None or usage.output_tokens is not None:
                tokens = (usage.input_tokens or 0) + (usage.output_tokens or 0)
        self.own_budget().settle(grant, tokens, now)
        return changed

    def failed(self, kind: str, status: int | None) -> None:
        """A failure of `kind` (HTTP `status`) was reported against this secret."""
        self.error_count += 1
        self.failures += 1
        self.last_error = kind if status is None else f"{kind} ({status})"

    def cooldown_ended(self, kind: str | None) -> None:
        """A profile-wide cooldown of `kind` is over: probe it if it failed often
        in a row, or if an `auth` failure cooled it (one probe tells)."""
        self.probe_at = None
        if kind == "auth" or sum(self.streak.values()) >= PROBE_AFTER:
            self.probing = True

    def to_snapshot(self) -> KeySnapshot:
        """The persisted part: every field KeySnapshot names (copies of the dicts)."""
        fields: dict[str, Any] = {f: _copy(getattr(self, f)) for f in KeySnapshot.__struct_fields__}
        return KeySnapshot(**fields)

    def restore(self, k: KeySnapshot) -> None:
        for f in KeySnapshot.__struct_fields__:
            setattr(self, f, _copy(getattr(k, f)))


def _copy(value: object) -> object:
    return dict(value) if isinstance(value, dict) else value
