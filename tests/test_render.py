"""argentctl's human output (`argent_client.render`): durations, tables, events."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from argent_client.protocol import (
    ConfigStatus,
    Event,
    LeaseResult,
    LeaseStatus,
    ProfileStatus,
    StatusResult,
    WindowStatus,
)
from argent_client.render import (
    ago,
    clock,
    duration,
    event_line,
    lease_line,
    state_text,
    status_tables,
    window_bar,
    window_line,
    window_note,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "0s"), (0, "0s"), (45.9, "45s"), (60, "1m00s"), (252, "4m12s"), (3599, "59m59s"),
     (3600, "1h00m"), (7500, "2h05m"), (86400, "1d00h"), (3 * 86400 + 4 * 3600 + 59, "3d04h")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_ago() -> None:
    assert ago(None, NOW) == "never"
    assert ago(NOW - 0.5, NOW) == "just now"
    assert ago(NOW - 180, NOW) == "3m00s ago"


def profile(**kw: object) -> ProfileStatus:
    base: dict[str, object] = dict(
        id="anthropic:one", provider="anthropic", type="setup-token", label="One Max",
        state="ready", cooldown_until=None, error_count=0, active_leases=0,
        fingerprint="sk-ant-oat01-…abcdef", source="profile",
    )
    base.update(kw)
    return ProfileStatus(**base)  # type: ignore[arg-type]


def test_state_text_cooldown_left_and_model_cooldowns() -> None:
    assert state_text(profile(), NOW).plain == "ready"
    p = profile(state="cooldown", cooldown_until=NOW + 252)
    assert state_text(p, NOW).plain == "cooldown 4m12s"
    p = profile(model_cooldowns={"claude-opus": NOW + 90, "old": NOW - 5})
    assert state_text(p, NOW).plain == "ready (claude-opus 1m30s)"
    assert state_text(profile(removed=True), NOW).plain == "removed"


def render_status(status: StatusResult) -> str:
    buf = io.StringIO()
    status_tables(status, NOW, Console(file=buf, width=160, color_system=None))
    return buf.getvalue()


def test_status_tables_show_every_column() -> None:
    status = StatusResult(
        profiles=[
            profile(state="cooldown", cooldown_until=NOW + 252, error_count=2,
                    last_error="rate_limit", last_used=NOW - 180, active_leases=1,
                    max_concurrent=2),
            profile(id="openai:env", provider="openai", type="api-key", label="OPENAI_API_KEY",
                    source="env"),
        ],
        leases=[LeaseStatus(lease_id="L1", profile="anthropic:one", client="agent[42]",
                            expires_at=NOW + 600, detached=True)],
        config=ConfigStatus(profiles_path="/p/auth.json", loaded_at=NOW - 120,
                            error="/p/auth.json: mode 0644 ...; Fix: chmod 600 /p/auth.json"),
        routes={"default": ["anthropic/claude", "openrouter/x"]},
    )
    text = render_status(status)
    row = next(line for line in text.splitlines() if "anthropic:one" in line and "One" in line)
    for cell in ("One Max", "setup-token", "cooldown 4m12s", "1/2", "2 (rate_limit)",
                 "3m00s ago"):
        assert cell in row
    env_row = next(line for line in text.splitlines() if "openai:env" in line)
    assert "api-key (env)" in env_row
    assert "never" in env_row
    lease_row = next(line for line in text.splitlines() if "L1" in line)
    for cell in ("agent[42]", "10m00s", "yes"):
        assert cell in lease_row
    assert "Profiles file: /p/auth.json (loaded 2m00s ago)" in text
    assert "Config error: /p/auth.json: mode 0644" in text
    assert "Route default: anthropic/claude → openrouter/x" in text


def test_status_tables_error_comes_first_one_line_per_problem() -> None:
    error = ('/p/auth.json: profile "anthropic:a": type is required - at $["anthropic:a"].type\n'
             "/p/auth.json: profile #2: the id must be \"provider:name\" - at $[#2]")
    status = StatusResult(profiles=[], leases=[], routes={},
                          config=ConfigStatus(profiles_path="/p/auth.json", loaded_at=NOW,
                                              error=error))
    lines = render_status(status).splitlines()
    assert lines[:5] == [
        "Config errors (2):",
        '  /p/auth.json: profile "anthropic:a": type is required - at $["anthropic:a"].type',
        '  /p/auth.json: profile #2: the id must be "provider:name" - at $[#2]',
        "fix: `argentctl doctor` gives the fix for each problem; argentd reloads the file on its"
        " own when it changes",
        "no profiles loaded: fix the error above",
    ]
    assert "no profiles: add one" not in "\n".join(lines)


def test_status_tables_masks_an_id_that_may_be_a_secret() -> None:
    token = "sk-ant-oat01-" + "q" * 90
    status = StatusResult(profiles=[profile(), profile(id=f"anthropic:{token}")], leases=[],
                          config=ConfigStatus(profiles_path="/p", loaded_at=NOW), routes={})
    text = render_status(status)
    assert token not in text
    assert " #2 " in text


def test_status_tables_say_why_a_login_does_not_refresh() -> None:
    owned = ("refresh token owned by host 'a' of the cluster, which alone refreshes it:"
             " this host uses the access token it has until it expires")
    status = StatusResult(profiles=[profile(), profile(id="anthropic:two", refresh_error=owned)],
                          leases=[], config=ConfigStatus(profiles_path="/p", loaded_at=NOW),
                          routes={})
    lines = render_status(status).splitlines()
    assert f"anthropic:two: refresh failed: {owned}" in lines
    assert not any("anthropic:one: refresh" in line for line in lines)


def many(n: int, provider: str, **kw: object) -> list[ProfileStatus]:
    return [profile(id=f"{provider}:p{i}", provider=provider, **kw) for i in range(n)]


def test_status_tables_summary_per_provider_above_the_row_limit() -> None:
    profiles = [*many(40, "anthropic"),
                *many(20, "openai", state="cooldown", cooldown_until=NOW + 252)]
    status = StatusResult(profiles=profiles, leases=[], routes={},
                          config=ConfigStatus(profiles_path="/p", loaded_at=NOW))
    lines = render_status(status).splitlines()
    assert lines[:4] == [
        "Profiles",
        "  anthropic: 40 profile(s): 40 ready",
        "  openai: 20 profile(s): 20 cooldown (next ready in 4m12s)",
        "60 profiles: one line per provider; list them with --provider NAME or --all",
    ]
    buf = io.StringIO()
    status_tables(status, NOW, Console(file=buf, width=160, color_system=None),
                  provider="openai")
    text = buf.getvalue()
    assert "openai:p19" in text
    assert "anthropic:p0" not in text
    buf = io.StringIO()
    status_tables(status, NOW, Console(file=buf, width=160, color_system=None), show_all=True)
    assert sum("anthropic:p" in line for line in buf.getvalue().splitlines()) == 40


def test_status_tables_control_characters_in_a_label_keep_one_line() -> None:
    status = StatusResult(profiles=[profile(label="two\nlines\x1b[31m")], leases=[],
                          config=ConfigStatus(profiles_path="/p", loaded_at=NOW), routes={})
    row = next(line for line in render_status(status).splitlines() if "anthropic:one" in line)
    assert "two lines [31m" in row


def test_status_tables_unknown_provider_filter() -> None:
    status = StatusResult(profiles=[profile()], leases=[], routes={},
                          config=ConfigStatus(profiles_path="/p", loaded_at=NOW))
    buf = io.StringIO()
    status_tables(status, NOW, Console(file=buf, width=160, color_system=None), provider="zai")
    assert "no zai profiles (argentctl status lists every provider)" in buf.getvalue()
    buf = io.StringIO()
    status_tables(status, NOW, Console(file=buf, width=160, color_system=None),
                  provider="antropic")
    assert "no antropic profiles (did you mean anthropic?) (argentctl status lists every" in (
        buf.getvalue())


def test_status_tables_empty() -> None:
    status = StatusResult(profiles=[], leases=[],
                          config=ConfigStatus(profiles_path="/p", loaded_at=None), routes={})
    text = render_status(status)
    assert "no profiles: add one with `argentctl setup`" in text
    assert "No active leases." in text
    assert "(not loaded)" in text


def test_event_line() -> None:
    ev = Event(type="lease", at=NOW, profile="openai:main", lease_id="L9", client="x[1]")
    assert event_line(ev) == f"{clock(NOW)} lease openai:main lease_id=L9 client=x[1]"
    ev = Event(type="reload_error", at=NOW, message="bad JSON")
    assert event_line(ev) == f"{clock(NOW)} reload_error message='bad JSON'"


def test_lease_line_never_shows_the_token() -> None:
    token = "sk-ant-oat01-" + "z" * 40
    lease = LeaseResult(lease_id="L1", profile="anthropic:one", provider="anthropic",
                        type="setup-token", token=token, label="One",
                        headers={"Authorization": f"Bearer {token}"},
                        expires_at=NOW + 600, source="profile", model="claude")
    line = lease_line(lease, NOW)
    assert line == (f"leased anthropic:one (One) model claude, lease L1, expires in 10m00s "
                    f"at {clock(NOW + 600)}")
    assert token not in line


# ---------------------------------------------------------------- subscription windows


@pytest.mark.parametrize(
    ("utilization", "bar"),
    [(None, "[░░░░░░░░░░]    ?"), (0.0, "[░░░░░░░░░░]   0%"), (0.09, "[█░░░░░░░░░]   9%"),
     (0.62, "[██████░░░░]  62%"), (1.0, "[██████████] 100%"), (1.01, "[██████████] 101%"),
     (-0.2, "[░░░░░░░░░░] -20%")],
)
def test_window_bar(utilization: float | None, bar: str) -> None:
    assert window_bar(utilization) == bar


def test_window_line_shrugs_off_numbers_that_cannot_be_true() -> None:
    inf = float("inf")
    assert window_line("5h", WindowStatus(utilization=inf, reset=inf), NOW) == (
        "5h [░░░░░░░░░░]    ?")
    assert window_line("5h", WindowStatus(utilization=float("nan"), reset=-inf), NOW) == (
        "5h [░░░░░░░░░░]    ?")


def test_window_line_utilisation_and_time_to_reset() -> None:
    w = WindowStatus(utilization=0.62, reset=NOW + 4320, status="allowed")
    assert window_line("5h", w, NOW) == "5h [██████░░░░]  62% resets in 1h12m"
    w = WindowStatus(utilization=0.09, reset=NOW + 4 * 86400 + 7200 + 59, status="allowed")
    assert window_line("7d", w, NOW) == "7d [█░░░░░░░░░]   9% resets in 4d02h"
    assert window_line("primary", WindowStatus(utilization=0.3), NOW) == (
        "primary [███░░░░░░░]  30%")


def test_window_note_rejected_cap_client_cap_warning() -> None:
    later = NOW + 600
    rejected = WindowStatus(utilization=0.4, reset=later, status="rejected")
    assert window_note(rejected, NOW) == ("rejected", "bold red")
    # Codex says no status: a window at 100 % is spent.
    assert window_note(WindowStatus(utilization=1.0, reset=later), NOW)[0] == "rejected"
    full = WindowStatus(utilization=1.0, reset=later, status="allowed")
    assert window_note(full, NOW) == ("at cap", "yellow")
    w = WindowStatus(utilization=0.85, reset=later, status="allowed")
    assert window_note(w, NOW) == ("", "")
    assert window_note(w, NOW, 0.8) == ("at cap 80%", "yellow")
    assert window_note(w, NOW, 1.0, {"background": 0.6, "ci": 0.85, "me": 0.9}) == (
        "at cap for background 60%, ci 85%", "yellow")
    # A cap holds only a subscription, and only while the reset is ahead.
    assert window_note(w, NOW, 0.8, capped=False) == ("", "")
    assert window_note(WindowStatus(utilization=0.85, status="allowed"), NOW, 0.8) == ("", "")
    assert window_note(WindowStatus(utilization=0.85, reset=NOW, status="allowed"),
                       NOW, 0.8) == ("", "")
    warn = WindowStatus(utilization=0.5, reset=later, status="allowed_warning")
    assert window_note(warn, NOW) == ("warning", "yellow")
    assert window_line("7d", w, NOW, 0.8) == "7d [████████░░]  85% resets in 10m00s at cap 80%"


def windowed_status() -> StatusResult:
    return StatusResult(
        profiles=[
            profile(windows={"5h": WindowStatus(0.62, NOW + 4320, "allowed"),
                             "7d": WindowStatus(0.09, NOW + 4 * 86400 + 7200, "allowed")}),
            profile(id="anthropic:two", label="Two", state="cooldown",
                    cooldown_until=NOW + 3000, reason="cooldown",
                    windows={"5h": WindowStatus(1.01, NOW + 3000, "rejected")}),
            profile(id="anthropic:three", label="Three", state="cooldown", reason="window",
                    until=NOW + 600, windows={"7d": WindowStatus(0.85, NOW + 600, "allowed")}),
            profile(id="openai:codex", provider="openai", type="oauth", label="Codex",
                    windows={"primary": WindowStatus(0.3, NOW + 100),
                             "secondary": WindowStatus(0.05, NOW + 86400)}),
            profile(id="openai:key", provider="openai", type="api-key", label="Key"),
        ],
        leases=[], routes={}, config=ConfigStatus(profiles_path="/p", loaded_at=NOW),
        window_cap=0.8, client_window_caps={"background": 0.6},
    )


def test_status_tables_show_each_subscription_window_as_a_bar() -> None:
    lines = render_status(windowed_status()).splitlines()
    start = lines.index("Subscription windows")
    assert lines[start:start + 9] == [
        "Subscription windows",
        " Profile          Window     Used               Resets in  Note",
        " ───────────────  ─────────  ─────────────────  ─────────  ─────────────────────────",
        " anthropic:one    5h         [██████░░░░]  62%  1h12m      at cap for background 60%",
        "                  7d         [█░░░░░░░░░]   9%  4d02h",
        " anthropic:two    5h         [██████████] 101%  50m00s     rejected",
        " anthropic:three  7d         [████████░░]  85%  10m00s     at cap 80%",
        " openai:codex     primary    [███░░░░░░░]  30%  1m40s",
        "                  secondary  [░░░░░░░░░░]   5%  1d00h",
    ]
    # A profile held back by its window cap says so in its state.
    row = next(line for line in lines if line.startswith(" anthropic:three  Three"))
    assert "cooldown 10m00s (window cap)" in row
    # No profile without windows is listed, and none at all without any window.
    assert not any("openai:key" in line for line in lines[start:])
    plain = windowed_status()
    for p in plain.profiles:
        p.windows = {}
    assert "Subscription windows" not in render_status(plain)


def test_event_line_policy_events_say_what_they_mean() -> None:
    ev = Event(type="paid_fallback", at=NOW, profile="anthropic:two", provider="anthropic",
               client="background", message="no subscription of the provider is ready")
    assert event_line(ev) == (
        f"{clock(NOW)} paid_fallback anthropic:two provider=anthropic client=background:"
        " an API key was leased, paid per token (no subscription of the provider is ready)")
    ev = Event(type="probe", at=NOW, profile="anthropic:one", lease_id="L7",
               provider="anthropic")
    assert event_line(ev) == (
        f"{clock(NOW)} probe anthropic:one lease_id=L7 provider=anthropic: an early-reset"
        " probe lease: if it succeeds, the cooldown ends for every agent")
    ev = Event(type="cooldown_start", at=NOW, profile="anthropic:one", kind="quota",
               until=NOW + 3600)
    assert event_line(ev) == (
        f"{clock(NOW)} cooldown_start anthropic:one kind=quota until={clock(NOW + 3600)}"
        " (1h00m)")


def test_event_line_control_characters_show_as_spaces() -> None:
    ev = Event(type="lease", at=NOW, profile="openai:main", client="evil\x1b[2J\nname")
    assert event_line(ev) == f"{clock(NOW)} lease openai:main client=evil [2J name"
