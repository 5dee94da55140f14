"""Where a failure report's effect on a key is decided, and how a cooldown is kept.

Theory of operation
-------------------
A cooldown belongs to a *secret* (`KeyState`), so every profile holding it
cools together. It is either profile-wide (`cooldown_until`, with the kind
that started it) or scoped to one model (`model_cooldowns`), the latter only
when the failure report names the model, the name is at most
MAX_MODEL_NAME characters, and fewer than MAX_MODEL_COOLDOWNS other models
cool already (`scope`): else it is profile-wide.

`on_failure` applies the policy table (`config.EFFECTS`, `config.cooldown`)
to one report:

- `auth` heals itself (`_on_auth`): the first failure of a secret that has
  worked (`proven`) cools it `[cooldown.auth] base` seconds and then admits
  one probe; a second in a row, or a first on a secret that never worked,
  marks it invalid (until a reset or a new secret);
- a `cooldown` effect whose kind has a backoff starts a cooldown, unless the
  key already cools for that model: a burst of reports from leases that were
  out together must neither extend nor escalate it;
- the n-th failure of a kind in a row (`streak`, cleared by a success) cools
  for `backoff.duration(n)`; a reported `retry_after` wins, capped at
  `retry_after_cap`; `retry_after: 0` means "retry now" and starts nothing;
- other effects are only counted (by the engine).

`on_limits` is the one rule a *successful* response can trigger: a
subscription reporting a rejected window (`unified_status: rejected`, or one
window's own status) with a future reset has spent it, so the key cools
(profile-wide, kind `quota`) until the latest rejected window reopens,
capped like `retry_after`, and never shortened.

The functions here decide; the engine keeps the books (wake-up heaps,
events, counters). Only `start`, `end`, `probe_succeeded` and `clear`
change the cooldown fields at run time (`KeyState.restore` sets them from
`state.json`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

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

MAX_MODEL_NAME: Final = 200
"""A model name longer than this (characters) never scopes a cooldown."""
MAX_MODEL_COOLDOWNS: Final = 16
"""A key cooling for this many models at once cools for every model instead."""


def scope(ks: KeyState, model: str | None, now: float) -> str | None:
    """The model a failure report's cooldown is scoped to: `model`, or None
    (profile-wide) when the name is longer than MAX_MODEL_NAME or the key
    already cools for MAX_MODEL_COOLDOWNS other models. So `state.json` holds
    at most MAX_MODEL_COOLDOWNS short names per secret, whatever clients send."""
    if model is None:
        return None
    if len(model) > MAX_MODEL_NAME:
        return None
    if model not in ks.model_cooldowns:
        live = sum(1 for until in ks.model_cooldowns.values() if until > now)
        if live >= MAX_MODEL_COOLDOWNS:
            return None
    return model


def bound(ks: KeyState) -> None:
    """Hold a restored key to the `scope` rule (an older state file may not):
    long names go, and only the MAX_MODEL_COOLDOWNS latest-ending stay."""
    kept = sorted(((until, m) for m, until in ks.model_cooldowns.items()
                   if len(m) <= MAX_MODEL_NAME), reverse=True)[:MAX_MODEL_COOLDOWNS]
    if len(kept) != len(ks.model_cooldowns):
        ks.model_cooldowns = {m: until for until, m in kept}


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
    if kind == "auth":
        return _on_auth(ks, config, now)
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


def _on_auth(ks: KeyState, config: Config, now: float) -> Verdict:
    """Self-healing `auth`: the first failure of a secret that has worked cools
    it `[cooldown.auth] base` seconds (then one probe); a second in a row, or a
    first on a secret that never worked, makes it invalid. Reports from leases
    out together while it cools for `auth` count as one."""
    if ks.cooldown_kind == "auth" and ks.cooling(now) is not None:
        return _NOTHING
    if not ks.proven or ks.streak.get("auth", 0) >= 1:
        return Verdict(invalid=True, streak=ks.streak.get("auth", 0) + 1)
    return Verdict(streak=1, until=now + config.cooldown.auth.base)


def on_limits(ks: KeyState, limits: Limits, config: Config, now: float) -> float | None:
    """The end of the profile-wide `quota` cooldown `limits` calls for, or None.

    A subscription's 5-hour or weekly window is spent (the combined
    `unified_status: rejected`, or a window of its own, `Budget.windows`,
    read after `limits` was taken in): cool until the latest rejected window
    reopens, capped at `retry_after_cap`; None when the key already cools at
    least that long.
    """
    reset = limits.unified_reset
    if limits.unified_status != "rejected" or reset is None or not reset > now:
        reset = None
    windows = ks.known_budget.rejected_until(now)
    if windows is not None and (reset is None or windows > reset):
        reset = windows
    if reset is None:
        return None
    until = min(reset, now + config.cooldown.retry_after_cap)
    current = ks.cooling(now)
    if current is None or current < until:
        return until
    return None


def start(
    ks: KeyState, kind: str, until: float, model: str | None, now: float, recheck: float
) -> None:
    """Cool `ks` until `until`, for `model` only when given. A profile-wide
    `quota` cooldown longer than `recheck` seconds admits an early-reset probe
    every `recheck` seconds (`probe_at`)."""
    if model is not None:
        ks.model_cooldowns[model] = until
        return
    ks.cooldown_until = until
    ks.cooldown_kind = kind
    ks.probe_at = now + recheck if kind == "quota" and until - now > recheck else None


def probed(ks: KeyState, now: float, recheck: float) -> None:
    """An early-reset probe lease was just granted: the next one in `recheck` seconds."""
    ks.probe_at = now + recheck


def probe_succeeded(ks: KeyState) -> float | None:
    """The early-reset probe worked: the window came back early. Ends the
    profile-wide cooldown; returns the end it had (None if none stood)."""
    until = ks.cooldown_until
    if until is not None:
        ks.cooldown_until = None
        ks.cooldown_kind = None
    ks.probe_at = None
    return until


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
        kind = ks.cooldown_kind
        ks.cooldown_until = None
        ks.cooldown_kind = None
        ks.cooldown_ended(kind)
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
    ks.probe_at = None
    ks.model_cooldowns.clear()
    ks.streak.clear()
    ks.error_count = 0
    ks.invalid = False
    ks.last_error = None
    ks.budget = None  # a reset also forgets the predicted rate budget
