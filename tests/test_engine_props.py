"""Property tests of the rotation engine: a hypothesis state machine.

It drives lease / wait / release / report / renew / disconnect / advance /
reload / disable / enable / reset with a monotonically increasing `now` and
checks DESIGN's invariants after every step:

- a lease is never granted on a cooling (for its model), disabled, invalid,
  expired, removed or full profile, nor on a profile that does not serve its
  model; and `no_profile_available` is only answered when nothing is ready;
- active leases per profile <= `max_concurrent`, and equal to the engine's leases;
  a secret's lease count equals the leases out on it (never negative, also
  when a reload swaps a secret out and back while a lease is out);
- books are per secret: a cooldown, an `invalid` mark or a disable flag
  comes back with its secret after a reload lost it (for ORPHAN_KEEP);
- no lease outlives its TTL;
- waiters with identical params are served in arrival order;
- snapshot -> JSON -> decode -> restore into a fresh engine is lossless;
- no secret appears in a snapshot, the status, an event or an error.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from argent_client.protocol import (
    ArgentError,
    ConfigStatus,
    LeaseNotFound,
    LeaseParams,
    LeaseResult,
    NoProfileAvailable,
    ReportParams,
    UnknownProfile,
    UnknownProvider,
)
from argentd.books import ORPHAN_KEEP
from argentd.config import Config, LeaseConfig
from argentd.engine import Engine
from argentd.model import Profile, ProfileSet, Secret
from argentd.snapshot import decode_snapshot
from argentd.views import status

T0 = 1_700_000_000.0
IDS = ("anthropic:a", "anthropic:b", "anthropic:c", "openai:x", "openai:y")
TAGS = ("s0", "s1", "s2", "s3", "s4", "s5")
MODELS = (None, "m1", "m2")
ROUTES = {"r": ["anthropic/m1", "google/m3", "openai/m2"]}
CONFIG = Config(routes=ROUTES, lease=LeaseConfig(ttl=300.0, max_ttl=3600.0))
CONFIG_STATUS = ConfigStatus(profiles_path="/p/auth-profiles.json", loaded_at=T0)


def secret_value(tag: str) -> str:
    return "sk-ant-oat01-" + hashlib.sha256(tag.encode()).hexdigest()[:40]


ALL_SECRETS = [secret_value(t) for t in TAGS]
# A secret must not leak whole nor in recognisable pieces (the fingerprint's
# known prefix `sk-ant-oat01-` is fine: it is shared by every such token).
SECRET_PIECES = [piece for v in ALL_SECRETS for piece in (v, v[13:25], v[-12:])]

profile_spec = st.fixed_dictionaries(
    {
        "tag": st.sampled_from(TAGS),
        "type": st.sampled_from(["setup-token", "api-key", "oauth"]),
        "priority": st.sampled_from([0, 0, 1]),
        "max_concurrent": st.sampled_from([None, None, 1, 2]),
        "disabled": st.sampled_from([False, False, False, True]),
        "models": st.sampled_from([None, None, frozenset({"m1"}), frozenset({"m2"})]),
        "expires": st.sampled_from([None, None, None, -1.0, 100.0, 1000.0]),
    }
)
profile_set_spec = st.dictionaries(st.sampled_from(IDS), profile_spec, min_size=1)
order_spec: st.SearchStrategy[dict[str, list[str]]] = st.one_of(
    st.just({}),
    st.permutations(["anthropic:a", "anthropic:b", "anthropic:c"]).map(
        lambda ids: {"anthropic": ids[:2]}
    ),
)


def build(specs: dict[str, dict[str, Any]], now: float) -> list[Profile]:
    """Profiles from specs; `expires` is relative to `now`."""
    out = []
    for pid in sorted(specs):
        s = specs[pid]
        out.append(
            Profile(
                id=pid,
                provider=pid.split(":")[0],
                type=s["type"],
                secret=Secret(secret_value(s["tag"])),
                priority=s["priority"],
                max_concurrent=s["max_concurrent"],
                disabled=s["disabled"],
                models=s["models"],
                expires=None if s["expires"] is None else now + s["expires"],
            )
        )
    return out


def lease_rule() -> Callable[[Callable[..., None]], Callable[..., None]]:
    return rule(
        provider=st.sampled_from(["anthropic", "openai", None]),
        model=st.sampled_from(MODELS),
        session=st.sampled_from([None, None, "s1", "s2"]),
        ttl=st.sampled_from([None, 30.0, 600.0, 10_000.0]),
        detached=st.booleans(),
        conn=st.integers(1, 3),
    )


def params_key(p: LeaseParams) -> tuple[object, ...]:
    return (p.provider, p.route, p.model, p.session, p.detached)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        counter = itertools.count(1)
        self.engine: Engine | None = None
        self.new_id = lambda: f"l{next(counter)}"
        self.current: list[Profile] = []
        self.order: dict[str, list[str]] = {}
        self.pending: dict[int, tuple[tuple[object, ...], int]] = {}
        """Waiter id -> (params key, conn) of waiters not yet served."""
        self.texts: list[str] = []
        """Everything the engine said that must hold no secret."""
        # An independent record of the rules, to check grants against.
        self.invalid_keys: set[str] = set()
        self.cooling: dict[str, float] = {}
        """Secret key -> end of its profile-wide cooldown, as reports answered."""
        self.user_disabled: dict[tuple[str, str], bool] = {}
        """(profile id, secret key) -> the user's disable flag."""
        self.proven: set[str] = set()
        """Secrets a lease succeeded with (a first `auth` failure only cools them)."""
        self.last_held: dict[str, float] = {}
        """Secret key -> when a loaded profile last held it (books outlive it a while)."""
        self.over_limit: set[str] = set()
        """Profiles a reload gave a `max_concurrent` below their running leases."""

    # -------------------------------------------------------------- helpers

    @property
    def e(self) -> Engine:
        assert self.engine is not None
        return self.engine

    def key_of(self, pid: str) -> str:
        return self.e.profile(pid).secret.key

    def ready(self, pid: str, model: str | None) -> bool:
        """Whether `pid` may serve `model` at `now`, from the public view."""
        e, now = self.e, self.now
        if pid not in {p.id for p in e.profiles()}:
            return False
        p = e.profile(pid)
        active = sum(1 for le in e.leases() if le.profile_id == pid)
        ks = e.key_state(pid)
        return (
            e.state_of(pid, now) == "ready"
            and ks.cooling(now, model) is None
            and p.serves(model)
            and (p.max_concurrent is None or active < p.max_concurrent)
            and not (ks.probing and ks.active)  # one probe lease at a time
        )

    def targets(self, params: LeaseParams) -> list[tuple[str, str | None]]:
        if params.route is not None:
            targets = CONFIG.route_targets(params.route) or []
            if params.model is not None:
                targets = [(prov, params.model) for prov, _ in targets]
            return targets
        assert params.provider is not None
        return [(params.provider, params.model)]

    def check_grant(self, got: LeaseResult, conn: int | None) -> None:
        """A lease just granted at `now` broke no rule."""
        e, now = self.e, self.now
        pid, model = got.profile, got.model
        assert pid in {p.id for p in e.profiles()}, "lease on a removed profile"
        p = e.profile(pid)
        key = p.secret.key
        ks = e.key_state(pid)
        if got.probe:  # the one early-reset probe of a long quota cooldown
            assert ks.cooldown_kind == "quota" and ks.cooling(now) is not None
            assert ks.active == 1, "two leases on a profile being probed"
        else:
            assert e.state_of(pid, now) == "ready", (pid, e.state_of(pid, now))
            assert ks.cooling(now, model) is None, "lease on a cooling profile"
        assert p.serves(model)
        assert p.expires is None or p.expires > now, "lease on an expired profile"
        assert key not in self.invalid_keys, "lease on an invalid profile"
        assert got.probe or self.cooling.get(key, now) <= now, "lease inside a reported cooldown"
        assert not self.user_disabled.get((pid, key), p.disabled), "lease on a disabled profile"
        assert got.expires_at > now
        assert got.token == p.secret.reveal()
        active = sum(1 for le in e.leases() if le.profile_id == pid)
        assert p.max_concurrent is None or active <= p.max_concurrent, "lease on a full profile"
        lease = next(le for le in e.leases() if le.id == got.lease_id)
        if conn is not None:
            assert lease.conn == (None if lease.detached else conn)

    def drain(self) -> None:
        """Check what the last call put in the outbox; forget what the engine dropped."""
        # Books are per secret and outlive the profile that held it for
        # ORPHAN_KEEP: only then may the engine forget them.
        for s in self.e.active_profiles():
            if not s.removed:
                self.last_held[s.key] = self.now
        gone = {k for k, t in self.last_held.items() if self.now - t >= ORPHAN_KEEP}
        self.invalid_keys -= gone
        self.cooling = {k: v for k, v in self.cooling.items() if k not in gone}
        self.user_disabled = {k: v for k, v in self.user_disabled.items() if k[1] not in gone}
        out = self.e.take_outbox()
        self.texts += [msgspec.json.encode(ev).decode() for ev in out.events]
        for wid, result in out.served:
            key, conn = self.pending.pop(wid)
            if isinstance(result, LeaseResult):
                earlier = [w for w, (k, _) in self.pending.items() if w < wid and k == key]
                assert not earlier, f"waiter {wid} served before {earlier}"
                self.check_grant(result, conn)
            else:
                self.texts.append(str(result) + msgspec.json.encode(result.to_wire()).decode())

    def note_error(self, exc: ArgentError) -> None:
        self.texts.append(str(exc) + msgspec.json.encode(exc.to_wire()).decode())

    def pick_lease(self, i: int) -> str:
        ids = sorted(le.id for le in self.e.leases())
        return ids[i % len(ids)] if ids else "l-stale"

    def load(self, specs: dict[str, dict[str, Any]], order: dict[str, list[str]]) -> None:
        self.current = build(specs, self.now)
        self.order = order
        if self.engine is None:
            self.engine = Engine(ProfileSet(list(self.current), order=dict(order)), CONFIG,
                                 now=self.now, lease_id=self.new_id)
        else:
            self.e.load(ProfileSet(list(self.current), order=dict(order)), CONFIG, now=self.now)
        for slot in self.e.active_profiles():
            limit = slot.profile.max_concurrent
            if limit is not None and slot.active > limit:
                self.over_limit.add(slot.profile.id)
        self.drain()

    # -------------------------------------------------------------- rules

    @initialize(specs=profile_set_spec, order=order_spec)
    def start(self, specs: dict[str, dict[str, Any]], order: dict[str, list[str]]) -> None:
        self.load(specs, order)

    @rule(specs=profile_set_spec, order=order_spec)
    def reload(self, specs: dict[str, dict[str, Any]], order: dict[str, list[str]]) -> None:
        self.load(specs, order)

    # Leasing is the point: two rules, so it is drawn twice as often.
    @lease_rule()
    def lease_more(self, **kw: Any) -> None:
        self.lease(**kw)

    @rule(pin=st.sampled_from(IDS), model=st.sampled_from(MODELS), conn=st.integers(1, 3))
    def lease_pinned(self, pin: str, model: str | None, conn: int) -> None:
        """A pinned lease gets its profile or no_profile_available, never another."""
        loaded = {p.id for p in self.e.profiles()}
        try:
            got = self.e.lease(LeaseParams(profile=pin, model=model), conn=conn, now=self.now)
        except UnknownProfile as exc:
            self.drain()
            self.note_error(exc)
            assert pin not in loaded
            return
        except NoProfileAvailable as exc:
            self.drain()
            self.note_error(exc)
            assert [s["id"] for s in exc.data["profiles"]] == [pin]
            assert not self.ready(pin, model), f"refused, but pinned {pin} is ready"
            return
        self.drain()
        assert got.profile == pin, "a pinned lease got another profile"
        self.check_grant(got, conn)

    @lease_rule()
    def lease(self, provider: str | None, model: str | None, session: str | None,
              ttl: float | None, detached: bool, conn: int) -> None:
        params = LeaseParams(provider=provider, route=None if provider else "r", model=model,
                             session=session, ttl=ttl, detached=detached)
        try:
            got = self.e.lease(params, conn=conn, now=self.now)
        except NoProfileAvailable as exc:
            self.drain()
            self.note_error(exc)
            for prov, mod in self.targets(params):
                for p in self.e.profiles():
                    if p.provider == prov:
                        assert not self.ready(p.id, mod), f"refused, but {p.id} is ready"
            return
        except UnknownProvider as exc:
            self.drain()
            self.note_error(exc)
            assert provider not in {p.provider for p in self.e.profiles()}
            return
        self.drain()
        self.check_grant(got, conn)
        assert got.expires_at == self.now + min(ttl or 300.0, 3600.0)

    @rule(
        provider=st.sampled_from(["anthropic", "openai", None]),
        model=st.sampled_from(MODELS),
        wait=st.sampled_from([0.0, 30.0, 400.0, 4000.0]),
        copies=st.integers(1, 3),
        conns=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    )
    def wait(self, provider: str | None, model: str | None, wait: float, copies: int,
             conns: list[int]) -> None:
        # Several identical requests in a row, so that arrival order matters.
        params = LeaseParams(provider=provider, route=None if provider else "r", model=model,
                             wait=wait)
        for conn in conns[:copies]:
            try:
                wid = self.e.wait(params, conn=conn, now=self.now)
            except UnknownProvider as exc:
                self.drain()
                self.note_error(exc)
                return
            assert wid not in self.pending
            assert all(w < wid for w in self.pending)
            self.pending[wid] = (params_key(params), conn)
            self.drain()

    @precondition(lambda self: self.e.has_waiters())
    @rule(i=st.integers(0, 10))
    def cancel_wait(self, i: int) -> None:
        wids = sorted(self.pending)
        wid = wids[i % len(wids)]
        self.e.cancel_wait(wid)
        del self.pending[wid]

    @rule(i=st.integers(0, 10), tokens=st.integers(0, 1000))
    def release(self, i: int, tokens: int) -> None:
        lid = self.pick_lease(i)
        held = next((le for le in self.e.leases() if le.id == lid), None)
        try:
            self.e.release(lid, now=self.now)
            if held is not None:
                self.proven.add(held.key)
        except LeaseNotFound as exc:
            self.note_error(exc)
            assert lid == "l-stale"
        self.drain()

    @rule(i=st.integers(0, 10), ttl=st.sampled_from([None, 5.0, 100.0, 5000.0]))
    def renew(self, i: int, ttl: float | None) -> None:
        lid = self.pick_lease(i)
        try:
            until = self.e.renew(lid, ttl, now=self.now)
        except LeaseNotFound as exc:
            self.note_error(exc)
            assert lid == "l-stale"
        else:
            assert until == self.now + min(ttl or 300.0, 3600.0)
        self.drain()

    @rule(
        i=st.integers(0, 10),
        by_profile=st.sampled_from([None, *IDS]),
        kind=st.sampled_from(
            ["rate_limit", "rate_limit", "quota", "auth", "overloaded", "timeout",
             "server_error"]
        ),
        model=st.sampled_from(MODELS),
        retry_after=st.sampled_from([None, None, 0.0, 45.0, 30 * 86400.0]),
        failover=st.booleans(),
        conn=st.integers(1, 3),
    )
    def report(self, i: int, by_profile: str | None, kind: str, model: str | None,
               retry_after: float | None, failover: bool, conn: int) -> None:
        lid = None if by_profile else self.pick_lease(i)
        params = ReportParams(kind=kind, lease_id=lid, profile=by_profile,  # type: ignore[arg-type]
                              model=model, retry_after=retry_after, failover=failover)
        try:
            held = next((le for le in self.e.leases() if le.id == lid), None)
            pid = by_profile or (held.profile_id if held else None)
            current = self.e.profile(pid).secret.key if pid else None
            # A lease's failure blames the secret it handed out, which a reload
            # may have replaced since.
            blamed = held.key if held else current
            result = self.e.report(params, conn=conn, now=self.now)
        except ArgentError as exc:
            self.drain()
            self.note_error(exc)
            return
        assert blamed is not None and current is not None
        if kind == "auth":
            if self.e._keys[blamed].invalid:
                self.invalid_keys.add(blamed)
            else:  # self-healing: only a secret that worked is spared its first 401
                assert blamed in self.proven, "a first auth failure spared an unproven secret"
        if model is None and result.cooldown_until is not None:
            self.cooling[current] = max(self.cooling.get(current, 0.0), result.cooldown_until)
        if result.cooldown_until is not None:
            assert result.cooldown_until <= self.now + 7 * 86400
        if lid is not None:
            assert lid not in {le.id for le in self.e.leases()}, "report left its lease"
        self.drain()
        if result.next is not None:
            assert failover
            # a failover lease belongs to the failed lease's connection
            self.check_grant(result.next, None if lid else conn)

    @rule(conn=st.integers(1, 3))
    def disconnect(self, conn: int) -> None:
        self.e.disconnect(conn, now=self.now)
        for wid in [w for w, (_, c) in self.pending.items() if c == conn]:
            del self.pending[wid]
        assert all(le.conn != conn for le in self.e.leases())
        self.drain()

    @rule(pid=st.sampled_from(IDS), action=st.sampled_from(["disable", "enable", "reset"]))
    def admin(self, pid: str, action: str) -> None:
        try:
            key = self.key_of(pid)
            if action == "reset":
                self.e.reset(pid, now=self.now)
                self.invalid_keys.discard(key)
                self.cooling.pop(key, None)
            else:
                self.e.set_disabled(pid, action == "disable", now=self.now)
                self.user_disabled[(pid, key)] = action == "disable"
        except ArgentError as exc:
            self.note_error(exc)
            assert pid not in {s.profile.id for s in self.e.active_profiles()}
        self.drain()

    @rule(dt=st.sampled_from([0.5, 1.0, 29.0, 60.0, 299.0, 300.0, 3600.0, 5 * 3600.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.e.advance(self.now)
        self.drain()

    @precondition(lambda self: self.e.next_deadline() is not None)
    @rule()
    def advance_to_deadline(self) -> None:
        deadline = self.e.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.e.advance(self.now)
        self.drain()
        after = self.e.next_deadline()
        assert after is None or after > self.now, "advance left a deadline at or before now"

    # -------------------------------------------------------------- invariants

    @invariant()
    def leases_within_limits(self) -> None:
        if self.engine is None:
            return
        e = self.e
        for le in e.leases():
            assert le.expires_at > self.now, "a lease outlived its TTL"
        counts: dict[str, int] = {}
        for le in e.leases():
            counts[le.profile_id] = counts.get(le.profile_id, 0) + 1
        for slot in e.active_profiles():
            pid = slot.profile.id
            assert slot.active == counts.get(pid, 0)
            limit = slot.profile.max_concurrent
            if limit is not None and slot.active <= limit:
                self.over_limit.discard(pid)
            # Running leases outlive a reload that lowers the limit; grants
            # are checked against it in check_grant.
            assert limit is None or slot.active <= limit or pid in self.over_limit
        assert set(counts) <= {s.profile.id for s in e.active_profiles()}
        per_key: dict[str, int] = {}
        for le in e.leases():
            per_key[le.key] = per_key.get(le.key, 0) + 1
        for key, ks in e._keys.items():
            assert ks.active == per_key.get(key, 0), "a secret's lease count is off"
        assert set(per_key) <= set(e._keys), "a lease's secret lost its books"

    @invariant()
    def waiters_are_tracked(self) -> None:
        if self.engine is not None:
            assert self.e.has_waiters() == bool(self.pending)

    @invariant()
    def snapshot_roundtrip_is_lossless(self) -> None:
        if self.engine is None:
            return
        snap = self.e.snapshot()
        data = msgspec.json.encode(snap)
        self.texts.append(data.decode())
        fresh = Engine(ProfileSet(list(self.current), order=dict(self.order)), CONFIG,
                       now=self.now)
        fresh.restore(decode_snapshot(msgspec.json.decode(data)), now=self.now)
        assert fresh.snapshot() == snap
        for p in self.current:
            assert fresh.state_of(p.id, self.now) == self.e.state_of(p.id, self.now)
            # Only the persisted part: leases in flight and rate budgets do not survive.
            assert fresh.key_state(p.id).to_snapshot() == self.e.key_state(p.id).to_snapshot()

    @invariant()
    def no_secret_in_output(self) -> None:
        if self.engine is None:
            return
        self.texts.append(msgspec.json.encode(status(self.e, CONFIG_STATUS, now=self.now))
                          .decode())
        blob = "\n".join(self.texts)
        self.texts = []
        for piece in SECRET_PIECES:
            assert piece not in blob, "a secret leaked"


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
