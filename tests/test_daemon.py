"""The daemon's lifetime, for real: reload, persistence, readiness, refusal, activation."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from .conftest import Daemon, RawConn, make_secret, write_json


def profile(provider: str = "anthropic", type_: str = "api-key", **extra: Any) -> dict[str, Any]:
    prefix = {"anthropic": "sk-ant-api03-", "openai": "sk-proj-"}.get(provider, "sk-")
    return {"provider": provider, "type": type_, "token": make_secret(prefix), **extra}


def wait_event(sub: RawConn, type_: str) -> dict[str, Any]:
    while True:
        msg = sub.read()
        if msg.get("method") == "event" and msg["params"]["type"] == type_:
            params: dict[str, Any] = msg["params"]
            return params


def ids(d: Daemon) -> list[str]:
    return [p["id"] for p in d.call("status")["profiles"]]


def started(daemon_factory: Any, profiles: dict[str, Any]) -> tuple[Daemon, RawConn]:
    d: Daemon = daemon_factory()
    d.write_profiles(profiles)
    d.start()
    sub = d.connect()
    sub.call("subscribe")
    return d, sub


def test_daemon_reload_atomic_rename(daemon_factory: Any) -> None:
    d, sub = started(daemon_factory, {"anthropic:a": profile()})
    d.write_profiles({"anthropic:a": profile(), "anthropic:b": profile()})  # temp + rename
    assert wait_event(sub, "reload")["profiles"] == 2
    assert ids(d) == ["anthropic:a", "anthropic:b"]
    d.write_profiles({"anthropic:c": profile()})  # a second rename: still watched
    wait_event(sub, "reload")
    assert ids(d) == ["anthropic:c"]


def test_daemon_reload_in_place_write(daemon_factory: Any) -> None:
    d, sub = started(daemon_factory, {"anthropic:a": profile()})
    with open(d.profiles, "w") as f:  # same inode, truncated and rewritten
        json.dump({"openai:x": profile("openai")}, f)
    wait_event(sub, "reload")
    assert ids(d) == ["openai:x"]


def test_daemon_reload_delete_and_recreate(daemon_factory: Any) -> None:
    d, sub = started(daemon_factory, {"anthropic:a": profile()})
    d.profiles.unlink()
    wait_event(sub, "reload")
    assert ids(d) == []  # a missing file is no profiles, not an error
    d.write_profiles({"anthropic:b": profile()})
    wait_event(sub, "reload")
    assert ids(d) == ["anthropic:b"]


def test_daemon_reload_folder_deleted_and_recreated(daemon_factory: Any) -> None:
    d, sub = started(daemon_factory, {"anthropic:a": profile()})
    folder = d.profiles.parent
    d.profiles.unlink()
    folder.rmdir()
    wait_event(sub, "reload")
    d.write_profiles({"anthropic:b": profile()})  # makes the folder again
    while ids(d) != ["anthropic:b"]:
        wait_event(sub, "reload")


def test_daemon_bad_file_keeps_last_good(daemon_factory: Any) -> None:
    d, sub = started(daemon_factory, {"anthropic:a": profile()})
    secret = make_secret()
    d.profiles.write_text('{"anthropic:b": {"provider": "anthropic", "token": "' + secret)
    err = wait_event(sub, "reload_error")
    assert secret not in json.dumps(err)
    st = d.call("status")
    assert [p["id"] for p in st["profiles"]] == ["anthropic:a"]
    assert "auth-profiles.json" in st["config"]["error"]
    assert secret not in st["config"]["error"]
    d.write_profiles({"anthropic:b": profile()})
    wait_event(sub, "reload")
    st = d.call("status")
    assert st["config"]["error"] is None
    assert [p["id"] for p in st["profiles"]] == ["anthropic:b"]


def test_daemon_open_mode_refused_with_fix(daemon_factory: Any) -> None:
    d, sub = started(daemon_factory, {"anthropic:a": profile()})
    d.write_profiles({"anthropic:b": profile()}, mode=0o644)
    wait_event(sub, "reload_error")
    st = d.call("status")
    assert f"chmod 600 {d.profiles}" in st["config"]["error"]
    assert [p["id"] for p in st["profiles"]] == ["anthropic:a"]


def test_daemon_sighup_and_reload_method(daemon_factory: Any) -> None:
    d, sub = started(daemon_factory, {"anthropic:a": profile()})
    assert d.call("reload") == {"profiles": 1}
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    assert "MONOTONIC_USEC=" in d.wait_message("RELOADING=1")
    d.wait_message("READY=1")
    wait_event(sub, "reload")


def test_daemon_notify_messages(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"anthropic:a": profile()})
    d.start()
    assert "1 ready, 0 cooling" in d.wait_message("STATUS=")
    d.call("report_failure", {"profile": "anthropic:a", "kind": "rate_limit"})
    assert "0 ready, 1 cooling" in d.wait_message("STATUS=")  # kept current
    assert d.stop() == 0
    d.wait_message("STOPPING=1")


def test_daemon_sigint_exits_zero(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.start()
    assert d.stop(signal.SIGINT) == 0


def test_daemon_restart_keeps_cooldowns_changed_secret_starts_clean(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    keep, change = profile(), profile()
    d.write_profiles({"anthropic:keep": keep, "anthropic:change": change})
    d.start()
    for pid in ("anthropic:keep", "anthropic:change"):
        d.call("report_failure", {"profile": pid, "kind": "quota"})
    assert d.stop() == 0
    d.write_profiles({"anthropic:keep": keep, "anthropic:change": profile()})
    d.start()
    states = {p["id"]: p["state"] for p in d.call("status")["profiles"]}
    assert states == {"anthropic:keep": "cooldown", "anthropic:change": "ready"}


def test_daemon_second_instance_refused(daemon: Daemon) -> None:
    env = {**daemon.env}
    proc = subprocess.run([sys.executable, "-m", "argentd.main"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert "already" in proc.stderr and str(daemon.socket) in proc.stderr
    assert daemon.call("hello")["server"] == "argentd"


def test_daemon_stale_socket_replaced(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(d.socket))  # a socket file nobody serves, as after kill -9
    stale.close()
    d.start()
    assert d.call("hello")["server"] == "argentd"


def test_daemon_socket_activation(daemon_factory: Any, tmp_path: Path) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"anthropic:a": profile()})
    path = d.socket.with_name("activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    # As systemd does: the socket is fd 3 and LISTEN_PID names the daemon itself.
    code = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid());"
        "os.environ['LISTEN_FDS'] = '1'; os.execv(sys.executable, [sys.executable, '-m',"
        " 'argentd.main'])"
    )
    env = {**d.env, "NOTIFY_SOCKET": str(d.notify_path), "ARGENT_SOCKET": str(d.socket)}
    with open(d.stderr_path, "ab") as err:
        d.proc = subprocess.Popen([sys.executable, "-c", code, str(listener.fileno())],
                                  env=env, stdout=err, stderr=err,
                                  pass_fds=(listener.fileno(),))
    listener.close()
    d.wait_message("READY=1")
    conn = RawConn(path)
    assert conn.call("hello")["server"] == "argentd"
    conn.close()
    assert not d.socket.exists()  # it adopted the socket instead of binding its own
    # It holds the socket's lock too: a daemon started by hand on it is refused.
    second = subprocess.run([sys.executable, "-m", "argentd.main"],
                            env={**d.env, "ARGENT_SOCKET": str(path)},
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 3, second.stderr


def test_daemon_corrupt_state_moved_aside(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.state_dir.mkdir(parents=True)
    d.state_file.write_text("{not json")
    d.start()
    assert d.call("hello")["server"] == "argentd"
    assert any(p.name.startswith(d.state_file.name + ".corrupt")
               for p in d.state_dir.iterdir())


def test_daemon_read_only_state_dir_warns(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"anthropic:a": profile()})
    d.state_dir.parent.mkdir(parents=True)
    d.state_dir.write_text("")  # a file where the folder should be: nothing can be written
    d.start()
    d.call("report_failure", {"profile": "anthropic:a", "kind": "rate_limit"})
    assert d.call("hello")["server"] == "argentd"
    assert d.stop() == 0
    assert "WARNING" in d.stderr() and "state" in d.stderr()


def test_daemon_check_flag(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    secret = make_secret()
    d.write_profiles({"anthropic:a": {"provider": "anthropic", "type": "setup-token",
                                      "token": secret, "label": "Sub"}})
    env = {**d.env}
    ok = subprocess.run([sys.executable, "-m", "argentd.main", "--check"], env=env,
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert "anthropic:a" in ok.stdout and secret not in ok.stdout + ok.stderr
    os.chmod(d.profiles, 0o644)
    bad = subprocess.run([sys.executable, "-m", "argentd.main", "--check"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert f"chmod 600 {d.profiles}" in bad.stderr


def test_daemon_help_documents_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "argentd.main", "--help"],
                         capture_output=True, text=True, timeout=30).stdout
    for flag in ("--profiles", "--socket", "--config", "--log-level", "--check"):
        assert flag in out


def test_daemon_config_routes_and_reload(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"anthropic:a": profile(), "openai:b": profile("openai")})
    d.config.parent.mkdir(parents=True)
    d.config.write_text('[routes]\ndefault = ["anthropic/claude-sonnet-4-5", "openai/gpt-5"]\n')
    d.start()
    c = d.connect()
    first = c.call("lease", {"route": "default"})
    assert (first["profile"], first["model"]) == ("anthropic:a", "claude-sonnet-4-5")
    nxt = c.call("report_failure", {"lease_id": first["lease_id"], "kind": "overloaded",
                                    "failover": True})["next"]
    assert (nxt["profile"], nxt["model"]) == ("openai:b", "gpt-5")
    sub = d.connect()
    sub.call("subscribe")
    write_json(d.config, {})  # not TOML: a config error, last good config kept
    d.config.write_text("[lease]\nbogus = 1\n")
    err = wait_event(sub, "reload_error")
    assert "bogus" in err["message"]
    assert d.call("status")["routes"]["default"] == ["anthropic/claude-sonnet-4-5", "openai/gpt-5"]


# ---------------------------------------------------------------- the state file


def test_daemon_state_file_per_socket(monkeypatch: Any, tmp_path: Path) -> None:
    from argentd.config import DEFAULT_CONFIG
    from argentd.daemon import Options, state_path

    monkeypatch.delenv("ARGENT_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    default = tmp_path / "run" / "argentos" / "argentd.sock"
    assert state_path(Options(state=tmp_path), DEFAULT_CONFIG) == tmp_path / "state.json"
    assert state_path(Options(state=tmp_path, socket=default), DEFAULT_CONFIG) == (
        tmp_path / "state.json")
    other = tmp_path / "other.sock"
    digest = hashlib.sha256(str(other).encode()).hexdigest()[:8]
    assert state_path(Options(state=tmp_path, socket=other), DEFAULT_CONFIG) == (
        tmp_path / f"state-{digest}.json")
    monkeypatch.setenv("ARGENT_SOCKET", str(other))  # the same socket named another way
    assert state_path(Options(state=tmp_path), DEFAULT_CONFIG).name == f"state-{digest}.json"


def test_daemon_two_sockets_never_share_a_state_file(daemon_factory: Any) -> None:
    a: Daemon = daemon_factory()
    b: Daemon = daemon_factory()
    b.env["XDG_STATE_HOME"] = a.env["XDG_STATE_HOME"]  # one user, one state folder
    b.state_dir = a.state_dir
    b.state_file = a.state_dir / b.state_file.name  # the name is per socket
    a.write_profiles({"anthropic:x": profile()})
    b.write_profiles({"anthropic:y": profile()})
    a.start()
    b.start()
    assert a.call("status")["config"]["state_path"] == str(a.state_file)
    assert b.call("status")["config"]["state_path"] == str(b.state_file)
    assert a.state_file != b.state_file
    a.call("report_failure", {"profile": "anthropic:x", "kind": "quota", "retry_after": 900})
    wait_until(lambda: "cooldown_until" in a.state_file.read_text()
               if a.state_file.exists() else False)
    b.call("disable", {"profile": "anthropic:y"})  # b saves too, after a
    wait_until(lambda: "user_disabled" in b.state_file.read_text()
               if b.state_file.exists() else False)
    assert a.proc is not None
    a.proc.kill()
    a.stop()
    a.start()
    states = {p["id"]: p["state"] for p in a.call("status")["profiles"]}
    assert states == {"anthropic:x": "cooldown"}


def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_daemon_state_entry_of_wrong_type_costs_only_itself(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from argentd.config import DEFAULT_CONFIG
    from argentd.daemon import Daemon as RealDaemon
    from argentd.daemon import Options, state_path
    from argentd.model import secret_key

    good, bad = profile(), profile()
    profiles = tmp_path / "auth-profiles.json"
    write_json(profiles, {"anthropic:good": good, "anthropic:bad": bad})
    state = tmp_path / "state"
    sock = tmp_path / "s.sock"
    opts = Options(profiles=profiles, socket=sock, config=None, state=state)
    path = state_path(opts, DEFAULT_CONFIG)
    until = time.time() + 3600
    kg, kb = secret_key(good["token"]), secret_key(bad["token"])
    write_json(path, {"version": 1,
                      "keys": {kg: {"cooldown_until": until, "cooldown_kind": "quota"},
                               kb: {"cooldown_until": "soon", "error_count": 2}},
                      "profiles": {"anthropic:good": {"key": kg},
                                   "anthropic:bad": {"key": kb, "user_disabled": "yes"}}})
    for name in ("ARGENT_SOCKET", "NOTIFY_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ARGENT_CONFIG", str(tmp_path / "argentd.toml"))  # none
    d = RealDaemon(opts)
    assert d.engine.state_of("anthropic:good", time.time()) == "cooldown"
    assert d.engine.state_of("anthropic:bad", time.time()) == "ready"
    aside = [p.name for p in state.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1  # the file as found is kept for a look
    assert d.config_status().state_path == str(path)


# ---------------------------------------------------------------- faults while loading


LATIN1 = b"caf\xe9"
"""A label saved in Latin-1: not UTF-8, so not JSON."""


def latin1_profiles(d: Daemon) -> None:
    token = make_secret("sk-ant-api03-").encode()
    d.profiles.parent.mkdir(parents=True, exist_ok=True)
    d.profiles.write_bytes(b'{"anthropic:a": {"provider": "anthropic", "type": "api-key", '
                           b'"token": "' + token + b'", "label": "' + LATIN1 + b'"}}')
    os.chmod(d.profiles, 0o600)


def test_daemon_invalid_utf8_at_start_is_a_file_fault(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    latin1_profiles(d)
    d.start()  # it starts, serving what it can (here the environment fallback)
    st = d.call("status")
    assert st["profiles"] == []
    assert str(d.profiles) in st["config"]["error"]
    assert "Traceback" not in d.stderr()


def test_daemon_invalid_utf8_on_reload_keeps_profiles_and_says_so(daemon_factory: Any) -> None:
    d, sub = started(daemon_factory, {f"anthropic:{x}": profile() for x in "abcde"})
    latin1_profiles(d)
    err = wait_event(sub, "reload_error")
    assert str(d.profiles) in err["message"]
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    d.wait_message("RELOADING=1")
    d.wait_message("READY=1")  # READY=1 always follows RELOADING=1
    wait_event(sub, "reload_error")
    assert len(ids(d)) == 5
    assert "not reloaded (file changed): kept the 5 previous profiles" in d.stderr()
    assert "reloaded (file changed): 5 profile(s)" not in d.stderr()
    assert "Traceback" not in d.stderr()


def test_daemon_sigterm_stops_promptly_during_a_slow_load(daemon_factory: Any) -> None:
    d, _ = started(daemon_factory, {"anthropic:a": profile()})
    # A `cmd:` reference that takes its time: the load blocks in its worker thread.
    d.write_profiles({"anthropic:a": {"provider": "anthropic", "type": "api-key",
                                      "token_ref": "cmd:sleep 8; echo sk-ant-api03-late"}})
    d.wait_message("RELOADING=1")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)  # a second reload queued behind the first
    start = time.monotonic()
    assert d.stop(timeout=20) == 0
    assert time.monotonic() - start < 4, "SIGTERM waited for the load"
    assert "stopped" in d.stderr()


def test_daemon_signal_left_unread_at_stop_is_not_raised_at_its_default() -> None:
    # trio raises again what its receiver had not handed out when it closed, with
    # the handlers from before it: a SIGHUP right behind the stopping SIGTERM, at
    # its default action, ended the daemon before its state was saved (exit -1).
    import functools
    import types

    from argentd.daemon import Daemon as ArgentDaemon

    heard: list[int] = []
    old = signal.signal(signal.SIGHUP, lambda signum, frame: heard.append(signum))

    async def reload(why: str) -> None:
        pass

    standin = object.__new__(ArgentDaemon)  # its signal handling only
    standin.reload = reload  # type: ignore[method-assign]
    standin.notifier = types.SimpleNamespace(stopping=lambda: None)  # type: ignore[assignment]

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(standin._signals, nursery.cancel_scope, stop))
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGHUP)  # pending behind it when the loop stops
        assert stop.is_set()

    try:
        trio.run(main)
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN  # handlers restored
    finally:
        signal.signal(signal.SIGHUP, old)
    assert heard == []


def test_daemon_load_bug_is_a_file_fault_and_ready_follows(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import trio

    from argentd import daemon as daemon_mod

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "n"))
    notify.setblocking(False)
    for name in ("ARGENT_SOCKET", "WATCHDOG_USEC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n"))
    monkeypatch.setenv("ARGENT_CONFIG", str(tmp_path / "argentd.toml"))  # none
    profiles = tmp_path / "auth-profiles.json"
    write_json(profiles, {"anthropic:a": profile(), "anthropic:b": profile()})
    opts = daemon_mod.Options(profiles=profiles, socket=tmp_path / "s", state=tmp_path / "st")
    d = daemon_mod.Daemon(opts)

    def broken(*args: Any, **kw: Any) -> Any:
        raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "invalid continuation byte")

    monkeypatch.setattr(daemon_mod, "load_profiles", broken)
    monkeypatch.setattr(d.server, "after_change", lambda: None)  # keep the outbox for us
    d.engine.events_wanted = True

    async def main() -> P.ReloadResult:
        return await d.reload("test")

    from argent_client import protocol as P

    result = trio.run(main)
    assert result.profiles == 2 and result.error is not None
    assert f"{profiles}: could not be loaded (UnicodeDecodeError" in result.error
    events = d.engine.take_outbox().events
    assert [e.type for e in events] == ["reload_error"]
    messages = []
    while True:
        try:
            messages.append(notify.recv(4096).decode())
        except BlockingIOError:
            break
    assert [m.split("\n")[0] for m in messages[:2]] == ["RELOADING=1", "READY=1"]
    notify.close()


def test_daemon_check_json(tmp_path: Path, monkeypatch: Any,
                           capsys: Any) -> None:
    from argentd.daemon import Options
    from argentd.main import check

    monkeypatch.setenv("ARGENT_CONFIG", str(tmp_path / "argentd.toml"))  # none
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_OAUTH_TOKEN", "OPENAI_API_KEY",
                 "OPENROUTER_API_KEY", "MINIMAX_API_KEY", "ZAI_API_KEY", "Z_AI_API_KEY",
                 "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    secret = make_secret()
    path = tmp_path / "auth-profiles.json"
    write_json(path, {"anthropic:a": {"provider": "anthropic", "type": "setup-token",
                                      "token": secret, "label": "Sub"}})
    assert check(Options(profiles=path), as_json=True) == 0
    out = capsys.readouterr().out
    assert secret not in out
    report = json.loads(out)
    assert report["ok"] is True and report["error"] is None
    assert report["profiles_path"] == str(path)
    assert [(p["id"], p["type"], p["label"]) for p in report["profiles"]] == [
        ("anthropic:a", "setup-token", "Sub")]
    assert report["profiles"][0]["fingerprint"].startswith("sk-ant-oat01-")
    os.chmod(path, 0o644)
    assert check(Options(profiles=path), as_json=True) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and f"chmod 600 {path}" in report["error"]


def test_daemon_json_needs_check() -> None:
    out = subprocess.run([sys.executable, "-m", "argentd.main", "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--json goes with --check" in out.stderr


def test_daemon_paths_are_absolute_whatever_the_working_folder(
    monkeypatch: Any, tmp_path: Path
) -> None:
    # `argentd --profiles auth.json` from one folder, argentctl from another:
    # status.config must name a file the client can find.
    from argentd.config import DEFAULT_CONFIG
    from argentd.daemon import Options, profiles_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARGENT_PROFILES", raising=False)
    got = profiles_path(Options(profiles=Path("auth.json")), DEFAULT_CONFIG)
    assert got == tmp_path / "auth.json" and got.is_absolute()
    monkeypatch.setenv("ARGENT_PROFILES", "sub/auth.json")
    assert profiles_path(Options(), DEFAULT_CONFIG) == tmp_path / "sub" / "auth.json"


def test_daemon_gateway_off_is_never_imported(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"anthropic:k": {"provider": "anthropic", "type": "api-key",
                                      "token": make_secret("sk-ant-api03-")}})
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text('[gateway]\nlisten = ""\n')
    env = {k: v for k, v in d.env.items() if k != "ARGENT_GATEWAY_LISTEN"}
    code = ("import sys, argentd.daemon as d; d.Daemon(d.Options()); "
            "print('argentd.gateway' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.split() == ["False"]
    d.env = env
    d.start()
    assert d.call("status")["gateway"] == {"url": None, "error": None}
    assert "argentd_gateway" not in d.call("metrics")["text"]
    assert d.call("lease", {"provider": "anthropic"})["profile"] == "anthropic:k"
