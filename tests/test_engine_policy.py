"""`[policy]` in the engine (`argentd/policy.py`, selection, readiness), at explicit `now`:
pinned profiles, self-healing auth, strategy, window caps, paid fallback,
early-reset probes and subscription windows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from argent_client.protocol import (
    ConfigStatus,
    InvalidParams,
    LeaseParams,
    LeaseResult,
    Limits,
    NoProfileAvailable,
    ReportParams,
    UnknownProfile,
)
from argentd.engine import Engine
from argentd.policy import ClientPolicy, PolicyConfig
from argentd.views import status

from .test_engine import DAY, HOUR, T0, events, lease, make, pick, prof, report


def refused(e: Engine, now: float, **kw: object) -> NoProfileAvailable:
    with pytest.raises(NoProfileAvailable) as info:
        lease(e, now, **kw)
    return info.value


def states(err: NoProfileAvailable) -> dict[str, tuple[object, object]]:
    return {s["id"]: (s["state"], s["until"]) for s in err.data["profiles"]}


def succeed(e: Engine, now: float, **kw: object) -> str:
    """A lease that worked: it proves its secret."""
    return pick(e, now, **kw)


# ------------------------------------------------------------------ pinned


def test_policy_pinned_profile_or_nothing() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    assert [pick(e, T0, provider="anthropic", profile="anthropic:b") for _ in range(3)] == [
        "anthropic:b"] * 3
    assert lease(e, T0, profile="anthropic:b").profile == "anthropic:b"  # provider implied
    report(e, T0, "rate_limit", profile="anthropic:b")
    err = refused(e, T0 + 1, profile="anthropic:b")
    assert states(err) == {"anthropic:b": ("cooldown", T0 + 60)}  # never another
    assert err.message == "no profile of profile 'anthropic:b' is ready; one may be in 59s"
    wid = e.wait(LeaseParams(profile="anthropic:b", wait=120), conn=1, now=T0 + 1)
    e.advance(T0 + 60)
    (got_wid, got), = e.take_outbox().served
    assert got_wid == wid and isinstance(got, LeaseResult) and got.profile == "anthropic:b"


def test_policy_pinned_failover_never_moves_and_bad_pins_are_refused() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"), prof("openai:x"))
    held = lease(e, T0, profile="anthropic:a")
    r = e.report(ReportParams(kind="rate_limit", lease_id=held.lease_id, failover=True),
                 conn=1, now=T0)
    assert r.next is None
    with pytest.raises(UnknownProfile):
        lease(e, T0, profile="anthropic:nope")
    with pytest.raises(InvalidParams):
        lease(e, T0, provider="openai", profile="anthropic:b")
    with pytest.raises(InvalidParams):
        lease(e, T0, route="r", profile="anthropic:b")


# ------------------------------------------------------------------ auth


def test_policy_auth_first_failure_of_a_proven_secret_cools_then_probes() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b", priority=1))
    succeed(e, T0, provider="anthropic")  # a worked with this secret
    until, state = report(e, T0 + 1, "auth", profile="anthropic:a")
    assert (until, state) == (T0 + 301, "cooldown")
    report(e, T0 + 2, "auth", profile="anthropic:a")  # a burst from leases out together
    assert e.state_of("anthropic:a", T0 + 2) == "cooldown"
    assert pick(e, T0 + 100, provider="anthropic") == "anthropic:b"
    probe = lease(e, T0 + 301, provider="anthropic")
    assert probe.profile == "anthropic:a"  # one probe after the cooldown ...
    assert lease(e, T0 + 301, provider="anthropic").profile == "anthropic:b"  # ... at a time
    r = e.report(ReportParams(kind="auth", lease_id=probe.lease_id), conn=1, now=T0 + 302)
    assert r.profile_state == "invalid"  # a second in a row: revoked


def test_policy_auth_probe_that_works_heals_the_profile() -> None:
    e = make(prof("anthropic:a"))
    succeed(e, T0, provider="anthropic")
    report(e, T0, "auth", profile="anthropic:a")
    probe = lease(e, T0 + 300, provider="anthropic")
    e.release(probe.lease_id, now=T0 + 301)
    assert e.state_of("anthropic:a", T0 + 301) == "ready"
    assert report(e, T0 + 400, "auth", profile="anthropic:a") == (T0 + 700, "cooldown")


def test_policy_auth_first_failure_of_a_secret_that_never_worked_is_invalid() -> None:
    e = make(prof("anthropic:a"))
    assert report(e, T0, "auth", profile="anthropic:a") == (None, "invalid")


def test_policy_auth_cooldown_base_is_configurable() -> None:
    from argentd.config import Backoff, CooldownConfig

    e = make(prof("anthropic:a"), cooldown=CooldownConfig(auth=Backoff(base=60.0)))
    succeed(e, T0, provider="anthropic")
    assert report(e, T0, "auth", profile="anthropic:a") == (T0 + 60, "cooldown")


# ------------------------------------------------------------------ strategy


def test_policy_fill_first_uses_one_profile_until_it_is_not_ready() -> None:
    fill = PolicyConfig(strategy="fill-first")
    e = make(prof("anthropic:a", max_concurrent=2), prof("anthropic:b"), policy=fill)
    assert [pick(e, T0 + i, provider="anthropic") for i in range(4)] == ["anthropic:a"] * 4
    held = [lease(e, T0 + 5, provider="anthropic") for _ in range(3)]  # concurrency
    assert [h.profile for h in held] == ["anthropic:a", "anthropic:a", "anthropic:b"]
    for h in held:
        e.release(h.lease_id, now=T0 + 6)
    report(e, T0 + 7, "rate_limit", profile="anthropic:a")
    assert pick(e, T0 + 8, provider="anthropic") == "anthropic:b"
    assert pick(e, T0 + 67, provider="anthropic") == "anthropic:a"  # back after the cooldown


def test_policy_spread_is_the_default() -> None:
    e = make(prof("anthropic:a"), prof("anthropic:b"))
    assert [pick(e, T0 + i, provider="anthropic") for i in range(4)] == [
        "anthropic:a", "anthropic:b", "anthropic:a", "anthropic:b"]


# ------------------------------------------------------------------ windows and caps


def window(e: Engine, now: float, **limits: object) -> str:
    got = lease(e, now, provider="anthropic")
    e.release(got.lease_id, now=now, limits=Limits(**limits))  # type: ignore[arg-type]
    return got.profile


def test_policy_window_cap_reached_exactly_holds_until_the_reset() -> None:
    cap = PolicyConfig(window_cap=0.9)
    e = make(prof("anthropic:sub"), prof("anthropic:key", "api-key"), policy=cap)
    assert window(e, T0, unified_7d_utilization=0.9, unified_7d_reset=T0 + DAY) == "anthropic:sub"
    r = e.readiness_of("anthropic:sub", T0 + 1)
    assert (r.reason, r.until) == ("window", T0 + DAY)
    assert pick(e, T0 + 1, provider="anthropic") == "anthropic:key"
    assert pick(e, T0 + DAY, provider="anthropic") == "anthropic:sub"  # the window reset


def test_policy_window_cap_per_client_beside_the_global_one() -> None:
    policy = PolicyConfig(window_cap=0.95, clients={"background": ClientPolicy(window_cap=0.6)})
    e = make(prof("anthropic:sub"), policy=policy)
    window(e, T0, unified_5h_utilization=0.7, unified_5h_reset=T0 + 3600,
           unified_7d_utilization=0.3, unified_7d_reset=T0 + 5 * DAY)
    err = refused(e, T0 + 1, provider="anthropic", client="background")
    assert states(err) == {"anthropic:sub": ("window", T0 + 3600)}
    assert err.data["retry_after"] == 3599
    assert lease(e, T0 + 1, provider="anthropic", client="person").profile == "anthropic:sub"
    assert lease(e, T0 + 3600, provider="anthropic", client="background")


def test_policy_rejected_window_cools_until_the_latest_rejected_reset() -> None:
    e = make(prof("anthropic:sub"), prof("anthropic:key", "api-key"))
    window(e, T0, unified_5h_status="rejected", unified_5h_reset=T0 + 3600,
           unified_7d_status="rejected", unified_7d_reset=T0 + 2 * DAY,
           unified_5h_utilization=1.0, unified_7d_utilization=1.01)
    assert e.key_state("anthropic:sub").cooling(T0) == T0 + 2 * DAY
    shown = {p.id: p for p in status(e, ConfigStatus("p", T0), now=T0 + 1).profiles}
    sub = shown["anthropic:sub"]
    assert sub.state == "cooldown"
    assert {k: (w.utilization, w.reset, w.status) for k, w in sub.windows.items()} == {
        "5h": (1.0, T0 + 3600, "rejected"), "7d": (1.01, T0 + 2 * DAY, "rejected")}


def test_policy_codex_windows_in_percent() -> None:
    e = make(prof("anthropic:sub"), policy=PolicyConfig(window_cap=0.8))
    window(e, T0, codex_primary_used_percent=85.0, codex_primary_reset=T0 + 600,
           codex_secondary_used_percent=40.0, codex_secondary_reset=T0 + 3 * DAY)
    r = e.readiness_of("anthropic:sub", T0)
    assert (r.reason, r.until) == ("window", T0 + 600)
    window(e, T0 + 600, codex_primary_used_percent=100.0, codex_primary_reset=T0 + 4000)
    assert e.key_state("anthropic:sub").cooling(T0 + 601) == T0 + 4000  # spent: cools


# ------------------------------------------------------------------ paid fallback


def test_policy_paid_fallback_deny_answers_the_soonest_subscription() -> None:
    policy = PolicyConfig(clients={"background": ClientPolicy(paid_fallback="deny")})
    e = make(prof("anthropic:sub1"), prof("anthropic:sub2"), prof("anthropic:key", "api-key"),
             policy=policy)
    report(e, T0, "rate_limit", profile="anthropic:sub1")  # back at T0 + 60
    report(e, T0, "rate_limit", profile="anthropic:sub2", retry_after=600)
    err = refused(e, T0 + 10, provider="anthropic", client="background")
    assert err.data["retry_after"] == 50
    assert states(err) == {"anthropic:sub1": ("cooldown", T0 + 60),
                           "anthropic:sub2": ("cooldown", T0 + 600),
                           "anthropic:key": ("paid", None)}
    assert lease(e, T0 + 10, provider="anthropic").profile == "anthropic:key"  # global: allow


def test_policy_paid_fallback_notify_emits_once_per_switch() -> None:
    e = make(prof("anthropic:sub"), prof("anthropic:key", "api-key"),
             policy=PolicyConfig(paid_fallback="notify"))
    e.events_wanted = False  # nobody listens: the event is still queued for the log
    report(e, T0, "rate_limit", profile="anthropic:sub")
    e.take_outbox()
    for i in range(3):
        assert pick(e, T0 + i, provider="anthropic") == "anthropic:key"
    (ev,) = events(e, "paid_fallback")
    assert (ev.profile, ev.provider, ev.at) == ("anthropic:key", "anthropic", T0)
    assert pick(e, T0 + 60, provider="anthropic") == "anthropic:sub"  # back on the subscription
    report(e, T0 + 61, "rate_limit", profile="anthropic:sub")
    pick(e, T0 + 62, provider="anthropic")
    assert [ev.at for ev in events(e, "paid_fallback")] == [T0 + 62]  # the next switch


def test_policy_paid_fallback_notify_is_silent_when_the_key_was_chosen() -> None:
    # A pinned key, or a key `order` puts first while the subscription is ready,
    # is no fall from a subscription: no event claims one.
    e = make(prof("anthropic:sub"), prof("anthropic:key", "api-key"),
             order={"anthropic": ["anthropic:key", "anthropic:sub"]},
             policy=PolicyConfig(paid_fallback="notify"))
    assert pick(e, T0, provider="anthropic", profile="anthropic:key") == "anthropic:key"
    assert pick(e, T0 + 1, provider="anthropic") == "anthropic:key"
    assert events(e, "paid_fallback") == []
    report(e, T0 + 2, "rate_limit", profile="anthropic:sub")
    assert pick(e, T0 + 3, provider="anthropic") == "anthropic:key"
    (ev,) = events(e, "paid_fallback")  # now it is a fallback
    assert (ev.profile, ev.at) == ("anthropic:key", T0 + 3)


def test_policy_paid_fallback_does_not_apply_without_a_subscription() -> None:
    e = make(prof("openai:key", "api-key"), policy=PolicyConfig(paid_fallback="deny"))
    assert pick(e, T0, provider="openai") == "openai:key"


# ------------------------------------------------------------------ early-reset probe


def test_policy_probe_cadence_during_a_long_quota_cooldown() -> None:
    e = make(prof("anthropic:sub"), prof("anthropic:key", "api-key"))
    report(e, T0, "quota", profile="anthropic:sub")  # 5 h
    assert pick(e, T0 + 899, provider="anthropic") == "anthropic:key"
    probe = lease(e, T0 + 900, provider="anthropic")
    assert (probe.profile, probe.probe) == ("anthropic:sub", True)
    assert lease(e, T0 + 900, provider="anthropic").profile == "anthropic:key"  # one at a time
    r = e.report(ReportParams(kind="quota", lease_id=probe.lease_id), conn=1, now=T0 + 901)
    assert r.cooldown_until == T0 + 5 * HOUR  # not extended
    assert pick(e, T0 + 1799, provider="anthropic") == "anthropic:key"
    second = lease(e, T0 + 1800, provider="anthropic")
    assert second.probe and second.profile == "anthropic:sub"


def test_policy_probe_success_ends_the_cooldown_for_every_waiter() -> None:
    e = make(prof("anthropic:sub"))
    report(e, T0, "quota", profile="anthropic:sub")
    wids = [e.wait(LeaseParams(provider="anthropic", wait=2 * HOUR), conn=2, now=T0)
            for _ in range(3)]
    assert e.next_deadline() == T0 + 900
    e.advance(T0 + 900)
    (first, probe), = e.take_outbox().served  # the first waiter gets the probe
    assert first == wids[0] and isinstance(probe, LeaseResult) and probe.probe
    e.release(probe.lease_id, now=T0 + 905)
    out = e.take_outbox()
    assert [w for w, r in out.served if isinstance(r, LeaseResult)] == wids[1:]
    assert [ev.type for ev in out.events if ev.type == "cooldown_end"] == ["cooldown_end"]
    assert e.state_of("anthropic:sub", T0 + 905) == "ready"


def test_policy_no_probe_for_a_short_quota_cooldown() -> None:
    e = make(prof("anthropic:sub"), policy=PolicyConfig(recheck=900))
    report(e, T0, "quota", profile="anthropic:sub", retry_after=800)
    refused(e, T0 + 799, provider="anthropic")
    assert pick(e, T0 + 800, provider="anthropic") == "anthropic:sub"


# ------------------------------------------------------------------ bad limits


finite = st.floats(allow_nan=True, allow_infinity=True)
limits_values = st.builds(
    Limits,
    unified_status=st.sampled_from([None, "allowed", "rejected", "allowed_warning", ""]),
    unified_reset=st.one_of(st.none(), finite, st.floats(T0 - DAY, T0 + 30 * DAY)),
    unified_5h_status=st.sampled_from([None, "allowed", "rejected", "weird"]),
    unified_5h_reset=st.one_of(st.none(), finite, st.floats(T0 - DAY, T0 + 30 * DAY)),
    unified_5h_utilization=st.one_of(st.none(), finite, st.sampled_from([1.01, 0.0, -1.0])),
    unified_7d_status=st.sampled_from([None, "allowed", "rejected"]),
    unified_7d_reset=st.one_of(st.none(), finite, st.floats(T0 - DAY, T0 + 30 * DAY)),
    unified_7d_utilization=st.one_of(st.none(), finite),
    codex_primary_used_percent=st.one_of(st.none(), finite, st.sampled_from([100.0, 101.0])),
    codex_primary_reset=st.one_of(st.none(), finite, st.floats(T0 - DAY, T0 + 30 * DAY)),
    codex_secondary_used_percent=st.one_of(st.none(), finite),
    codex_secondary_reset=st.one_of(st.none(), finite),
)


@settings(max_examples=300, deadline=None)
@given(first=limits_values, second=limits_values, cap=st.sampled_from([0.5, 1.0]))
def test_policy_no_limits_value_crashes_or_blocks_a_key_for_good(
    first: Limits, second: Limits, cap: float
) -> None:
    e = make(prof("anthropic:sub"), policy=PolicyConfig(window_cap=cap))
    got = lease(e, T0, provider="anthropic")
    e.release(got.lease_id, now=T0, limits=first)
    e.report(ReportParams(kind="rate_limit", profile="anthropic:sub", retry_after=1,
                          limits=second), conn=1, now=T0 + 1)
    status(e, ConfigStatus("p", T0), now=T0 + 2)
    for p in status(e, ConfigStatus("p", T0), now=T0 + 2).profiles:
        for w in p.windows.values():
            assert w.reset is None or math.isfinite(w.reset)
    # Whatever was said, a week and a day later the key is leased again.
    later = T0 + 8 * DAY + 2
    r = e.readiness_of("anthropic:sub", later)
    assert r.reason == "ready", r
    until = e.key_state("anthropic:sub").cooling(T0 + 2)
    assert until is None or until <= T0 + 1 + 7 * DAY
