"""argentctl against a real argentd: its `main` in this process (`run`), and the
real executable (`run_process`) wherever the process itself is what is tested.

The `daemon` fixture is the worker's shared argentd with conftest's
`default_profiles()`, its state made fresh and checked after each test
(conftest `SharedDaemon`); a test marked `own_daemon` gets a process of its own.

Every command, its `--json` shape and its exit code; `exec` propagating the
command's status, handing it the secret and releasing the lease; `watch`
printing events; `status` showing subscription windows as bars.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from argent_client import cli
from argent_client.cli import split_exec_argv
from argent_client.commands import ExitCode

from .conftest import Daemon, make_secret, shared_or_own

ARGENTCTL = [sys.executable, "-m", "argent_client.cli"]


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Daemon:
    return shared_or_own(request)


def run(
    d: Daemon, *args: str, stdin: str = "", env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """argentctl's `main(args)` in this process, as the command would run: with
    `d.env` (and `env`) as the whole environment, `stdin` as its input, stdout and
    stderr captured, a warning of the client library printed to stderr as Python's
    last-resort handler prints it, and argparse's exits turned into the exit code.
    Tests of what only a process shows (exit status of the executable, signals,
    the environment a child gets, a detached lease outliving argentctl) use
    `run_process`."""
    saved_env = dict(os.environ)
    saved_std = sys.stdin, sys.stdout, sys.stderr
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("argent_client")
    propagate = logger.propagate
    os.environ.clear()
    os.environ.update({**d.env, **(env or {})})
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # as exiting.exit_after ends the command
            if isinstance(exc.code, str):
                sys.stderr.write(exc.code + "\n")
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        sys.stdin, sys.stdout, sys.stderr = saved_std
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["argentctl", *args], code, out.getvalue(),
                                       err.getvalue())


def run_process(
    d: Daemon, *args: str, stdin: str = "", env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """The real `argentctl` executable, with `d.env` (and `env`) as its environment."""
    return subprocess.run(
        [*ARGENTCTL, *args], input=stdin, capture_output=True, text=True,
        env={**d.env, **(env or {})}, timeout=timeout, check=False,
    )


def run_json(d: Daemon, *args: str, code: int = 0, process: bool = False) -> Any:
    r = (run_process if process else run)(d, *args, "--json")
    assert r.returncode == code, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def secrets_of(d: Daemon) -> dict[str, str]:
    data = json.loads(d.profiles.read_text())
    return {pid: p["token"] for pid, p in data.items()}


def assert_no_secret(d: Daemon, *texts: str) -> None:
    for secret in secrets_of(d).values():
        for text in texts:
            assert secret not in text


def active_leases(d: Daemon) -> list[dict[str, Any]]:
    leases: list[dict[str, Any]] = d.call("status")["leases"]
    return leases


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


# ---------------------------------------------------------------- status


def test_cli_status_table_and_json(daemon: Daemon) -> None:
    r = run(daemon, "status")
    assert r.returncode == 0, r.stderr
    for text in ("anthropic:one", "anthropic:two", "openai:main", "One", "setup-token",
                 "ready", "No active leases."):
        assert text in r.stdout
    assert_no_secret(daemon, r.stdout, r.stderr)

    status = run_json(daemon, "status")
    assert set(status) == {"profiles", "leases", "config", "routes", "gateway"}
    assert {p["id"] for p in status["profiles"]} == {"anthropic:one", "anthropic:two",
                                                     "openai:main"}
    assert status["config"]["error"] is None
    # --json before the command works too
    r = run(daemon, "--json", "status")
    assert json.loads(r.stdout)["profiles"] == status["profiles"]


def test_cli_status_shows_cooldown_time_left(daemon: Daemon) -> None:
    run_json(daemon, "report", "--profile", "anthropic:one", "--kind", "rate_limit",
             "--retry-after", "300")
    r = run(daemon, "status")
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if "anthropic:one" in ln)
    assert "cooldown 4m5" in line or "cooldown 5m00s" in line, line


def windowed_daemon(daemon_factory: Any, policy: str) -> Daemon:
    """Two Anthropic subscriptions and an API key, with `policy` in argentd.toml."""
    d: Daemon = daemon_factory()
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text(policy)
    d.write_profiles({
        "anthropic:sub": {"provider": "anthropic", "type": "setup-token",
                          "token": make_secret(), "label": "Max"},
        "anthropic:spent": {"provider": "anthropic", "type": "setup-token",
                            "token": make_secret(), "label": "Pro", "priority": 1},
        "anthropic:key": {"provider": "anthropic", "type": "api-key",
                          "token": make_secret("sk-ant-api03-"), "label": "Key"},
    })
    d.start()
    return d


def feed_windows(d: Daemon, profile: str, limits: dict[str, Any]) -> None:
    """A lease pinned to `profile`, released with `limits` (as lease.observe() sends them)."""
    lease = d.call("lease", {"provider": "anthropic", "profile": profile, "detached": True})
    d.call("release", {"lease_id": lease["lease_id"], "limits": limits})


def test_cli_status_shows_subscription_windows_as_bars(daemon_factory: Any) -> None:
    d = windowed_daemon(daemon_factory, "[policy.clients.background]\nwindow_cap = 0.6\n")
    now = time.time()
    feed_windows(d, "anthropic:sub", {
        "unified_status": "allowed",
        "unified_5h_status": "allowed", "unified_5h_utilization": 0.62,
        "unified_5h_reset": now + 2 * 3600,
        "unified_7d_status": "allowed", "unified_7d_utilization": 0.09,
        "unified_7d_reset": now + 3 * 86400 + 1800,
    })
    feed_windows(d, "anthropic:spent", {
        "unified_status": "rejected", "unified_reset": now + 3600,
        "unified_5h_status": "rejected", "unified_5h_utilization": 1.0,
        "unified_5h_reset": now + 3600,
    })
    r = run(d, "status")
    assert r.returncode == 0, r.stderr
    assert_no_secret(d, r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    start = lines.index("Subscription windows")
    rows = lines[start + 3:start + 6]
    # The daemon sorts profiles by id: anthropic:spent before anthropic:sub.
    assert re.fullmatch(r" anthropic:spent  5h      \[██████████\] 100%  (5\dm\d\ds|1h00m)"
                        r" +rejected", rows[0]), rows
    assert re.fullmatch(r" anthropic:sub    5h      \[██████░░░░\]  62%  (1h5\dm|2h00m)"
                        r" +at cap for background 60%", rows[1]), rows
    assert re.fullmatch(r"                  7d      \[█░░░░░░░░░\]   9%  3d00h", rows[2]), rows
    spent = next(ln for ln in lines if ln.startswith(" anthropic:spent  Pro"))
    assert re.search(r"cooldown (5\dm\d\ds|1h00m)", spent), spent

    status = run_json(d, "status")
    assert status["client_window_caps"] == {"background": 0.6}
    assert "window_cap" not in status  # the default, 1.0, is left out
    sub = next(p for p in status["profiles"] if p["id"] == "anthropic:sub")
    assert sub["windows"]["5h"] == {"utilization": 0.62, "reset": now + 2 * 3600,
                                    "status": "allowed"}


def test_cli_status_marks_a_window_at_the_global_cap(daemon_factory: Any) -> None:
    d = windowed_daemon(daemon_factory, "[policy]\nwindow_cap = 0.5\n")
    feed_windows(d, "anthropic:sub", {
        "unified_status": "allowed", "unified_7d_status": "allowed",
        "unified_7d_utilization": 0.62, "unified_7d_reset": time.time() + 600,
    })
    r = run(d, "status")
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if "[██████░░░░]" in ln)
    assert re.fullmatch(r" anthropic:sub  7d      \[██████░░░░\]  62%  (\dm\d\ds|10m00s)"
                        r" +at cap 50%", row), row
    state = next(ln for ln in r.stdout.splitlines() if ln.startswith(" anthropic:sub    Max"))
    assert re.search(r"cooldown (\dm\d\ds|10m00s) \(window cap\)", state), state
    assert run_json(d, "status")["window_cap"] == 0.5


# ---------------------------------------------------------------- lease / release


def test_cli_lease_prints_id_and_release_ends_it(daemon: Daemon) -> None:
    r = run_process(daemon, "lease", "openai")
    assert r.returncode == 0, r.stderr
    lease_id = r.stdout.strip()
    assert "leased openai:main" in r.stderr
    assert f"argentctl release {lease_id}" in r.stderr
    assert_no_secret(daemon, r.stdout, r.stderr)
    # detached: it outlived the argentctl process
    leases = active_leases(daemon)
    assert [(x["lease_id"], x["detached"]) for x in leases] == [(lease_id, True)]

    assert run_json(daemon, "release", lease_id) == {"released": True}
    assert active_leases(daemon) == []
    err = run_json(daemon, "release", lease_id, code=ExitCode.NOT_FOUND)
    assert err["error"]["code"] == "lease_not_found"
    r = run(daemon, "release", lease_id)
    assert r.returncode == 5
    assert "lease_not_found" in r.stderr


def test_cli_lease_json_is_the_lease_result(daemon: Daemon) -> None:
    lease = run_json(daemon, "lease", "openai", "--ttl", "120")
    assert lease["token"] == secrets_of(daemon)["openai:main"]
    assert lease["headers"] == {"Authorization": f"Bearer {lease['token']}"}
    assert {"lease_id", "profile", "provider", "type", "label", "expires_at",
            "source"} <= set(lease)
    assert lease["expires_at"] == pytest.approx(time.time() + 120, abs=10)
    # openai:main has max_concurrent 1: the next lease finds nothing ready
    err = run_json(daemon, "lease", "openai", code=ExitCode.NO_PROFILE)
    assert err["error"]["code"] == "no_profile_available"
    r = run(daemon, "lease", "openai")
    assert r.returncode == 4
    assert "no_profile_available" in r.stderr


def test_cli_lease_env_in_a_shell_script(daemon: Daemon, tmp_path: Path) -> None:
    ctl = shlex.join(ARGENTCTL)
    out = tmp_path / "out"
    script = (
        f'eval "$({ctl} lease anthropic --env)" || exit 9\n'
        f'printf "%s\\n%s\\n%s\\n%s\\n" "$ARGENT_PROFILE" "$CLAUDE_CODE_OAUTH_TOKEN" '
        f'"$ANTHROPIC_AUTH_TOKEN" "${{ANTHROPIC_API_KEY-unset}}" > {shlex.quote(str(out))}\n'
        f'{ctl} release "$ARGENT_LEASE_ID"\n'
    )
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                       env={**daemon.env, "ANTHROPIC_API_KEY": "sk-ant-api03-inherited"},
                       check=False)
    assert r.returncode == 0, r.stderr
    token = secrets_of(daemon)["anthropic:one"]
    assert out.read_text().splitlines() == ["anthropic:one", token, "", "unset"]
    assert active_leases(daemon) == []
    assert token not in r.stderr


def test_cli_lease_unknown_provider_suggests_the_known_one(daemon: Daemon) -> None:
    r = run(daemon, "lease", "antropic")
    assert r.returncode == ExitCode.NOT_FOUND
    assert r.stderr.splitlines()[0].endswith(" (did you mean anthropic?)"), r.stderr


def test_cli_lease_unknown_provider_with_the_key_in_my_shell(daemon: Daemon) -> None:
    key = make_secret("sk-or-v1-")
    r = run(daemon, "lease", "openrouter", env={"OPENROUTER_API_KEY": key})
    assert r.returncode == ExitCode.NOT_FOUND
    fix = " ".join(r.stderr.split()).split("fix: ", 1)[1]
    assert fix == (
        "OPENROUTER_API_KEY is set in your shell, but argentd reads its own environment (the"
        " one it was started with): add a profile with `argentctl setup --provider openrouter`,"
        " or restart argentd from this shell (under systemd: `systemctl --user edit argentd`"
        " and an Environment= line)"
    )
    assert key not in r.stderr


def test_cli_lease_unknown_provider_and_route(daemon: Daemon) -> None:
    err = run_json(daemon, "lease", "nosuch", code=ExitCode.NOT_FOUND)
    assert err["error"]["code"] == "unknown_provider"
    err = run_json(daemon, "lease", "--route", "nosuch", code=ExitCode.NOT_FOUND)
    assert err["error"]["code"] == "unknown_route"
    r = run(daemon, "lease")
    assert r.returncode == ExitCode.USAGE
    r = run(daemon, "lease", "openai", "--route", "x")
    assert r.returncode == ExitCode.USAGE


# ---------------------------------------------------------------- report, reset, disable


def test_cli_report_puts_profile_into_cooldown(daemon: Daemon) -> None:
    lease_id = run(daemon, "lease", "anthropic").stdout.strip()
    r = run(daemon, "report", lease_id, "--kind", "rate_limit", "--retry-after", "300")
    assert r.returncode == 0, r.stderr
    assert "reported rate_limit" in r.stdout
    assert "profile is cooling down until" in r.stdout
    states = {p["id"]: p["state"] for p in daemon.call("status")["profiles"]}
    assert states["anthropic:one"] == "cooldown"
    assert active_leases(daemon) == []

    result = run_json(daemon, "reset", "anthropic:one")
    assert result == {"profile_state": "ready"}
    r = run(daemon, "report", "--kind", "rate_limit")
    assert r.returncode == ExitCode.USAGE
    r = run(daemon, "report", "x", "--kind", "nonsense")
    assert r.returncode == ExitCode.USAGE


def test_cli_report_failover_prints_next_lease(daemon: Daemon) -> None:
    lease_id = run(daemon, "lease", "anthropic").stdout.strip()
    result = run_json(daemon, "report", lease_id, "--kind", "quota", "--failover", process=True)
    assert result["profile_state"] == "cooldown"
    assert result["next"]["profile"] == "anthropic:two"
    # the next lease is detached like the first: it outlives argentctl
    assert [x["lease_id"] for x in active_leases(daemon)] == [result["next"]["lease_id"]]


def test_cli_disable_enable_reset(daemon: Daemon) -> None:
    r = run(daemon, "disable", "anthropic:one")
    assert (r.returncode, r.stdout) == (0, "anthropic:one: disabled\n")
    lease = run_json(daemon, "lease", "anthropic")
    assert lease["profile"] == "anthropic:two"
    assert run_json(daemon, "enable", "anthropic:one") == {"profile_state": "ready"}
    for verb in ("reset", "disable", "enable"):
        err = run_json(daemon, verb, "anthropic:nosuch", code=ExitCode.NOT_FOUND)
        assert err["error"]["code"] == "unknown_profile"


# ---------------------------------------------------------------- reload, metrics


def test_cli_reload_ok_and_with_error(daemon: Daemon) -> None:
    assert run_json(daemon, "reload") == {"profiles": 3}
    r = run(daemon, "reload")
    assert (r.returncode, r.stdout) == (0, "reloaded: 3 profile(s)\n")
    daemon.profiles.write_text("{ not json")
    result = run_json(daemon, "reload", code=ExitCode.REFUSED)
    assert result["error"]
    r = run(daemon, "reload")
    assert r.returncode == ExitCode.REFUSED
    assert "config error:" in r.stderr


def test_cli_metrics_prints_prometheus_text(daemon: Daemon) -> None:
    r = run(daemon, "metrics")
    assert r.returncode == 0
    assert "# TYPE" in r.stdout
    families = {ln.split()[2] for ln in r.stdout.splitlines() if ln.startswith("# TYPE")}
    text = run_json(daemon, "metrics")["text"]
    assert {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")} == families


# ---------------------------------------------------------------- profiles, doctor


def test_cli_profiles_list_from_daemon_and_add_reloads(daemon: Daemon) -> None:
    listed = run_json(daemon, "profiles", "list")
    assert listed["source"] == "daemon"
    assert {p["id"] for p in listed["profiles"]} == {"anthropic:one", "anthropic:two",
                                                     "openai:main"}
    r = run(daemon, "profiles", "list")
    assert r.returncode == 0
    assert "sk-ant-oat01-…" in r.stdout
    assert_no_secret(daemon, r.stdout)

    key = make_secret("sk-or-v1-")
    r = run(daemon, "setup", "--provider", "openrouter", "--name", "main", stdin=key)
    assert r.returncode == 0, r.stderr
    assert key not in r.stdout + r.stderr
    # the daemon watches the file: the new profile shows up on its own
    wait_for(lambda: any(p["id"] == "openrouter:main" for p in daemon.call("status")["profiles"]))
    assert run_json(daemon, "lease", "openrouter")["token"] == key


def test_cli_doctor_with_daemon_all_ok(daemon: Daemon) -> None:
    checks = run_json(daemon, "doctor")
    by_name = {c["name"]: c for c in checks}
    assert by_name["socket"]["status"] == "ok"
    assert by_name["daemon_version"]["status"] == "ok"
    assert by_name["daemon_config"]["status"] == "ok"
    assert by_name["profiles_mode"]["status"] == "ok"
    assert by_name["profiles_file"]["detail"] == str(daemon.profiles)
    r = run(daemon, "doctor")
    assert r.returncode == 0, r.stdout
    assert "[FAIL]" not in r.stdout


def test_cli_doctor_reports_daemon_config_error(daemon: Daemon) -> None:
    os.chmod(daemon.profiles, 0o644)
    run_json(daemon, "reload", code=ExitCode.REFUSED)
    checks = {c["name"]: c for c in run_json(daemon, "doctor", code=ExitCode.DOCTOR)}
    assert checks["profiles_mode"]["fix"] == f"chmod 600 {daemon.profiles}"
    # One verdict per file: the daemon's refusal of the same file is not a second failure.
    assert checks["daemon_config"] == {
        "name": "daemon_config", "status": "ok",
        "detail": "the daemon's problems are listed under each file", "fix": None,
    }
    assert [c["name"] for c in checks.values() if c["status"] == "fail"] == ["profiles_mode"]


def test_cli_doctor_one_verdict_for_the_config_file(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"openai:a": {"provider": "openai", "type": "api-key",
                                   "token": make_secret("sk-proj-")},
                      "openai:b": {"provider": "openai", "type": "api-key"}})
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text("[routes]\nempty = []\n")
    d.start()
    r = run(d, "doctor", "--json")
    assert r.returncode == ExitCode.DOCTOR, r.stdout
    checks = json.loads(r.stdout)
    failing = [(c["name"], c["detail"]) for c in checks if c["status"] == "fail"]
    assert failing == [
        ("profiles_parse", "flat map, 2 profile(s): 1 skipped, 0 warning(s) (below)"),
        ("profile", 'profile "openai:b": token is required - at $["openai:b"].token'),
        ("config", f"{d.config}: route 'empty' has no targets - at `$.routes.empty`"),
    ]
    config = next(c for c in checks if c["name"] == "config")
    assert str(d.config) in config["fix"]
    assert str(d.profiles) not in config["fix"]


def test_cli_status_with_a_broken_file_leads_with_the_error(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({})
    d.profiles.write_text('{\n  "openai:a": {"provider": "openai",},\n}\n')
    d.start()
    r = run(d, "status")
    assert r.returncode == ExitCode.REFUSED, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0] == (
        f"Config error: {d.profiles}: not valid JSON: line 2 column 37: a trailing comma"
        " before } (JSON allows none): remove it"
    )
    assert "no profiles loaded: fix the error above" in r.stdout
    assert "add one with" not in r.stdout
    status = run_json(d, "status", code=ExitCode.REFUSED)
    assert status["config"]["error"] == lines[0].removeprefix("Config error: ")


def test_cli_untrusted_socket_says_its_own_fix(daemon_factory: Any, tmp_path: Path) -> None:
    d: Daemon = daemon_factory()
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o755)
    r = run(d, "status", env={"ARGENT_SOCKET": str(folder / "argentd.sock")})
    assert r.returncode == ExitCode.UNAVAILABLE
    assert "start the daemon" not in r.stderr
    assert "fix: `chmod 700" in " ".join(r.stderr.split())


def test_cli_without_daemon_exits_3(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()  # never started
    err = run_json(d, "status", code=ExitCode.UNAVAILABLE, process=True)
    assert err["error"]["code"] == "daemon_unavailable"
    r = run_process(d, "exec", "openai", "--", "true")
    assert r.returncode == 3
    assert "start the daemon" in r.stderr


# ---------------------------------------------------------------- exec


def test_cli_exec_propagates_exit_code_and_releases(daemon: Daemon) -> None:
    r = run_process(daemon, "exec", "openai", "--", "sh", "-c", "exit 7")
    assert r.returncode == 7, r.stderr
    assert active_leases(daemon) == []
    r = run_process(daemon, "exec", "openai", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM
    r = run_process(daemon, "exec", "openai", "--", "/nonexistent/tool")
    assert r.returncode == 127
    assert "command not found" in r.stderr
    assert active_leases(daemon) == []


def test_cli_exec_gives_the_child_its_env(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "env"
    code = (
        "import os, sys, json; "
        f"json.dump({{k: os.environ.get(k) for k in sys.argv[1:]}}, open({str(out)!r}, 'w'))"
    )
    names = ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN",
             "ARGENT_LEASE_ID", "ARGENT_PROFILE"]
    r = run_process(daemon, "exec", "anthropic", "--json", "--", sys.executable, "-c", code, *names,
                    env={"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-inherited"})
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    tokens = secrets_of(daemon)
    assert got["CLAUDE_CODE_OAUTH_TOKEN"] == tokens["anthropic:one"]
    assert got["ANTHROPIC_AUTH_TOKEN"] is None  # read first as a bare bearer: a 401
    assert got["ANTHROPIC_API_KEY"] is None
    assert got["ARGENT_PROFILE"] == "anthropic:one"
    summary = json.loads(r.stderr.strip().splitlines()[-1])
    assert summary["lease_id"] == got["ARGENT_LEASE_ID"]
    assert summary["exit_code"] == 0
    assert_no_secret(daemon, r.stdout, r.stderr)

    # an API-key profile goes to ANTHROPIC_API_KEY, and the token variables are cleared
    run_json(daemon, "disable", "anthropic:one")
    r = run_process(daemon, "exec", "anthropic", "--", sys.executable, "-c", code, *names,
                    env={"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-inherited"})
    got = json.loads(out.read_text())
    assert got["ANTHROPIC_API_KEY"] == tokens["anthropic:two"]
    assert got["CLAUDE_CODE_OAUTH_TOKEN"] is None
    assert got["ANTHROPIC_AUTH_TOKEN"] is None


def test_cli_exec_renews_while_the_command_runs(daemon: Daemon) -> None:
    r = run_process(daemon, "exec", "openai", "--ttl", "1.5", "--", "sleep", "2.5")
    assert r.returncode == 0
    # a lease that expired mid-run could not be released: that is reported
    assert "could not release" not in r.stderr, r.stderr
    assert active_leases(daemon) == []


def test_cli_exec_forwards_sigterm(daemon: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        [*ARGENTCTL, "exec", "openai", "--", "sh", "-c",
         f"touch {shlex.quote(str(marker))}; exec sleep 30"],
        env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_for(marker.exists)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert active_leases(daemon) == []


def test_cli_exec_needs_a_command(daemon: Daemon) -> None:
    assert run(daemon, "exec", "openai").returncode == ExitCode.USAGE
    assert run(daemon, "exec", "openai", "--").returncode == ExitCode.USAGE


def test_cli_exec_without_dashes_says_where_the_command_goes(daemon: Daemon) -> None:
    r = run(daemon, "exec", "anthropic", "env")
    assert r.returncode == ExitCode.USAGE
    assert r.stderr == (
        "argentctl: error: put the command after --: argentctl exec anthropic -- env\n"
    )
    r = run(daemon, "exec", "--route", "default", "env")
    assert r.stderr == (
        "argentctl: error: put the command after --: argentctl exec --route default -- env\n"
    )
    assert active_leases(daemon) == []


def test_cli_usage_error_with_json_prints_json(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    r = run_process(d, "lease", "openai", "--ttl", "soon", "--json")
    assert r.returncode == ExitCode.USAGE
    assert json.loads(r.stdout) == {
        "error": {"code": "usage", "message": "argument --ttl: invalid float value: 'soon'",
                  "fix": "see `argentctl lease --help`"},
        "exit_code": 2,
    }
    r = run_process(d, "lease", "openai", "--ttl", "soon")
    assert r.returncode == ExitCode.USAGE
    assert r.stdout == ""
    assert r.stderr.endswith(
        "argentctl lease: error: argument --ttl: invalid float value: 'soon'\n"
    )


def test_cli_no_profile_message_after_wait(daemon: Daemon) -> None:
    run_json(daemon, "report", "--profile", "openai:main", "--kind", "rate_limit",
             "--retry-after", "300")
    r = run(daemon, "lease", "openai")
    assert r.returncode == ExitCode.NO_PROFILE
    assert re.fullmatch(
        r"argentctl: error: no_profile_available: no profile of provider 'openai' is ready;"
        r" one may be ready in 4m5\ds \(or use --wait SECONDS\)\n", r.stderr), r.stderr
    r = run(daemon, "lease", "openai", "--wait", "0.2")
    assert r.returncode == ExitCode.NO_PROFILE
    assert re.fullmatch(
        r"argentctl: error: no_profile_available: no profile of provider 'openai' is ready"
        r" after waiting 0.2s; one may be ready in 4m5\ds\n", r.stderr), r.stderr


def test_cli_no_profile_that_time_will_not_free_says_what_will(daemon: Daemon) -> None:
    # Nothing to wait for: the refusal says what frees the profile instead.
    run_json(daemon, "disable", "openai:main")
    r = run(daemon, "lease", "openai")
    assert r.returncode == ExitCode.NO_PROFILE
    assert r.stderr == (
        "argentctl: error: no_profile_available: no profile of provider 'openai' is ready\n"
        "fix: openai:main disabled: `argentctl enable openai:main`\n"
    ), r.stderr


def test_stuck_fix_names_each_state_once() -> None:
    from argent_client.commands import stuck_fix

    profiles = [{"id": f"openai:k{i}", "state": "invalid"} for i in range(5)]
    profiles.append({"id": "openai:e", "state": "expired"})
    profiles.append({"id": "openai:b", "state": "busy"})
    assert stuck_fix(profiles) == (
        "openai:k0, openai:k1, openai:k2 and 2 more invalid (the provider refused its secret):"
        " replace it with `argentctl profiles add --replace`, or `argentctl reset openai:k0` if"
        " it was a false alarm; openai:e expired: replace its secret with `argentctl profiles"
        " add --replace`"
    )
    assert stuck_fix([{"id": "openai:b", "state": "busy"}]) is None
    assert stuck_fix(None) is None


def test_cli_lease_help_says_the_lease_outlives_the_command(daemon_factory: Any) -> None:
    r = run(daemon_factory(), "lease", "--help")
    text = " ".join(r.stdout.split())
    assert "The lease is detached: it outlives argentctl" in text
    assert "the lease stays out (detached) until `argentctl release \"$ARGENT_LEASE_ID\"`" in text


def test_split_exec_argv() -> None:
    assert split_exec_argv(["exec", "openai", "--", "ls", "--json", "--"]) == (
        ["exec", "openai"], ["ls", "--json", "--"]
    )
    assert split_exec_argv(["--socket", "exec", "exec", "--route", "r", "--", "x"]) == (
        ["--socket", "exec", "exec", "--route", "r"], ["x"]
    )
    assert split_exec_argv(["status", "--", "x"]) == (["status", "--", "x"], None)


# ---------------------------------------------------------------- watch


@pytest.mark.own_daemon
def test_cli_watch_prints_events_until_sigint(daemon: Daemon) -> None:
    proc = subprocess.Popen(
        [*ARGENTCTL, "watch", "--json"], env=daemon.env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    def pump() -> None:
        for line in proc.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        # Until the subscription is in place events are not seen: keep making them.
        deadline = time.monotonic() + 20
        event: dict[str, Any] | None = None
        while event is None and time.monotonic() < deadline:
            lease = daemon.call("lease", {"provider": "openai", "detached": True})
            daemon.call("release", {"lease_id": lease["lease_id"]})
            try:
                event = json.loads(lines.get(timeout=0.2))
            except queue.Empty:
                continue
        assert event is not None, "no event from argentctl watch"
        assert event["type"] in ("lease", "release")
        assert event["profile"] == "openai:main"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_watch_human_line(daemon: Daemon) -> None:
    from argent_client.protocol import Event
    from argent_client.render import event_line

    line = event_line(Event(type="cooldown_start", at=1000.0, profile="anthropic:one",
                            kind="rate_limit", until=1300.0))
    assert line.split(" ", 1)[1] == (
        "cooldown_start anthropic:one kind=rate_limit until="
        f"{time.strftime('%H:%M:%S', time.localtime(1300.0))} (5m00s)"
    )


def test_cli_watch_shows_paid_fallback_and_probe_events(daemon_factory: Any) -> None:
    d = windowed_daemon(daemon_factory, '[policy]\npaid_fallback = "notify"\nrecheck = 1\n')
    proc = subprocess.Popen([*ARGENTCTL, "watch"], env=d.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        for line in proc.stdout or ():
            lines.put(line.rstrip("\n"))

    def next_line(pattern: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no {pattern!r} in {seen}")

    threading.Thread(target=pump, daemon=True).start()
    try:
        # Until the subscription is in place events are not seen: keep making them.
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            feed_windows(d, "anthropic:sub", {})
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.2))
        assert seen, "no event from argentctl watch"
        for pid in ("anthropic:sub", "anthropic:spent"):
            run_json(d, "report", "--profile", pid, "--kind", "quota", "--retry-after", "3600")
        # Both subscriptions cool: the next lease falls to the API key (paid_fallback), and
        # with recheck = 1, within about a second one is a subscription's probe (a busy
        # machine may make the probe come first).
        paid: dict[str, Any] | None = None
        probe: dict[str, Any] | None = None
        deadline = time.monotonic() + 20
        while (paid is None or probe is None) and time.monotonic() < deadline:
            lease = d.call("lease", {"provider": "anthropic", "detached": True})
            d.call("release", {"lease_id": lease["lease_id"], "success": False})
            if lease.get("probe"):
                probe = probe or lease
            elif lease["profile"] == "anthropic:key":
                paid = paid or lease
            if probe is None:
                time.sleep(0.05)  # polling for the probe's due time, not a wait for a result
        assert paid is not None and probe is not None, (paid, probe)
        line = next_line(r" paid_fallback ")
        assert line.split(" ", 1)[1] == (
            "paid_fallback anthropic:key provider=anthropic: an API key was leased, paid per"
            " token (no subscription of the provider is ready)")
        probe_line = (
            f"probe {probe['profile']} lease_id={probe['lease_id']} provider=anthropic: an"
            " early-reset probe lease: if it succeeds, the cooldown ends for every agent")
        if not any(ln.split(" ", 1)[1] == probe_line for ln in seen):
            assert next_line(r" probe ").split(" ", 1)[1] == probe_line
        assert_no_secret(d, *seen)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cli_version_and_help() -> None:
    r = subprocess.run([*ARGENTCTL, "--version"], capture_output=True, text=True, check=False)
    assert r.stdout.strip() == "argentctl 0.1.0 (protocol 1)"
    r = subprocess.run([*ARGENTCTL, "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0
    for text in ("exit codes:", "exec", "doctor", "setup", "watch", "ARGENT_SOCKET"):
        assert text in r.stdout
    r = subprocess.run([*ARGENTCTL, "nonsense"], capture_output=True, text=True, check=False)
    assert r.returncode == 2


# ---------------------------------------------------------------- the file the daemon serves


def test_cli_setup_writes_the_file_the_daemon_serves(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    other = d.root / "other" / "profiles.json"
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    other.chmod(0o600)
    d.start("--profiles", str(other))
    key = make_secret("sk-or-v1-")
    r = run(d, "setup", "--provider", "openrouter", "--name", "main", stdin=key)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("added openrouter:main (")
    assert r.stdout.endswith(f") in {other}\n")
    assert "`argentctl status` shows it in a moment" in r.stderr
    assert not d.profiles.exists()
    wait_for(lambda: any(p["id"] == "openrouter:main" for p in d.call("status")["profiles"]))
    r = run(d, "profiles", "remove", "openrouter:main")
    assert (r.returncode, r.stdout) == (0, f"removed openrouter:main from {other}\n")


def test_cli_setup_says_plainly_when_the_daemon_serves_another_file(
    daemon_factory: Any,
) -> None:
    d: Daemon = daemon_factory()
    other = d.root / "other.json"
    other.write_text("{}")
    other.chmod(0o600)
    d.start("--profiles", str(other))
    r = run(d, "setup", "--provider", "openrouter", "--name", "main",
            "--profiles", str(d.profiles), stdin=make_secret("sk-or-v1-"))
    assert r.returncode == 0, r.stderr
    assert "shows it in a moment" not in r.stderr
    assert (
        f"warning: the running daemon serves {other}, not {d.profiles}: it will not see this"
        f" change. Write to its file (--profiles {other}) or restart argentd with"
        f" --profiles {d.profiles}"
    ) in " ".join(r.stderr.split())


def test_cli_setup_finds_a_relative_profiles_path_in_the_daemons_folder(
    daemon_factory: Any, tmp_path: Path,
) -> None:
    # `argentd --profiles other/p.json` reports the path as given; argentctl,
    # run from another folder, must write the daemon's file, not its own.
    d: Daemon = daemon_factory()
    other = d.root / "other" / "profiles.json"
    other.parent.mkdir(parents=True)
    other.write_text("{}")
    other.chmod(0o600)
    d.start("--profiles", os.path.relpath(other))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run(
        [*ARGENTCTL, "setup", "--provider", "openrouter", "--name", "main"],
        input=make_secret("sk-or-v1-"), capture_output=True, text=True, env=d.env,
        cwd=elsewhere, timeout=60, check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(f") in {other}\n")
    assert list(elsewhere.iterdir()) == []
    wait_for(lambda: any(p["id"] == "openrouter:main" for p in d.call("status")["profiles"]))


def test_cli_relative_profiles_path_of_an_unknown_daemon_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from argent_client import profile_commands
    from argent_client.commands import CliError

    served = Path("other/profiles.json")
    # No socket answers, so its peer's pid is not the one given: unknown.
    sock = tmp_path / "no.sock"
    assert profile_commands._in_working_folder(served, os.getpid(), sock) == served
    monkeypatch.delenv("ARGENT_PROFILES", raising=False)
    monkeypatch.setattr(profile_commands, "_served_path", lambda _args: served)
    args = argparse.Namespace(profiles=None, socket=str(sock))
    with pytest.raises(CliError, match="relative to its own working folder"):
        profile_commands._target_path(args)


def test_cli_profiles_list_masks_an_id_that_may_be_a_secret(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    token = make_secret()
    good = {"provider": "openai", "type": "api-key", "token": make_secret("sk-proj-")}
    d.write_profiles({"openai:a": good, token: good, f"openai:{token}": good,
                      "openai:t": {**good, "type": token}, "openai:p": {**good, "provider": token}})
    # daemon down: read from the file, table and JSON
    r = run(d, "profiles", "list")
    assert r.returncode == 0, r.stderr
    assert token not in r.stdout + r.stderr
    assert " #2 " in r.stdout and " #3 " in r.stdout
    listed = run_json(d, "profiles", "list", "--file")
    assert [p["id"] for p in listed["profiles"]] == ["openai:a", "#2", "#3", "openai:t",
                                                     "openai:p"]
    assert [(p["provider"], p["type"]) for p in listed["profiles"][3:]] == [
        ("openai", "?"), ("?", "api-key")
    ]
    # daemon up: it skips both, so nothing to mask; the file view still masks
    d.start()
    listed = run_json(d, "profiles", "list")
    assert listed["source"] == "daemon"
    assert token not in json.dumps(listed)
    r = run(d, "profiles", "list", "--file")
    assert token not in r.stdout + r.stderr
