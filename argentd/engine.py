"""The rotation engine: leases, waiters, and the books they keep. Pure: no I/O, no clock.

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
- `_books` (books.py): a `Slot` per profile id (the Profile, its leases, its
  user disable flag) and a `KeyState` per *secret* (`Secret.key`), so two
  profiles holding one secret share one cooldown and a changed secret
  starts clean; with their persistent form (`snapshot`/`restore`).
- `_leases` (leases.py) and `_waiters` (waiters.py): who holds what and who
  is queued, first come, first served.
- `_due` (deadlines.py): when the engine next has work.

The decisions live in their own modules, over that state:
- whether a profile may be leased, and why not: `readiness.py` (one rule,
  read by selection, `status` and `no_profile_available`);
- which ready profile a request gets, and session affinity: `selection.py`
  (the `Selector` the engine owns shares `_slots` and the books' keys);
- what a failure report or a rejected subscription window does to a key:
  `cooldown.py` (pure; the engine applies the verdict and keeps the heaps,
  events and counters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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
    ProfileState,
    ReportParams,
    ReportResult,
    UnknownProfile,
    Usage,
)

from . import cooldown
from .books import Books, Slot
from .config import DEFAULT_CONFIG, Config
from .deadlines import Deadlines
from .keystate import KeyState
from .leases import Lease, Outbox, Waiter, lease_result, new_lease_id
from .model import Profile, ProfileSet
from .readiness import Readiness, profile_state
from .selection import Selector
from .snapshot import Snapshot
from .waiters import WaitQueue


class Engine:
    """Owns every profile's rotation state. See the module docstring."""

    def __init__(
        self,
        profiles: ProfileSet | None = None,
        config: Config = DEFAULT_CONFIG,
        *,
        now: float = 0.0,
        lease_id: Callable[[], str] = new_lease_id,
    ) -> None:
        self.config = config
        self._new_id = lease_id
        self._books = Books()
        self._keys = self._books.keys
        self._slots = self._books.slots
        self._leases: dict[str, Lease] = {}
        self._waiters = WaitQueue()
        self._due = Deadlines()
        self._now = now
        self._sel = Selector(self._slots, self._keys, config, now=now)
        self._outbox = Outbox()
        self.counters: dict[str, int] = {}
        self.events_wanted = True
        """The adapter clears this while nobody listens: events then cost nothing."""
        self.on_book_change: Callable[[str], None] | None = None
        """Told the secret key whose shared books (cooldowns, streaks, flags, budget)
        a call may have changed; the cluster sets it to publish them."""
        self.load(profiles or ProfileSet(), config, now=now)

    # ------------------------------------------------------------ queries

    def take_outbox(self) -> Outbox:
        """The events and served waiters decided since the last call."""
        out, self._outbox = self._outbox, Outbox()
        return out

    def next_deadline(self) -> float | None:
        """The earliest time at which `advance` would change something."""
        return self._due.next(self._lease_live, self._cool_entry_live, self._waiter_live,
                              bool(self._waiters))

    def _lease_live(self, at: float, lease_id: str) -> bool:
        lease = self._leases.get(lease_id)
        return lease is not None and lease.expires_at == at

    def _waiter_live(self, at: float, waiter_id: int) -> bool:
        w = self._waiters.get(waiter_id)
        return w is not None and w.deadline == at

    def _cool_entry_live(self, until: float, key: str, model: str) -> bool:
        ks = self._keys.get(key)
        return ks is not None and cooldown.live(ks, until, model)

    def take_earliest(self) -> float:
        """The earliest deadline added since the last call (inf if none).

        Cheaper than `next_deadline` after every request: the adapter needs
        to wake its timer only when a deadline earlier than its own appeared.
        """
        return self._due.take_earliest()

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

    def readiness_of(
        self, profile_id: str, now: float, model: str | None = None
    ) -> Readiness:
        """Whether the profile may take a lease for `model` at `now`, and if not
        why and until when (`readiness.py`). Raises `UnknownProfile`."""
        self.profile(profile_id)
        return self._sel.readiness(self._slots[profile_id], model, now)

    def state_of(self, profile_id: str, now: float) -> ProfileState:
        """`ready`, `cooldown`, `disabled` or `invalid` (profile-wide view)."""
        return profile_state(self._sel.readiness(self._slots[profile_id], None, now))

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
        self._books.merge(profiles.profiles, now)
        self._sel.config = config
        self._sel.reindex({k: list(v) for k, v in profiles.order.items()})
        self._outbox.changed = True
        self._serve_waiters(now)

    def _try_lease(
        self,
        params: LeaseParams,
        conn: int | None,
        now: float,
        *,
        start: int = 0,
        exclude: str | None = None,
    ) -> LeaseResult | None:
        route, targets = self._sel.targets(params)
        for i in range(start, len(targets)):
            provider, model = targets[i]
            slot = self._sel.pick(provider, model, now, session=params.session, exclude=exclude)
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
        self._due.lease(lease.expires_at, lease.id)
        slot.active += 1
        self._sel.granted(slot, params.session, now)
        ks = self._keys[p.secret.key]
        ks.last_used = now
        ks.requests += 1
        ks.active += 1
        lease.grant = ks.own_budget().grant(now)
        self._count(f"leases_granted:{p.provider}")
        # Usage counters alone do not call for a save: they go with the next
        # change that does, the adapter's periodic save, or the one at shutdown.
        self._emit("lease", now, profile=p.id, lease_id=lease.id, provider=p.provider,
                   model=model, client=params.client)
        return lease_result(lease, p)

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
            raise self._sel.unavailable(params, self._leases.values(), now)
        return granted

    def wait(self, params: LeaseParams, *, conn: int | None, now: float) -> int:
        """Queue a lease request until `now + params.wait`; returns the waiter id.

        Its result comes through the outbox. Raises as `lease` does for a
        request that can never be served (unknown provider or route, `ttl` <= 0).
        """
        self._tick(now)
        if params.ttl is not None and params.ttl <= 0:
            raise InvalidParams("invalid params: `ttl` must be > 0")
        self._sel.targets(params)
        w = self._waiters.add(params, conn, now + max(0.0, params.wait))
        self._due.waiter(w.deadline, w.id)
        self._serve_waiters(now)
        return w.id

    def cancel_wait(self, waiter_id: int) -> None:
        self._waiters.cancel(waiter_id)

    def waiters_of(self, conn: int) -> int:
        """How many lease requests connection `conn` has waiting (to bound them)."""
        return self._waiters.of_conn(conn)

    def renew(self, lease_id: str, ttl: float | None, *, now: float) -> float:
        """Extend a lease to `now + ttl`; returns the new expiry. Raises `LeaseNotFound`."""
        self._tick(now)
        lease = self._lease(lease_id)
        if ttl is not None and ttl <= 0:
            raise InvalidParams("invalid params: `ttl` must be > 0")
        ttl = min(ttl if ttl is not None else self.config.lease.ttl, self.config.lease.max_ttl)
        lease.expires_at = now + ttl
        self._due.lease(lease.expires_at, lease.id)
        self._sel.touch_session(lease.session, lease.profile_id, now)
        return lease.expires_at
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
        success: bool = True,
    ) -> None:
        """End a lease; with `success` (the default) the profile's error counts reset.

        `success=False` ends it without that claim (the outcome is unknown).
        """
        self._tick(now)
        lease = self._lease(lease_id)
        # Before _end_lease: ending the last lease of a removed profile drops its key state.
        # A secret a reload replaced (and no profile holds any more) has no state left.
        ks = self._keys.get(lease.key)
        if ks is not None:
            if ks.released(lease.grant, usage, now, success=success):
                self._outbox.changed = True  # the success reset persisted counts
                self._book(lease.key)
            if limits is not None:
                self._observe(self._slots[lease.profile_id].profile, lease.key, limits,
                              lease.grant, now)
        self._sel.touch_session(lease.session, lease.profile_id, now)
        self._end_lease(lease, now)
        self._emit("release", now, profile=lease.profile_id, lease_id=lease.id)
        self._serve_waiters(now)

    def _end_lease(self, lease: Lease, now: float) -> Slot:
        del self._leases[lease.id]
        self._due.rebuild_leases(((le.expires_at, le.id) for le in self._leases.values()),
                                 len(self._leases))
        ks = self._keys.get(lease.key)
        if ks is not None:
            ks.active -= 1
        slot = self._slots[lease.profile_id]
        self._books.lease_ended(slot, now)
        return slot

    def disconnect(self, conn: int, *, now: float) -> None:
        """A connection closed: end its attached leases and drop its waiters."""
        self._tick(now)
        self._waiters.drop_conn(conn)
        ended = False
        for lease in [le for le in self._leases.values() if le.conn == conn]:
            self._end_lease(lease, now)
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
            self._end_lease(lease, now)
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
        ks.failed(kind, params.status)
        self._outbox.changed = True
        self._book(key)
        verdict = cooldown.on_failure(ks, kind, params.retry_after, model, self.config, now)
        if verdict.invalid:
            ks.invalid = True
        if verdict.streak is not None:
            ks.streak[kind] = verdict.streak
        if verdict.until is not None:
            self._start_cooldown(p, key, kind, verdict.until, model, now)

    def _start_cooldown(
        self, p: Profile, key: str, kind: str, until: float, model: str | None, now: float
    ) -> None:
        cooldown.start(self._keys[key], kind, until, model)
        self._due.cooldown(until, key, model or "")
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
        self._book(key)
        self._sel.note_budget(key)
        until = cooldown.on_limits(ks, limits, self.config, now)
        if until is not None:
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
        cooldown.clear(self._keys[p.secret.key])
        self._outbox.changed = True
        self._book(p.secret.key)
        self._serve_waiters(now)
        return self.state_of(profile_id, now)

    def set_disabled(self, profile_id: str, disabled: bool, *, now: float) -> ProfileState:
        """Disable or enable a profile until the next change of its secret."""
        self._tick(now)
        self.profile(profile_id)
        slot = self._slots[profile_id]
        slot.user_disabled = disabled
        self._outbox.changed = True
        self._book(slot.profile.secret.key)
        self._serve_waiters(now)
        return self.state_of(profile_id, now)

    # ------------------------------------------------------------ time

    def advance(self, now: float) -> None:
        """Bring the engine to `now` (the adapter's timer calls this)."""
        self._tick(now)

    def _tick(self, now: float) -> None:
        self._now = now
        changed = False
        for lid in self._due.due_leases(now):
            lease = self._leases.get(lid)
            if lease is not None and lease.expires_at <= now:
                self._end_lease(lease, now)
                self._emit("expire", now, profile=lease.profile_id, lease_id=lid)
                changed = True
        for until, key, model in self._due.due_cooldowns(now):
            ks = self._keys.get(key)
            if ks is None or not cooldown.end(ks, until, model):
                continue  # a reset or a later cooldown replaced it
            for slot in self._slots.values():
                if slot.profile.secret.key == key:
                    self._emit("cooldown_end", now, profile=slot.profile.id, model=model or None)
            changed = True
        self._due.drop_wakes(now)  # the waiters they held back are tried below
        if now >= self._sel.next_sweep:  # checked here: a call per tick was measurable
            self._sel.sweep(now)
        if changed:
            self._outbox.changed = True
        self._serve_waiters(now)

    def _serve_waiters(self, now: float) -> None:
        if not self._waiters:
            return
        def attempt(w: Waiter) -> LeaseResult | ArgentError | None:
            try:
                result = self._try_lease(w.params, w.conn, now)
                if result is None and w.deadline <= now:
                    return self._sel.unavailable(w.params, self._leases.values(), now)
                if result is None:
                    # Try again when what holds its profiles back ends by itself.
                    when = self._sel.soonest(w.params, now)
                    if when is not None and when > now:
                        self._due.wake(when)
                return result
            except ArgentError as exc:
                return exc

        self._outbox.served += self._waiters.serve(attempt)

    # ------------------------------------------------------------ events

    def emit(self, type_: str, now: float, **fields: object) -> None:
        """Queue an event decided outside the engine (the adapter's `reload`)."""
        self._emit(type_, now, **fields)

    def _emit(self, type_: str, now: float, **fields: object) -> None:
        if not self.events_wanted:
            return
        self._outbox.events.append(Event(type=type_, at=now, **fields))  # type: ignore[arg-type]

    def _book(self, key: str) -> None:
        if self.on_book_change is not None:
            self.on_book_change(key)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ------------------------------------------------------------ state

    def snapshot(self) -> Snapshot:
        """The persistent state, keyed by profile id and secret key; no secret.

        Profiles removed by a reload (kept only while their leases finish) are
        left out: a restart would not load them.
        """
        return self._books.snapshot(self._now)

    def restore(self, snap: Snapshot, *, now: float) -> None:
        """Take back the state of `snap` for every profile whose secret is unchanged."""
        for entry in self._books.restore(snap, now):
            self._due.cooldown(*entry)
        self._tick(now)

    def active_profiles(self) -> Iterable[Slot]:
        return self._slots.values()
