"""The refresher's parts one by one: schedule (explicit `now`), answers, profiles,
the engine swap, credentials.json and the tools' files."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from argent_client.oauth_sources import SourceLogin
from argent_client.protocol import LeaseParams, ReportParams
from argentd.config import ConfigError, parse_config
from argentd.credentials import (
    CredentialsError,
    CredentialsStore,
    StoredLogin,
    read_source,
    write_source_cas,
)
from argentd.engine import Engine
from argentd.model import ProfileSet, auth_headers
from argentd.oauth_chain import backoff, due_at
from argentd.oauth_profile import OAuthSource, refresh_hash
from argentd.profiles import load_profiles
from argentd.token_endpoint import classify

from .conftest import make_secret, write_json

T0 = 1_800_000_000.0
HOUR = 3600.0


# ------------------------------------------------------------ when


def test_due_at_refresh_before_expiry() -> None:
    assert due_at(T0 + 8 * HOUR, T0, 300) == T0 + 8 * HOUR - 300
    assert due_at(None, T0, 300) == float("inf")
    # A token shorter than refresh_before is refreshed at half its life, not in a loop.
    assert due_at(T0 + 120, T0, 300) == T0 + 60
    assert due_at(T0 + 500, T0, 300) == T0 + 250
    # Never refreshed by argentd (the file's token): expiry minus refresh_before.
    assert due_at(T0 + 100, None, 300) == T0 - 200


def test_backoff_doubles_to_ten_minutes() -> None:
    assert [backoff(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]


# ------------------------------------------------------------ answers


def test_classify_answers() -> None:
    ok = classify(200, b'{"access_token": "a", "refresh_token": "r", "expires_in": 28800}')
    assert (ok.kind, ok.access, ok.refresh, ok.expires_in) == ("ok", "a", "r", 28800)
    google = classify(200, b'{"access_token": "a", "expires_in": "3599"}')
    assert google.kind == "ok" and google.refresh is None and google.expires_in == 3599
    revoked = classify(400, b'{"error": "invalid_grant", "error_description": "sk-leak"}')
    assert revoked.kind == "revoked" and "invalid_grant" in revoked.message
    assert "sk-leak" not in revoked.message
    codex = classify(401, b'{"error": {"code": "refresh_token_reused", "message": "x"}}')
    assert codex.kind == "revoked" and "refresh_token_reused" in codex.message
    for status, body, text in (
        (500, b"oops", "HTTP 500"),
        (429, b'{"error": "rate_limited"}', "HTTP 429, rate_limited"),
        (200, b"<html>", "malformed"),
        (200, b'{"token": "x"}', "no access_token"),
        (401, b'{"error": "invalid_client"}', "client_id"),
        (400, b'{"error": "a value with spaces and sk-ant-oat01-xyz"}', "HTTP 400"),
    ):
        answer = classify(status, body)
        assert answer.kind == "retry" and text in answer.message, (status, answer)
        assert "sk-ant" not in answer.message


# ------------------------------------------------------------ profiles


def _load(tmp_path: Path, data: object) -> ProfileSet:
    path = tmp_path / "auth-profiles.json"
    write_json(path, data)
    return load_profiles(path, {})


def test_oauth_profiles_in_both_shapes(tmp_path: Path) -> None:
    a1, r1, a2, r2 = (make_secret(), make_secret("sk-ant-ort01-"), make_secret(),
                      make_secret("rt_"))
    flat = _load(tmp_path, {
        "anthropic:max": {"provider": "anthropic", "type": "oauth", "access": a1,
                          "refresh": r1, "expires": T0 * 1000,
                          "source": {"format": "claude-code", "path": "~/.claude/x.json"}},
        "openai-codex:plus": {"provider": "openai-codex", "type": "oauth", "token": a2,
                              "refresh": r2, "expires": T0, "account_id": "acc-9"},
    })
    assert flat.errors == []
    mx, codex = flat.profiles
    assert mx.secret.reveal() == a1 and mx.expires == T0 and mx.oauth is not None
    assert mx.oauth.refresh is not None and mx.oauth.refresh.reveal() == r1
    assert mx.oauth.source == OAuthSource("claude-code", Path("~/.claude/x.json").expanduser(),
                                          "~/.claude/x.json")
    assert codex.expires == T0  # below 10^11: seconds
    assert auth_headers(codex) == {"Authorization": f"Bearer {a2}",
                                   "chatgpt-account-id": "acc-9"}
    store = _load(tmp_path, {"version": 1, "profiles": {
        "openai-codex:plus": {"type": "oauth", "provider": "openai-codex", "access": a2,
                              "refresh": r2, "expires": T0 * 1000, "accountId": "acc-9"}}})
    (s,) = store.profiles
    assert s.oauth is not None and s.oauth.account_id == "acc-9"
    # The books key belongs to the login (its refresh token), not the access token.
    assert s.secret.key == codex.secret.key != codex.secret.reveal()


def test_oauth_profile_faults_name_the_field(tmp_path: Path) -> None:
    a, r = make_secret(), make_secret("sk-ant-ort01-")
    result = _load(tmp_path, {
        "anthropic:both": {"provider": "anthropic", "type": "oauth", "access": a, "token": a},
        "anthropic:src": {"provider": "anthropic", "type": "oauth", "access": a,
                          "source": {"format": "cursor", "path": "x"}},
        "anthropic:none": {"provider": "anthropic", "type": "oauth", "refresh": r},
        "anthropic:ws": {"provider": "anthropic", "type": "oauth", "access": a,
                         "refresh": "two words"},
    })
    assert result.profiles == []
    text = "\n".join(result.errors)
    assert '"anthropic:both": give access or token, not both - at $["anthropic:both"].token' \
        in text
    assert "source.format must be one of claude-code, codex, gemini" in text
    assert 'access is required - at $["anthropic:none"].access' in text
    assert "refresh holds whitespace" in text
    assert a not in text and r not in text


# ------------------------------------------------------------ the engine swap


def _engine(tmp_path: Path) -> tuple[Engine, ProfileSet]:
    a, r = make_secret(), make_secret("sk-ant-ort01-")
    ps = _load(tmp_path, {"anthropic:max": {"provider": "anthropic", "type": "oauth",
                                            "access": a, "refresh": r, "expires": T0 + HOUR}})
    return Engine(ps, now=T0), ps


def test_replace_profile_keeps_books_and_leases(tmp_path: Path) -> None:
    import dataclasses

    from argentd.model import Secret

    e, ps = _engine(tmp_path)
    (p,) = ps.profiles
    held = e.lease(LeaseParams(provider="anthropic"), conn=1, now=T0)
    e.report(ReportParams(kind="rate_limit", profile=p.id, retry_after=600), conn=1, now=T0)
    new = dataclasses.replace(p, secret=Secret(make_secret(), key=p.secret.key),
                              expires=T0 + 9 * HOUR)
    e.replace_profile(new, now=T0 + 1)
    assert e.profile(p.id) is new
    assert e.key_state(p.id).cooling(T0 + 1) == T0 + 600
    assert len(e.leases()) == 1 and e.leases()[0].id == held.lease_id
    e.release(held.lease_id, now=T0 + 2)
    assert e.active_profiles().__iter__().__next__().active == 0
    with pytest.raises(ValueError):
        e.replace_profile(dataclasses.replace(p, secret=Secret(make_secret())), now=T0 + 3)


def test_expired_oauth_state_then_swap_serves_waiters(tmp_path: Path) -> None:
    import dataclasses

    from argentd.model import Secret

    e, ps = _engine(tmp_path)
    (p,) = ps.profiles
    assert e.state_of(p.id, T0 + HOUR) == "expired"
    wid = e.wait(LeaseParams(provider="anthropic", wait=30), conn=1, now=T0 + HOUR)
    assert e.take_outbox().served == []
    token = make_secret()
    e.replace_profile(dataclasses.replace(p, secret=Secret(token, key=p.secret.key),
                                          expires=T0 + 9 * HOUR), now=T0 + HOUR + 5)
    served = e.take_outbox().served
    assert [(w, r.token) for w, r in served] == [(wid, token)]  # type: ignore[union-attr]
    e.mark_invalid(p.id, "revoked. Fix: log in again", now=T0 + HOUR + 6)
    assert e.state_of(p.id, T0 + HOUR + 6) == "invalid"
    assert e.key_state(p.id).last_error == "revoked. Fix: log in again"
    # A new token of the login ends an auth verdict (it was about the old token).
    e.replace_profile(dataclasses.replace(p, secret=Secret(make_secret(), key=p.secret.key),
                                          expires=T0 + 9 * HOUR), now=T0 + HOUR + 7)
    assert e.state_of(p.id, T0 + HOUR + 7) == "ready"


# ------------------------------------------------------------ credentials.json


def test_credentials_store_round_trip_mode_and_refusals(tmp_path: Path) -> None:
    store = CredentialsStore(tmp_path / "state" / "credentials.json")
    assert store.load() == {}
    access = make_secret()
    store.save({"anthropic:max": StoredLogin(origin="o" * 24, access=access, expires=T0)})
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.load()["anthropic:max"].access == access
    assert access not in repr(store.load())
    os.chmod(store.path, 0o644)
    with pytest.raises(CredentialsError, match=r"mode 0644.*Fix: chmod 600"):
        store.load()
    os.chmod(store.path, 0o600)
    store.path.write_bytes(b'{"version": 1, "logins": {"x": {"access": 3}}}')
    with pytest.raises(CredentialsError, match=r"corrupt .*Fix: move it aside \(mv "):
        store.load()
    store.path.unlink()
    os.symlink(tmp_path / "elsewhere", store.path)
    with pytest.raises(CredentialsError, match="cannot open"):
        store.load()


WRITER = r"""
import sys
from pathlib import Path
from argentd.credentials import CredentialsStore, StoredLogin
store = CredentialsStore(Path(sys.argv[1]))
big = "x" * 200_000
i = 0
print("go", flush=True)
while True:
    i += 1
    store.save({f"p{j}": StoredLogin(origin=str(i), access=big) for j in range(8)})
"""


def test_credentials_kill9_mid_write_leaves_old_or_new_never_half(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "go\n"
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # let it be in the middle of further writes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        logins = CredentialsStore(path).load()  # decodes: whole, old or new
        assert len(logins) == 8 and len({s.origin for s in logins.values()}) == 1


# ------------------------------------------------------------ the tools' files


def test_write_source_cas_keeps_mode_and_fields_and_refuses_a_moved_file(
    tmp_path: Path
) -> None:
    path = tmp_path / ".credentials.json"
    r0, r1 = make_secret("sk-ant-ort01-"), make_secret("sk-ant-ort01-")
    path.write_text(json.dumps({"claudeAiOauth": {"accessToken": make_secret(),
                                                  "refreshToken": r0, "expiresAt": 1,
                                                  "scopes": ["a"]}, "other": True}))
    os.chmod(path, 0o640)
    src = OAuthSource("claude-code", path, str(path))
    a1 = make_secret()
    login = SourceLogin(a1, r1, T0)
    assert not write_source_cas(src, "not-what-it-holds", login, now=T0)
    assert write_source_cas(src, r0, login, now=T0)
    _, now_held = read_source(src)
    assert (now_held.access, now_held.refresh, now_held.expires) == (a1, r1, T0)
    data = json.loads(path.read_text())
    assert data["other"] is True and data["claudeAiOauth"]["scopes"] == ["a"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert refresh_hash(r0) != refresh_hash(r1)


# ------------------------------------------------------------ config


def test_oauth_config_defaults_and_tables() -> None:
    c = parse_config(b"")
    assert c.oauth.refresh_before == 300 and c.oauth.timeout == 30
    anth = c.oauth.provider("anthropic")
    assert anth is not None and anth.client_id == "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    assert anth.token_url == "https://console.anthropic.com/v1/oauth/token"
    codex = c.oauth.provider("openai-codex")
    assert codex is not None and codex.token_url == "https://auth.openai.com/oauth/token"
    google = c.oauth.provider("google")
    assert google is not None and google.token_url == "https://oauth2.googleapis.com/token"
    assert c.oauth.provider("openai") is None
    c = parse_config(b'[oauth]\nrefresh_before = 60\n[oauth.anthropic]\n'
                     b'token_url = "http://127.0.0.1:1/t"\n'
                     b'[oauth.acme]\ntoken_url = "https://acme/t"\nclient_id = "c"\n')
    anth = c.oauth.provider("anthropic")
    assert c.oauth.refresh_before == 60
    assert anth is not None and anth.token_url == "http://127.0.0.1:1/t"
    assert anth.client_id == "9d1c250a-e61b-44d9-88ed-5944d1962f5e" and anth.body == "json"
    acme = c.oauth.provider("acme")
    assert acme is not None and acme.body == "form"
    for bad in (b"[oauth]\nrefresh_befor = 1\n", b"[oauth.acme]\ntoken_url = \"https://x\"\n",
                b"[oauth]\ntimeout = 0\n", b'[oauth.anthropic]\ntoken_url = "ftp://x"\n'):
        with pytest.raises(ConfigError):
            parse_config(bad)
    assert msgspec.structs.asdict(parse_config(b"").oauth)["providers"] == {}


# ------------------------------------------------------------ doctor


def test_doctor_warns_when_an_oauth_login_ends_within_a_day_unrefreshable() -> None:
    from argent_client.doctor import _oauth_check
    from argent_client.protocol import ConfigStatus, ProfileStatus, StatusResult

    def prof(pid: str, expires_at: float, error: str | None = None,
             state: str = "ready") -> ProfileStatus:
        return ProfileStatus(id=pid, provider="anthropic", type="oauth", label="",
                             state=state, cooldown_until=None, error_count=0,  # type: ignore[arg-type]
                             active_leases=0, fingerprint="…", source="profile",
                             expires_at=expires_at, refresh_error=error)

    def status(*profiles: ProfileStatus) -> StatusResult:
        return StatusResult(list(profiles), [], ConfigStatus("p", None), {})

    assert _oauth_check(status(), T0) is None
    healthy = status(prof("anthropic:a", T0 + 600), prof("anthropic:b", T0 + 3 * 86400, "x"))
    check = _oauth_check(healthy, T0)
    assert check is not None and check.status == "ok"
    dying = _oauth_check(status(prof("anthropic:a", T0 + 600, "HTTP 500; retrying")), T0)
    assert dying is not None and dying.status == "warn" and "anthropic:a" in dying.detail
    assert "HTTP 500" in dying.detail and dying.fix and "profiles import" in dying.fix
    expired = _oauth_check(status(prof("anthropic:a", T0 - 1, state="expired")), T0)
    assert expired is not None and expired.status == "warn"
