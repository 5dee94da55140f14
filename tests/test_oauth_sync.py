"""Codex and Gemini logins end to end, and two daemons of one user on one login."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Daemon
from .fake_token_endpoint import FakeTokenEndpoint
from .test_oauth_daemon import PID, configure, oauth_profile, profile_status, wait_for
from .test_oauth_import import _jwt, argentctl


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    ep = FakeTokenEndpoint()
    yield ep
    ep.close()


def test_codex_login_leases_with_account_header_and_file_kept_in_step(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    d: Daemon = daemon_factory()
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text(f'[oauth.openai-codex]\ntoken_url = "{endpoint.url}"\n')
    _, refresh = endpoint.login()
    access = _jwt({"exp": int(time.time()) - 5,
                   "https://api.openai.com/auth": {"chatgpt_account_id": "acc-42"}})
    auth = d.home / ".codex" / "auth.json"
    auth.parent.mkdir(parents=True)
    auth.write_text(json.dumps({"OPENAI_API_KEY": None, "tokens": {
        "id_token": _jwt({"email": "me@example.com"}), "access_token": access,
        "refresh_token": refresh, "account_id": "acc-42"}, "last_refresh": "x"}))
    os.chmod(auth, 0o600)
    done = argentctl(d, "profiles", "import", "codex")
    assert done.returncode == 0, done.stderr
    d.start()
    got = d.call("lease", {"provider": "openai-codex", "wait": 15, "detached": True})
    assert got["profile"] == "openai-codex:codex" and got["token"] != access
    assert got["headers"] == {"Authorization": f"Bearer {got['token']}",
                              "chatgpt-account-id": "acc-42"}
    (call,) = endpoint.calls
    assert call.body == "json" and call.client_id == "app_EMoamEEZ73f0CkXaXp7hrann"
    data = json.loads(auth.read_text())
    assert data["tokens"]["access_token"] == got["token"]
    assert data["tokens"]["refresh_token"] != refresh
    assert data["tokens"]["account_id"] == "acc-42" and data["last_refresh"] != "x"
    assert endpoint.reuses == 0


def test_gemini_login_keeps_its_refresh_token(daemon_factory: Any) -> None:
    ep = FakeTokenEndpoint(rotate=False)  # Google keeps the refresh token
    try:
        d: Daemon = daemon_factory()
        d.config.parent.mkdir(parents=True, exist_ok=True)
        d.config.write_text(f'[oauth.google]\ntoken_url = "{ep.url}"\n')
        access, refresh = ep.login("ya29.")
        creds = d.home / ".gemini" / "oauth_creds.json"
        creds.parent.mkdir(parents=True)
        creds.write_text(json.dumps({"access_token": access, "refresh_token": refresh,
                                     "expiry_date": (time.time() - 5) * 1000,
                                     "token_type": "Bearer", "scope": "openid"}))
        os.chmod(creds, 0o600)
        assert argentctl(d, "profiles", "import", "gemini").returncode == 0
        d.start()
        got = d.call("lease", {"provider": "google", "wait": 15, "detached": True})
        assert got["token"] != access and got["headers"] == {
            "Authorization": f"Bearer {got['token']}"}
        (call,) = ep.calls
        assert call.body == "form" and call.refresh == refresh
        data = json.loads(creds.read_text())
        assert data["access_token"] == got["token"] and data["refresh_token"] == refresh
        assert data["expiry_date"] == pytest.approx((time.time() + 3600) * 1000, abs=60_000)
        assert data["scope"] == "openid"
        # A second refresh presents the same (kept) refresh token.
        d.call("report_failure", {"profile": "google:gemini", "kind": "auth"})
        ep.wait_calls(2)
        assert ep.calls[1].refresh == refresh
    finally:
        ep.close()


def test_two_daemons_of_one_user_refresh_a_login_once(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    access, refresh = endpoint.login()
    endpoint.gate.clear()
    a: Daemon = daemon_factory()
    configure(a, endpoint)
    a.write_profiles({PID: oauth_profile(access, refresh, time.time() - 1)})
    b: Daemon = daemon_factory()
    # Same user: the same state folder (credentials.json) and the same files.
    b.env["XDG_STATE_HOME"] = a.env["XDG_STATE_HOME"]
    b.state_dir = a.state_dir
    a.start()
    b.start("--profiles", str(a.profiles), "--config", str(a.config))
    endpoint.wait_calls(1)
    endpoint.gate.set()
    tokens = {d.call("lease", {"provider": "anthropic", "wait": 15, "detached": True})["token"]
              for d in (a, b)}
    st = wait_for(lambda: all(profile_status(d)["state"] == "ready" for d in (a, b)),
                  what="both ready")
    assert st and len(tokens) == 1 and access not in tokens
    assert len(endpoint.calls) == 1 and endpoint.reuses == 0
    creds = a.state_dir / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
