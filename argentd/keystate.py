"""What argentd knows about one secret: cooldowns, errors, budget, usage.

State is per *secret* (`Secret.key`), not per profile id: two profiles that
hold one secret share one cooldown, and a changed secret starts clean.
`KeySnapshot` (in snapshot.py) is its persistent part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .budget import Budget
from .snapshot import KeySnapshot

_NO_BUDGET: Final = Budget()
"""Read-only stand-in for keys without a budget; never changed."""

PROBE_AFTER: Final = 3
"""Failures in a row after which a profile leaving its cooldown is probed first."""


class Gate(Protocol):
    """A limit on a secret's leases kept outside the engine (the cluster's slots)."""

    def admits(self, active: int, now: float) -> bool:
        """Whether one more lease may go out while `active` are out on this secret."""
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
    active: int = 0
    """Leases out on this secret, over every profile that holds it."""
    refill_noted: float | None = None
    """The budget refill time last put on the engine's wake-up heap."""
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

    def blocked_until(self, now: float) -> float | None:
        """When a grant fits the rate budget (later than `now`), or None if it does now.

        A probing key with a lease out waits for that lease: None is not
        returned, but neither is a time, so callers check `probe_busy`.
        """
        if self.budget is None:
            return None
        when = self.budget.ready_at(now)
        return when if when > now else None

    @property
    def known_budget(self) -> Budget:
        """The budget to read (an empty one when nothing was ever counted)."""
        return self.budget if self.budget is not None else _NO_BUDGET

    def own_budget(self) -> Budget:
        """The budget to change, made on first use."""
        if self.budget is None:
            self.budget = Budget()
        return self.budget

    @property
    def probe_busy(self) -> bool:
        return self.probing and self.active > 0

    def succeeded(self) -> None:
        """A lease on this secret ended well: counts reset, probing ends."""
        self.streak.clear()
        self.error_count = 0
        self.probing = False

    def cooldown_ended(self) -> None:
        """A profile-wide cooldown is over: probe it if it failed often in a row."""
        if sum(self.streak.values()) >= PROBE_AFTER:
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
