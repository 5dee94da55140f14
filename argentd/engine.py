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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import msgspec

from argent_client.protocol import (
    PROFILE_FAULTS,
    ArgentError,
    Event,
    FailureKind,
    InvalidParams,
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
from .keystate import KeyState
from .leases import Lease, LeaseBook, Outbox, Waiter, lease_result, new_lease_id
from .model import Profile, ProfileSet
from .policy import PAID_TYPES, Switches
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

    def _note_paid(self, p: Profile, client: str | None, model: str | None, now: float) -> None:
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

    # ------------------------------------------------------------ failures

    def report(self, params: ReportParams, *, conn: int | None, now: float) -> ReportResult:
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

    # ------------------------------------------------------------ oauth

    def replace_profile(self, profile: Profile, *, now: float) -> None:
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

    def mark_invalid(self, profile_id: str, message: str, *, now: float) -> None:
        """Make a profile `invalid` with `message` (its login was revoked): until its
        secret changes or `reset`."""
        self._tick(now)
        ks = self.key_state(profile_id)
        ks.invalid = True
        ks.last_error = message
        self._touched(self.profile(profile_id).secret.key)

    # ------------------------------------------------------------ admin

    def reset(self, profile_id: str, *, now: float) -> ProfileState:
        """Clear cooldowns, error counts and the invalid mark of a profile."""
        self._tick(now)
        p = self.profile(profile_id)
        cooldown.clear(self._keys[p.secret.key])
        self._outbox.changed = True
        self._mark_key(p.secret.key)
        self._book(p.secret.key)
        self._serve_waiters(now)
        return self.state_of(profile_id, now)

    def set_disabled(self, profile_id: str, disabled: bool, *, now: float) -> ProfileState:
        """Disable or enable a profile until the next change of its secret."""
        self._tick(now)
        p = self.profile(profile_id)
        self._slots[profile_id].user_disabled = disabled
        self._outbox.changed = True
        self._waiters.mark(p.provider)
        self._book(p.secret.key)
        self._serve_waiters(now)
        return self.state_of(profile_id, now)

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
