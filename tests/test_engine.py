"""Unit tests of the pure rotation engine (`argentd/engine.py`).

Every call takes an explicit `now`; no test reads a clock. Profiles are built
directly with `argentd.model` so these tests do not depend on the loader.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from argent_client.protocol import (
    Event,
    InvalidParams,
    LeaseNotFound,
    LeaseParams,
    LeaseResult,
    NoProfileAvailable,
    ReportParams,
    UnknownProfile,
    UnknownProvider,
    UnknownRoute,
    Usage,
)
from argentd.books import ORPHAN_KEEP
from argentd.config import Config, CooldownConfig, LeaseConfig
from argentd.engine import Engine
from argentd.model import Profile, ProfileSet, Secret
from argentd.policy import PolicyConfig
from argentd.snapshot import decode_snapshot

MIN = 60.0
HOUR = 3600.0
DAY = 24 * HOUR
T0 = 1_700_000_000.0
"""A realistic Unix time to start every test at."""

SECRETS: dict[str, str] = {}


def token(tag: str, prefix: str = "sk-ant-oat01-") -> str:
    """A realistic fake secret, stable per tag, remembered for the leak checks."""
    body = hashlib.sha256(tag.encode()).hexdigest()[:40]
    value = prefix + body
    SECRETS[tag] = value
    return value


def prof(
    pid: str,
    type_: str = "setup-token",
    *,
    tag: str | None = None,
    **kw: object,
) -> Profile:
    """A profile `provider:name` whose secret is derived from `tag` (default: the id)."""
    provider = pid.split(":", 1)[0]
    prefix = "sk-ant-api03-" if type_ == "api-key" else "sk-ant-oat01-"
    return Profile(
        id=pid,
        provider=provider,
        type=type_,  # type: ignore[arg-type]
        secret=Secret(token(tag or pid, prefix)),
        **kw,  # type: ignore[arg-type]
    )


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"l{next(counter)}"


def make(
    *profiles: Profile,
    order: dict[str, list[str]] | None = None,
    routes: dict[str, list[str]] | None = None,
    lease: LeaseConfig | None = None,
    cooldown: CooldownConfig | None = None,
    policy: PolicyConfig | None = None,
    now: float = T0,
) -> Engine:
    config = Config(
        routes=routes or {},
        lease=lease or LeaseConfig(),
        cooldown=cooldown or CooldownConfig(),
        policy=policy or PolicyConfig(),
    )
    return Engine(
        ProfileSet(list(profiles), order=order or {}), config, now=now, lease_id=ids()
    )


def reload(e: Engine, *profiles: Profile, now: float,
           order: dict[str, list[str]] | None = None) -> None:
    e.load(ProfileSet(list(profiles), order=order or {}), e.config, now=now)


def lease(e: Engine, now: float = T0, conn: int | None = 1, **kw: object) -> LeaseResult:
    return e.lease(LeaseParams(**kw), conn=conn, now=now)  # type: ignore[arg-type]


def pick(e: Engine, now: float = T0, **kw: Any) -> str:
    """Lease and release at once; the profile id chosen."""
    got = lease(e, now, **kw)
    e.release(got.lease_id, now=now)
    return got.profile


def report(e: Engine, now: float, kind: str, **kw: object) -> tuple[float | None, str]:
    r = e.report(ReportParams(kind=kind, **kw), conn=1, now=now)  # type: ignore[arg-type]
    return r.cooldown_until, r.profile_state


def events(e: Engine, type_: str | None = None) -> list[Event]:
    evs = e.take_outbox().events
    return [ev for ev in evs if type_ is None or ev.type == type_]


# ------------------------------------------------------------------ selection


def test_select_lower_priority_first() -> None:
    e = make(prof("anthropic:b", priority=2), prof("anthropic:a", priority=1))
    assert [pick(e, provider="anthropic") for _ in range(3)] == ["anthropic:a"] * 3


def test_select_subscription_before_api_key_before_env() -> None:
    env = Profile(
        id="anthropic:env", provider="anthropic", type="setup-token",
        secret=Secret(token("env")), source="env",
    )
    e = make(env, prof("anthropic:key", "api-key"), prof("anthropic:sub"))
    assert pick(e, provider="anthropic") == "anthropic:sub"
    e.set_disabled("anthropic:sub", True, now=T0)
    assert pick(e, provider="anthropic") == "anthropic:key"
    e.set_disabled("anthropic:key", True, now=T0)
    got = lease(e, provider="anthropic")
    assert (got.profile, got.source) == ("anthropic:env", "env")


def test_select_oauth_shares_the_subscription_tier() -> None:
    e = make(prof("anthropic:key", "api-key"), prof("anthropic:o", "oauth"),
             prof("anthropic:s"))
    seen = {pick(e, T0 + i, provider="anthropic") for i in range(4)}
    assert seen == {"anthropic:o", "anthropic:s"}


def test_select_least_recently_leased_spreads_load() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"), prof("anthropic:c"))
    got = [lease(e, T0 + i, provider="anthropic").profile for i in range(6)]
    assert got == ["anthropic:a", "anthropic:b", "anthropic:c"] * 2


def test_select_release_order_decides_next() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    a = lease(e, T0, provider="anthropic")
    b = lease(e, T0, provider="anthropic")
    e.release(b.lease_id, now=T0 + 1)
    e.release(a.lease_id, now=T0 + 2)
    # a was granted first, so it is the least recently leased one
    assert pick(e, T0 + 3, provider="anthropic") == "anthropic:a"


def test_select_explicit_order_wins_over_priority_and_type() -> None:
    e = make(
        prof("anthropic:sub", priority=0),
        prof("anthropic:key", "api-key", priority=5),
        prof("anthropic:other", priority=0),
        order={"anthropic": ["anthropic:key", "anthropic:sub"]},
    )
    # strict order, no spreading
    assert [pick(e, T0 + i, provider="anthropic") for i in range(3)] == ["anthropic:key"] * 3
    e.set_disabled("anthropic:key", True, now=T0)
    assert pick(e, provider="anthropic") == "anthropic:sub"
    e.set_disabled("anthropic:sub", True, now=T0)
    # profiles the order does not list come after the listed ones
    assert pick(e, provider="anthropic") == "anthropic:other"


def test_select_explicit_order_of_another_provider_does_not_apply() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"), prof("openai:x"),
             order={"openai": ["openai:x"]})
    got = [pick(e, T0 + i, provider="anthropic") for i in range(2)]
    assert got == ["anthropic:a", "anthropic:b"]


def test_select_models_restriction() -> None:
    e = make(
        prof("anthropic:opus", models=frozenset({"claude-opus-4"})),
        prof("anthropic:any", priority=1),
    )
    assert pick(e, provider="anthropic", model="claude-opus-4") == "anthropic:opus"
    assert pick(e, provider="anthropic", model="claude-haiku") == "anthropic:any"
    # no model asked: a restricted profile may serve
    assert pick(e, provider="anthropic") == "anthropic:opus"


def test_select_models_restriction_nothing_serves() -> None:
    e = make(prof("anthropic:opus", models=frozenset({"claude-opus-4"})))
    with pytest.raises(NoProfileAvailable) as info:
        lease(e, provider="anthropic", model="claude-haiku")
    assert info.value.data["retry_after"] is None


def test_select_max_concurrent() -> None:
    e = make(prof("anthropic:a", max_concurrent=2), prof("anthropic:b", priority=1))
    got = [lease(e, provider="anthropic").profile for _ in range(3)]
    assert got == ["anthropic:a", "anthropic:a", "anthropic:b"]
    e2 = make(prof("anthropic:a", max_concurrent=1))
    first = lease(e2, provider="anthropic")
    with pytest.raises(NoProfileAvailable) as info:
        lease(e2, T0 + 5, provider="anthropic")
    # busy until the lease's TTL at the latest
    assert info.value.data["retry_after"] == first.expires_at - (T0 + 5)
    e2.release(first.lease_id, now=T0 + 6)
    assert lease(e2, T0 + 6, provider="anthropic").profile == "anthropic:a"


def test_select_disabled_in_file_is_skipped() -> None:
    e = make(prof("anthropic:a", disabled=True), prof("anthropic:b", priority=1))
    assert pick(e, provider="anthropic") == "anthropic:b"
    assert e.state_of("anthropic:a", T0) == "disabled"


def test_select_disable_and_enable() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    assert e.set_disabled("anthropic:a", True, now=T0) == "disabled"
    assert pick(e, provider="anthropic") == "anthropic:b"
    assert e.set_disabled("anthropic:a", False, now=T0) == "ready"
    assert pick(e, provider="anthropic") == "anthropic:a"


def test_select_enable_overrides_file_disabled() -> None:
    e = make(prof("anthropic:a", disabled=True))
    assert e.set_disabled("anthropic:a", False, now=T0) == "ready"
    assert pick(e, provider="anthropic") == "anthropic:a"


def test_select_disable_unknown_profile() -> None:
    e = make(prof("anthropic:a"))
    with pytest.raises(UnknownProfile):
        e.set_disabled("anthropic:nope", True, now=T0)
    with pytest.raises(UnknownProfile):
        e.reset("anthropic:nope", now=T0)


def test_select_expired_profile_is_skipped() -> None:
    e = make(prof("anthropic:a", expires=T0 + 100), prof("anthropic:b", priority=1))
    assert pick(e, T0 + 99.9, provider="anthropic") == "anthropic:a"
    # `expires <= now`: at the instant itself it is no longer valid
    assert pick(e, T0 + 100, provider="anthropic") == "anthropic:b"
    assert e.state_of("anthropic:a", T0 + 100) == "invalid"
    assert e.state_of("anthropic:a", T0 + 99) == "ready"


def test_select_invalid_after_auth_is_skipped() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    report(e, T0, "auth", profile="anthropic:a")
    assert [pick(e, T0 + DAY * i, provider="anthropic") for i in range(3)] == [
        "anthropic:b"
    ] * 3


def test_select_removed_profile_is_skipped() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    reload(e, prof("anthropic:b", priority=1), now=T0)
    assert pick(e, provider="anthropic") == "anthropic:b"
    with pytest.raises(UnknownProfile):
        e.profile("anthropic:a")


def test_select_provider_alias_is_normalised() -> None:
    e = make(prof("zai:main"))
    assert lease(e, provider="Z.AI").profile == "zai:main"


def test_lease_result_fields() -> None:
    e = make(prof("anthropic:a", label="Max Sub"))
    got = lease(e, provider="anthropic", model="claude-x", ttl=30, client="agent-1")
    assert got.lease_id == "l1"
    assert got.profile == "anthropic:a"
    assert got.provider == "anthropic"
    assert got.type == "setup-token"
    assert got.token == SECRETS["anthropic:a"]
    assert got.label == "Max Sub"
    assert got.headers == {
        "Authorization": f"Bearer {SECRETS['anthropic:a']}",
        "anthropic-beta": "oauth-2025-04-20",
    }
    assert got.expires_at == T0 + 30
    assert got.source == "profile"
    assert got.model == "claude-x"
    assert SECRETS["anthropic:a"] not in repr(got)


def test_lease_api_key_headers() -> None:
    e = make(prof("anthropic:k", "api-key"))
    assert lease(e, provider="anthropic").headers == {"x-api-key": SECRETS["anthropic:k"]}


def test_lease_needs_provider_or_route() -> None:
    e = make(prof("anthropic:a"))
    with pytest.raises(InvalidParams):
        lease(e)


def test_lease_no_profile_available_lists_states() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"), prof("anthropic:c"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    e.set_disabled("anthropic:b", True, now=T0)
    report(e, T0, "auth", profile="anthropic:c")
    with pytest.raises(NoProfileAvailable) as info:
        lease(e, T0 + 10, provider="anthropic")
    err = info.value
    assert err.code == "no_profile_available"
    assert err.data["retry_after"] == 50.0
    states = {s["id"]: s["state"] for s in err.data["profiles"]}
    assert states == {"anthropic:a": "cooldown", "anthropic:b": "disabled",
                      "anthropic:c": "invalid"}
    assert "anthropic" in err.message


# ------------------------------------------------------------------ failure kinds


def test_report_rate_limit_backoff_60s_times_5_capped_at_1h() -> None:
    e = make(prof("anthropic:a"))
    now = T0
    windows = []
    for _ in range(5):
        until, state = report(e, now, "rate_limit", profile="anthropic:a")
        assert state == "cooldown"
        assert until is not None
        windows.append(until - now)
        now = until  # the cooldown ends exactly then: the next report is a new one
    assert windows == [60.0, 300.0, 1500.0, 3600.0, 3600.0]


def test_report_quota_backoff_5h_times_2_capped_at_24h() -> None:
    e = make(prof("anthropic:a"))
    now = T0
    windows = []
    for _ in range(5):
        until, _ = report(e, now, "quota", profile="anthropic:a")
        assert until is not None
        windows.append(until - now)
        now = until
    assert windows == [5 * HOUR, 10 * HOUR, 20 * HOUR, DAY, DAY]


@pytest.mark.parametrize("kind", ["rate_limit", "quota"])
def test_report_retry_after_wins(kind: str) -> None:
    e = make(prof("anthropic:a"))
    until, _ = report(e, T0, kind, profile="anthropic:a", retry_after=7.5)
    assert until == T0 + 7.5
    # longer than the backoff cap is fine up to 7 days
    until, _ = report(e, T0 + 8, kind, profile="anthropic:a", retry_after=3 * DAY)
    assert until == T0 + 8 + 3 * DAY


@pytest.mark.parametrize("kind", ["rate_limit", "quota"])
def test_report_retry_after_capped_at_7_days(kind: str) -> None:
    e = make(prof("anthropic:a"))
    until, _ = report(e, T0, kind, profile="anthropic:a", retry_after=30 * DAY)
    assert until == T0 + 7 * DAY


def test_report_retry_after_zero_sets_no_cooldown() -> None:
    e = make(prof("anthropic:a"))
    events(e)
    until, state = report(e, T0, "rate_limit", profile="anthropic:a", retry_after=0)
    assert (until, state) == (None, "ready")
    assert e.key_state("anthropic:a").cooldown_until is None
    assert [ev.type for ev in events(e)] == ["failure"]
    assert e.next_deadline() is None
    # it still counts as a rate limit in a row
    until, _ = report(e, T0 + 1, "rate_limit", profile="anthropic:a")
    assert until == T0 + 1 + 300


def test_report_retry_after_cap_is_configurable() -> None:
    e = make(prof("anthropic:a"), cooldown=CooldownConfig(retry_after_cap=100.0))
    until, _ = report(e, T0, "rate_limit", profile="anthropic:a", retry_after=500)
    assert until == T0 + 100


def test_report_auth_invalid_until_reset() -> None:
    e = make(prof("anthropic:a"))
    until, state = report(e, T0, "auth", profile="anthropic:a", status=401)
    assert (until, state) == (None, "invalid")
    e.advance(T0 + 30 * DAY)
    assert e.state_of("anthropic:a", T0 + 30 * DAY) == "invalid"
    with pytest.raises(NoProfileAvailable) as info:
        lease(e, T0 + 30 * DAY, provider="anthropic")
    assert info.value.data["retry_after"] is None
    assert e.reset("anthropic:a", now=T0 + 30 * DAY) == "ready"
    assert pick(e, T0 + 30 * DAY, provider="anthropic") == "anthropic:a"


def test_report_auth_invalid_until_secret_changes() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "auth", profile="anthropic:a")
    reload(e, prof("anthropic:a"), now=T0 + 1)  # same secret: still invalid
    assert e.state_of("anthropic:a", T0 + 1) == "invalid"
    reload(e, prof("anthropic:a", tag="rotated"), now=T0 + 2)
    assert e.state_of("anthropic:a", T0 + 2) == "ready"
    assert lease(e, T0 + 2, provider="anthropic").token == SECRETS["rotated"]


@pytest.mark.parametrize("kind", ["overloaded", "timeout", "server_error"])
def test_report_provider_fault_counts_without_cooldown(kind: str) -> None:
    e = make(prof("anthropic:a"))
    for i in range(3):
        until, state = report(e, T0 + i, kind, profile="anthropic:a", status=529)
        assert (until, state) == (None, "ready")
    ks = e.key_state("anthropic:a")
    assert ks.error_count == 3
    assert ks.cooldown_until is None
    assert ks.last_error == f"{kind} (529)"
    assert e.counters[f"failures:{kind}"] == 3
    assert pick(e, T0 + 3, provider="anthropic") == "anthropic:a"


def test_report_success_resets_error_counts() -> None:
    e = make(prof("anthropic:a"))
    until, _ = report(e, T0, "rate_limit", profile="anthropic:a")
    assert until == T0 + 60
    until, _ = report(e, T0 + 60, "rate_limit", profile="anthropic:a")
    assert until == T0 + 60 + 300
    now = T0 + 360
    got = lease(e, now, provider="anthropic")
    e.release(got.lease_id, now=now)
    assert e.key_state("anthropic:a").error_count == 0
    until, _ = report(e, now, "rate_limit", profile="anthropic:a")
    assert until == now + 60


def test_report_streaks_are_per_kind() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    until, _ = report(e, T0 + 60, "quota", profile="anthropic:a")
    assert until == T0 + 60 + 5 * HOUR


def test_report_on_cooling_profile_does_not_extend_or_escalate() -> None:
    e = make(prof("anthropic:a"))
    until, _ = report(e, T0, "rate_limit", profile="anthropic:a")
    assert until == T0 + 60
    for t in (T0 + 1, T0 + 30, T0 + 59):
        again, _ = report(e, t, "rate_limit", profile="anthropic:a")
        assert again == T0 + 60
    again, _ = report(e, T0 + 30, "quota", profile="anthropic:a", retry_after=DAY)
    assert again == T0 + 60
    assert e.key_state("anthropic:a").error_count == 5  # still counted
    # the burst did not escalate: the next window is the second step, 300 s
    until, _ = report(e, T0 + 60, "rate_limit", profile="anthropic:a")
    assert until == T0 + 60 + 300


def test_report_auth_on_cooling_profile_still_invalidates() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    _, state = report(e, T0 + 1, "auth", profile="anthropic:a")
    assert state == "invalid"


def test_report_model_scoped_cooldown() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    until, state = report(e, T0, "rate_limit", profile="anthropic:a", model="opus")
    assert until == T0 + 60
    assert state == "ready"  # the profile as a whole still serves
    assert pick(e, T0 + 1, provider="anthropic", model="opus") == "anthropic:b"
    assert pick(e, T0 + 1, provider="anthropic", model="haiku") == "anthropic:a"
    assert pick(e, T0 + 60, provider="anthropic", model="opus") == "anthropic:a"


def test_report_model_cooldown_does_not_block_a_lease_without_model() -> None:
    # A lease that names no model says nothing about the model it will call,
    # so only a profile-wide cooldown blocks it.
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    report(e, T0, "rate_limit", profile="anthropic:a", model="opus")
    assert pick(e, T0 + 1, provider="anthropic") == "anthropic:a"


def test_report_profile_wide_cooldown_blocks_every_model() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    report(e, T0, "rate_limit", profile="anthropic:a")
    assert pick(e, T0 + 1, provider="anthropic", model="opus") == "anthropic:b"
    assert pick(e, T0 + 1, provider="anthropic") == "anthropic:b"


def test_report_model_cooldown_does_not_extend_while_cooling() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "rate_limit", profile="anthropic:a", model="opus")
    until, _ = report(e, T0 + 10, "rate_limit", profile="anthropic:a", model="opus")
    assert until == T0 + 60
    # another model is a separate window
    until, _ = report(e, T0 + 10, "rate_limit", profile="anthropic:a", model="haiku")
    assert until is not None and until > T0 + 10


def test_report_on_a_model_lease_without_model_is_profile_wide() -> None:
    # The model scope comes from the report, not from the lease.
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    got = lease(e, T0, provider="anthropic", model="opus")
    report(e, T0, "rate_limit", lease_id=got.lease_id)
    assert e.state_of("anthropic:a", T0) == "cooldown"
    assert pick(e, T0 + 1, provider="anthropic", model="haiku") == "anthropic:b"


def test_report_ends_the_lease() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    got = lease(e, provider="anthropic")
    report(e, T0, "overloaded", lease_id=got.lease_id)
    assert e.leases() == []
    with pytest.raises(LeaseNotFound):
        e.release(got.lease_id, now=T0)
    assert pick(e, T0, provider="anthropic") == "anthropic:a"


def test_report_needs_lease_or_profile() -> None:
    e = make(prof("anthropic:a"))
    with pytest.raises(InvalidParams):
        report(e, T0, "rate_limit")
    with pytest.raises(UnknownProfile):
        report(e, T0, "rate_limit", profile="anthropic:nope")
    with pytest.raises(LeaseNotFound):
        report(e, T0, "rate_limit", lease_id="l999")


def test_report_events_and_cooldown_end() -> None:
    e = make(prof("anthropic:a"))
    events(e)
    report(e, T0, "rate_limit", profile="anthropic:a", status=429)
    evs = events(e)
    assert [ev.type for ev in evs] == ["failure", "cooldown_start"]
    assert evs[0].kind == "rate_limit" and evs[0].profile == "anthropic:a"
    assert evs[1].until == T0 + 60
    assert e.next_deadline() == T0 + 60
    e.advance(T0 + 59.999)
    assert events(e, "cooldown_end") == []
    e.advance(T0 + 60)
    ends = events(e, "cooldown_end")
    assert [(ev.profile, ev.at) for ev in ends] == [("anthropic:a", T0 + 60)]
    assert e.state_of("anthropic:a", T0 + 60) == "ready"
    assert e.next_deadline() is None


def test_report_counts_cooldowns_started() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    report(e, T0 + 1, "rate_limit", profile="anthropic:a")
    assert e.counters["cooldowns_started"] == 1
    assert e.counters["failures:rate_limit"] == 2


# ------------------------------------------------------------------ leases


def test_lease_default_ttl() -> None:
    e = make(prof("anthropic:a"), lease=LeaseConfig(ttl=120.0))
    got = lease(e, provider="anthropic")
    assert got.expires_at == T0 + 120
    assert [le.id for le in e.leases()] == [got.lease_id]


def test_lease_ttl_capped_at_max_ttl() -> None:
    e = make(prof("anthropic:a"), lease=LeaseConfig(ttl=60.0, max_ttl=300.0))
    assert lease(e, provider="anthropic", ttl=10_000).expires_at == T0 + 300


@pytest.mark.parametrize("ttl", [0.0, -5.0])
def test_lease_ttl_not_positive_is_invalid(ttl: float) -> None:
    e = make(prof("anthropic:a"))
    with pytest.raises(InvalidParams):
        lease(e, provider="anthropic", ttl=ttl)
    with pytest.raises(InvalidParams):
        e.wait(LeaseParams(provider="anthropic", ttl=ttl, wait=5), conn=1, now=T0)
    assert e.leases() == []


def test_renew_extends_and_caps() -> None:
    e = make(prof("anthropic:a"), lease=LeaseConfig(ttl=60.0, max_ttl=600.0))
    got = lease(e, provider="anthropic")
    assert e.renew(got.lease_id, None, now=T0 + 50) == T0 + 110
    assert e.renew(got.lease_id, 10_000, now=T0 + 100) == T0 + 700
    assert e.next_deadline() == T0 + 700
    e.advance(T0 + 110)  # the old expiry no longer ends it
    assert [le.id for le in e.leases()] == [got.lease_id]
    with pytest.raises(InvalidParams):
        e.renew(got.lease_id, 0, now=T0 + 120)


def test_renew_after_expiry_is_lease_not_found() -> None:
    e = make(prof("anthropic:a"))
    got = lease(e, provider="anthropic", ttl=30)
    with pytest.raises(LeaseNotFound) as info:
        e.renew(got.lease_id, 30, now=T0 + 30)
    assert info.value.code == "lease_not_found"
    assert info.value.data == {"lease_id": got.lease_id}


def test_renew_shorter_expires_earlier() -> None:
    e = make(prof("anthropic:a"))
    got = lease(e, provider="anthropic", ttl=600)
    e.renew(got.lease_id, 10, now=T0 + 1)
    assert e.next_deadline() == T0 + 11
    e.advance(T0 + 11)
    assert e.leases() == []


def test_release_ends_lease() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    got = lease(e, provider="anthropic")
    events(e)
    e.release(got.lease_id, now=T0 + 5, usage=Usage(input_tokens=10, output_tokens=3))
    assert e.leases() == []
    assert [(ev.type, ev.lease_id) for ev in events(e)] == [("release", got.lease_id)]
    ks = e.key_state("anthropic:a")
    assert (ks.input_tokens, ks.output_tokens, ks.requests) == (10, 3, 1)
    with pytest.raises(LeaseNotFound):
        e.release(got.lease_id, now=T0 + 6)
    assert e.next_deadline() is None


def test_lease_expires_exactly_at_expires_at() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    got = lease(e, provider="anthropic", ttl=30)
    events(e)
    assert e.next_deadline() == T0 + 30
    e.advance(T0 + 29.999)
    assert len(e.leases()) == 1
    assert events(e) == []
    e.advance(T0 + 30)
    assert e.leases() == []
    evs = events(e)
    assert [(ev.type, ev.lease_id, ev.profile, ev.at) for ev in evs] == [
        ("expire", got.lease_id, "anthropic:a", T0 + 30)
    ]
    assert e.next_deadline() is None
    with pytest.raises(LeaseNotFound):
        e.release(got.lease_id, now=T0 + 30)


def test_lease_expiry_is_applied_by_any_call() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    lease(e, provider="anthropic", ttl=30)
    # no advance(): the next lease call itself ends the expired lease first
    assert lease(e, T0 + 31, provider="anthropic").profile == "anthropic:a"


def test_disconnect_ends_attached_keeps_detached() -> None:
    e = make(prof("anthropic:a"))
    attached = lease(e, conn=7, provider="anthropic")
    detached = lease(e, conn=7, provider="anthropic", detached=True)
    other = lease(e, conn=8, provider="anthropic")
    events(e)
    e.disconnect(7, now=T0 + 1)
    assert {le.id for le in e.leases()} == {detached.lease_id, other.lease_id}
    evs = events(e)
    assert [(ev.type, ev.lease_id) for ev in evs] == [("release", attached.lease_id)]
    e.disconnect(8, now=T0 + 2)
    assert [le.id for le in e.leases()] == [detached.lease_id]


def test_disconnect_drops_waiters() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    got = lease(e, conn=1, provider="anthropic", detached=True)
    wid = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0)
    e.disconnect(2, now=T0 + 1)
    e.release(got.lease_id, now=T0 + 2)
    assert e.take_outbox().served == []
    assert not e.has_waiters()
    assert wid == 1


# ------------------------------------------------------------------ waiters


def served(e: Engine) -> list[tuple[int, str]]:
    """(waiter id, profile or error code) of the waiters served since the last call."""
    out = []
    for wid, res in e.take_outbox().served:
        out.append((wid, res.profile if isinstance(res, LeaseResult) else res.code))
    return out


def test_wait_served_at_once_when_ready() -> None:
    e = make(prof("anthropic:a"))
    wid = e.wait(LeaseParams(provider="anthropic", wait=30), conn=1, now=T0)
    assert served(e) == [(wid, "anthropic:a")]
    assert e.next_deadline() == T0 + 600  # only the lease's TTL is left


def test_wait_zero_fails_at_once() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    lease(e, provider="anthropic")
    wid = e.wait(LeaseParams(provider="anthropic"), conn=1, now=T0)
    assert served(e) == [(wid, "no_profile_available")]


def test_wait_fifo_on_release() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    held = lease(e, provider="anthropic", ttl=100)
    w1 = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0 + 1)
    w2 = e.wait(LeaseParams(provider="anthropic", wait=60), conn=3, now=T0 + 2)
    w3 = e.wait(LeaseParams(provider="anthropic", wait=60), conn=4, now=T0 + 3)
    assert served(e) == []
    assert e.next_deadline() == T0 + 61  # w1's deadline comes before the TTL
    e.release(held.lease_id, now=T0 + 10)
    out = e.take_outbox().served
    assert [wid for wid, _ in out] == [w1]
    first = out[0][1]
    assert isinstance(first, LeaseResult)
    e.release(first.lease_id, now=T0 + 11)
    assert served(e) == [(w2, "anthropic:a")]
    assert e.has_waiters()
    assert w3 > w2


def test_wait_newcomer_does_not_jump_the_queue() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    held = lease(e, provider="anthropic", ttl=30)
    w1 = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0 + 1)
    # the lease has expired by T0 + 40: the queued waiter gets it, not the newcomer
    with pytest.raises(NoProfileAvailable):
        lease(e, T0 + 40, conn=3, provider="anthropic")
    assert served(e) == [(w1, "anthropic:a")]
    assert held.lease_id not in {le.id for le in e.leases()}


def test_wait_woken_by_ttl_expiry() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    lease(e, provider="anthropic", ttl=30)
    wid = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0 + 1)
    assert e.next_deadline() == T0 + 30
    e.advance(T0 + 30)
    assert served(e) == [(wid, "anthropic:a")]


def test_wait_woken_by_cooldown_end() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    wid = e.wait(LeaseParams(provider="anthropic", wait=120), conn=2, now=T0 + 1)
    assert served(e) == []
    assert e.next_deadline() == T0 + 60
    e.advance(T0 + 60)
    assert served(e) == [(wid, "anthropic:a")]


def test_wait_woken_by_model_cooldown_end() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "rate_limit", profile="anthropic:a", model="opus")
    wid = e.wait(LeaseParams(provider="anthropic", model="opus", wait=120), conn=2, now=T0)
    assert served(e) == []
    assert e.next_deadline() == T0 + 60
    e.advance(T0 + 60)
    assert served(e) == [(wid, "anthropic:a")]


def test_wait_woken_by_reload_adding_profile() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "quota", profile="anthropic:a")
    wid = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0)
    reload(e, prof("anthropic:a"), prof("anthropic:b"), now=T0 + 5)
    assert served(e) == [(wid, "anthropic:b")]


def test_wait_woken_by_enable() -> None:
    e = make(prof("anthropic:a", disabled=True))
    wid = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0)
    assert served(e) == []
    e.set_disabled("anthropic:a", False, now=T0 + 1)
    assert served(e) == [(wid, "anthropic:a")]


def test_wait_woken_by_reset() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "auth", profile="anthropic:a")
    wid = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0)
    assert e.next_deadline() == T0 + 60
    e.reset("anthropic:a", now=T0 + 1)
    assert served(e) == [(wid, "anthropic:a")]


def test_wait_deadline_gives_no_profile_available_with_retry_after() -> None:
    e = make(prof("anthropic:a"), policy=PolicyConfig(recheck=6 * HOUR))  # no early probe
    report(e, T0, "quota", profile="anthropic:a")  # 5 h
    wid = e.wait(LeaseParams(provider="anthropic", wait=30), conn=2, now=T0)
    assert e.next_deadline() == T0 + 30
    e.advance(T0 + 29)
    assert served(e) == []
    e.advance(T0 + 30)
    out = e.take_outbox().served
    assert [w for w, _ in out] == [wid]
    err = out[0][1]
    assert isinstance(err, NoProfileAvailable)
    assert err.data["retry_after"] == 5 * HOUR - 30
    assert not e.has_waiters()
    assert e.next_deadline() == T0 + 5 * HOUR


def test_wait_unknown_provider_or_route_raises() -> None:
    e = make(prof("anthropic:a"))
    with pytest.raises(UnknownProvider):
        e.wait(LeaseParams(provider="openai", wait=5), conn=1, now=T0)
    with pytest.raises(UnknownRoute):
        e.wait(LeaseParams(route="nope", wait=5), conn=1, now=T0)
    assert not e.has_waiters()


def test_wait_served_error_when_provider_vanishes() -> None:
    e = make(prof("anthropic:a", disabled=True), prof("openai:x"))
    wid = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0)
    reload(e, prof("openai:x"), now=T0 + 1)
    assert served(e) == [(wid, "unknown_provider")]


def test_cancel_wait() -> None:
    e = make(prof("anthropic:a", max_concurrent=1))
    held = lease(e, provider="anthropic")
    wid = e.wait(LeaseParams(provider="anthropic", wait=60), conn=2, now=T0)
    e.cancel_wait(wid)
    assert e.next_deadline() == held.expires_at
    e.release(held.lease_id, now=T0 + 1)
    assert served(e) == []


def test_next_deadline_empty_engine() -> None:
    e = make(prof("anthropic:a"))
    assert e.next_deadline() is None


def test_next_deadline_earliest_of_lease_cooldown_waiter() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    lease(e, provider="anthropic", ttl=500)
    report(e, T0, "rate_limit", profile="anthropic:b", retry_after=200)
    assert e.next_deadline() == T0 + 200
    e.wait(LeaseParams(provider="anthropic", model="m", wait=100), conn=3, now=T0)
    # the waiter got the lease profile a (no max_concurrent): served at once
    assert e.next_deadline() == T0 + 200
    e.reset("anthropic:b", now=T0 + 1)
    assert e.next_deadline() == T0 + 500


# ------------------------------------------------------------------ session affinity


def test_session_keeps_its_profile_while_ready() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"), prof("anthropic:c"))
    first = pick(e, T0, provider="anthropic", session="s1")
    # other traffic moves the round robin on; the session stays
    for i in range(5):
        pick(e, T0 + i, provider="anthropic")
        assert pick(e, T0 + i, provider="anthropic", session="s1") == first


def test_session_moves_when_profile_stops_being_ready() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    first = pick(e, T0, provider="anthropic", session="s1")
    report(e, T0 + 1, "rate_limit", profile=first)
    moved = pick(e, T0 + 2, provider="anthropic", session="s1")
    assert moved != first
    # after the cooldown the session stays where it moved to
    assert pick(e, T0 + 100, provider="anthropic", session="s1") == moved


def test_session_moves_off_a_removed_profile() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    held = lease(e, T0, provider="anthropic", session="s1")
    assert held.profile == "anthropic:a"
    reload(e, prof("anthropic:b"), now=T0 + 1)  # a is removed, its lease still runs
    assert lease(e, T0 + 2, provider="anthropic", session="s1").profile == "anthropic:b"


def test_session_forgotten_after_idle_hour() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    assert pick(e, T0, provider="anthropic", session="s1") == "anthropic:a"
    assert pick(e, T0 + 1, provider="anthropic") == "anthropic:b"
    assert pick(e, T0 + 2, provider="anthropic") == "anthropic:a"
    # b is now least recently leased; within the hour the session still gets a
    assert pick(e, T0 + HOUR - 1, provider="anthropic", session="s1") == "anthropic:a"
    assert pick(e, T0 + HOUR, provider="anthropic") == "anthropic:b"
    # an hour idle from its last lease: the session is served like anyone
    assert pick(e, T0 + 2 * HOUR, provider="anthropic", session="s1") == "anthropic:a"
    assert pick(e, T0 + 2 * HOUR, provider="anthropic") == "anthropic:b"
    assert pick(e, T0 + 3 * HOUR, provider="anthropic", session="s1") == "anthropic:a"


def test_session_idle_hour_counts_from_its_last_use() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    held = lease(e, T0, provider="anthropic", session="s1", ttl=HOUR)
    assert held.profile == "anthropic:a"
    e.renew(held.lease_id, HOUR, now=T0 + 50 * MIN)
    e.release(held.lease_id, now=T0 + 90 * MIN)
    assert pick(e, T0 + 90 * MIN, provider="anthropic") == "anthropic:b"
    assert pick(e, T0 + 90 * MIN, provider="anthropic") == "anthropic:a"
    # b is the least recently leased now; 2 h after the grant but 50 min after
    # the release: still the same profile
    assert pick(e, T0 + 140 * MIN, provider="anthropic", session="s1") == "anthropic:a"


def test_session_idle_affinity_not_used() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    assert pick(e, T0, provider="anthropic", session="s1") == "anthropic:a"
    assert pick(e, T0 + HOUR, provider="anthropic", session="s1") == "anthropic:b"


def test_session_affinity_survives_route_targets() -> None:
    # The session's profile is on the second target of the route; asking the
    # first target (nothing ready there) must not forget it.
    e = make(
        prof("anthropic:a"),
        prof("openrouter:x"), prof("openrouter:y"),
        routes={"r": ["anthropic/sonnet", "openrouter/anthropic/sonnet"]},
    )
    report(e, T0, "quota", profile="anthropic:a")
    first = pick(e, T0, route="r", session="s1")
    assert first == "openrouter:x"
    assert pick(e, T0 + 1, provider="openrouter") == "openrouter:y"
    assert pick(e, T0 + 1, provider="openrouter") == "openrouter:x"
    # y is now the least recently leased; the session still goes back to x
    assert pick(e, T0 + 2, route="r", session="s1") == "openrouter:x"


# ------------------------------------------------------------------ failover


ROUTES = {
    "default": [
        "anthropic/claude-sonnet-4-5",
        "openrouter/anthropic/claude-sonnet-4.5",
        "minimax/MiniMax-M2",
    ]
}


def route_engine() -> Engine:
    return make(
        prof("anthropic:a"), prof("anthropic:b"), prof("anthropic:c"),
        prof("openrouter:x", tag="or"), prof("minimax:m", tag="mm"),
        routes=ROUTES,
    )


def failover(e: Engine, lease_id: str, kind: str, now: float) -> LeaseResult | None:
    r = e.report(ReportParams(kind=kind, lease_id=lease_id, failover=True),  # type: ignore[arg-type]
                 conn=1, now=now)
    return r.next


def test_failover_profile_fault_stays_on_provider() -> None:
    e = route_engine()
    got = lease(e, route="default")
    assert (got.profile, got.model) == ("anthropic:a", "claude-sonnet-4-5")
    nxt = failover(e, got.lease_id, "rate_limit", T0 + 1)
    assert nxt is not None
    assert (nxt.profile, nxt.model) == ("anthropic:b", "claude-sonnet-4-5")


@pytest.mark.parametrize("kind", ["rate_limit", "quota", "auth"])
def test_failover_profile_fault_tries_every_profile_then_moves_on(kind: str) -> None:
    e = route_engine()
    got: LeaseResult | None = lease(e, route="default")
    seen = []
    while got is not None and got.provider == "anthropic":
        seen.append(got.profile)
        got = failover(e, got.lease_id, kind, T0 + 1)
    assert seen == ["anthropic:a", "anthropic:b", "anthropic:c"]
    assert got is not None
    assert (got.profile, got.model) == ("openrouter:x", "anthropic/claude-sonnet-4.5")
    got = failover(e, got.lease_id, kind, T0 + 2)
    assert got is not None and got.profile == "minimax:m"
    assert failover(e, got.lease_id, kind, T0 + 3) is None


@pytest.mark.parametrize("kind", ["overloaded", "timeout", "server_error"])
def test_failover_provider_fault_moves_to_next_target(kind: str) -> None:
    e = route_engine()
    got = lease(e, route="default")
    nxt = failover(e, got.lease_id, kind, T0 + 1)
    assert nxt is not None
    assert (nxt.profile, nxt.provider) == ("openrouter:x", "openrouter")
    last = failover(e, nxt.lease_id, kind, T0 + 2)
    assert last is not None and last.profile == "minimax:m"
    assert failover(e, last.lease_id, kind, T0 + 3) is None
    # the provider fault left every anthropic profile ready
    assert {e.state_of(p, T0 + 3) for p in ("anthropic:a", "anthropic:b")} == {"ready"}


@pytest.mark.parametrize("kind", ["overloaded", "timeout", "server_error"])
def test_failover_provider_fault_without_route_is_none(kind: str) -> None:
    e = route_engine()
    got = lease(e, provider="anthropic")
    assert failover(e, got.lease_id, kind, T0 + 1) is None


def test_failover_without_route_same_provider() -> None:
    e = route_engine()
    got = lease(e, provider="anthropic", model="opus", session="s", client="c1")
    nxt = failover(e, got.lease_id, "rate_limit", T0 + 1)
    assert nxt is not None
    assert (nxt.profile, nxt.model) == ("anthropic:b", "opus")
    assert e.leases()[0].client == "c1"
    assert e.leases()[0].session == "s"


def test_failover_keeps_the_requested_ttl_and_model() -> None:
    e = route_engine()
    got = lease(e, route="default", model="claude-opus-4", ttl=3000)
    nxt = failover(e, got.lease_id, "rate_limit", T0 + 10)
    assert nxt is not None
    assert (nxt.profile, nxt.model, nxt.expires_at) == ("anthropic:b", "claude-opus-4",
                                                        T0 + 3010)
    last = failover(e, nxt.lease_id, "overloaded", T0 + 20)
    assert last is not None
    assert (last.provider, last.model, last.expires_at) == ("openrouter", "claude-opus-4",
                                                            T0 + 3020)


def test_failover_by_profile_without_lease() -> None:
    e = route_engine()
    r = e.report(ReportParams(kind="quota", profile="anthropic:a", failover=True),
                 conn=1, now=T0)
    assert r.next is not None and r.next.profile == "anthropic:b"


def test_failover_detached_stays_detached() -> None:
    e = route_engine()
    got = lease(e, conn=3, provider="anthropic", detached=True)
    nxt = failover(e, got.lease_id, "rate_limit", T0)
    assert nxt is not None
    e.disconnect(3, now=T0 + 1)
    e.disconnect(1, now=T0 + 1)
    assert [le.id for le in e.leases()] == [nxt.lease_id]


def test_failover_without_flag_gives_no_next() -> None:
    e = route_engine()
    got = lease(e, route="default")
    r = e.report(ReportParams(kind="rate_limit", lease_id=got.lease_id), conn=1, now=T0)
    assert r.next is None
    assert e.leases() == []


# ------------------------------------------------------------------ routes


def test_route_unknown() -> None:
    e = route_engine()
    with pytest.raises(UnknownRoute) as info:
        lease(e, route="nope")
    assert info.value.code == "unknown_route"


def test_provider_unknown() -> None:
    e = route_engine()
    with pytest.raises(UnknownProvider) as info:
        lease(e, provider="openai")
    assert info.value.code == "unknown_provider"
    assert info.value.data == {"provider": "openai"}


def test_route_skips_targets_without_profiles() -> None:
    e = make(prof("minimax:m"), routes={"r": ["openai/gpt-5", "minimax/MiniMax-M2"]})
    got = lease(e, route="r")
    assert (got.profile, got.model) == ("minimax:m", "MiniMax-M2")


def test_route_nothing_ready_is_no_profile_available() -> None:
    e = make(prof("minimax:m"), routes={"r": ["openai/gpt-5", "minimax/MiniMax-M2"]})
    report(e, T0, "rate_limit", profile="minimax:m")
    with pytest.raises(NoProfileAvailable) as info:
        lease(e, T0 + 1, route="r")
    assert info.value.data["retry_after"] == 59.0
    assert "route 'r'" in info.value.message


def test_route_model_param_overrides_target_models() -> None:
    e = route_engine()
    got = lease(e, route="default", model="claude-opus-4")
    assert (got.profile, got.model) == ("anthropic:a", "claude-opus-4")


def test_route_target_without_model() -> None:
    e = make(prof("openai:x"), routes={"r": ["openai"]})
    got = lease(e, route="r")
    assert (got.profile, got.model) == ("openai:x", None)


# ------------------------------------------------------------------ reload


def test_reload_unchanged_profile_keeps_cooldown_and_counts() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    e.set_disabled("anthropic:b", True, now=T0)
    reload(e, prof("anthropic:a", label="renamed"), prof("anthropic:b"), now=T0 + 1)
    assert e.state_of("anthropic:a", T0 + 1) == "cooldown"
    assert e.key_state("anthropic:a").cooldown_until == T0 + 60
    assert e.key_state("anthropic:a").error_count == 1
    assert e.profile("anthropic:a").label == "renamed"
    assert e.state_of("anthropic:b", T0 + 1) == "disabled"


def test_reload_changed_secret_starts_clean() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    e.set_disabled("anthropic:a", True, now=T0)
    reload(e, prof("anthropic:a", tag="new"), now=T0 + 1)
    ks = e.key_state("anthropic:a")
    assert (ks.cooldown_until, ks.error_count, ks.streak) == (None, 0, {})
    assert e.state_of("anthropic:a", T0 + 1) == "ready"
    assert lease(e, T0 + 1, provider="anthropic").token == SECRETS["new"]


def test_reload_removed_profile_finishes_its_lease() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    held = lease(e, provider="anthropic")
    assert held.profile == "anthropic:a"
    reload(e, prof("anthropic:b", priority=1), now=T0 + 1)
    assert [p.id for p in e.profiles()] == ["anthropic:b"]
    assert pick(e, T0 + 2, provider="anthropic") == "anthropic:b"
    assert e.renew(held.lease_id, 60, now=T0 + 3) == T0 + 63
    e.release(held.lease_id, now=T0 + 4)
    assert e.leases() == []
    assert [s.profile.id for s in e.active_profiles()] == ["anthropic:b"]
    with pytest.raises(UnknownProfile):
        e.profile("anthropic:a")


def test_reload_removed_profile_lease_expires() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    held = lease(e, provider="anthropic", ttl=30)
    reload(e, prof("anthropic:b"), now=T0 + 1)
    e.advance(T0 + 30)
    assert e.leases() == []
    assert [s.profile.id for s in e.active_profiles()] == ["anthropic:b"]
    assert held.profile == "anthropic:a"


def test_reload_removed_profile_report_on_its_lease() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    held = lease(e, provider="anthropic")
    reload(e, prof("anthropic:b", priority=1), now=T0 + 1)
    r = e.report(ReportParams(kind="rate_limit", lease_id=held.lease_id, failover=True),
                 conn=1, now=T0 + 2)
    assert r.next is not None and r.next.profile == "anthropic:b"
    assert [s.profile.id for s in e.active_profiles()] == ["anthropic:b"]


def test_reload_re_added_profile_keeps_state() -> None:
    e = make(prof("anthropic:a"))
    held = lease(e, provider="anthropic")
    report(e, T0, "quota", profile="anthropic:a")
    reload(e, now=T0 + 1)
    reload(e, prof("anthropic:a"), now=T0 + 2)
    assert e.state_of("anthropic:a", T0 + 2) == "cooldown"
    e.release(held.lease_id, now=T0 + 3)
    assert [p.id for p in e.profiles()] == ["anthropic:a"]


def test_reload_failure_of_a_lease_on_the_replaced_secret_spares_the_new_one() -> None:
    # The user replaced a revoked token while an agent still held a lease on it:
    # the agent's 401 is about the old token, not the new one.
    e = make(prof("anthropic:a"))
    old = lease(e, provider="anthropic")
    reload(e, prof("anthropic:a", tag="fixed"), now=T0 + 1)
    r = e.report(ReportParams(kind="auth", lease_id=old.lease_id), conn=1, now=T0 + 2)
    assert r.profile_state == "ready"
    assert [ev.type for ev in events(e) if ev.at == T0 + 2] == ["failure"]
    old2 = lease(e, T0 + 3, provider="anthropic")
    reload(e, prof("anthropic:a", tag="fixed-again"), now=T0 + 4)
    report(e, T0 + 5, "rate_limit", lease_id=old2.lease_id)
    assert e.state_of("anthropic:a", T0 + 5) == "ready"
    old3 = lease(e, T0 + 6, provider="anthropic")
    report(e, T0 + 6, "rate_limit", profile="anthropic:a")
    reload(e, prof("anthropic:a", tag="fresh"), now=T0 + 7)
    report(e, T0 + 8, "rate_limit", profile="anthropic:a")  # a new streak: 60 s
    e.release(old3.lease_id, now=T0 + 9)  # a success with the old token says nothing
    assert e.key_state("anthropic:a").error_count == 1
    assert lease(e, T0 + 68, provider="anthropic").token == SECRETS["fresh"]


def test_reload_failure_on_a_replaced_secret_still_shared_cools_it() -> None:
    e = make(prof("anthropic:a", tag="shared"), prof("anthropic:b", tag="shared"))
    old = lease(e, provider="anthropic")
    assert old.profile == "anthropic:a"
    reload(e, prof("anthropic:a", tag="new"), prof("anthropic:b", tag="shared"), now=T0 + 1)
    report(e, T0 + 2, "rate_limit", lease_id=old.lease_id)
    assert e.state_of("anthropic:b", T0 + 2) == "cooldown"  # b still holds that secret
    assert e.state_of("anthropic:a", T0 + 2) == "ready"


def test_reload_shared_secret_shares_cooldown() -> None:
    e = make(prof("anthropic:a", tag="same"), prof("anthropic:b", tag="same"),
             prof("anthropic:c", priority=1))
    report(e, T0, "rate_limit", profile="anthropic:a")
    assert e.state_of("anthropic:b", T0) == "cooldown"
    assert pick(e, T0 + 1, provider="anthropic") == "anthropic:c"
    events(e)
    e.advance(T0 + 60)
    ends = sorted(ev.profile or "" for ev in events(e, "cooldown_end"))
    assert ends == ["anthropic:a", "anthropic:b"]


def test_reload_new_profile_with_a_known_secret_inherits_its_state() -> None:
    e = make(prof("anthropic:a", tag="same"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    reload(e, prof("anthropic:renamed", tag="same"), now=T0 + 1)
    assert e.state_of("anthropic:renamed", T0 + 1) == "cooldown"


def test_reload_changes_order() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    reload(e, prof("anthropic:a"), prof("anthropic:b"), now=T0,
           order={"anthropic": ["anthropic:b", "anthropic:a"]})
    assert [pick(e, T0 + i, provider="anthropic") for i in range(2)] == ["anthropic:b"] * 2


def test_reload_changes_config_routes() -> None:
    e = make(prof("anthropic:a"))
    with pytest.raises(UnknownRoute):
        lease(e, route="r")
    e.load(ProfileSet([prof("anthropic:a")]), Config(routes={"r": ["anthropic/x"]}), now=T0)
    assert lease(e, route="r").model == "x"


# ------------------------------------------------------------------ snapshot


def roundtrip(e: Engine, profiles: list[Profile], now: float) -> Engine:
    data = msgspec.json.decode(msgspec.json.encode(e.snapshot()))
    fresh = Engine(ProfileSet(profiles), e.config, now=now, lease_id=ids())
    fresh.restore(decode_snapshot(data), now=now)
    return fresh


def test_snapshot_roundtrip_is_lossless() -> None:
    profiles = [prof("anthropic:a"), prof("anthropic:b"), prof("openai:x", tag="ox"),
                prof("anthropic:c", tag="shared"), prof("anthropic:d", tag="shared")]
    e = make(*profiles)
    report(e, T0, "rate_limit", profile="anthropic:a")
    report(e, T0, "quota", profile="anthropic:b", model="opus")
    report(e, T0, "auth", profile="openai:x")
    report(e, T0, "timeout", profile="anthropic:c", status=504)
    e.set_disabled("anthropic:d", True, now=T0)
    got = lease(e, T0, provider="anthropic")
    e.release(got.lease_id, now=T0 + 1, usage=Usage(input_tokens=5, output_tokens=7))
    fresh = roundtrip(e, profiles, T0 + 2)
    assert fresh.snapshot() == e.snapshot()
    for p in profiles:
        assert fresh.state_of(p.id, T0 + 2) == e.state_of(p.id, T0 + 2)
    # the restored cooldowns end on time
    assert fresh.next_deadline() == T0 + 60
    fresh.advance(T0 + 60)
    assert fresh.state_of("anthropic:a", T0 + 60) == "ready"


def test_snapshot_changed_secret_does_not_inherit() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    report(e, T0, "auth", profile="anthropic:b")
    e.set_disabled("anthropic:a", True, now=T0)
    fresh = roundtrip(e, [prof("anthropic:a", tag="new-a"), prof("anthropic:b")], T0 + 1)
    assert fresh.state_of("anthropic:a", T0 + 1) == "ready"
    assert fresh.key_state("anthropic:a").error_count == 0
    assert fresh.state_of("anthropic:b", T0 + 1) == "invalid"


def test_snapshot_keeps_the_books_of_a_profile_no_longer_loaded() -> None:
    # Issue 10: a reload that loses a profile for a moment must not wipe (and
    # then save without) its books. They are kept, orphaned, for ORPHAN_KEEP.
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    held = lease(e, provider="anthropic")
    key_a = e.profile("anthropic:a").secret.key
    report(e, T0, "rate_limit", profile="anthropic:a")
    reload(e, prof("anthropic:b"), now=T0 + 1)  # a is removed but its lease runs
    snap = e.snapshot()
    assert list(snap.profiles) == ["anthropic:b"]
    assert set(snap.keys) == {key_a, e.profile("anthropic:b").secret.key}
    assert snap.keys[key_a].orphaned_at == T0 + 1
    assert snap.keys[key_a].cooldown_until == T0 + 60
    assert held.profile == "anthropic:a"
    e.release(held.lease_id, now=T0 + 2)
    e.advance(T0 + 1 + ORPHAN_KEEP)  # a week later the secret is gone for good
    reload(e, prof("anthropic:b"), now=T0 + 1 + ORPHAN_KEEP)
    assert set(e.snapshot().keys) == {e.profile("anthropic:b").secret.key}


def test_snapshot_restore_past_cooldown_ends_it() -> None:
    e = make(prof("anthropic:a"))
    report(e, T0, "rate_limit", profile="anthropic:a")
    fresh = roundtrip(e, [prof("anthropic:a")], T0 + 61)
    assert fresh.state_of("anthropic:a", T0 + 61) == "ready"
    assert fresh.next_deadline() is None


def test_snapshot_holds_no_secret() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", "api-key"))
    report(e, T0, "rate_limit", profile="anthropic:a", message="bad key sk-ant-…")
    text = msgspec.json.encode(e.snapshot()).decode()
    for p in e.profiles():
        value = p.secret.reveal()
        assert value not in text
        assert value[-16:] not in text
        assert value[:24] not in text


def test_snapshot_decode_rejects_wrong_shape() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_snapshot({"keys": []})


# ------------------------------------------------------------------ secrets


def test_errors_and_events_hold_no_secret() -> None:
    e = route_engine()
    texts: list[str] = []
    got = lease(e, route="default", client="agent")
    for call in (
        lambda: lease(e, provider="openai"),
        lambda: lease(e, route="nope"),
        lambda: e.renew("l999", 1, now=T0),
        lambda: report(e, T0, "rate_limit", profile="nope:x"),
    ):
        with pytest.raises(Exception) as info:
            call()
        texts.append(str(info.value) + repr(info.value.args))
    for pid in ("anthropic:a", "anthropic:b", "anthropic:c"):
        report(e, T0, "quota", profile=pid)
    with pytest.raises(NoProfileAvailable) as nope:
        lease(e, provider="anthropic")
    texts.append(str(nope.value) + msgspec.json.encode(nope.value.to_wire()).decode())
    failover(e, got.lease_id, "rate_limit", T0)
    e.advance(T0 + DAY)
    texts += [msgspec.json.encode(ev).decode() for ev in e.take_outbox().events]
    blob = "\n".join(texts)
    for p in e.profiles():
        assert p.secret.reveal() not in blob


def test_engine_lease_heap_stays_bounded_under_churn() -> None:
    # Released leases leave heap entries behind until their TTL; the heap must
    # not grow with the number of leases ever granted (a leak under load).
    e = make(prof("anthropic:a"))
    for i in range(10_000):
        granted = lease(e, now=T0 + i * 0.001, provider="anthropic")
        e.release(granted.lease_id, now=T0 + i * 0.001)
    assert len(e._leases.heap) <= 2 * len(e.leases()) + 65
