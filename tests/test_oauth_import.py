"""`argentctl profiles import` and the two-way sync with the tool's own login file.

The real argentctl and argentd, a Claude Code style `~/.claude/.credentials.json`
in the test's HOME, and the fake token endpoint both the "tool" and the
daemon refresh against.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from argent_client.importers import import_login
from argent_client.oauth_sources import parse_source, update_source

from .conftest import SECRETS, Daemon, make_secret
from .fake_token_endpoint import FakeTokenEndpoint
from .test_oauth_daemon import configure, lease, profile_status, wait_for

PID = "anthropic:claude-code"


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    ep = FakeTokenEndpoint()
    yield ep
    ep.close()


def argentctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "argent_client.cli", *args], env=d.env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def write_claude(path: Path, access: str, refresh: str, expires: float, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"claudeAiOauth": {"accessToken": access, "refreshToken": refresh,
                              "expiresAt": int(expires * 1000),
                              "scopes": ["user:inference", "user:profile"],
                              "subscriptionType": "max"}}
    tmp = path.with_name(path.name + ".tool-tmp")
    tmp.write_text(json.dumps(data))
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_claude(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())["claudeAiOauth"]
    return data


def test_import_claude_code_tool_refreshes_then_daemon_refreshes(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    d: Daemon = daemon_factory()
    configure(d, endpoint)
    creds = d.home / ".claude" / ".credentials.json"
    a0, r0 = endpoint.login()
    write_claude(creds, a0, r0, time.time() + 8 * 3600, 0o640)
    done = argentctl(d, "profiles", "import", "claude-code", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["id"] == PID and result["refreshable"] is True
    for value in SECRETS:
        assert value not in done.stdout + done.stderr
    entry = json.loads(d.profiles.read_text())[PID]
    assert entry["source"] == {"format": "claude-code", "path": "~/.claude/.credentials.json"}
    assert entry["access"] == a0 and entry["type"] == "oauth"
    assert stat.S_IMODE(d.profiles.stat().st_mode) == 0o600

    d.start()
    assert lease(d)["token"] == a0
    # The tool refreshes on its own and rewrites its file.
    answer = endpoint.refresh_as_tool(r0)
    a1, r1 = answer["access_token"], answer["refresh_token"]
    write_claude(creds, a1, r1, time.time() + 8 * 3600, 0o640)
    # An auth report makes the daemon refresh: it reads the tool's file first.
    d.call("report_failure", {"profile": PID, "kind": "auth", "status": 401})
    endpoint.wait_calls(2)
    a2 = wait_for(lambda: (t := lease(d)["token"]) not in (a0, a1) and t, what="new token")
    assert endpoint.reuses == 0
    assert [c.refresh for c in endpoint.calls] == [r0, r1]
    assert endpoint.access_valid(a2)
    # The tool's file now holds the daemon's pair, its mode and other fields kept.
    held = read_claude(creds)
    assert held["accessToken"] == a2 and held["refreshToken"] not in (r0, r1)
    assert held["subscriptionType"] == "max" and held["scopes"] == ["user:inference",
                                                                  "user:profile"]
    assert held["expiresAt"] == pytest.approx((time.time() + 3600) * 1000, abs=60_000)
    assert stat.S_IMODE(creds.stat().st_mode) == 0o640
    # The tool can refresh with what the daemon wrote: the chain is alive.
    assert endpoint.refresh_as_tool(held["refreshToken"])["access_token"]
    assert endpoint.reuses == 0
    st = profile_status(d, PID)
    assert st["state"] == "ready" and st["type"] == "oauth"


def test_import_again_after_a_new_login_replaces_without_flag(tmp_path: Path) -> None:
    src = tmp_path / "creds.json"
    profiles = tmp_path / "p" / "auth-profiles.json"
    write_claude(src, make_secret(), make_secret("sk-ant-ort01-"), time.time() + 60, 0o600)
    first = import_login("claude-code", src, profiles)
    assert not first.replaced
    write_claude(src, make_secret(), make_secret("sk-ant-ort01-"), time.time() + 60, 0o600)
    again = import_login("claude-code", src, profiles)
    assert again.replaced and again.fingerprint != first.fingerprint
    other = tmp_path / "other.json"
    write_claude(other, make_secret(), make_secret("sk-ant-ort01-"), time.time() + 60, 0o600)
    from argent_client.profiles_file import ProfileExists

    with pytest.raises(ProfileExists):
        import_login("claude-code", other, profiles)
    assert import_login("claude-code", other, profiles, name="second").id == (
        "anthropic:second")


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.{make_secret('sig')}"


def test_import_codex_reads_account_and_expiry_from_the_jwt(tmp_path: Path) -> None:
    exp = int(time.time()) + 864000
    access = _jwt({"exp": exp, "https://api.openai.com/auth": {"chatgpt_account_id": "acc-1"}})
    src = tmp_path / "auth.json"
    refresh = make_secret("rt_")
    src.write_text(json.dumps({"OPENAI_API_KEY": None, "tokens": {
        "id_token": _jwt({"email": "a@b"}), "access_token": access, "refresh_token": refresh},
        "last_refresh": "2025-01-01T00:00:00Z"}))
    profiles = tmp_path / "auth-profiles.json"
    result = import_login("codex", src, profiles)
    assert result.id == "openai-codex:codex" and result.expires_at == exp
    entry = json.loads(profiles.read_text())["openai-codex:codex"]
    assert entry["account_id"] == "acc-1" and entry["refresh"] == refresh
    # Written back: tokens replaced, last_refresh stamped, the rest kept.
    login = parse_source("codex", src.read_bytes())
    new = update_source("codex", src.read_bytes(), type(login)("new-access", "new-refresh"),
                        now=0.0)
    obj = json.loads(new)
    assert obj["tokens"]["access_token"] == "new-access"
    assert obj["tokens"]["id_token"] == login.id_token
    assert obj["last_refresh"] == "1970-01-01T00:00:00Z" and obj["OPENAI_API_KEY"] is None


def test_import_gemini_and_versioned_store(tmp_path: Path) -> None:
    src = tmp_path / "oauth_creds.json"
    access, refresh = make_secret("ya29."), make_secret("1//")
    src.write_text(json.dumps({"access_token": access, "refresh_token": refresh,
                               "expiry_date": 1769159945362.779, "token_type": "Bearer",
                               "scope": "openid"}))
    profiles = tmp_path / "auth-profiles.json"
    profiles.write_text(json.dumps({"version": 1, "profiles": {}, "order": {"google": []}}))
    os.chmod(profiles, 0o600)
    result = import_login("gemini", src, profiles, name="me")
    data = json.loads(profiles.read_text())
    assert data["profiles"]["google:me"]["expires"] == 1769159945362
    assert data["order"]["google"] == ["google:me"]
    assert result.expires_at == pytest.approx(1769159945.362)


def test_import_cli_errors_name_the_fix(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    done = argentctl(d, "profiles", "import", "claude-code")
    assert done.returncode == 5 and "log in with Claude Code" in done.stderr
    bad = d.home / "bad.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    secret = make_secret()
    bad.write_text(json.dumps({"claudeAiOauth": {"refreshToken": secret}}))
    done = argentctl(d, "profiles", "import", "claude-code", str(bad))
    assert done.returncode == 7 and "accessToken is missing" in done.stderr
    assert secret not in done.stderr + done.stdout
