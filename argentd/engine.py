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

State: `_books` (books.py) holds a `Slot` per profile id and a `KeyState`
per *secret*, so two profiles holding one secret share one cooldown and a
changed secret starts clean, and their persistent form; `_leases`
(leases.py) and `_waiters` (waiters.py) hold who holds what and who is
queued; `_reports` (reports.py) the cooldowns in force.

Decisions, each in its module: whether a profile may be leased and why not
(readiness.py: one rule for selection, `status` and `no_profile_available`);
which one a request gets (selection.py, under the lease's policy.py rules);
what a failure report or a provider reading does to a secret (cooldown.py,
applied by reports.py).

Two parts of the class itself live in modules of their own, as functions
of the engine that the class binds as its methods: the grant path
(granting.py: a request's targets in order, the grant, the probe and the
paid-fallback notice) and the calls that change a profile's verdict from
outside a lease's plain end (verdicts.py: failure reports and failover,
OAuth token swaps and revoked logins, `reset`, `disable`, `enable`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from argent_client.protocol import (
    ArgentError,
    Event,
    InvalidParams,
    LeaseParams,
    LeaseResult,
    Limits,
    ProfileState,
    UnknownProfile,
    Usage,
)

from . import granting, verdicts
from .books import Books, Slot
from .config import DEFAULT_CONFIG, Config
from .keystate import KeyState
from .leases import Lease, LeaseBook, Outbox, Waiter, new_lease_id
from .model import Profile, ProfileSet
from .policy import Switches
from .readiness import Readiness, profile_state
from .reports import Reports
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
        self._leases = LeaseBook()
        self._waiters = WaitQueue()
        self._earliest = math.inf
        self._now = now
        self._sel = Selector(self._slots, self._keys, config, now=now)
        self._reports = Reports(self._books, self._sel, config, emit=self._emit,
                                count=self._count, touched=self._touched, pushed=self._pushed)
        self._outbox = Outbox()
        self.counters: dict[str, int] = {}
        self._paid = Switches()
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
        best = self._reports.next()
        at = self._leases.next_expiry()
        if at is not None and (best is None or at < best):
            best = at
        if self._waiters.waiting:
            at = self._waiters.next_time()
            if at is not None and (best is None or at < best):
                best = at
        return best

    def _pushed(self, at: float) -> None:
        if at < self._earliest:
            self._earliest = at

    def take_earliest(self) -> float:
        """The earliest deadline added since the last call (inf if none).

        Cheaper than `next_deadline` after every request: the adapter needs
        to wake its timer only when a deadline earlier than its own appeared.
        """
        earliest, self._earliest = self._earliest, math.inf
        return earliest

    def profile(self, profile_id: str) -> Profile:
        slot = self._slots.get(profile_id)
        if slot is None:
            raise UnknownProfile(f"no profile {profile_id!r}", profile=profile_id)
        return slot.profile

    def profiles(self) -> list[Profile]:
        return [s.profile for s in self._slots.values() if not s.removed]

    def leases(self) -> list[Lease]:
        return list(self._leases)

    def key_state(self, profile_id: str) -> KeyState:
        return self._keys[self.profile(profile_id).secret.key]

    def readiness_of(
        self, profile_id: str, now: float, model: str | None = None, client: str | None = None
    ) -> Readiness:
        """Whether the profile may take a lease of `client` for `model` at `now`,
        and if not why and until when (`readiness.py`, under the client's
        policy). Raises `UnknownProfile`."""
        self.profile(profile_id)
        return self._sel.reason(self._slots[profile_id], model, now, self._sel.rules(client))

    def state_of(self, profile_id: str, now: float) -> ProfileState:
        """`ready`, `cooldown`, `disabled` or `invalid` (profile-wide view)."""
        return profile_state(self.readiness_of(profile_id, now),
                             oauth=self._slots[profile_id].profile.type == "oauth")

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
        self._sel.config = self._reports.config = config
        self._sel.reindex({k: list(v) for k, v in profiles.order.items()})
        self._outbox.changed = True
        self._waiters.mark_all()
        self._serve_waiters(now)

    # ------------------------------------------------------------ granting (granting.py)

    # The grant path is in granting.py, as functions of the engine; bound here
    # as class attributes, they are its methods.
    _try_lease = granting.try_lease
    _grant = granting.grant
    _note_paid = granting.note_paid

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
            raise self._sel.unavailable(params, self._leases, now)
        return granted

    def wait(self, params: LeaseParams, *, conn: int | None, now: float) -> int:
        """Queue a lease request until `now + params.wait`; returns the waiter id.

        Its result comes through the outbox. Raises as `lease` does for a
        request that can never be served (unknown provider or route, `ttl` <= 0).
        """
        self._tick(now)
        if params.ttl is not None and params.ttl <= 0:
            raise InvalidParams("invalid params: `ttl` must be > 0")
        _, targets = self._sel.targets(params)
        w = self._waiters.add(params, conn, now + max(0.0, params.wait),
                              (prov for prov, _ in targets))
        self._pushed(w.deadline)
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
        lease = self._leases.get(lease_id)
        if ttl is not None and ttl <= 0:
            raise InvalidParams("invalid params: `ttl` must be > 0")
        ttl = min(ttl if ttl is not None else self.config.lease.ttl, self.config.lease.max_ttl)
        self._leases.extend(lease, now + ttl)
        self._pushed(lease.expires_at)
        self._sel.touch_session(lease.session, lease.profile_id, now)
        return lease.expires_at
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
        lease = self._leases.get(lease_id)
        # Before _end_lease: ending the last lease of a removed profile drops its key state.
        # A secret a reload replaced (and no profile holds any more) has no state left.
        ks = self._keys.get(lease.key)
        if ks is not None:
            if ks.released(lease.grant, usage, now, success=success):
                self._outbox.changed = True  # the success reset persisted counts
                self._book(lease.key)
            if lease.probe and success:
                self._reports.probe_succeeded(lease.key, now)
            if limits is not None:
                self._reports.observe(self._slots[lease.profile_id].profile, lease.key, limits,
                                      lease.grant, now)
        self._sel.touch_session(lease.session, lease.profile_id, now)
        self._end_lease(lease, now)
        self._emit("release", now, profile=lease.profile_id, lease_id=lease.id)
        self._serve_waiters(now)

    def _end_lease(self, lease: Lease, now: float) -> Slot:
        self._leases.remove(lease)
        ks = self._keys.get(lease.key)
        if ks is not None:
            ks.active -= 1
        slot = self._slots[lease.profile_id]
        if self._waiters.waiting:
            self._waiters.mark(slot.profile.provider)
            self._mark_key(lease.key)
        self._books.lease_ended(slot, now)
        return slot

    def _touched(self, key: str) -> None:
        """Secret `key`'s books changed: save them, try its waiters."""
        self._outbox.changed = True
        self._mark_key(key)
        self._book(key)

    def _book(self, key: str) -> None:
        if self.on_book_change is not None:
            self.on_book_change(key)

    def _mark_key(self, key: str) -> None:
        """Something about secret `key` changed: its waiters are to be tried."""
        if self._waiters.waiting:
            for pid in self._sel.holders(key):
                slot = self._slots.get(pid)
                if slot is not None:
                    self._waiters.mark(slot.profile.provider)

    def disconnect(self, conn: int, *, now: float) -> None:
        """A connection closed: end its attached leases and drop its waiters."""
        self._tick(now)
        self._waiters.drop_conn(conn)
        for lease in self._leases.of_conn(conn):
            self._end_lease(lease, now)
            self._emit("release", now, profile=lease.profile_id, lease_id=lease.id,
                       message="connection closed")
        self._serve_waiters(now)

    # ------------------------------------------------------------ verdicts (verdicts.py)

    # Failure reports, failover, OAuth swaps, reset and disable are in
    # verdicts.py, as functions of the engine; bound here, they are its methods.
    report = verdicts.report
    _failover = verdicts.failover
    replace_profile = verdicts.replace_profile
    mark_invalid = verdicts.mark_invalid
    reset = verdicts.reset
    set_disabled = verdicts.set_disabled

    # ------------------------------------------------------------ time

    def advance(self, now: float) -> None:
        """Bring the engine to `now` (the adapter's timer calls this)."""
        self._tick(now)

    def set_gated(self, gated: bool) -> None:
        """Whether some secret has a cluster gate (`KeyState.gate`), so selection
        tells the gates when it found nothing ready."""
        self._sel.gated = gated

    def key_changed(self, key: str, *, now: float) -> None:
        """Something outside the engine changed what secret `key` may take (the
        cluster's slots for it): try its waiters at `now`."""
        self._tick(now)
        self._mark_key(key)
        self._serve_waiters(now)

    def _tick(self, now: float) -> None:
        self._now = now
        changed = False
        # The tops are checked here, not in a call each: a tick runs on every request.
        heap = self._leases.heap
        if heap and heap[0][0] <= now:
            for lease in self._leases.due(now):
                self._end_lease(lease, now)
                self._emit("expire", now, profile=lease.profile_id, lease_id=lease.id)
                changed = True
        cool = self._reports.heap
        if cool and cool[0][0] <= now:
            changed = self._reports.due(now) or changed
        if self._waiters.waiting:
            self._waiters.woken(now)
        if now >= self._sel.next_sweep:  # checked here: a call per tick was measurable
            self._sel.sweep(now)
        if changed:
            self._outbox.changed = True
        self._serve_waiters(now)

    def _serve_waiters(self, now: float) -> None:
        """Serve the waiters a change may serve, then answer those past their deadline."""
        if not self._waiters.waiting:
            return

        def attempt(w: Waiter) -> LeaseResult | ArgentError | None:
            try:
                result = self._try_lease(w.params, w.conn, now)
                if result is None:
                    # Try again when what holds its profiles back ends by itself.
                    when = self._sel.soonest(w.params, now)
                    if when is not None and when > now:
                        self._waiters.wake(w, when)
                        self._pushed(when)
                return result
            except ArgentError as exc:
                return exc

        served = self._outbox.served
        served += self._waiters.serve(attempt)
        for w in self._waiters.due(now):
            try:
                served.append((w.id, self._sel.unavailable(w.params, self._leases, now)))
            except ArgentError as exc:
                served.append((w.id, exc))

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
        return self._books.snapshot(self._now)

    def restore(self, snap: Snapshot, *, now: float) -> None:
        """Take back the state of `snap` for every profile whose secret is unchanged."""
        for entry in self._books.restore(snap, now):
            self._reports.restored(entry)
        self._waiters.mark_all()
        self._tick(now)

    def active_profiles(self) -> Iterable[Slot]:
        return self._slots.values()
