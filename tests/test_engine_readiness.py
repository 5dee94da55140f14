"""The one readiness rule (`argentd/readiness.py`): selection, `status` and
`no_profile_available` say the same thing, and asking changes nothing."""

from __future__ import annotations

import math

import pytest

from argent_client.protocol import (
    ConfigStatus,
    LeaseParams,
    Limits,
    NoProfileAvailable,
    UnknownProvider,
)
from argentd.views import status

from .test_engine import T0, lease, make, prof, report

CONFIG_STATUS = ConfigStatus(profiles_path="/p/auth-profiles.json", loaded_at=T0)


def refusal(e: object, **kw: object) -> NoProfileAvailable:
    with pytest.raises(NoProfileAvailable) as info:
        lease(e, **kw)  # type: ignore[arg-type]
    return info.value


def test_readiness_model_restricted_profile_is_not_ready_in_the_refusal() -> None:
    e = make(prof("anthropic:a", models=frozenset({"claude-opus"})))
    err = refusal(e, provider="anthropic", model="claude-haiku")
    assert err.data["profiles"] == [{"id": "anthropic:a", "state": "model", "until": None}]
    assert err.data["retry_after"] is None
    assert e.readiness_of("anthropic:a", T0, "claude-haiku").reason == "model"
    assert e.readiness_of("anthropic:a", T0, "claude-opus").reason == "ready"


def test_readiness_refusal_and_status_agree_on_every_reason() -> None:
    e = make(
        prof("anthropic:cool"),
        prof("anthropic:off", disabled=True),
        prof("anthropic:bad"),
        prof("anthropic:old", expires=T0 - 1),
        prof("anthropic:full", max_concurrent=1),
    )
    report(e, T0, "rate_limit", profile="anthropic:cool")
    report(e, T0, "auth", profile="anthropic:bad")
    held = lease(e, T0, provider="anthropic")
    assert held.profile == "anthropic:full"
    err = refusal(e, now=T0 + 1, provider="anthropic")
    refused = {s["id"]: (s["state"], s["until"]) for s in err.data["profiles"]}
    assert refused == {
        "anthropic:cool": ("cooldown", T0 + 60),
        "anthropic:off": ("disabled", None),
        "anthropic:bad": ("invalid", None),
        "anthropic:old": ("expired", None),
        "anthropic:full": ("busy", held.expires_at),
    }
    shown = {p.id: (p.reason, p.state) for p in status(e, CONFIG_STATUS, now=T0 + 1).profiles}
    assert shown == {
        "anthropic:cool": ("cooldown", "cooldown"),
        "anthropic:off": ("disabled", "disabled"),
        "anthropic:bad": ("invalid", "invalid"),
        "anthropic:old": ("expired", "invalid"),
        "anthropic:full": ("busy", "ready"),
    }
    assert err.data["retry_after"] == pytest.approx(59.0)


def test_readiness_asking_has_no_side_effect() -> None:
    e = make(prof("anthropic:a"))
    got = lease(e, T0, provider="anthropic")
    limits = Limits(requests_limit=5, requests_remaining=0, requests_reset=T0 + 10)
    e.release(got.lease_id, now=T0, limits=limits)
    e.take_earliest()
    assert e.readiness_of("anthropic:a", T0).reason == "budget"
    refusal(e, provider="anthropic")
    status(e, CONFIG_STATUS, now=T0)
    # Nothing was queued: a refused lease without `wait` leaves no wake-up behind.
    assert e.take_earliest() == math.inf
    assert e.next_deadline() is None


def test_readiness_waiter_is_woken_by_the_refill() -> None:
    e = make(prof("anthropic:a"))
    got = lease(e, T0, provider="anthropic")
    limits = Limits(requests_limit=5, requests_remaining=0, requests_reset=T0 + 10)
    e.release(got.lease_id, now=T0, limits=limits)
    wid = e.wait(LeaseParams(provider="anthropic", wait=30), conn=1, now=T0)
    until = e.readiness_of("anthropic:a", T0).until
    assert until is not None and until > T0
    assert e.next_deadline() == until
    e.advance(until)
    assert [w for w, _ in e.take_outbox().served] == [wid]


def unknown(e: object, provider: str) -> UnknownProvider:
    with pytest.raises(UnknownProvider) as info:
        lease(e, provider=provider)  # type: ignore[arg-type]
    return info.value


def test_unknown_provider_suggests_the_known_one() -> None:
    e = make(prof("anthropic:a"), prof("mycorp:x"))
    err = unknown(e, "antropic")
    assert err.message == "no profile for provider 'antropic' (did you mean anthropic?)"
    assert err.data == {"provider": "antropic", "suggestion": "anthropic"}
    assert unknown(e, "antrhopic").data["suggestion"] == "anthropic"
    # a provider only the file knows is suggested too, and a known one with no profile
    assert unknown(e, "mycrop").message == (
        "no profile for provider 'mycrop' (did you mean mycorp?)")
    assert unknown(e, "openrouter").data == {"provider": "openrouter"}


def test_unknown_provider_says_the_daemon_environment_is_read() -> None:
    e = make(prof("anthropic:a"))
    assert unknown(e, "openai").message == (
        "no profile for provider 'openai': add one with `argentctl profiles add`, or give"
        " the daemon OPENAI_API_KEY in its own environment (argentd reads the environment"
        " it was started with: an `export` in your shell does not reach a running daemon;"
        " set it in the service's environment and restart argentd)")
    assert "ZAI_API_KEY or Z_AI_API_KEY in its own environment" in unknown(e, "zai").message
    assert unknown(e, "acme").message == (
        "no profile for provider 'acme': add one with `argentctl profiles add`")
