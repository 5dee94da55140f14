"""Tests of the read-only engine views (`argentd/views.py`): status and metrics."""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import Any

import msgspec

from argent_client.protocol import (
    ConfigStatus,
    LeaseParams,
    ReportParams,
    StatusResult,
)
from argentd.config import Config
from argentd.engine import Engine
from argentd.model import Profile, ProfileSet, Secret
from argentd.views import metrics, status

T0 = 1_700_000_000.0
CONFIG_STATUS = ConfigStatus(profiles_path="/home/u/auth-profiles.json", loaded_at=T0)


def secret(tag: str, prefix: str = "sk-ant-oat01-") -> Secret:
    return Secret(prefix + hashlib.sha256(tag.encode()).hexdigest()[:40])


def prof(pid: str, type_: Any = "setup-token", **kw: Any) -> Profile:
    prefix = "sk-ant-api03-" if type_ == "api-key" else "sk-ant-oat01-"
    return Profile(id=pid, provider=pid.split(":")[0], type=type_,
                   secret=secret(pid, prefix), **kw)


def engine() -> Engine:
    counter = itertools.count(1)
    env = Profile(id="openai:env", provider="openai", type="api-key",
                  secret=secret("openai-env", "sk-proj-"), source="env", priority=1 << 30)
    profiles = [
        prof("anthropic:ready", label="Ready"),
        prof("anthropic:cool", "api-key", label="Cool", max_concurrent=2),
        prof("anthropic:off", disabled=True),
        prof("anthropic:bad"),
        prof("openai:main", "api-key", priority=3),
        env,
    ]
    return Engine(
        ProfileSet(profiles),
        Config(routes={"default": ["anthropic/claude-sonnet-4-5", "openai/gpt-5"]}),
        now=T0,
        lease_id=lambda: f"l{next(counter)}",
    )


def all_secrets(e: Engine) -> list[str]:
    return [s.profile.secret.reveal() for s in e.active_profiles()]


def test_status_fields_match_design() -> None:
    e = engine()
    e.lease(LeaseParams(provider="anthropic", client="agent-7", ttl=60), conn=1, now=T0)
    e.report(ReportParams(kind="rate_limit", profile="anthropic:cool", status=429),
             conn=1, now=T0)
    e.report(ReportParams(kind="auth", profile="anthropic:bad"), conn=1, now=T0)
    st = status(e, CONFIG_STATUS, now=T0 + 1)
    wire = msgspec.to_builtins(st)
    assert set(wire) == {"profiles", "leases", "config", "routes"}
    design = {"id", "provider", "type", "label", "state", "cooldown_until", "error_count",
              "active_leases", "fingerprint", "source"}
    for p in wire["profiles"]:
        assert design <= set(p)
    assert design_lease_fields() <= set(wire["leases"][0])
    assert wire["config"] == {"profiles_path": "/home/u/auth-profiles.json",
                              "loaded_at": T0, "error": None, "config_path": None,
                              "state_path": None}
    assert wire["routes"] == {"default": ["anthropic/claude-sonnet-4-5", "openai/gpt-5"]}
    # the result decodes as the wire type the client uses
    again = msgspec.json.decode(msgspec.json.encode(st), type=StatusResult)
    assert again == st


def design_lease_fields() -> set[str]:
    return {"lease_id", "profile", "client", "expires_at"}


def test_status_profile_values() -> None:
    e = engine()
    got = e.lease(LeaseParams(provider="anthropic", client="agent-7", ttl=60), conn=1, now=T0)
    e.report(ReportParams(kind="rate_limit", profile="anthropic:cool", status=429),
             conn=1, now=T0)
    e.report(ReportParams(kind="auth", profile="anthropic:bad"), conn=1, now=T0)
    st = status(e, CONFIG_STATUS, now=T0 + 1)
    by = {p.id: p for p in st.profiles}
    assert [p.id for p in st.profiles] == sorted(by, key=lambda i: (i.split(":")[0], i))
    assert {i: p.state for i, p in by.items()} == {
        "anthropic:ready": "ready",
        "anthropic:cool": "cooldown",
        "anthropic:off": "disabled",
        "anthropic:bad": "invalid",
        "openai:main": "ready",
        "openai:env": "ready",
    }
    cool = by["anthropic:cool"]
    assert (cool.cooldown_until, cool.error_count, cool.last_error) == (
        T0 + 60, 1, "rate_limit (429)")
    assert (cool.type, cool.label, cool.max_concurrent) == ("api-key", "Cool", 2)
    ready = by["anthropic:ready"]
    assert (ready.active_leases, ready.cooldown_until, ready.last_used) == (1, None, T0)
    assert ready.fingerprint == e.profile("anthropic:ready").secret.fingerprint
    assert ready.fingerprint.startswith("sk-ant-oat01-…")
    assert (by["openai:env"].source, by["openai:main"].source) == ("env", "profile")
    assert by["openai:main"].priority == 3
    assert [(le.lease_id, le.profile, le.client, le.expires_at) for le in st.leases] == [
        (got.lease_id, "anthropic:ready", "agent-7", T0 + 60)
    ]


def test_status_model_cooldowns_only_running_ones() -> None:
    e = engine()
    e.report(ReportParams(kind="rate_limit", profile="anthropic:ready", model="opus"),
             conn=1, now=T0)
    by = {p.id: p for p in status(e, CONFIG_STATUS, now=T0 + 1).profiles}
    assert by["anthropic:ready"].model_cooldowns == {"opus": T0 + 60}
    assert by["anthropic:ready"].state == "ready"
    assert by["anthropic:ready"].cooldown_until is None
    by = {p.id: p for p in status(e, CONFIG_STATUS, now=T0 + 60).profiles}
    assert by["anthropic:ready"].model_cooldowns == {}


def test_status_shows_removed_profile_while_its_lease_runs() -> None:
    e = engine()
    got = e.lease(LeaseParams(provider="openai"), conn=1, now=T0)
    assert got.profile == "openai:main"
    e.load(ProfileSet([prof("anthropic:ready")]), e.config, now=T0 + 1)
    st = status(e, CONFIG_STATUS, now=T0 + 2)
    assert [(p.id, p.removed) for p in st.profiles] == [
        ("anthropic:ready", False), ("openai:main", True)]
    e.release(got.lease_id, now=T0 + 3)
    assert [p.id for p in status(e, CONFIG_STATUS, now=T0 + 3).profiles] == ["anthropic:ready"]


def test_status_never_holds_a_secret() -> None:
    e = engine()
    e.lease(LeaseParams(route="default", client="c"), conn=1, now=T0)
    e.report(ReportParams(kind="quota", profile="anthropic:cool", message="x"), conn=1, now=T0)
    text = msgspec.json.encode(status(e, CONFIG_STATUS, now=T0)).decode()
    for value in all_secrets(e):
        assert value not in text
        assert value[-12:] not in text
        assert value[:20] not in text


def test_metrics_families() -> None:
    e = engine()
    e.lease(LeaseParams(provider="anthropic"), conn=1, now=T0)
    e.lease(LeaseParams(provider="anthropic"), conn=1, now=T0)
    e.report(ReportParams(kind="rate_limit", profile="anthropic:cool"), conn=1, now=T0)
    e.report(ReportParams(kind="timeout", profile="openai:main"), conn=1, now=T0)
    text = metrics(e, now=T0 + 10, latency_buckets=[(0.001, 3), (0.01, 5)],
                   latency_sum=0.02, latency_count=6)
    assert text.endswith("\n")
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert families == [
        ("argentd_leases_granted_total", "counter"),
        ("argentd_leases_active", "gauge"),
        ("argentd_failures_total", "counter"),
        ("argentd_cooldowns_started_total", "counter"),
        ("argentd_profiles", "gauge"),
        ("argentd_profile_cooldown_seconds", "gauge"),
        ("argentd_profile_budget_requests", "gauge"),
        ("argentd_profile_budget_refill_seconds", "gauge"),
        ("argentd_profile_window_utilization", "gauge"),
        ("argentd_oauth_refreshes_total", "counter"),
        ("argentd_profile_expires_seconds", "gauge"),
        ("argentd_request_duration_seconds", "histogram"),
    ]
    lines = set(text.splitlines())
    assert 'argentd_leases_granted_total{provider="anthropic"} 2' in lines
    assert 'argentd_leases_granted_total{provider="openai"} 0' in lines
    assert "argentd_leases_active 2" in lines
    assert 'argentd_failures_total{kind="rate_limit"} 1' in lines
    assert 'argentd_failures_total{kind="timeout"} 1' in lines
    assert 'argentd_failures_total{kind="quota"} 0' in lines
    assert "argentd_cooldowns_started_total 1" in lines
    assert 'argentd_profiles{state="ready"} 4' in lines
    assert 'argentd_profiles{state="cooldown"} 1' in lines
    assert 'argentd_profiles{state="disabled"} 1' in lines
    assert 'argentd_profiles{state="invalid"} 0' in lines
    assert 'argentd_profile_cooldown_seconds{profile="anthropic:cool"} 50.000' in lines
    assert 'argentd_profile_cooldown_seconds{profile="anthropic:ready"} 0.000' in lines
    assert 'argentd_request_duration_seconds_bucket{le="0.001"} 3' in lines
    assert 'argentd_request_duration_seconds_bucket{le="+Inf"} 6' in lines
    assert "argentd_request_duration_seconds_count 6" in lines
    # every sample line is `name{labels} value`
    for line in text.splitlines():
        if not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[a-z]+="[^"]*"\})? [0-9.e+-]+', line), line
    for value in all_secrets(e):
        assert value not in text


def test_metrics_escapes_label_values() -> None:
    e = Engine(ProfileSet([Profile(id='x:a"b', provider="x", type="api-key",
                                   secret=secret("q"))]), now=T0)
    text = metrics(e, now=T0)
    assert 'argentd_profile_cooldown_seconds{profile="x:a\\"b"} 0.000' in text.splitlines()


def test_metrics_window_utilization_per_profile_and_window() -> None:
    from argent_client.protocol import Limits

    e = engine()
    got = e.lease(LeaseParams(provider="anthropic"), conn=1, now=T0)
    e.release(got.lease_id, now=T0, limits=Limits(
        unified_5h_utilization=0.25, unified_5h_reset=T0 + 3600,
        unified_7d_utilization=0.5, unified_7d_reset=T0 + 86400))
    text = metrics(e, now=T0 + 1)
    assert f'argentd_profile_window_utilization{{profile="{got.profile}",window="5h"}} 0.2500' \
        in text
    assert f'argentd_profile_window_utilization{{profile="{got.profile}",window="7d"}} 0.5000' \
        in text
    assert "window=" not in metrics(e, now=T0 + 86400)  # both windows reset
