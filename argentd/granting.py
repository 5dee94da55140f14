"""How the engine grants a lease: the request's targets in order, then the grant itself.

`Engine` (engine.py) takes these as its methods (`Engine._grant` is
`grant`, and so on), so each one's `self` is the engine and its books.
`try_lease` walks the targets of a request (a provider, or a route's
provider/model pairs) from `start` and asks selection.py for a profile of
each; `grant` records the lease (its TTL, the secret's counts, the session),
marks a cooling secret's one early-reset probe, and `note_paid` queues the
`paid_fallback` notice of a switch from a provider's subscriptions to its
API keys. Pure, like the engine: every call takes `now`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from argent_client.protocol import Event, LeaseParams, LeaseResult

from . import cooldown
from .books import Slot
from .leases import Lease, lease_result
from .model import Profile
from .policy import PAID_TYPES

if TYPE_CHECKING:
    from .engine import Engine


def try_lease(
    self: Engine,
    params: LeaseParams,
    conn: int | None,
    now: float,
    *,
    start: int = 0,
    exclude: str | None = None,
) -> LeaseResult | None:
    route, targets = self._sel.targets(params)
    rules = self._sel.rules(params.client)
    for i in range(start, len(targets)):
        provider, model = targets[i]
        slot = self._sel.pick(provider, model, now, session=params.session, exclude=exclude,
                              rules=rules, only=params.profile)
        if slot is not None:
            return self._grant(slot, params, conn, now, route=route, target=i, model=model,
                               notify=rules.paid_fallback == "notify")
        exclude = None  # only the failed profile's own provider excludes it
    return None


def grant(
    self: Engine,
    slot: Slot,
    params: LeaseParams,
    conn: int | None,
    now: float,
    *,
    route: str | None,
    target: int,
    model: str | None,
    notify: bool = False,
) -> LeaseResult:
    p = slot.profile
    ttl = params.ttl if params.ttl is not None else self.config.lease.ttl
    ttl = min(ttl, self.config.lease.max_ttl)
    lease = Lease(
        id=self._new_id(), profile_id=p.id, conn=None if params.detached else conn,
        client=params.client, expires_at=now + ttl, detached=params.detached,
        model=model, session=params.session, route=route, target=target,
        params=params, key=p.secret.key,
    )
    self._leases.add(lease)
    self._pushed(lease.expires_at)
    slot.active += 1
    self._sel.granted(slot, params.session, now)
    ks = self._keys[p.secret.key]
    lease.grant = ks.granted(now)
    self._count(f"leases_granted:{p.provider}")
    # Usage counters alone do not call for a save: they go with the next
    # change that does, the adapter's periodic save, or the one at shutdown.
    self._emit("lease", now, profile=p.id, lease_id=lease.id, provider=p.provider,
               model=model, client=params.client)
    until = ks.cooldown_until
    if until is not None and until > now:  # only its early-reset probe leases a cooling key
        lease.probe = True
        cooldown.probed(ks, now, self.config.policy.recheck)
        self._outbox.changed = True
        self._emit("probe", now, profile=p.id, lease_id=lease.id, provider=p.provider)
    if notify and params.profile is None:  # a pinned key was chosen, not fallen to
        self._note_paid(p, params.client, model, now)
    return lease_result(lease, p)


def note_paid(self: Engine, p: Profile, client: str | None, model: str | None, now: float) -> None:
    """`paid_fallback = "notify"`: one `paid_fallback` event per switch from a
    provider's subscriptions to its API keys (always queued: the adapter logs it).
    A key leased while a subscription is ready (`order` or `priority` put it
    first) is no fallback."""
    if not self._sel.subscribed(p):
        return
    paid = p.type in PAID_TYPES
    if paid:
        rules = self._sel.rules(client)
        for slot in self._slots.values():
            q = slot.profile
            if (q.provider == p.provider and q.type not in PAID_TYPES
                    and self._sel.reason(slot, model, now, rules).reason == "ready"):
                return
    if self._paid.switched(p.provider, client, paid):
        self._outbox.events.append(Event(
            type="paid_fallback", at=now, profile=p.id, provider=p.provider,
            client=client, message="no subscription of the provider is ready"))
