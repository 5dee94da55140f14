"""`argentctl doctor` checks (`argent_client.doctor`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from argent_client.doctor import Check, check_config, check_git, check_profiles_file, failed

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def write(path: Path, text: str = '{"openai:a": {"provider": "openai", "type": "api-key", '
          '"token": "sk-proj-aaaaaaaaaaaaaaaaaaaaaaaa"}}', mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(folder), "-c", "user.email=t@example.com", "-c", "user.name=t",
         *args],
        check=True, capture_output=True,
    )


# ---------------------------------------------------------------- profiles file


def test_check_profiles_file_ok(tmp_path: Path) -> None:
    path = write(tmp_path / "auth.json")
    checks = by_name(check_profiles_file(path))
    assert [c.status for c in checks.values()] == ["ok", "ok", "ok"]
    assert checks["profiles_parse"].detail == "flat map, 1 profile(s)"
    assert checks["profiles_mode"].detail == "mode 0600"


def test_check_profiles_file_0644_names_chmod_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "auth.json", mode=0o644)
    check = by_name(check_profiles_file(path))["profiles_mode"]
    assert check.status == "fail"
    assert check.fix == f"chmod 600 {path}"
    assert "0644" in check.detail


def test_check_profiles_file_missing_says_setup(tmp_path: Path) -> None:
    checks = check_profiles_file(tmp_path / "nope.json")
    assert [(c.name, c.status) for c in checks] == [("profiles_file", "fail")]
    assert "argentctl setup" in (checks[0].fix or "")


def test_check_profiles_file_bad_json_names_the_place(tmp_path: Path) -> None:
    path = write(tmp_path / "auth.json", '{\n  "openai:a": {"token": "sk-secret-value"\n')
    check = by_name(check_profiles_file(path))["profiles_parse"]
    assert check.status == "fail"
    assert check.detail == (
        f"{path}: not valid JSON: line 3 column 1: the text ends early;"
        " likely a missing } or ], or a cut-off file"
    )
    assert "sk-secret-value" not in check.detail


def test_check_profiles_file_versioned_store(tmp_path: Path) -> None:
    path = write(tmp_path / "auth.json", '{"version": 1, "profiles": {}, "lastGood": {}}')
    assert by_name(check_profiles_file(path))["profiles_parse"].detail == (
        "versioned store, 0 profile(s)"
    )


# ---------------------------------------------------------------- git


@needs_git
def test_check_git_outside_a_work_tree(tmp_path: Path) -> None:
    path = write(tmp_path / "plain" / "auth.json")
    check = check_git(path)
    assert (check.status, check.detail) == ("ok", "not inside a git work tree")


@needs_git
def test_check_git_not_ignored_fails_with_gitignore_fix(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    path = write(repo / "agent" / "auth.json")
    check = check_git(path)
    assert check.status == "fail"
    assert check.fix is not None
    assert check.fix.startswith(f"echo /agent/auth.json >> {repo.resolve()}/.gitignore")
    (repo / ".gitignore").write_text("/agent/auth.json\n")
    assert check_git(path).status == "ok"


@needs_git
def test_check_git_tracked_file_fails_with_rm_cached(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    path = write(repo / "auth.json")
    git(repo, "add", "auth.json")
    git(repo, "commit", "-q", "-m", "oops")
    (repo / ".gitignore").write_text("auth.json\n")  # too late: it is tracked
    check = check_git(path)
    assert check.status == "fail"
    assert "committed" in check.detail
    assert f"git -C {repo.resolve()} rm --cached -- auth.json" in (check.fix or "")
    assert "rotate" in (check.fix or "")


# ---------------------------------------------------------------- config


def test_check_config(tmp_path: Path) -> None:
    path = tmp_path / "argentd.toml"
    assert check_config(path).status == "ok"
    path.write_text("[routes]\ndefault = ['anthropic/x']\n")
    assert check_config(path).status == "ok"
    path.write_text("[routes\n")
    check = check_config(path)
    assert check.status == "fail"
    assert "invalid TOML" in check.detail


def test_failed_ignores_warnings() -> None:
    assert not failed([Check("a", "ok", ""), Check("b", "warn", "", "x"), Check("c", "skip", "")])
    assert failed([Check("a", "ok", ""), Check("b", "fail", "", "x")])


# ---------------------------------------------------------------- through argentctl


def test_cli_doctor_without_daemon(tmp_path: Path) -> None:
    path = write(tmp_path / "p" / "auth.json", mode=0o644)
    sock = tmp_path / "no.sock"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "ARGENT_SOCKET": str(sock),
        "ARGENT_CONFIG": str(tmp_path / "argentd.toml"),
    }
    cmd = [sys.executable, "-m", "argent_client.cli", "doctor", "--profiles", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert r.returncode == 6, r.stderr
    assert f"fix: chmod 600 {path}" in r.stdout
    assert "[FAIL] socket:" in r.stdout
    assert "start the daemon: run `argentd`" in r.stdout

    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=60,
                       check=False)
    assert r.returncode == 6
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert checks["profiles_mode"] == {
        "name": "profiles_mode", "status": "fail",
        "detail": "mode is 0644: other users can read your secrets; argentd refuses it",
        "fix": f"chmod 600 {path}",
    }
    assert checks["socket"]["status"] == "fail"
    assert checks["config"]["status"] == "ok"
    assert set(checks) >= {"profiles_file", "profiles_parse", "profiles_git"}


# ---------------------------------------------------------------- one verdict per file


def test_check_profiles_file_validates_each_profile(tmp_path: Path) -> None:
    good = {"provider": "openai", "type": "api-key", "token": "sk-proj-" + "a" * 24}
    token = "sk-ant-oat01-" + "b" * 80
    data = {
        "openai:a": good,
        "openai:b": {**good, "type": "password"},
        "openai:c": {"provider": "openai", "type": "api-key"},
        token: good,  # a token pasted as an id: never shown
        "antrhopic:d": {**good, "provider": "antrhopic"},
        "openai:e": {**good, "token": "sk-proj with space"},
    }
    path = write(tmp_path / "auth.json", json.dumps(data))
    checks = check_profiles_file(path)
    parse = by_name(checks)["profiles_parse"]
    assert (parse.status, parse.detail) == (
        "fail", "flat map, 6 profile(s): 4 skipped, 1 warning(s) (below)"
    )
    lines = [(c.status, c.detail) for c in checks if c.name == "profile"]
    assert lines == [
        ("fail", 'profile "openai:b": type must be setup-token, api-key or oauth'
                 ' (aliases: token, setup_token, api_key) - at $["openai:b"].type'),
        ("fail", 'profile "openai:c": token is required - at $["openai:c"].token'),
        ("fail", 'profile #4: the id must be "provider:name" - at $[#4]'),
        ("warn", 'profile "antrhopic:d": unknown provider "antrhopic" (did you mean anthropic?);'
                 ' loaded anyway - at $["antrhopic:d"].provider'),
        ("fail", 'profile "openai:e": token holds whitespace or characters a token cannot have'
                 ' - at $["openai:e"].token'),
    ]
    assert all(token not in c.detail for c in checks)
    assert failed(checks)


def test_check_profiles_file_missing_with_env_fallback_is_a_warning(tmp_path: Path) -> None:
    [check] = check_profiles_file(tmp_path / "nope.json", fallback=["openai:env"])
    assert (check.status, check.detail) == (
        "warn",
        f"{tmp_path / 'nope.json'} does not exist; only the environment fallback is served"
        " (openai:env)",
    )
    assert not failed([check])


def test_check_profiles_file_takes_the_daemons_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "auth.json")
    line = f'{path}: profile "openai:a": token_ref command exited with status 3 - at $["openai:a"]'
    checks = check_profiles_file(path, daemon_lines=[line])
    assert [(c.name, c.status) for c in checks] == [
        ("profiles_file", "ok"), ("profiles_parse", "fail"), ("profiles_mode", "ok"),
        ("profile", "fail"),
    ]
    assert checks[-1].detail == line.removeprefix(f"{path}: ")


def test_check_config_one_verdict_with_the_daemons_lines(tmp_path: Path) -> None:
    path = tmp_path / "argentd.toml"
    path.write_text("sockett = 'x'\n")
    line = f"{path}: unknown field `sockett`"
    check = check_config(path, [line])
    assert (check.status, check.detail) == ("fail", line)
    assert check.fix is not None and str(path) in check.fix
    assert check_config(path).status == "ok"


def test_offline_profile_check_says_what_the_daemon_says(tmp_path: Path) -> None:
    """Without a daemon, doctor checks each profile itself: in the daemon's words."""
    from argent_client.profiles_file import problems, read_profiles
    from argentd.profiles import load_profiles

    good = {"provider": "openai", "type": "api-key", "token": "sk-proj-" + "a" * 24}
    data = {
        "openai:ok": good,
        "nocolon": good,
        "openai:env": good,
        "openai:noprov": {"type": "api-key", "token": good["token"]},
        "openai:badprov": {**good, "provider": "open ai"},
        "openai:other": {**good, "provider": "anthropic"},
        "openai:notype": {"provider": "openai", "token": good["token"]},
        "openai:badtype": {**good, "type": "password"},
        "openai:both": {**good, "token_ref": "env:X"},
        "openai:nosecret": {"provider": "openai", "type": "api-key"},
        "openai:space": {**good, "token": "sk-proj a"},
        "antrhopic:typo": {**good, "provider": "antrhopic"},
        "sk-ant-oat01-" + "c" * 90: good,
        "openai:sk-proj-" + "d" * 90: good,
    }
    # The versioned store keeps an api-key's secret in `key`.
    store = {pid: {("key" if k == "token" else k): v for k, v in entry.items()}
             for pid, entry in data.items()}
    for name, shape in (("flat", data), ("store", {"version": 1, "profiles": store})):
        path = write(tmp_path / f"auth-{name}.json", json.dumps(shape))
        mine = problems(read_profiles(path), path)
        assert mine == load_profiles(path, {}).errors
        assert len(mine) == len(data) - 1


def test_doctor_untrusted_socket_gives_the_clients_fix(tmp_path: Path) -> None:
    from argent_client.doctor import probe_daemon

    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    checks, status = probe_daemon(folder / "argentd.sock")
    assert status is None
    [check] = checks
    assert check.status == "fail"
    assert check.detail.startswith(f"refusing the argentd socket {folder / 'argentd.sock'}:")
    assert check.fix is not None and check.fix.startswith(f"`chmod 700 {folder}`")
