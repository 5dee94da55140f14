"""Handing a lease to a program (`argent_client.execute`)."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
from typing import Any

from argent_client.execute import Renewer, child_env, run_child, shell_exports
from argent_client.protocol import LeaseNotFound, LeaseResult, RenewResult

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
    assert env["CLAUDE_CODE_OAUTH_TOKEN"] == env["ANTHROPIC_AUTH_TOKEN"] == TOKEN
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
    assert script.splitlines()[-1] == "unset ANTHROPIC_API_KEY ANTHROPIC_OAUTH_TOKEN"


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
