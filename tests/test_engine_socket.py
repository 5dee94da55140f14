"""The engine's policy and readiness through the real daemon and its socket:
`[policy]` read from argentd.toml, pinned leases, windows in `status`, the
readiness reason in `no_profile_available`, the unknown_provider hint."""

from __future__ import annotations

import time
from typing import Any

from .conftest import make_secret


def start(daemon_factory: Any) -> Any:
    d = daemon_factory()
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text(
        "[policy]\nwindow_cap = 0.8\n"
        "[policy.clients.background]\nwindow_cap = 0.5\npaid_fallback = \"deny\"\n")
    d.write_profiles({
        "anthropic:max": {"provider": "anthropic", "type": "setup-token",
                          "token": make_secret()},
        "anthropic:key": {"provider": "anthropic", "type": "api-key",
                          "token": make_secret("sk-ant-api03-")},
    })
    d.start()
    return d


def test_engine_socket_policy_pins_windows_and_reasons(daemon_factory: Any) -> None:
    d = start(daemon_factory)
    c = d.connect()
    held = c.call("lease", {"provider": "anthropic", "profile": "anthropic:max"})
    assert held["profile"] == "anthropic:max" and "probe" not in held
    reset = time.time() + 3600
    c.call("release", {"lease_id": held["lease_id"],
                       "limits": {"unified_5h_utilization": 0.6, "unified_5h_reset": reset,
                                  "unified_5h_status": "allowed"}})
    profiles = {p["id"]: p for p in c.call("status")["profiles"]}
    assert profiles["anthropic:max"]["windows"] == {
        "5h": {"utilization": 0.6, "reset": reset, "status": "allowed"}}
    assert profiles["anthropic:max"]["reason"] == "ready"  # 0.6 < the global cap 0.8
    # background agents stop at 0.5, and may not fall onto the API key
    err = c.request("lease", {"provider": "anthropic", "client": "background"})["error"]
    assert err["data"]["code"] == "no_profile_available"
    assert {p["id"]: p["state"] for p in err["data"]["profiles"]} == {
        "anthropic:max": "window", "anthropic:key": "paid"}
    assert abs(err["data"]["retry_after"] - (reset - time.time())) < 60
    # the person's own lease still gets the subscription
    assert c.call("lease", {"provider": "anthropic", "client": "me"})["profile"] == "anthropic:max"
    err = c.request("lease", {"provider": "antropic"})["error"]
    assert err["message"] == "no profile for provider 'antropic' (did you mean anthropic?)"
    assert err["data"] == {"code": "unknown_provider", "provider": "antropic",
                           "suggestion": "anthropic"}


def test_engine_socket_paid_fallback_notify_is_logged_once_per_switch(
        daemon_factory: Any) -> None:
    d = daemon_factory()
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text('[policy]\npaid_fallback = "notify"\n')
    d.write_profiles({
        "anthropic:max": {"provider": "anthropic", "type": "setup-token",
                          "token": make_secret()},
        "anthropic:key": {"provider": "anthropic", "type": "api-key",
                          "token": make_secret("sk-ant-api03-")},
    })
    d.start()
    c = d.connect()
    c.call("report_failure", {"profile": "anthropic:max", "kind": "rate_limit"})
    for _ in range(3):
        got = c.call("lease", {"provider": "anthropic", "client": "agent-1"})
        assert got["profile"] == "anthropic:key"
        c.call("release", {"lease_id": got["lease_id"]})
    c.call("status")  # a round trip after the last lease: its log line is written
    lines = [ln for ln in d.stderr().splitlines() if "paid fallback" in ln]
    assert len(lines) == 1, lines
    assert "agent-1 leased anthropic:key" in lines[0]
