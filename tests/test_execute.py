"""Handing a lease to a program (`argent_client.execute`)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from argent_client.execute import Renewer, child_env, run_child, shell_exports
from argent_client.protocol import LeaseNotFound, LeaseResult, RenewResult

from .claude_code import claude_code, needs_claude_code
from .conftest import Daemon
from .header_recorder import recorder

TOKEN = "sk-ant-api03-" + "k" * 40


def lease(provider: str = "anthropic", type_: Any = "api-key", token: str = TOKEN,
          model: str | None = None, expires_at: float = 1000.0) -> LeaseResult:
    return LeaseResult(lease_id="L1", profile=f"{provider}:x", provider=provider, type=type_,
                       token=token, label="", headers={}, expires_at=expires_at,
                       source="profile", model=model)


def test_child_env_sets_vars_and_drops_conflicting_ones() -> None:
    base = {"PATH": "/bin", "CLAUDE_CODE_OAUTH_TOKEN": "old", "ANTHROPIC_AUTH_TOKEN": "old",
            "ANTHROPIC_API_KEY": "old", "OPENAI_API_KEY": "keep"}
    env = child_env(base, lease(model="claude-x"))
    assert env == {"PATH": "/bin", "OPENAI_API_KEY": "keep", "ANTHROPIC_API_KEY": TOKEN,
                   "ARGENT_LEASE_ID": "L1", "ARGENT_PROFILE": "anthropic:x",
                   "ARGENT_MODEL": "claude-x"}
    env = child_env(base, lease(type_="setup-token"))
    assert env["CLAUDE_CODE_OAUTH_TOKEN"] == TOKEN
    # ANTHROPIC_AUTH_TOKEN would win in Claude Code 2.1 and the SDK, as a bare bearer: a 401
    assert "ANTHROPIC_AUTH_TOKEN" not in env
    assert "ANTHROPIC_API_KEY" not in env
    assert "ARGENT_MODEL" not in env


def test_shell_exports_round_trip_through_sh() -> None:
    nasty = "sk-'$(touch /tmp/pwned)`x`\"; echo"
    script = shell_exports(lease(provider="openai", token=nasty))
    assert script.splitlines()[0] == "export ARGENT_LEASE_ID=L1"
    out = subprocess.run(["sh", "-c", script + 'printf %s "$OPENAI_API_KEY"'],
                         capture_output=True, text=True, check=True)
    assert out.stdout == nasty
    script = shell_exports(lease(type_="setup-token"))
    assert script.splitlines()[-1] == (
        "unset ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN ANTHROPIC_OAUTH_TOKEN")


class FakeDaemon:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, float | None]] = []
        self.fail = fail
        self.called = threading.Event()

    def renew(self, lease_id: str, ttl: float | None) -> RenewResult:
        self.calls.append((lease_id, ttl))
        self.called.set()
        if self.fail:
            raise LeaseNotFound("lease L1 not found")
        return RenewResult(expires_at=4000.0)


def test_renewer_interval_is_a_third_of_what_is_left() -> None:
    now = [1000.0]
    r = Renewer(FakeDaemon().renew, lease(expires_at=1600.0), None, io.StringIO(),
                clock=lambda: now[0])
    assert r.interval() == 200.0
    now[0] = 1599.5
    assert r.interval() == 1.0


def test_renewer_renews_and_stops() -> None:
    fake = FakeDaemon()
    # expires "now": the first renewal is due after the 1 s floor
    r = Renewer(fake.renew, lease(expires_at=0.0), 30.0, io.StringIO())
    r.start()
    assert fake.called.wait(5)
    r.stop()
    r.join(5)
    assert not r.is_alive()
    assert fake.calls[0] == ("L1", 30.0)
    assert r.renewals >= 1


def test_renewer_warns_once_on_failure() -> None:
    fake = FakeDaemon(fail=True)
    err = io.StringIO()
    r = Renewer(fake.renew, lease(expires_at=0.0), None, err)
    r.start()
    assert fake.called.wait(5)
    r.stop()
    r.join(5)
    assert err.getvalue() == "argentctl: cannot renew lease: lease_not_found: lease L1 not found\n"


def test_run_child_exit_codes() -> None:
    err = io.StringIO()
    assert run_child(["sh", "-c", "exit 7"], {"PATH": "/usr/bin:/bin"}, err) == 7
    assert run_child(["sh", "-c", "kill -KILL $$"], {"PATH": "/usr/bin:/bin"}, err) == (
        128 + signal.SIGKILL
    )
    assert run_child(["/nonexistent/x"], {}, err) == 127
    assert "command not found: /nonexistent/x" in err.getvalue()
    assert run_child([sys.executable, "-c", "import os; raise SystemExit(os.environ['V'])"],
                     {"V": "3"}, err) == 1


# ---------------------------------------------------------------- argentctl exec, for real

ARGENTCTL = [sys.executable, "-m", "argent_client.cli"]
STALE = {"ANTHROPIC_API_KEY": "sk-ant-api03-stale" + "s" * 40,
         "ANTHROPIC_AUTH_TOKEN": "sk-ant-oat01-stale" + "t" * 40,
         "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-stale" + "u" * 40}
"""What a user's shell may still export; a child under exec must never see it."""


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Daemon:
    """The worker's shared argentd, its state made fresh after each test (conftest
    `SharedDaemon`): these tests lease through `argentctl exec` and disable."""
    return shared_daemon


def argentctl(d: Daemon, *args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ARGENTCTL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**d.env, **(env or {})}, check=False)


def token_of(d: Daemon, pid: str) -> str:
    return str(json.loads(d.profiles.read_text())[pid]["token"])


def error_count(d: Daemon, pid: str) -> int:
    return int(next(p for p in d.call("status")["profiles"] if p["id"] == pid)["error_count"])


def test_exec_claims_success_only_when_the_child_exits_0(daemon: Daemon) -> None:
    daemon.call("report_failure", {"profile": "openai:main", "kind": "timeout"})
    assert error_count(daemon, "openai:main") == 1
    assert argentctl(daemon, "exec", "openai", "--", "sh", "-c", "exit 3").returncode == 3
    assert argentctl(daemon, "exec", "openai", "--", "sh", "-c", "kill -TERM $$").returncode == (
        128 + signal.SIGTERM)
    assert error_count(daemon, "openai:main") == 1  # an unknown outcome resets nothing
    assert daemon.call("status")["leases"] == []
    assert argentctl(daemon, "exec", "openai", "--", "true").returncode == 0
    assert error_count(daemon, "openai:main") == 0


SDK_CHILD = """
import sys, anthropic
try:
    anthropic.Anthropic(max_retries=0).messages.create(
        model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    print("sent")
except TypeError as exc:  # no credential the SDK can use on its own
    print("refused:", exc)
"""


def test_exec_env_with_the_real_anthropic_sdk(daemon: Daemon) -> None:
    pytest.importorskip("anthropic")
    with recorder() as fake:
        env = {**STALE, "ANTHROPIC_BASE_URL": fake.url}
        # A setup token: the SDK reads ANTHROPIC_AUTH_TOKEN as a bare bearer, which
        # the API refuses for a subscription token; exec gives it nothing of that kind.
        r = argentctl(daemon, "exec", "anthropic", "--", sys.executable, "-c", SDK_CHILD, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("refused:"), r.stdout
        assert fake.requests == []
        # An API key: the SDK sends it, and never anything from the user's shell.
        daemon.call("disable", {"profile": "anthropic:one"})
        r = argentctl(daemon, "exec", "anthropic", "--", sys.executable, "-c", SDK_CHILD, env=env)
        assert (r.returncode, r.stdout.strip()) == (0, "sent"), r.stderr
    seen = fake.only().headers
    key = token_of(daemon, "anthropic:two")
    assert key in (seen.get("x-api-key"), seen.get("authorization", "").removeprefix("Bearer "))
    assert not any(v in value for v in STALE.values() for value in seen.values())


@needs_claude_code
def test_exec_claude_code_sends_a_setup_token_as_oauth(daemon: Daemon, tmp_path: Path) -> None:
    claude = claude_code()
    assert claude is not None
    with recorder() as fake:
        fake.status = 400  # one answer, no retries: only the headers matter
        env = {**STALE, "ANTHROPIC_BASE_URL": fake.url, "HOME": str(tmp_path),
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
        r = argentctl(daemon, "exec", "anthropic", "--", claude, "-p", "hi", env=env)
        assert fake.requests, (r.returncode, r.stdout, r.stderr)
    token = token_of(daemon, "anthropic:one")
    for seen in fake.requests:
        headers = seen.headers
        assert headers.get("authorization") == f"Bearer {token}"
        assert "oauth-2025-04-20" in headers.get("anthropic-beta", "").split(",")
        assert "x-api-key" not in headers
        assert not any(v in value for v in STALE.values() for value in headers.values())
