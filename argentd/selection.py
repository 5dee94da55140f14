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

import difflib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from argent_client.facts import FALLBACK_ENV, suggest_provider
from argent_client.protocol import (
    InvalidParams,
    LeaseParams,
    NoProfileAvailable,
    UnknownProfile,
    UnknownProvider,
    UnknownRoute,
)

from .books import Slot
from .config import Config
from .keystate import KeyState
from .model import PROVIDERS, Profile, normalise_provider
from .policy import DEFAULT_RULES, PAID_TYPES, Rules
from .readiness import (
    BUSY,
    PAID,
    PROBE,
    PROBING,
    READY,
    SUBSCRIPTION_TYPES,
    Readiness,
    readiness,
)

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
        self._rules: dict[str | None, Rules] = {}
        self._subscribed: dict[str, bool] = {}
        """Provider -> whether it has a subscription profile (paid fallback applies)."""
        self._holders: dict[str, str | list[str]] = {}
        """Secret key -> ids of the profiles holding it (removed ones too)."""
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
        # One id per secret, a list only for a shared one: 10,000 little lists
        # would make every garbage collection walk them.
        holders: dict[str, str | list[str]] = {}
        for pid, slot in slots.items():
            had = holders.setdefault(slot.key, pid)
            if had is not pid:
                if isinstance(had, str):
                    holders[slot.key] = [had, pid]
                else:
                    had.append(pid)
            if not slot.removed:
                by.setdefault(slot.profile.provider, []).append(pid)
        self._holders = holders
        self._rules = {}
        self._subscribed = {
            prov: any(slots[pid].profile.type in SUBSCRIPTION_TYPES for pid in ids)
            for prov, ids in by.items()}
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
            elif self.config.policy.strategy == "fill-first":
                # The first ready profile of a tier until it is not: tiers keep file order.
                last_tier: tuple[int, int] | None = None
                for pid in ids:
                    p = slots[pid].profile
                    if (p.priority, p.rank) != last_tier:
                        tiers.append(Tier({}, lru=False))
                        last_tier = (p.priority, p.rank)
                    tiers[-1].ids[pid] = None
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

    def ok(self, slot: Slot, model: str | None, now: float, rules: Rules) -> Readiness | None:
        """`slot`'s readiness for `model` under `rules` when it may be leased
        (READY or PROBE), else None (`readiness.py`)."""
        r = self.reason(slot, model, now, rules)
        return r if r is READY or r is PROBE else None

    def pick(
        self,
        provider: str,
        model: str | None,
        now: float,
        *,
        session: str | None = None,
        exclude: str | None = None,
        rules: Rules = DEFAULT_RULES,
        only: str | None = None,
    ) -> Slot | None:
        """The profile to lease next for `provider`, or None if none is ready.

        `exclude` (a profile id) is passed over: the one a failover leaves;
        `only` (a pinned profile id) is the one profile considered. A
        profile open only to its early-reset probe comes after its tier's
        ready ones. `rules` is the lease's policy (`policy.py`).
        """
        ids = self.by_provider.get(provider)
        if not ids:
            return None
        if only is not None:
            slot = self.slots.get(only)
            if slot is None or only == exclude or slot.profile.provider != provider:
                return None
            return slot if self.ok(slot, model, now, rules) else None
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
                    and self.ok(slot, model, now, rules) is READY
                ):
                    return slot
                else:
                    del self._sessions[session]
        slots, keys, cap = self.slots, self.keys, rules.window_cap
        plain = rules is DEFAULT_RULES or rules.paid_fallback != "deny"
        for tier in self._tiers[provider]:
            probe: Slot | None = None
            if not tier.budgeted and plain:
                for pid in tier.ids:  # in order: the first ready one is the answer
                    slot = slots[pid]
                    if pid == exclude:
                        continue
                    r = readiness(slot, keys[slot.key], model, now, cap)
                    if r is READY:
                        return slot
                    if r is PROBE and probe is None:
                        probe = slot
                if probe is not None:
                    return probe
                continue
            best: Slot | None = None
            best_rank: tuple[bool, float, int] = (False, 0.0, 0)
            for pid in tier.ids:
                slot = self.slots[pid]
                got = None if pid == exclude else self.ok(slot, model, now, rules)
                if got is None:
                    continue
                if got is PROBE:
                    probe = probe or slot
                    continue
                if not tier.lru:
                    return slot
                rank = self.preference(slot, now)
                if best is None or rank < best_rank:
                    best, best_rank = slot, rank
            if best is not None:
                return best
            if probe is not None:
                return probe
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
        tier = self._tier_of.get(pid)
        if tier is not None and tier.lru:
            del tier.ids[pid]
            tier.ids[pid] = None
        if session is not None:
            self._sessions[session] = (pid, now)

    # ------------------------------------------------------------ requests

    def targets(self, params: LeaseParams) -> tuple[str | None, list[tuple[str, str | None]]]:
        """(route name, [(provider, model)]) a lease request may be served from, in order.

        Raises `UnknownRoute`, `UnknownProvider`, `UnknownProfile` (a pinned
        profile that is not loaded) or `InvalidParams`.
        """
        if params.profile is not None:
            return None, [(self._pinned(params), params.model)]
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
            raise unknown_provider(provider, self.by_provider)
        return None, [(provider, params.model)]

    def _pinned(self, params: LeaseParams) -> str:
        """The provider of the profile `params` pins."""
        pid = params.profile
        slot = self.slots.get(pid) if pid is not None else None
        if params.route is not None:
            raise InvalidParams("invalid params: `profile` pins one profile: give no `route`")
        if slot is None or slot.removed:
            raise UnknownProfile(f"no profile {pid!r}", profile=pid)
        provider = slot.profile.provider
        if params.provider is not None and normalise_provider(params.provider) != provider:
            raise InvalidParams(f"invalid params: profile {pid!r} is of provider {provider!r},"
                                f" not {params.provider!r}")
        return provider

    def candidates(self, params: LeaseParams) -> Iterable[tuple[Slot, str | None]]:
        """(profile, model) of every profile that could serve `params`, in target order."""
        _, targets = self.targets(params)
        for provider, model in targets:
            ids = (params.profile,) if params.profile else self.by_provider.get(provider, ())
            for pid in ids:
                yield self.slots[pid], model  # type: ignore[index]

    def reason(self, slot: Slot, model: str | None, now: float, rules: Rules) -> Readiness:
        """`slot`'s readiness under `rules`: `paid` when the paid fallback is denied."""
        if (rules.paid_fallback == "deny" and slot.profile.type in PAID_TYPES
                and self._subscribed.get(slot.profile.provider)):
            return PAID
        return readiness(slot, self.keys[slot.key], model, now, rules.window_cap)

    def unavailable(
        self, params: LeaseParams, leases: Iterable[Held], now: float
    ) -> NoProfileAvailable:
        """The `no_profile_available` error for `params`, saying when and why.

        Each profile of the targets is listed with its `readiness` reason as
        `state` and its `until`; `leases` are the leases out: a busy or
        probing profile frees up when its first one ends.
        """
        _, targets = self.targets(params)
        rules = self.rules(params.client)
        states: list[dict[str, object]] = []
        soonest: float | None = None
        for slot, model in self.candidates(params):
            pid = slot.profile.id
            r = self.reason(slot, model, now, rules)
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
        what = (f"route {params.route!r}" if params.route
                else f"profile {params.profile!r}" if params.profile
                else f"provider {targets[0][0]!r}")
        retry = None if soonest is None else max(0.0, soonest - now)
        msg = f"no profile of {what} is ready"
        if retry is not None:
            msg += f"; one may be in {retry:.0f}s"
        return NoProfileAvailable(msg, retry_after=retry, profiles=states)

    def soonest(self, params: LeaseParams, now: float) -> float | None:
        """The earliest time a reason holding back every profile of `params` ends by
        itself (a cooldown, a refill), or None when only an event can help."""
        rules = self.rules(params.client)
        soonest: float | None = None
        for slot, model in self.candidates(params):
            until = self.reason(slot, model, now, rules).until
            if until is not None and (soonest is None or until < soonest):
                soonest = until
        return soonest

    def holders(self, key: str) -> list[str]:
        """Ids of the profiles holding secret `key` (removed ones too)."""
        got = self._holders.get(key)
        if got is None:
            return []
        return [got] if isinstance(got, str) else got

    def subscribed(self, p: Profile) -> bool:
        """Whether `p`'s provider has a subscription profile (paid fallback applies)."""
        return self._subscribed.get(p.provider, False)

    def rules(self, client: str | None) -> Rules:
        """The policy for a lease of `client` (cached per client until a reload)."""
        got = self._rules.get(client)
        if got is None:
            got = self._rules[client] = self.config.policy.rules(client)
        return got

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


def unknown_provider(provider: str, served: Iterable[str]) -> UnknownProvider:
    """The `unknown_provider` error for `provider`, which no profile serves.

    A near miss of a provider argentd knows or the file holds (`served`) is
    suggested (`data.suggestion`); for a provider the environment fallback
    reads, the message says that it is the *daemon's* environment, which an
    `export` in the caller's shell does not reach.
    """
    near = suggest_provider(provider)
    if near is None and provider not in PROVIDERS:
        others = sorted(set(served) - {provider})
        close = difflib.get_close_matches(provider, others, n=1, cutoff=0.75)
        near = close[0] if close else None
    if near is not None:
        return UnknownProvider(f"no profile for provider {provider!r} (did you mean {near}?)",
                               provider=provider, suggestion=near)
    msg = f"no profile for provider {provider!r}: add one with `argentctl profiles add`"
    names = [var for var, _ in FALLBACK_ENV.get(provider, ())]
    if names:
        msg += (
            f", or give the daemon {' or '.join(names)} in its own environment (argentd"
            " reads the environment it was started with: an `export` in your shell does"
            " not reach a running daemon; set it in the service's environment and restart"
            " argentd)"
        )
    return UnknownProvider(msg, provider=provider)
