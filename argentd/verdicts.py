"""The engine's calls that change a profile's verdict (whether it may be leased)
from outside a lease's plain end.

`Engine` (engine.py) takes these as its methods (`Engine.report` is
`report`, and so on), so each one's `self` is the engine and its books:
a failure report (recorded by reports.py under cooldown.py's rules) and
the failover lease that may answer it; an OAuth refresh's new token of the
same login (`replace_profile`) and a revoked login (`mark_invalid`); and the
`reset`, `disable` and `enable` methods. Pure, like the engine: every call
takes `now`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from argent_client.protocol import (
    PROFILE_FAULTS,
    ArgentError,
    FailureKind,
    InvalidParams,
    LeaseParams,
    LeaseResult,
    ProfileState,
    ReportParams,
    ReportResult,
    UnknownProfile,
)

from . import cooldown
from .leases import Lease
from .model import Profile

if TYPE_CHECKING:
    from .engine import Engine


# ---------------------------------------------------------------- failures


def report(self: Engine, params: ReportParams, *, conn: int | None, now: float) -> ReportResult:
    """Record a failure; with `failover`, answer with the next lease.

    Raises `LeaseNotFound`, `UnknownProfile` or `InvalidParams`.
    """
    self._tick(now)
    lease: Lease | None = None
    if params.lease_id is not None:
        lease = self._leases.get(params.lease_id)
        profile_id = lease.profile_id
    elif params.profile is not None:
        profile_id = params.profile
        self.profile(profile_id)
    else:
        raise InvalidParams("invalid params: report_failure needs `lease_id` or `profile`")
    slot = self._slots[profile_id]
    # A lease's failure is about the secret it handed out, which a reload may
    # have replaced since: the new secret must not pay for it.
    key = lease.key if lease else slot.profile.secret.key
    # The cooldown is model-scoped only when the report names the model: a
    # lease's model says what was asked, not that the limit hit was per model
    # (a subscription's 5-hour cap is account-wide), and route leases always
    # carry one. Names are bounded (cooldown.scope).
    model = cooldown.scope(self._keys[key], params.model, now)
    if params.limits is not None:
        self._reports.observe(slot.profile, key, params.limits,
                              lease.grant if lease else None, now)
    self._reports.failure(slot.profile, key, params, model, now)
    result = ReportResult(
        profile_state=self.state_of(profile_id, now),
        cooldown_until=self._keys[slot.profile.secret.key].cooling(now, model),
    )
    if lease is not None:
        self._end_lease(lease, now)
    if params.failover:
        result.next = self._failover(slot.profile, lease, params.kind, conn, now)
    self._serve_waiters(now)
    return result


def failover(
    self: Engine, failed: Profile, lease: Lease | None, kind: FailureKind, conn: int | None,
    now: float,
) -> LeaseResult | None:
    if lease is not None:
        params = msgspec.structs.replace(lease.params, wait=0.0)
        conn = lease.conn if not lease.detached else conn
        target = lease.target
    else:
        params = LeaseParams(provider=failed.provider)
        target = 0
    try:
        if kind in PROFILE_FAULTS:
            return self._try_lease(params, conn, now, start=target, exclude=failed.id)
        if params.route is None:
            return None
        return self._try_lease(params, conn, now, start=target + 1)
    except ArgentError:
        return None  # the route or provider vanished in a reload


# ---------------------------------------------------------------- oauth


def replace_profile(self: Engine, profile: Profile, *, now: float) -> None:
    """Swap in `profile` for the loaded profile of its id, whose books key it keeps.

    An OAuth refresh: a new access token of the same login. Its books
    (cooldowns, counts, budget), leases and place in the order stay; only
    the verdict of `auth` failures, which were about the old token, ends.
    Raises `UnknownProfile`, or `ValueError` when the key differs.
    """
    self._tick(now)
    slot = self._slots.get(profile.id)
    if slot is None or slot.removed:
        raise UnknownProfile(f"no profile {profile.id!r}", profile=profile.id)
    if slot.profile.secret.key != profile.secret.key:
        raise ValueError("replace_profile keeps the books key; use load for a new secret")
    old = slot.profile.secret
    slot.profile = profile
    ks = self._keys[profile.secret.key]
    if old != profile.secret and (ks.invalid or "auth" in ks.streak):
        ks.invalid = False
        ks.streak.pop("auth", None)
    self._touched(profile.secret.key)
    self._serve_waiters(now)


def mark_invalid(self: Engine, profile_id: str, message: str, *, now: float) -> None:
    """Make a profile `invalid` with `message` (its login was revoked): until its
    secret changes or `reset`."""
    self._tick(now)
    ks = self.key_state(profile_id)
    ks.invalid = True
    ks.last_error = message
    self._touched(self.profile(profile_id).secret.key)


# ---------------------------------------------------------------- admin


def reset(self: Engine, profile_id: str, *, now: float) -> ProfileState:
    """Clear cooldowns, error counts and the invalid mark of a profile."""
    self._tick(now)
    p = self.profile(profile_id)
    cooldown.clear(self._keys[p.secret.key])
    self._outbox.changed = True
    self._mark_key(p.secret.key)
    self._book(p.secret.key)
    self._serve_waiters(now)
    return self.state_of(profile_id, now)


def set_disabled(self: Engine, profile_id: str, disabled: bool, *, now: float) -> ProfileState:
    """Disable or enable a profile until the next change of its secret."""
    self._tick(now)
    p = self.profile(profile_id)
    self._slots[profile_id].user_disabled = disabled
    self._outbox.changed = True
    self._waiters.mark(p.provider)
    self._book(p.secret.key)
    self._serve_waiters(now)
    return self.state_of(profile_id, now)
