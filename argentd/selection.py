"""Selection order: which profile of a provider a lease request gets.

Theory of operation
-------------------
Whether a profile is *ready* for a request, and why not, is decided once,
in `readiness.py`; this module decides the order.

Each provider's profiles are split into *tiers* (`reindex`), walked in order
(`pick`); the first tier with a ready profile answers:

- a provider with an explicit `order` is one tier in that order, and its
  first ready profile wins;
- otherwise profiles are grouped by (`priority`, `rank`), and inside a tier
  the least recently leased ready profile wins (the tier's `ids` are kept in
  that order, so the first ready one is the answer without looking at the
  rest). Once a provider reported a rate budget for any profile of a tier,
  the tier is compared by `preference` instead: a nearly spent subscription
  window last, then the most budget left, then the least recently leased.

A request names a provider or a route; a route's targets, (provider,
model) pairs, are tried in order (`targets`). When none is ready,
`unavailable` says why per profile (its readiness reason) and when the
first one may be.

Session affinity: a lease with a `session` returns to the profile that
session last had while it is ready and was used within `affinity_idle`
(its prompt cache is warm). Renewing or releasing a lease keeps it fresh;
idle sessions are swept every `SWEEP_EVERY` seconds.

The `Selector` holds no rotation state of its own besides the order: it
reads the engine's `Slot`s and `KeyState`s, which it shares by reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, Protocol

from argent_client.protocol import (
    InvalidParams,
    LeaseParams,
    NoProfileAvailable,
    UnknownProvider,
    UnknownRoute,
)

from .books import Slot
from .config import Config
from .keystate import KeyState
from .model import normalise_provider
from .readiness import BUSY, PROBING, READY, Readiness, readiness

SWEEP_EVERY: Final = 60.0
"""Seconds between sweeps of idle session affinities."""


@dataclass(slots=True)
class Tier:
    """Profiles of one provider that selection treats as equals.

    `ids` is kept least recently leased first (`lru`), so the first ready
    one is the answer and selection does not look at every profile; an
    explicit `order` keeps its own order instead. Once the provider has
    reported a budget for one of them (`budgeted`), the whole tier is
    compared by headroom.
    """

    ids: dict[str, None]
    lru: bool
    budgeted: bool = False


class Held(Protocol):
    """What selection reads of a lease that is out (the engine's `Lease`)."""

    @property
    def profile_id(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def expires_at(self) -> float: ...


class Selector:
    """The selection order over the engine's slots and key states."""

    def __init__(
        self,
        slots: dict[str, Slot],
        keys: dict[str, KeyState],
        config: Config,
        *,
        now: float,
    ) -> None:
        """`slots` and `keys` are the engine's own dicts (read, never replaced)."""
        self.slots = slots
        self.keys = keys
        self.config = config
        self.by_provider: dict[str, list[str]] = {}
        """Profile ids per provider, in selection order (removed ones left out)."""
        self._tiers: dict[str, list[Tier]] = {}
        self._tier_of: dict[str, Tier] = {}
        self._budget_keys: set[str] = set()
        """Keys a provider has reported a budget for (their tiers compare headroom)."""
        self._sessions: dict[str, tuple[str, float]] = {}
        """session -> (profile id, last use)."""
        self._seq = itertools.count(1)
        self.next_sweep = now + SWEEP_EVERY
        """When `sweep` next has work (sweeping early or late only costs memory:
        `pick` checks a session's idle time itself)."""

    # ------------------------------------------------------------ order

    def reindex(self, order: dict[str, list[str]]) -> None:
        """Rebuild the tiers from the slots and the explicit `order` per provider."""
        slots = self.slots
        by: dict[str, list[str]] = {}
        for pid, slot in slots.items():
            if not slot.removed:
                by.setdefault(slot.profile.provider, []).append(pid)
        for provider, ids in by.items():
            explicit = {pid: i for i, pid in enumerate(order.get(provider, ()))}
            ids.sort(
                key=lambda pid: (
                    explicit.get(pid, len(explicit)),
                    slots[pid].profile.priority,
                    slots[pid].profile.rank,
                )
            )
        self.by_provider = by
        self._tiers = {}
        self._tier_of = {}
        for provider, ids in by.items():
            tiers: list[Tier] = []
            if provider in order:
                tiers.append(Tier(dict.fromkeys(ids), lru=False))
            else:
                last: tuple[int, int] | None = None
                for pid in ids:
                    p = slots[pid].profile
                    if (p.priority, p.rank) != last:
                        tiers.append(Tier({}, lru=True))
                        last = (p.priority, p.rank)
                    tiers[-1].ids[pid] = None
                for tier in tiers:  # least recently leased first
                    tier.ids = dict.fromkeys(sorted(tier.ids, key=lambda i: slots[i].seq))
            for tier in tiers:
                tier.budgeted = any(self._budgeted(pid) for pid in tier.ids)
                for pid in tier.ids:
                    self._tier_of[pid] = tier
            self._tiers[provider] = tiers

    def _budgeted(self, pid: str) -> bool:
        b = self.keys[self.slots[pid].profile.secret.key].known_budget
        return b.requests is not None or b.tokens is not None or b.demoted

    def note_budget(self, key: str) -> None:
        """A provider reported a budget for `key`: its tiers now compare headroom."""
        if key in self._budget_keys:
            return
        for slot in self.slots.values():
            tier = self._tier_of.get(slot.profile.id)
            if tier is not None and slot.profile.secret.key == key:
                tier.budgeted = True
        self._budget_keys.add(key)

    # ------------------------------------------------------------ picking

    def ready(self, slot: Slot, model: str | None, now: float) -> bool:
        """Whether `slot` may take a lease for `model` at `now` (`readiness.py`)."""
        return readiness(slot, self.keys[slot.profile.secret.key], model, now) is READY

    def pick(
        self,
        provider: str,
        model: str | None,
        now: float,
        *,
        session: str | None = None,
        exclude: str | None = None,
    ) -> Slot | None:
        """The profile to lease next for `provider`, or None if none is ready.

        `exclude` (a profile id) is passed over: the one a failover leaves.
        """
        ids = self.by_provider.get(provider)
        if not ids:
            return None
        if session is not None:
            held = self._sessions.get(session)
            if held is not None:
                slot = self.slots.get(held[0])
                fresh = now - held[1] < self.config.lease.affinity_idle
                if slot is not None and fresh and slot.profile.provider != provider:
                    pass  # held on another target of a route: asking this one must not forget it
                elif (
                    slot is not None
                    and fresh
                    and held[0] != exclude
                    and self.ready(slot, model, now)
                ):
                    return slot
                else:
                    del self._sessions[session]
        slots, keys = self.slots, self.keys
        for tier in self._tiers[provider]:
            if not tier.budgeted:
                for pid in tier.ids:  # in order: the first ready one is the answer
                    slot = slots[pid]
                    if (pid != exclude
                            and readiness(slot, keys[slot.key], model, now) is READY):
                        return slot
                continue
            best: Slot | None = None
            best_rank: tuple[bool, float, int] = (False, 0.0, 0)
            for pid in tier.ids:
                slot = self.slots[pid]
                if pid == exclude or not self.ready(slot, model, now):
                    continue
                if not tier.lru:
                    return slot
                rank = self.preference(slot, now)
                if best is None or rank < best_rank:
                    best, best_rank = slot, rank
            if best is not None:
                return best
        for pid in ids:  # nothing ready: a cluster gate may be why (it plans its slots)
            gate = keys[slots[pid].key].gate
            if gate is not None:
                gate.refused(keys[slots[pid].key].active, now)
        return None

    def preference(self, slot: Slot, now: float) -> tuple[bool, float, int]:
        """Order inside a tier: a nearly spent subscription window last, then the
        most rate budget left, then the least recently leased."""
        budget = self.keys[slot.profile.secret.key].known_budget
        return (budget.demoted, -budget.headroom(now), slot.seq)

    def granted(self, slot: Slot, session: str | None, now: float) -> None:
        """`slot` was just leased: it goes last in its tier, and `session` sticks to it."""
        pid = slot.profile.id
        slot.seq = next(self._seq)
        ks = self.keys[slot.key]
        if ks.gate is not None:
            ks.gate.granted(ks.active, now)
        tier = self._tier_of.get(pid)
        if tier is not None and tier.lru:
            del tier.ids[pid]
            tier.ids[pid] = None
        if session is not None:
            self._sessions[session] = (pid, now)

    # ------------------------------------------------------------ requests

    def readiness(self, slot: Slot, model: str | None, now: float) -> Readiness:
        """`readiness.readiness` of `slot` for `model` at `now`."""
        return readiness(slot, self.keys[slot.profile.secret.key], model, now)

    def targets(self, params: LeaseParams) -> tuple[str | None, list[tuple[str, str | None]]]:
        """(route name, [(provider, model)]) a lease request may be served from, in order.

        Raises `UnknownRoute`, `UnknownProvider` or `InvalidParams`.
        """
        if params.route is not None:
            targets = self.config.route_targets(params.route)
            if targets is None:
                raise UnknownRoute(f"no route {params.route!r}", route=params.route)
            if params.model is not None:
                targets = [(prov, params.model) for prov, _ in targets]
            return params.route, targets
        if params.provider is None:
            raise InvalidParams("invalid params: lease needs `provider` or `route`")
        provider = normalise_provider(params.provider)
        if provider not in self.by_provider:
            raise UnknownProvider(f"no profile for provider {provider!r}", provider=provider)
        return None, [(provider, params.model)]

    def unavailable(
        self, params: LeaseParams, leases: Collection[Held], now: float
    ) -> NoProfileAvailable:
        """The `no_profile_available` error for `params`, saying when and why.

        Each profile of the targets is listed with its `readiness` reason as
        `state` and its `until`; `leases` are the leases out: a busy or
        probing profile frees up when its first one ends.
        """
        _, targets = self.targets(params)
        states: list[dict[str, object]] = []
        soonest: float | None = None
        for provider, model in targets:
            for pid in self.by_provider.get(provider, ()):
                slot = self.slots[pid]
                r = self.readiness(slot, model, now)
                when = r.until
                if r is BUSY:
                    when = min((le.expires_at for le in leases if le.profile_id == pid),
                               default=None)
                elif r is PROBING:
                    key = slot.profile.secret.key
                    when = min((le.expires_at for le in leases if le.key == key), default=None)
                if when is not None:
                    soonest = when if soonest is None else min(soonest, when)
                states.append({"id": pid, "state": r.reason, "until": when})
        what = f"route {params.route!r}" if params.route else f"provider {targets[0][0]!r}"
        retry = None if soonest is None else max(0.0, soonest - now)
        msg = f"no profile of {what} is ready"
        if retry is not None:
            msg += f"; one may be in {retry:.0f}s"
        return NoProfileAvailable(msg, retry_after=retry, profiles=states)

    def soonest(self, params: LeaseParams, now: float) -> float | None:
        """The earliest time a reason holding back every profile of `params` ends by
        itself (a cooldown, a refill), or None when only an event can help."""
        _, targets = self.targets(params)
        soonest: float | None = None
        for provider, model in targets:
            for pid in self.by_provider.get(provider, ()):
                until = self.readiness(self.slots[pid], model, now).until
                if until is not None and (soonest is None or until < soonest):
                    soonest = until
        return soonest

    # ------------------------------------------------------------ sessions

    def touch_session(self, session: str | None, profile_id: str, now: float) -> None:
        """A session that still uses its profile is not idle (its prompt cache is warm)."""
        if session is not None:
            held = self._sessions.get(session)
            if held is not None and held[0] == profile_id:
                self._sessions[session] = (profile_id, now)

    def sweep(self, now: float) -> None:
        """Forget idle session affinities, at most once every SWEEP_EVERY seconds."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_EVERY
        idle = self.config.lease.affinity_idle
        for session in [s for s, (_, t) in self._sessions.items() if now - t >= idle]:
            del self._sessions[session]
