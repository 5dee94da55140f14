"""Whether a profile may take a lease, and if not, why and until when.

Theory of operation
-------------------
`readiness` is the one rule. Selection (`selection.py`), the `status` view
(`views.py`) and the `no_profile_available` error all call it, so they
cannot disagree. It reads a profile's `Slot` and its secret's `KeyState` at
`now` and changes nothing.

It answers a `Readiness`: `reason` is `"ready"` or the first thing found
that holds the profile back, checked cheapest first (the hot path stops at
the first answer), and `until` is when that reason ends by itself, when
time alone ends it:

| reason | holds back | `until` |
|---|---|---|
| `removed` | gone from the file, kept while its leases finish | — |
| `disabled` | `disabled` in the file or `argentctl disable` | — |
| `invalid` | an `auth` verdict (until `reset` or a new secret) | — |
| `expired` | the profile's `expires` has passed | — |
| `model` | `models` does not list the requested model | — |
| `cooldown` | a cooldown (profile-wide, or for one model) | its end, or the next probe |
| `busy` | `max_concurrent` leases out | — (its first lease's end) |
| `probing` | a probe lease is out (one at a time) | — (that lease's end) |
| `budget` | the predicted rate budget is spent | the refill |
| `window` | a subscription window at the policy's `window_cap` | the latest such window's reset |
| `paid` | an API key, under `paid_fallback = "deny"` (selection.py) | — |

`until` is a lower bound: another reason may hold the profile after it, and
is found then. Reasons without an `until` end by an event (a release, an
`enable`, a reload), never by time alone.

`ready` with `probe` set admits one lease on a profile that is cooling:
the early-reset probe of a long `quota` cooldown (`KeyState.probe_at`, every
`[policy] recheck` seconds) — its success ends the cooldown for everyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

if TYPE_CHECKING:
    from .books import Slot
    from .keystate import KeyState

Reason: TypeAlias = Literal[
    "ready", "removed", "disabled", "invalid", "expired", "model", "cooldown", "busy",
    "probing", "budget", "window", "paid",
]

SUBSCRIPTION_TYPES: Final = frozenset({"setup-token", "oauth"})
"""Profile types spent in subscription windows (the rest are paid per token)."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """A `readiness` answer: see the module docstring."""

    reason: Reason
    until: float | None = None
    probe: bool = False
    """Ready only as the one early-reset probe of a cooling profile."""

    @property
    def ok(self) -> bool:
        return self.reason == "ready"


READY: Final = Readiness("ready")
PROBE: Final = Readiness("ready", probe=True)
REMOVED: Final = Readiness("removed")
DISABLED: Final = Readiness("disabled")
INVALID: Final = Readiness("invalid")
EXPIRED: Final = Readiness("expired")
MODEL: Final = Readiness("model")
BUSY: Final = Readiness("busy")
PROBING: Final = Readiness("probing")
PAID: Final = Readiness("paid")
"""Not from `readiness`: the lease's `paid_fallback = "deny"` refuses an API key
of a provider that has subscriptions (selection.py)."""


def readiness(
    slot: Slot, ks: KeyState, model: str | None, now: float, window_cap: float = 1.0
) -> Readiness:
    """Whether `slot` (whose secret's state is `ks`) may serve `model` at `now`.

    `window_cap` is the utilisation at which a subscription window stops
    leasing (the lease's policy). Pure: reads, never writes.
    """
    p = slot.profile
    if slot.removed:
        return REMOVED
    if slot.disabled:
        return DISABLED
    if ks.invalid:
        return INVALID
    if p.expires is not None and p.expires <= now:
        return EXPIRED
    if model is not None and p.models is not None and model not in p.models:
        return MODEL
    until = ks.cooling(now, model)
    if until is not None:
        probe_at = ks.probe_at
        if probe_at is None or until != ks.cooldown_until:
            return Readiness("cooldown", until)
        if probe_at > now:
            return Readiness("cooldown", min(until, probe_at))
        return PROBING if ks.active else PROBE
    if p.max_concurrent is not None and slot.active >= p.max_concurrent:
        return BUSY
    if ks.probing and ks.active:
        return PROBING
    budget = ks.budget
    if budget is not None:
        refill = budget.ready_at(now)
        if refill > now:
            return Readiness("budget", refill)
        if budget.windows and p.type in SUBSCRIPTION_TYPES:
            reset = budget.capped_until(window_cap, now)
            if reset is not None:
                return Readiness("window", reset)
    return READY


def profile_state(
    r: Readiness, *, oauth: bool = False
) -> Literal["ready", "cooldown", "disabled", "invalid", "expired"]:
    """The coarse `status` state of a profile-wide readiness (a profile open to
    its early-reset probe is `cooldown`: it is not ready for everyone).

    An ended OAuth access token is `expired` (the refresher may bring a new
    one); any other ended secret is `invalid`.
    """
    if r.probe:
        return "cooldown"
    reason = r.reason
    if reason in ("disabled", "invalid"):
        return reason  # type: ignore[return-value]
    if reason == "expired":
        return "expired" if oauth else "invalid"
    if reason in ("cooldown", "window"):
        return "cooldown"
    return "ready"
