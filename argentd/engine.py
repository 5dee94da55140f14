"""The rotation engine: selection, leases, waiters, cooldowns. Pure: no I/O, no clock.

Theory of operation
-------------------
Every public method takes `now` (Unix seconds) and first runs `_tick(now)`,
which ends what time has ended — leases past their TTL, cooldowns past their
end, waiters past their deadline — and then serves waiters in arrival order.
So the engine is always consistent at `now`, whatever the caller did before.

What a call decides beyond its return value goes to the *outbox*: events for
subscribers and the results of waiters it served. The adapter drains it with
`take_outbox()` after each call and sleeps until `next_deadline()`.

State lives in three places:
- `_keys`: per *secret* (`Secret.key`), so two profiles holding one secret
  share one cooldown and a changed secret starts clean (`KeyState`).
- `_slots`: per profile id: the Profile, its leases, its user disable flag.
- `_leases` and `_waiters`: who holds what and who is queued, FIFO.

A profile is *ready* for a request when it is enabled, not invalid, not
expired, not cooling down (for the requested model, when the cooldown is
model-scoped), below `max_concurrent`, and not removed by a reload.
"""

from __future__ import annotations

import heapq
import itertools
import math
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from argent_client.protocol import (
    PROFILE_FAULTS,
    ArgentError,
    Event,
    FailureKind,
    InvalidParams,
    LeaseNotFound,
    LeaseParams,
    LeaseResult,
    Limits,
    NoProfileAvailable,
    ProfileState,
    ReportParams,
    ReportResult,
    UnknownProfile,
    UnknownProvider,
    UnknownRoute,
    Usage,
)

from .config import DEFAULT_CONFIG, EFFECTS, Config
from .keystate import KeyState
from .model import Profile, ProfileSet, auth_headers, normalise_provider
from .snapshot import ProfileSnapshot, Snapshot

SWEEP_EVERY: Final = 60.0
"""Seconds between sweeps of idle session affinities."""


@dataclass(slots=True)
class Slot:
    """One profile id: its current Profile and runtime flags."""

    profile: Profile
    seq: int = 0
    """Order of the last grant; lower was leased longer ago (spreads load)."""
    active: int = 0
    user_disabled: bool | None = None
    """Set by disable/enable; None follows the file's `disabled`."""
    removed: bool = False
    """Gone from the file, kept only while its leases finish."""


@dataclass(slots=True)
class Lease:
    id: str
    profile_id: str
    conn: int | None
    client: str | None
    expires_at: float
    detached: bool
    model: str | None
    session: str | None
    route: str | None
    target: int
    """Index into the route's targets this lease was granted for."""
    params: LeaseParams
    """The request it answered: a failover asks again with the same ttl and model."""
    key: str
    """The secret key it handed out: a reload may replace the profile's secret meanwhile."""
    grant: int = 0
    """Its number among the grants on that key (rate budgets count from it)."""


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


@dataclass(slots=True)
class Waiter:
    id: int
    params: LeaseParams
    conn: int | None
    deadline: float


@dataclass(slots=True)
class Outbox:
    events: list[Event] = field(default_factory=list)
    served: list[tuple[int, LeaseResult | ArgentError]] = field(default_factory=list)
    """(waiter id, its lease or its error), in the order they were decided."""
    changed: bool = False
    """Persistent state changed: the adapter should schedule a save."""


_ID_BATCH: Final = 512


def _lease_ids() -> Iterator[str]:
    """Unguessable lease ids, `l_` + 16 hex: one urandom read per 512 ids
    (a getrandom call per lease was a fifth of a lease's cost)."""
    while True:
        pool = secrets.token_bytes(8 * _ID_BATCH).hex()
        for i in range(0, len(pool), 16):
            yield "l_" + pool[i : i + 16]


_new_lease_id = _lease_ids().__next__


class Engine:
    """Owns every profile's rotation state. See the module docstring."""

    def __init__(
        self,
        profiles: ProfileSet | None = None,
        config: Config = DEFAULT_CONFIG,
        *,
        now: float = 0.0,
        lease_id: Callable[[], str] = _new_lease_id,
    ) -> None:
        self.config = config
        self._new_id = lease_id
        self._keys: dict[str, KeyState] = {}
        self._slots: dict[str, Slot] = {}
        self._by_provider: dict[str, list[str]] = {}
        self._tiers: dict[str, list[Tier]] = {}
        self._tier_of: dict[str, Tier] = {}
        self._budget_keys: set[str] = set()
        """Keys a provider has reported a budget for (their tiers compare headroom)."""
        self._order: dict[str, list[str]] = {}
        self._leases: dict[str, Lease] = {}
        self._waiters: dict[int, Waiter] = {}
        self._sessions: dict[str, tuple[str, float]] = {}
        self._seq = itertools.count(1)
        self._waiter_ids = itertools.count(1)
        # Lazy-deletion heaps of (time, ...) for next_deadline().
        self._lease_heap: list[tuple[float, str]] = []
        self._cool_heap: list[tuple[float, str, str]] = []  # (until, key, model or "")
        self._wait_heap: list[tuple[float, int]] = []
        self._refill_heap: list[tuple[float, str]] = []  # (when a budget refills, key)
        self._earliest = math.inf
        self._last_sweep = now
        self._outbox = Outbox()
        self.counters: dict[str, int] = {}
        self.events_wanted = True
        """The adapter clears this while nobody listens: events then cost nothing."""
        self.load(profiles or ProfileSet(), config, now=now)

    # ------------------------------------------------------------ queries

    def take_outbox(self) -> Outbox:
        """The events and served waiters decided since the last call."""
        out, self._outbox = self._outbox, Outbox()
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which `advance` would change something."""
        # The heaps delete lazily: drop tops that no longer stand for anything.
        lh, ch, wh = self._lease_heap, self._cool_heap, self._wait_heap
        while lh and (lh[0][1] not in self._leases
                      or self._leases[lh[0][1]].expires_at != lh[0][0]):
            heapq.heappop(lh)
        while ch and not self._cooling_entry(*ch[0]):
            heapq.heappop(ch)
        while wh and (wh[0][1] not in self._waiters
                      or self._waiters[wh[0][1]].deadline != wh[0][0]):
            heapq.heappop(wh)
        times = [h[0][0] for h in (lh, ch, wh) if h]
        if self._waiters and self._refill_heap:
            times.append(self._refill_heap[0][0])  # a refill only matters to a waiter
        return min(times) if times else None

    def _push(self, heap: list[Any], entry: tuple[Any, ...]) -> None:
        heapq.heappush(heap, entry)
        if entry[0] < self._earliest:
            self._earliest = entry[0]

    def take_earliest(self) -> float:
        """The earliest deadline added since the last call (inf if none).

        Cheaper than `next_deadline` after every request: the adapter needs
        to wake its timer only when a deadline earlier than its own appeared.
        """
        earliest, self._earliest = self._earliest, math.inf
        return earliest

    def _cooling_entry(self, until: float, key: str, model: str) -> bool:
        ks = self._keys.get(key)
        if ks is None:
            return False
        if model:
            return ks.model_cooldowns.get(model) == until
        return ks.cooldown_until == until

    def profile(self, profile_id: str) -> Profile:
        slot = self._slots.get(profile_id)
        if slot is None:
            raise UnknownProfile(f"no profile {profile_id!r}", profile=profile_id)
        return slot.profile

    def profiles(self) -> list[Profile]:
        return [s.profile for s in self._slots.values() if not s.removed]

    def leases(self) -> list[Lease]:
        return list(self._leases.values())

    def key_state(self, profile_id: str) -> KeyState:
        return self._keys[self.profile(profile_id).secret.key]

    def state_of(self, profile_id: str, now: float) -> ProfileState:
        """`ready`, `cooldown`, `disabled` or `invalid` (profile-wide view)."""
        slot = self._slots[profile_id]
        p = slot.profile
        if self._disabled(slot):
            return "disabled"
        ks = self._keys[p.secret.key]
        if ks.invalid or (p.expires is not None and p.expires <= now):
            return "invalid"
        if ks.cooling(now) is not None:
            return "cooldown"
        return "ready"

    def has_waiters(self) -> bool:
        return bool(self._waiters)

    # ------------------------------------------------------------ loading

    def load(self, profiles: ProfileSet, config: Config, *, now: float) -> None:
        """Replace the profile set (a reload).

        Unchanged profiles keep their state; a changed secret starts clean;
        removed profiles take no new lease while their leases finish.
        """
        self._tick(now)
        self.config = config
        new_ids = set()
        for p in profiles.profiles:
            if p.id in new_ids:
                continue
            new_ids.add(p.id)
            self._keys.setdefault(p.secret.key, KeyState())
            slot = self._slots.get(p.id)
            if slot is None:
                self._slots[p.id] = Slot(p)
                continue
            if slot.profile.secret.key != p.secret.key:
                slot.user_disabled = None
            slot.profile = p
            slot.removed = False
        for pid in list(self._slots):
            if pid not in new_ids:
                if self._slots[pid].active:
                    self._slots[pid].removed = True
                else:
                    del self._slots[pid]
        self._order = {k: list(v) for k, v in profiles.order.items()}
        self._reindex()
        self._gc_keys()
        self._outbox.changed = True
        self._serve_waiters(now)

    def _reindex(self) -> None:
        by: dict[str, list[str]] = {}
        for pid, slot in self._slots.items():
            if not slot.removed:
                by.setdefault(slot.profile.provider, []).append(pid)
        for provider, ids in by.items():
            explicit = {pid: i for i, pid in enumerate(self._order.get(provider, ()))}
            ids.sort(
                key=lambda pid: (
                    explicit.get(pid, len(explicit)),
                    self._slots[pid].profile.priority,
                    self._slots[pid].profile.rank,
                )
            )
        self._by_provider = by
        self._tiers = {}
        self._tier_of = {}
        for provider, ids in by.items():
            tiers: list[Tier] = []
            if provider in self._order:
                tiers.append(Tier(dict.fromkeys(ids), lru=False))
            else:
                last: tuple[int, int] | None = None
                for pid in ids:
                    p = self._slots[pid].profile
                    if (p.priority, p.rank) != last:
                        tiers.append(Tier({}, lru=True))
                        last = (p.priority, p.rank)
                    tiers[-1].ids[pid] = None
                for tier in tiers:  # least recently leased first
                    tier.ids = dict.fromkeys(sorted(tier.ids, key=lambda i: self._slots[i].seq))
            for tier in tiers:
                tier.budgeted = any(self._budgeted(pid) for pid in tier.ids)
                for pid in tier.ids:
                    self._tier_of[pid] = tier
            self._tiers[provider] = tiers

    def _budgeted(self, pid: str) -> bool:
        b = self._keys[self._slots[pid].profile.secret.key].known_budget
        return b.requests is not None or b.tokens is not None or b.demoted

    def _gc_keys(self) -> None:
        used = {s.profile.secret.key for s in self._slots.values()}
        for key in list(self._keys):
            if key not in used:
                del self._keys[key]

    # ------------------------------------------------------------ selection

    def _disabled(self, slot: Slot) -> bool:
        if slot.user_disabled is not None:
            return slot.user_disabled
        return slot.profile.disabled

    def _ready(self, slot: Slot, model: str | None, now: float) -> bool:
        p = slot.profile
        if slot.removed or self._disabled(slot) or not p.serves(model):
            return False
        if p.expires is not None and p.expires <= now:
            return False
        if p.max_concurrent is not None and slot.active >= p.max_concurrent:
            return False
        ks = self._keys[p.secret.key]
        if ks.invalid or ks.cooling(now, model) is not None or ks.probe_busy:
            return False
        refill = ks.blocked_until(now)
        if refill is not None:
            if ks.refill_noted != refill:  # once per refill time, not once per look
                ks.refill_noted = refill
                self._push(self._refill_heap, (refill, p.secret.key))
            return False
        return True

    def _pick(
        self,
        provider: str,
        model: str | None,
        now: float,
        *,
        session: str | None = None,
        exclude: str | None = None,
    ) -> Slot | None:
        """The profile to lease next for `provider`, or None if none is ready."""
        ids = self._by_provider.get(provider)
        if not ids:
            return None
        if session is not None:
            held = self._sessions.get(session)
            if held is not None:
                slot = self._slots.get(held[0])
                fresh = now - held[1] < self.config.lease.affinity_idle
                if slot is not None and fresh and slot.profile.provider != provider:
                    pass  # held on another target of a route: asking this one must not forget it
                elif (
                    slot is not None
                    and fresh
                    and held[0] != exclude
                    and self._ready(slot, model, now)
                ):
                    return slot
                else:
                    del self._sessions[session]
        for tier in self._tiers[provider]:
            if not tier.budgeted:
                for pid in tier.ids:  # in order: the first ready one is the answer
                    slot = self._slots[pid]
                    if pid != exclude and self._ready(slot, model, now):
                        return slot
                continue
            best: Slot | None = None
            best_rank: tuple[bool, float, int] = (False, 0.0, 0)
            for pid in tier.ids:
                slot = self._slots[pid]
                if pid == exclude or not self._ready(slot, model, now):
                    continue
                if not tier.lru:
                    return slot
                rank = self._preference(slot, now)
                if best is None or rank < best_rank:
                    best, best_rank = slot, rank
            if best is not None:
                return best
        return None

    def _preference(self, slot: Slot, now: float) -> tuple[bool, float, int]:
        """Order inside a tier: a nearly spent subscription window last, then the
        most rate budget left, then the least recently leased."""
        budget = self._keys[slot.profile.secret.key].known_budget
        return (budget.demoted, -budget.headroom(now), slot.seq)

    def _targets(self, params: LeaseParams) -> tuple[str | None, list[tuple[str, str | None]]]:
        """(route name, [(provider, model)]) a lease request may be served from."""
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
        if provider not in self._by_provider:
            raise UnknownProvider(f"no profile for provider {provider!r}", provider=provider)
        return None, [(provider, params.model)]

    def _try_lease(
        self,
        params: LeaseParams,
        conn: int | None,
        now: float,
        *,
        start: int = 0,
        exclude: str | None = None,
    ) -> LeaseResult | None:
        route, targets = self._targets(params)
        for i in range(start, len(targets)):
            provider, model = targets[i]
            slot = self._pick(provider, model, now, session=params.session, exclude=exclude)
            if slot is not None:
                return self._grant(slot, params, conn, now, route=route, target=i, model=model)
            exclude = None  # only the failed profile's own provider excludes it
        return None

    def _grant(
        self,
        slot: Slot,
        params: LeaseParams,
        conn: int | None,
        now: float,
        *,
        route: str | None,
        target: int,
        model: str | None,
    ) -> LeaseResult:
        p = slot.profile
        ttl = params.ttl if params.ttl is not None else self.config.lease.ttl
        ttl = min(ttl, self.config.lease.max_ttl)
        lease = Lease(
            id=self._new_id(),
            profile_id=p.id,
            conn=None if params.detached else conn,
            client=params.client,
            expires_at=now + ttl,
            detached=params.detached,
            model=model,
            session=params.session,
            route=route,
            target=target,
            params=params,
            key=p.secret.key,
        )
        self._leases[lease.id] = lease
        self._push(self._lease_heap, (lease.expires_at, lease.id))
        slot.active += 1
        slot.seq = next(self._seq)
        tier = self._tier_of.get(p.id)
        if tier is not None and tier.lru:
            del tier.ids[p.id]
            tier.ids[p.id] = None
        ks = self._keys[p.secret.key]
        ks.last_used = now
        ks.requests += 1
        ks.active += 1
        lease.grant = ks.own_budget().grant(now)
        if params.session is not None:
            self._sessions[params.session] = (p.id, now)
        self._count(f"leases_granted:{p.provider}")
        # Usage counters alone do not call for a save: they go with the next
        # change that does, the adapter's periodic save, or the one at shutdown.
        self._emit("lease", now, profile=p.id, lease_id=lease.id, provider=p.provider,
                   model=model, client=params.client)
        return LeaseResult(
            lease_id=lease.id,
            profile=p.id,
            provider=p.provider,
            type=p.type,
            token=p.secret.reveal(),
            label=p.label,
            headers=auth_headers(p),
            expires_at=lease.expires_at,
            source=p.source,
            model=model,
        )

    def _unavailable(self, params: LeaseParams, now: float) -> NoProfileAvailable:
        """The `no_profile_available` error, with when and why."""
        _, targets = self._targets(params)
        states: list[dict[str, object]] = []
        soonest: float | None = None
        for provider, model in targets:
            for pid in self._by_provider.get(provider, ()):
                slot = self._slots[pid]
                p = slot.profile
                ks = self._keys[p.secret.key]
                state: str = self.state_of(pid, now)
                until = ks.cooling(now, model)
                when: float | None = None
                if state in ("disabled", "invalid") or not p.serves(model):
                    pass
                elif until is not None:
                    state, when = "cooldown", until
                elif p.max_concurrent is not None and slot.active >= p.max_concurrent:
                    state = "busy"
                    when = min(
                        (le.expires_at for le in self._leases.values() if le.profile_id == pid),
                        default=None,
                    )
                elif ks.probe_busy:
                    state = "probing"
                    when = min((le.expires_at for le in self._leases.values()
                                if le.key == p.secret.key), default=None)
                elif (refill := ks.blocked_until(now)) is not None:
                    state, when = "budget", refill
                if when is not None:
                    soonest = when if soonest is None else min(soonest, when)
                states.append({"id": pid, "state": state, "until": until})
        what = f"route {params.route!r}" if params.route else f"provider {targets[0][0]!r}"
        retry = None if soonest is None else max(0.0, soonest - now)
        msg = f"no profile of {what} is ready"
        if retry is not None:
            msg += f"; one may be in {retry:.0f}s"
        return NoProfileAvailable(msg, retry_after=retry, profiles=states)

    # ------------------------------------------------------------ leases

    def lease(self, params: LeaseParams, *, conn: int | None, now: float) -> LeaseResult:
        """Grant a lease now.

        Raises `NoProfileAvailable`, `UnknownProvider`, `UnknownRoute` or
        `InvalidParams`. With `params.wait > 0` use `wait()` on
        `NoProfileAvailable` instead.
        """
        self._tick(now)
        if params.ttl is not None and params.ttl <= 0:
            raise InvalidParams("invalid params: `ttl` must be > 0")
        # _tick has served every queued waiter it could, so a newcomer cannot
        # take a profile from under an earlier waiter.
        granted = self._try_lease(params, conn, now)
        if granted is None:
            raise self._unavailable(params, now)
        return granted

    def wait(self, params: LeaseParams, *, conn: int | None, now: float) -> int:
        """Queue a lease request until `now + params.wait`; returns the waiter id.

        Its result comes through the outbox. Raises as `lease` does for a
        request that can never be served (unknown provider or route, `ttl` <= 0).
        """
        self._tick(now)
        if params.ttl is not None and params.ttl <= 0:
            raise InvalidParams("invalid params: `ttl` must be > 0")
        self._targets(params)
        wid = next(self._waiter_ids)
        deadline = now + max(0.0, params.wait)
        self._waiters[wid] = Waiter(wid, params, conn, deadline)
        self._push(self._wait_heap, (deadline, wid))
        self._serve_waiters(now)
        return wid

    def cancel_wait(self, waiter_id: int) -> None:
        self._waiters.pop(waiter_id, None)

    def renew(self, lease_id: str, ttl: float | None, *, now: float) -> float:
        """Extend a lease to `now + ttl`; returns the new expiry. Raises `LeaseNotFound`."""
        self._tick(now)
        lease = self._lease(lease_id)
        if ttl is not None and ttl <= 0:
            raise InvalidParams("invalid params: `ttl` must be > 0")
        ttl = min(ttl if ttl is not None else self.config.lease.ttl, self.config.lease.max_ttl)
        lease.expires_at = now + ttl
        self._push(self._lease_heap, (lease.expires_at, lease.id))
        self._touch_session(lease, now)
        return lease.expires_at

    def _touch_session(self, lease: Lease, now: float) -> None:
        """A session that still uses its profile is not idle (its prompt cache is warm)."""
        if lease.session is not None:
            held = self._sessions.get(lease.session)
            if held is not None and held[0] == lease.profile_id:
                self._sessions[lease.session] = (lease.profile_id, now)

    def _lease(self, lease_id: str) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFound(f"no lease {lease_id!r} (released or expired)", lease_id=lease_id)
        return lease

    def release(
        self,
        lease_id: str,
        *,
        now: float,
        usage: Usage | None = None,
        limits: Limits | None = None,
    ) -> None:
        """End a lease with success: the profile's error counts reset."""
        self._tick(now)
        lease = self._lease(lease_id)
        # Before _end_lease: ending the last lease of a removed profile drops its key state.
        # A secret a reload replaced (and no profile holds any more) has no state left.
        ks = self._keys.get(lease.key)
        if ks is not None:
            if ks.error_count or ks.streak or ks.probing:
                self._outbox.changed = True  # the success resets persisted counts
            ks.succeeded()
            tokens = None
            if usage is not None:
                ks.input_tokens += usage.input_tokens or 0
                ks.output_tokens += usage.output_tokens or 0
                if usage.input_tokens is not None or usage.output_tokens is not None:
                    tokens = (usage.input_tokens or 0) + (usage.output_tokens or 0)
            ks.own_budget().settle(lease.grant, tokens, now)
            if limits is not None:
                self._observe(self._slots[lease.profile_id].profile, lease.key, limits,
                              lease.grant, now)
        self._touch_session(lease, now)
        self._end_lease(lease)
        self._emit("release", now, profile=lease.profile_id, lease_id=lease.id)
        self._serve_waiters(now)

    def _end_lease(self, lease: Lease) -> Slot:
        del self._leases[lease.id]
        if len(self._lease_heap) > 2 * len(self._leases) + 64:
            # Ended leases leave their entry behind until it reaches the top, a
            # whole TTL later: rebuild before the heap outgrows the leases.
            self._lease_heap = [(le.expires_at, le.id) for le in self._leases.values()]
            heapq.heapify(self._lease_heap)
        ks = self._keys.get(lease.key)
        if ks is not None:
            ks.active -= 1
        slot = self._slots[lease.profile_id]
        slot.active -= 1
        if slot.removed and slot.active == 0:
            del self._slots[lease.profile_id]
            self._gc_keys()
        return slot

    def disconnect(self, conn: int, *, now: float) -> None:
        """A connection closed: end its attached leases and drop its waiters."""
        self._tick(now)
        for wid in [w.id for w in self._waiters.values() if w.conn == conn]:
            del self._waiters[wid]
        ended = False
        for lease in [le for le in self._leases.values() if le.conn == conn]:
            self._end_lease(lease)
            self._emit("release", now, profile=lease.profile_id, lease_id=lease.id,
                       message="connection closed")
            ended = True
        if ended:
            self._serve_waiters(now)

    # ------------------------------------------------------------ failures

    def report(self, params: ReportParams, *, conn: int | None, now: float) -> ReportResult:
        """Record a failure; with `failover`, answer with the next lease.

        Raises `LeaseNotFound`, `UnknownProfile` or `InvalidParams`.
        """
        self._tick(now)
        lease: Lease | None = None
        if params.lease_id is not None:
            lease = self._lease(params.lease_id)
            profile_id = lease.profile_id
        elif params.profile is not None:
            profile_id = params.profile
            self.profile(profile_id)
        else:
            raise InvalidParams("invalid params: report_failure needs `lease_id` or `profile`")
        slot = self._slots[profile_id]
        # The cooldown is model-scoped only when the report names the model: a
        # lease's model says what was asked, not that the limit hit was per model
        # (a subscription's 5-hour cap is account-wide), and route leases always
        # carry one.
        model = params.model
        # A lease's failure is about the secret it handed out, which a reload may
        # have replaced since: the new secret must not pay for it.
        key = lease.key if lease else slot.profile.secret.key
        if params.limits is not None:
            self._observe(slot.profile, key, params.limits, lease.grant if lease else None, now)
        self._apply_failure(slot.profile, key, params, model, now)
        result = ReportResult(
            profile_state=self.state_of(profile_id, now),
            cooldown_until=self._keys[slot.profile.secret.key].cooling(now, model),
        )
        if lease is not None:
            self._end_lease(lease)
        if params.failover:
            result.next = self._failover(slot.profile, lease, params.kind, conn, now)
        self._serve_waiters(now)
        return result

    def _apply_failure(
        self, p: Profile, key: str, params: ReportParams, model: str | None, now: float
    ) -> None:
        kind: FailureKind = params.kind
        self._count(f"failures:{kind}")
        self._emit("failure", now, profile=p.id, lease_id=params.lease_id, kind=kind,
                   provider=p.provider, model=model)
        ks = self._keys.get(key)
        if ks is None:
            return  # a replaced secret no profile holds any more
        ks.error_count += 1
        ks.failures += 1
        ks.last_error = kind if params.status is None else f"{kind} ({params.status})"
        self._outbox.changed = True
        effect = EFFECTS[kind]
        if effect == "invalid":
            ks.invalid = True
            return
        backoff = self.config.cooldown.backoff(kind)
        if effect != "cooldown" or backoff is None:
            return
        if ks.cooling(now, model) is not None:
            return  # already cooling: a burst of reports must not extend or escalate it
        n = ks.streak.get(kind, 0) + 1
        ks.streak[kind] = n
        if params.retry_after is not None and params.retry_after >= 0:
            duration = min(params.retry_after, self.config.cooldown.retry_after_cap)
        else:
            duration = backoff.duration(n)
        if duration <= 0:
            return  # `retry_after: 0` means retry now: a window ending now would only linger
        self._start_cooldown(p, key, kind, now + duration, model, now)

    def _start_cooldown(
        self, p: Profile, key: str, kind: str, until: float, model: str | None, now: float
    ) -> None:
        ks = self._keys[key]
        if model is not None:
            ks.model_cooldowns[model] = until
        else:
            ks.cooldown_until = until
            ks.cooldown_kind = kind
        self._push(self._cool_heap, (until, key, model or ""))
        self._count("cooldowns_started")
        self._emit("cooldown_start", now, profile=p.id, kind=kind, until=until, model=model)

    def _observe(
        self, p: Profile, key: str, limits: Limits, grant: int | None, now: float
    ) -> None:
        """Take what a provider response said about the key's budget."""
        ks = self._keys.get(key)
        if ks is None:
            return
        # The reporting lease (if any) is still out: the others are the in-flight ones.
        others = ks.active - 1 if grant is not None else ks.active
        ks.own_budget().observe(limits, grant, others, now)
        for slot in self._slots.values() if key not in self._budget_keys else ():
            tier = self._tier_of.get(slot.profile.id)
            if tier is not None and slot.profile.secret.key == key:
                tier.budgeted = True
        self._budget_keys.add(key)
        reset = limits.unified_reset
        if limits.unified_status == "rejected" and reset is not None and reset > now:
            # A subscription's 5-hour or weekly window is spent: cool until it reopens.
            until = min(reset, now + self.config.cooldown.retry_after_cap)
            current = ks.cooling(now)
            if current is None or current < until:
                self._start_cooldown(p, key, "quota", until, None, now)

    def _failover(
        self, failed: Profile, lease: Lease | None, kind: FailureKind, conn: int | None,
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

    # ------------------------------------------------------------ admin

    def reset(self, profile_id: str, *, now: float) -> ProfileState:
        """Clear cooldowns, error counts and the invalid mark of a profile."""
        self._tick(now)
        p = self.profile(profile_id)
        ks = self._keys[p.secret.key]
        ks.cooldown_until = None
        ks.cooldown_kind = None
        ks.model_cooldowns.clear()
        ks.streak.clear()
        ks.error_count = 0
        ks.invalid = False
        ks.last_error = None
        self._outbox.changed = True
        self._serve_waiters(now)
        return self.state_of(profile_id, now)

    def set_disabled(self, profile_id: str, disabled: bool, *, now: float) -> ProfileState:
        """Disable or enable a profile until the next change of its secret."""
        self._tick(now)
        self.profile(profile_id)
        self._slots[profile_id].user_disabled = disabled
        self._outbox.changed = True
        self._serve_waiters(now)
        return self.state_of(profile_id, now)

    # ------------------------------------------------------------ time

    def advance(self, now: float) -> None:
        """Bring the engine to `now` (the adapter's timer calls this)."""
        self._tick(now)

    def _tick(self, now: float) -> None:
        changed = False
        # self._lease_heap, not a local: _end_lease may rebuild it.
        while self._lease_heap and self._lease_heap[0][0] <= now:
            _, lid = heapq.heappop(self._lease_heap)
            lease = self._leases.get(lid)
            if lease is not None and lease.expires_at <= now:
                self._end_lease(lease)
                self._emit("expire", now, profile=lease.profile_id, lease_id=lid)
                changed = True
        heap2 = self._cool_heap
        while heap2 and heap2[0][0] <= now:
            until, key, model = heapq.heappop(heap2)
            ks = self._keys.get(key)
            if ks is None:
                continue
            if model:
                if ks.model_cooldowns.get(model) == until:
                    del ks.model_cooldowns[model]
                else:
                    continue
            elif ks.cooldown_until == until:
                ks.cooldown_until = None
                ks.cooldown_kind = None
                ks.cooldown_ended()
            else:
                continue
            for slot in self._slots.values():
                if slot.profile.secret.key == key:
                    self._emit("cooldown_end", now, profile=slot.profile.id, model=model or None)
            changed = True
        refills = self._refill_heap
        while refills and refills[0][0] <= now:
            heapq.heappop(refills)  # the waiters it held back are served below
        if now - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now
            idle = self.config.lease.affinity_idle
            for session in [s for s, (_, t) in self._sessions.items() if now - t >= idle]:
                del self._sessions[session]
        if changed:
            self._outbox.changed = True
        self._serve_waiters(now)

    def _serve_waiters(self, now: float) -> None:
        if not self._waiters:
            return
        for wid in list(self._waiters):
            w = self._waiters.get(wid)
            if w is None:
                continue
            result: LeaseResult | ArgentError | None
            try:
                result = self._try_lease(w.params, w.conn, now)
                if result is None and w.deadline <= now:
                    result = self._unavailable(w.params, now)
            except ArgentError as exc:
                result = exc
            if result is not None:
                del self._waiters[wid]
                self._outbox.served.append((wid, result))

    # ------------------------------------------------------------ events

    def emit(self, type_: str, now: float, **fields: object) -> None:
        """Queue an event decided outside the engine (the adapter's `reload`)."""
        self._emit(type_, now, **fields)

    def _emit(self, type_: str, now: float, **fields: object) -> None:
        if not self.events_wanted:
            return
        self._outbox.events.append(Event(type=type_, at=now, **fields))  # type: ignore[arg-type]

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ------------------------------------------------------------ state

    def snapshot(self) -> Snapshot:
        """The persistent state, keyed by profile id and secret key; no secret.

        Profiles removed by a reload (kept only while their leases finish) are
        left out: a restart would not load them.
        """
        loaded = {s.profile.secret.key for s in self._slots.values() if not s.removed}
        keys = {key: ks.to_snapshot() for key, ks in self._keys.items() if key in loaded}
        profiles = {
            pid: ProfileSnapshot(key=s.profile.secret.key, user_disabled=s.user_disabled)
            for pid, s in self._slots.items()
            if not s.removed
        }
        return Snapshot(keys=keys, profiles=profiles)

    def restore(self, snap: Snapshot, *, now: float) -> None:
        """Take back the state of `snap` for every profile whose secret is unchanged."""
        for key, k in snap.keys.items():
            ks = self._keys.get(key)
            if ks is None:
                continue
            ks.restore(k)
            if ks.cooldown_until is not None:
                self._push(self._cool_heap, (ks.cooldown_until, key, ""))
            for model, until in ks.model_cooldowns.items():
                self._push(self._cool_heap, (until, key, model))
        for pid, ps in snap.profiles.items():
            slot = self._slots.get(pid)
            if slot is not None and slot.profile.secret.key == ps.key:
                slot.user_disabled = ps.user_disabled
        self._tick(now)

    def active_profiles(self) -> Iterable[Slot]:
        return self._slots.values()
