"""Where a failure report's effect on a key is decided, and how a cooldown is kept.

Theory of operation
-------------------
A cooldown belongs to a *secret* (`KeyState`), so every profile holding it
cools together. It is either profile-wide (`cooldown_until`, with the kind
that started it) or scoped to one model (`model_cooldowns`), the latter only
when the failure report names the model.

`on_failure` applies the policy table (`config.EFFECTS`, `config.cooldown`)
to one report:

- an `invalid` effect marks the key invalid (until a reset or a new secret);
- a `cooldown` effect whose kind has a backoff starts a cooldown, unless the
  key already cools for that model: a burst of reports from leases that were
  out together must neither extend nor escalate it;
- the n-th failure of a kind in a row (`streak`, cleared by a success) cools
  for `backoff.duration(n)`; a reported `retry_after` wins, capped at
  `retry_after_cap`; `retry_after: 0` means "retry now" and starts nothing;
- other effects are only counted (by the engine).

`on_limits` is the one rule a *successful* response can trigger: a
subscription reporting `unified_status: rejected` with a future reset has
spent its window, so the key cools (profile-wide, kind `quota`) until the
window reopens, capped like `retry_after`, and never shortened.

The functions here decide; the engine keeps the books (wake-up heaps,
events, counters). Only `start`, `end` and `clear` change the cooldown
fields at run time (`KeyState.restore` sets them from `state.json`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from argent_client.protocol import FailureKind, Limits

from .config import EFFECTS, Config
from .keystate import KeyState


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one failure report does to its key (besides being counted)."""

    invalid: bool = False
    """The key is unusable until a reset or a new secret."""
    streak: int | None = None
    """The kind's new count of failures in a row, when this report counts toward backoff."""
    until: float | None = None
    """The end of the cooldown to start, or None for none."""


_NOTHING = Verdict()


def on_failure(
    ks: KeyState,
    kind: FailureKind,
    retry_after: float | None,
    model: str | None,
    config: Config,
    now: float,
) -> Verdict:
    """The effect of a `kind` failure on `ks` at `now` (see the module docstring).

    `model` scopes the cooldown to that model; None makes it profile-wide.
    Pure: the caller applies the verdict.
    """
    effect = EFFECTS[kind]
    if effect == "invalid":
        return Verdict(invalid=True)
    backoff = config.cooldown.backoff(kind)
    if effect != "cooldown" or backoff is None:
        return _NOTHING
    if ks.cooling(now, model) is not None:
        return _NOTHING  # already cooling: a burst of reports must not extend or escalate it
    n = ks.streak.get(kind, 0) + 1
    if retry_after is not None and retry_after >= 0:
        duration = min(retry_after, config.cooldown.retry_after_cap)
    else:
        duration = backoff.duration(n)
    if duration <= 0:
        # `retry_after: 0` means retry now: a window ending now would only linger.
        return Verdict(streak=n)
    return Verdict(streak=n, until=now + duration)


def on_limits(ks: KeyState, limits: Limits, config: Config, now: float) -> float | None:
    """The end of the profile-wide `quota` cooldown `limits` calls for, or None.

    A subscription's 5-hour or weekly window is spent (`unified_status:
    rejected`): cool until it reopens, capped at `retry_after_cap`; None when
    the key already cools at least that long.
    """
    reset = limits.unified_reset
    if limits.unified_status != "rejected" or reset is None or reset <= now:
        return None
    until = min(reset, now + config.cooldown.retry_after_cap)
    current = ks.cooling(now)
    if current is None or current < until:
        return until
    return None


def start(ks: KeyState, kind: str, until: float, model: str | None) -> None:
    """Cool `ks` until `until`, for `model` only when given."""
    if model is not None:
        ks.model_cooldowns[model] = until
    else:
        ks.cooldown_until = until
        ks.cooldown_kind = kind


def live(ks: KeyState, until: float, model: str) -> bool:
    """Whether the cooldown ending at `until` (model "" for profile-wide) still stands."""
    if model:
        return ks.model_cooldowns.get(model) == until
    return ks.cooldown_until == until


def end(ks: KeyState, until: float, model: str) -> bool:
    """End the cooldown ending at `until` (model "" for profile-wide).

    Returns False (and changes nothing) when it no longer stands: a reset or
    a later cooldown replaced it.
    """
    if not live(ks, until, model):
        return False
    if model:
        del ks.model_cooldowns[model]
    else:
        ks.cooldown_until = None
        ks.cooldown_kind = None
        ks.cooldown_ended()
    return True


def entries(ks: KeyState) -> Iterator[tuple[float, str]]:
    """(until, model or "") of every cooldown `ks` holds, for the wake-up heap."""
    if ks.cooldown_until is not None:
        yield ks.cooldown_until, ""
    yield from ((until, model) for model, until in ks.model_cooldowns.items())


def clear(ks: KeyState) -> None:
    """Forget cooldowns, failure counts and the invalid mark (an admin reset)."""
    ks.cooldown_until = None
    ks.cooldown_kind = None
    ks.model_cooldowns.clear()
    ks.streak.clear()
    ks.error_count = 0
    ks.invalid = False
    ks.last_error = None
    ks.budget = None  # a reset also forgets the predicted rate budget
