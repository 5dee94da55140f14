"""The profiles-file editor (`profiles_file`) and the setup wizard (`wizard`)."""

from __future__ import annotations

import io
import json
import os
import secrets
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from argent_client import providers
from argent_client.profiles_file import (
    ProfileExists,
    ProfileNotFound,
    ProfilesFileError,
    add_profile,
    read_profiles,
    remove_profile,
    summarise,
    write_atomic,
)
from argent_client.wizard import SetupOptions, WizardAborted, WizardIO, guess_type, run_setup


def fake(prefix: str = "sk-ant-oat01-") -> str:
    return prefix + secrets.token_urlsafe(40).replace("-", "x").replace("_", "y")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write(path: Path, data: object, mode: int = 0o600) -> None:
    path.write_text(json.dumps(data))
    os.chmod(path, mode)


# ---------------------------------------------------------------- merge


def test_add_profile_creates_flat_file_0600_in_private_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "auth-profiles.json"
    token = fake()
    replaced = add_profile(
        path, "anthropic:x", provider="anthropic", type="setup-token", secret=token, label="X"
    )
    assert replaced is False
    assert json.loads(path.read_text()) == {
        "anthropic:x": {"provider": "anthropic", "type": "setup-token", "token": token,
                        "label": "X"}
    }
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_add_profile_merges_into_flat_map_keeping_others(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    other = {"provider": "openai", "type": "api-key", "token": fake("sk-proj-"),
             "label": "O", "max_concurrent": 2, "extra": [1, 2]}
    write(path, {"openai:o": other}, 0o644)
    add_profile(path, "anthropic:y", provider="anthropic", type="api-key",
                secret=fake("sk-ant-api03-"), priority=3)
    data = json.loads(path.read_text())
    assert list(data) == ["openai:o", "anthropic:y"]
    assert data["openai:o"] == other
    assert data["anthropic:y"]["priority"] == 3
    assert "label" not in data["anthropic:y"]
    assert mode(path) == 0o600  # a rewrite also closes a too-open file


def test_add_profile_merges_into_versioned_store(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    store = {
        "version": 1,
        "profiles": {"anthropic:a": {"type": "token", "provider": "anthropic", "token": fake()}},
        "order": {"anthropic": ["anthropic:a"], "openai": ["openai:z"]},
        "lastGood": {"anthropic": "anthropic:a"},
        "usageStats": {"anthropic:a": {"lastUsed": 1}},
    }
    write(path, store)
    key = fake("sk-ant-api03-")
    add_profile(path, "anthropic:b", provider="anthropic", type="api-key", secret=key, label="B")
    tok = fake()
    add_profile(path, "anthropic:c", provider="anthropic", type="setup-token", secret=tok)
    data = json.loads(path.read_text())
    assert data["profiles"]["anthropic:b"] == {
        "type": "api_key", "provider": "anthropic", "key": key, "label": "B"
    }
    assert data["profiles"]["anthropic:c"] == {
        "type": "token", "provider": "anthropic", "token": tok
    }
    assert data["profiles"]["anthropic:a"] == store["profiles"]["anthropic:a"]  # type: ignore[index]
    assert data["lastGood"] == store["lastGood"]
    assert data["usageStats"] == store["usageStats"]
    # An explicit order is exhaustive for the daemon: new ids join it.
    assert data["order"] == {
        "anthropic": ["anthropic:a", "anthropic:b", "anthropic:c"], "openai": ["openai:z"]
    }


@pytest.mark.parametrize("versioned", [False, True])
def test_add_profile_output_loads_in_daemon(tmp_path: Path, versioned: bool) -> None:
    from argentd.profiles import load_profiles

    path = tmp_path / "auth.json"
    if versioned:
        write(path, {"version": 1, "profiles": {}})
    tok, key = fake(), fake("sk-ant-api03-")
    add_profile(path, "anthropic:t", provider="anthropic", type="setup-token", secret=tok,
                label="T", priority=1)
    add_profile(path, "anthropic:k", provider="anthropic", type="api-key", secret=key)
    loaded = load_profiles(path, environ={})
    assert loaded.errors == []
    got = {p.id: (p.type, p.secret.reveal(), p.label, p.priority) for p in loaded.profiles}
    assert got == {
        "anthropic:t": ("setup-token", tok, "T", 1),
        "anthropic:k": ("api-key", key, "k", 0),
    }


@pytest.mark.parametrize(
    "text",
    [
        '{"anthropic:a": {"provider": "anthropic",',  # truncated
        "[]",
        '{"anthropic:a": "sk-ant-oat01-bare-string"}',
        '{"version": 1, "profiles": []}',
        '{"a:b": {}, "a:b": {}}',  # duplicate key: a rewrite would lose one
    ],
)
def test_add_profile_refuses_unparsable_file_and_leaves_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "auth.json"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ProfilesFileError) as info:
        add_profile(path, "anthropic:x", provider="anthropic", type="setup-token", secret=fake())
    assert path.read_text() == text
    assert str(path) in str(info.value)
    assert "sk-ant-oat01-bare-string" not in str(info.value)


def test_read_profiles_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    os.mkfifo(path)
    with pytest.raises(ProfilesFileError) as info:
        read_profiles(path)
    assert str(info.value) == f"{path}: not a regular file"


def test_read_profiles_refuses_a_file_over_8_mib(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_bytes(b" " * (8 * 1024 * 1024 + 1))
    with pytest.raises(ProfilesFileError) as info:
        read_profiles(path)
    assert str(info.value) == f"{path}: larger than 8388608 bytes"


def test_add_profile_refuses_duplicate_id_unless_replace(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    first, second = fake(), fake()
    add_profile(path, "anthropic:x", provider="anthropic", type="setup-token", secret=first)
    with pytest.raises(ProfileExists, match="anthropic:x is already in"):
        add_profile(path, "anthropic:x", provider="anthropic", type="setup-token", secret=second)
    assert json.loads(path.read_text())["anthropic:x"]["token"] == first
    assert add_profile(path, "anthropic:x", provider="anthropic", type="setup-token",
                       secret=second, replace=True) is True
    assert json.loads(path.read_text())["anthropic:x"]["token"] == second


def test_add_profile_writes_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "auth.json"
    real.parent.mkdir()
    write(real, {})
    link = tmp_path / "auth.json"
    link.symlink_to(real)
    add_profile(link, "openai:o", provider="openai", type="api-key", secret=fake("sk-proj-"))
    assert link.is_symlink()
    assert "openai:o" in json.loads(real.read_text())


def test_add_profile_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                add_profile(path, f"openai:w{n}-{i}", provider="openai", type="api-key",
                            secret=fake("sk-proj-"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(json.loads(path.read_text())) == 40


def test_write_atomic_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        write_atomic(tmp_path / "f.json", "{}\n")
    finally:
        os.umask(old)
    assert mode(tmp_path / "f.json") == 0o600


def test_remove_profile_removes_it_and_its_order_entries(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    write(path, {"version": 1,
                 "profiles": {"openai:a": {"type": "api_key", "provider": "openai", "key": "k1"},
                              "openai:b": {"type": "api_key", "provider": "openai", "key": "k2"}},
                 "order": {"openai": ["openai:b", "openai:a"]},
                 "lastGood": {"openai": "openai:a"}}, 0o640)
    remove_profile(path, "openai:a")
    data = json.loads(path.read_text())
    assert list(data["profiles"]) == ["openai:b"]
    assert data["order"] == {"openai": ["openai:b"]}
    assert data["lastGood"] == {"openai": "openai:a"}  # a read-only hint: left alone
    assert mode(path) == 0o600


def test_remove_profile_unknown_id(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    write(path, {"openai:a": {"provider": "openai", "type": "api-key", "token": "x"}})
    before = path.read_text()
    with pytest.raises(ProfileNotFound, match="openai:zzz is not in"):
        remove_profile(path, "openai:zzz")
    assert path.read_text() == before
    with pytest.raises(ProfileNotFound):
        remove_profile(tmp_path / "missing" / "auth.json", "openai:a")


def test_summarise_shows_fingerprints_never_secrets(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    tok = fake()
    write(path, {"anthropic:a": {"provider": "anthropic", "type": "token", "token": tok,
                                 "label": "A", "priority": 2, "disabled": True},
                 "openai:r": {"provider": "openai", "type": "api-key", "token_ref": "env:X"}})
    items = summarise(read_profiles(path))
    assert [(p.id, p.type, p.label, p.priority, p.disabled) for p in items] == [
        ("anthropic:a", "setup-token", "A", 2, True),
        ("openai:r", "api-key", "", None, False),
    ]
    assert items[0].fingerprint == providers.fingerprint(tok)
    assert items[1].fingerprint == "ref env:…"
    assert tok not in repr(items)


# ---------------------------------------------------------------- provider facts


@pytest.mark.parametrize(
    ("provider", "type_", "secret", "problem"),
    [
        ("anthropic", "setup-token", "sk-ant-oat01-" + "a" * 40, None),
        ("anthropic", "api-key", "sk-ant-api03-" + "a" * 40, None),
        ("anthropic", "setup-token", "sk-ant-api03-" + "a" * 40,
         "anthropic setup-token secrets start with 'sk-ant-oat01-'; it looks like an api-key"),
        ("anthropic", "api-key", "sk-ant-oat01-" + "a" * 40,
         "anthropic api-key secrets start with 'sk-ant-api03-'; it looks like a setup-token"),
        ("openrouter", "api-key", "sk-or-v1-" + "a" * 40, None),
        ("openrouter", "api-key", "sk-proj-" + "a" * 40,
         "openrouter api-key secrets start with 'sk-or-'"),
        ("openai", "api-key", "sk-proj-" + "a" * 40, None),
        ("google", "api-key", "AIza" + "a" * 35, None),
        ("gemini", "api-key", "xx" + "a" * 35, "google api-key secrets start with 'AIza'"),
        ("minimax", "api-key", "sk-cp-" + "a" * 40, None),
        ("minimax", "api-key", "eyJ" + "a" * 40, None),
        ("zai", "api-key", "0123456789abcdef.ghijk", None),
        ("openai", "api-key", "sk-short", "the secret is only 8 characters long"),
        ("openai", "api-key", "sk-aaaaaaaa bbbbbbbbbbbb",
         "the secret contains whitespace (a copy-paste accident?)"),
        ("openai", "api-key", "sk-ääääääääääääääääää",
         "the secret has characters a token cannot have (only printable ASCII)"),
        ("openai", "api-key", "", "the secret is empty"),
    ],
)
def test_shape_problem_table(provider: str, type_: Any, secret: str, problem: str | None) -> None:
    got = providers.shape_problem(provider, type_, secret)
    assert got == problem
    if secret and got:
        assert secret not in got


def test_fingerprint_agrees_with_daemon() -> None:
    from argentd.model import fingerprint as daemon_fingerprint

    for prefix in ("sk-ant-oat01-", "sk-ant-api03-", "sk-or-v1-", "AIza", "sk-", "x"):
        s = fake(prefix)
        assert providers.fingerprint(s) == daemon_fingerprint(s)
    assert providers.fingerprint("sk-ant-oat01-") == daemon_fingerprint("sk-ant-oat01-")


def test_fallback_env_is_what_the_daemon_loads() -> None:
    from argentd.profiles import env_profiles

    environ = {var: fake("sk-") for pairs in providers.FALLBACK_ENV.values() for var, _ in pairs}
    loaded = {(p.provider, p.type, p.label) for p in env_profiles(environ)}
    # One profile per (provider, type): of ZAI_API_KEY / Z_AI_API_KEY the first wins.
    assert loaded == {
        (provider, type_, var)
        for provider, pairs in providers.FALLBACK_ENV.items()
        for var, type_ in pairs
        if var != "Z_AI_API_KEY"
    }


@pytest.mark.parametrize(
    ("provider", "type_", "set_", "unset"),
    [
        ("anthropic", "api-key", ("ANTHROPIC_API_KEY",),
         ("CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_OAUTH_TOKEN")),
        ("anthropic", "setup-token", ("CLAUDE_CODE_OAUTH_TOKEN",),
         ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_OAUTH_TOKEN")),
        ("anthropic", "oauth", ("CLAUDE_CODE_OAUTH_TOKEN",),
         ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_OAUTH_TOKEN")),
        ("openai", "api-key", ("OPENAI_API_KEY",), ()),
        ("openrouter", "api-key", ("OPENROUTER_API_KEY",), ()),
        ("minimax", "api-key", ("MINIMAX_API_KEY",), ()),
        ("z.ai", "api-key", ("ZAI_API_KEY",), ("Z_AI_API_KEY",)),
        ("google", "api-key", ("GEMINI_API_KEY", "GOOGLE_API_KEY"), ()),
        ("my-llm", "api-key", ("MY_LLM_API_KEY",), ()),
    ],
)
def test_env_vars_table(provider: str, type_: Any, set_: tuple[str, ...],
                        unset: tuple[str, ...]) -> None:
    assert providers.env_vars(provider, type_) == set_
    assert providers.conflicting_vars(provider, type_) == unset


def test_guess_type_from_prefix() -> None:
    assert guess_type("anthropic", fake()) == "setup-token"
    assert guess_type("anthropic", fake("sk-ant-api03-")) == "api-key"
    assert guess_type("openrouter", fake("sk-or-v1-")) == "api-key"
    assert guess_type("zai", "whatever") == "api-key"


# ---------------------------------------------------------------- the wizard


class Script:
    """A fake terminal: answers in order, records every prompt and message."""

    def __init__(
        self, answers: list[str], secret: str | list[str] = "", stdin: str = ""
    ) -> None:
        self.answers = answers
        self.secrets = [secret] if isinstance(secret, str) else secret
        self.stdin = stdin
        self.prompts: list[str] = []
        self.err = io.StringIO()

    def io(self, interactive: bool = True) -> WizardIO:
        def ask(prompt: str) -> str:
            self.prompts.append(prompt)
            return self.answers.pop(0)

        def ask_secret(prompt: str) -> str:
            self.prompts.append(prompt)
            return self.secrets.pop(0) if len(self.secrets) > 1 else self.secrets[0]

        return WizardIO(interactive, ask, ask_secret, lambda: self.stdin, self.err)


def test_run_setup_interactive_asks_everything(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    token = fake()
    term = Script(["1", "bad name", "work", "", "Work Max"], secret=token)
    result = run_setup(SetupOptions(path=path), term.io())
    assert result.id == "anthropic:work"
    assert result.fingerprint == providers.fingerprint(token)
    assert json.loads(path.read_text()) == {
        "anthropic:work": {"provider": "anthropic", "type": "setup-token", "token": token,
                           "label": "Work Max"}
    }
    assert "Secret (input hidden): " in term.prompts
    assert "use letters, digits" in term.err.getvalue()
    assert token not in term.err.getvalue() + "".join(term.prompts)


def test_run_setup_interactive_offers_the_type_the_secret_looks_like(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    key = fake("sk-ant-api03-")
    term = Script([""], secret=key)
    opts = SetupOptions(path=path, provider="anthropic", type="setup-token", name="x", label="X")
    result = run_setup(opts, term.io())
    assert result.id == "anthropic:x"
    assert json.loads(path.read_text())["anthropic:x"]["type"] == "api-key"
    assert "it looks like an api-key" in term.err.getvalue()
    assert "Save it as an api-key? [Y/n]: " in term.prompts
    assert key not in term.err.getvalue()


def test_run_setup_interactive_declined_shape_asks_again(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    wrong, right = fake("sk-proj-"), fake("sk-or-v1-")
    term = Script(["n"], secret=[wrong, right])
    opts = SetupOptions(path=path, provider="openrouter", type="api-key", name="x", label="X")
    run_setup(opts, term.io())
    assert json.loads(path.read_text())["openrouter:x"]["token"] == right
    assert term.prompts.count("Secret (input hidden): ") == 2
    assert "Not saved. Paste the secret again (Ctrl-C to stop)." in term.err.getvalue()


def test_run_setup_interactive_refuses_whitespace_even_with_force(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    good = fake("sk-proj-")
    term = Script([], secret=["sk-proj-abc def-0123456789", good])
    opts = SetupOptions(path=path, provider="openai", type="api-key", name="x", label="X",
                        force=True)
    run_setup(opts, term.io())
    assert json.loads(path.read_text())["openai:x"]["token"] == good
    assert ("the secret contains whitespace (a copy-paste accident?); the daemon would refuse"
            " it. Paste it again.") in term.err.getvalue()


def test_run_setup_interactive_taken_name_asks_again(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    add_profile(path, "openai:o", provider="openai", type="api-key", secret=fake("sk-proj-"))
    term = Script(["o", "p", ""], secret=fake("sk-proj-"))
    result = run_setup(SetupOptions(path=path, provider="openai", type="api-key"), term.io())
    assert result.id == "openai:p"
    assert f"openai:o is already in {path}: choose another name" in term.err.getvalue()


def test_run_setup_provider_typo(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    term = Script(["", "x", ""], secret=fake())
    result = run_setup(SetupOptions(path=path, provider="antropic", type="setup-token"),
                       term.io())
    assert result.id == "anthropic:x"
    assert "antropic is not a known provider. Did you mean anthropic? [Y/n]: " in term.prompts
    with pytest.raises(WizardAborted) as info:
        run_setup(SetupOptions(path=path, provider="antrhopic", name="y"),
                  Script([], stdin=fake()).io(interactive=False))
    assert str(info.value) == (
        "unknown provider 'antrhopic' (did you mean anthropic?); pass --force to add it anyway"
    )


def test_run_setup_refuses_taken_id_before_asking_secret(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    add_profile(path, "openai:o", provider="openai", type="api-key", secret=fake("sk-proj-"))
    term = Script([], secret=fake("sk-proj-"))
    with pytest.raises(ProfileExists):
        run_setup(SetupOptions(path=path, provider="openai", name="o"), term.io())
    assert term.prompts == []


def test_run_setup_non_interactive_needs_flags(tmp_path: Path) -> None:
    term = Script([], stdin=fake())
    with pytest.raises(ValueError, match="--provider is required"):
        run_setup(SetupOptions(path=tmp_path / "a.json", name="x"), term.io(interactive=False))
    with pytest.raises(ValueError, match="--name is required"):
        run_setup(SetupOptions(path=tmp_path / "a.json", provider="anthropic"),
                  term.io(interactive=False))
    with pytest.raises(ValueError, match="reserved"):
        run_setup(SetupOptions(path=tmp_path / "a.json", provider="anthropic", name="env"),
                  term.io(interactive=False))


# ---------------------------------------------------------------- through argentctl


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "ARGENT_SOCKET": str(tmp_path / "no.sock"),
        "ARGENT_PROFILES": str(tmp_path / "home" / "p" / "auth-profiles.json"),
    }


def argentctl(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "argent_client.cli", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False,
    )


def test_cli_profiles_add_from_stdin_never_echoes(cli_env: dict[str, str]) -> None:
    token = fake()
    r = argentctl(cli_env, "profiles", "add", "--provider", "anthropic", "--type",
                  "setup-token", "--name", "x", stdin=token + "\n")
    assert r.returncode == 0, r.stderr
    assert token not in r.stdout + r.stderr
    assert "added anthropic:x" in r.stdout
    path = Path(cli_env["ARGENT_PROFILES"])
    assert json.loads(path.read_text())["anthropic:x"]["token"] == token
    assert mode(path) == 0o600

    r = argentctl(cli_env, "setup", "--provider", "anthropic", "--name", "x", "--json",
                  stdin=fake())
    assert r.returncode == 7
    assert json.loads(r.stdout)["error"]["code"] == "profile_exists"

    r = argentctl(cli_env, "profiles", "list", "--file", "--json")
    assert r.returncode == 0
    listed = json.loads(r.stdout)
    assert [p["id"] for p in listed["profiles"]] == ["anthropic:x"]
    assert token not in r.stdout

    r = argentctl(cli_env, "profiles", "remove", "anthropic:x")
    assert r.returncode == 0
    r = argentctl(cli_env, "profiles", "remove", "anthropic:x")
    assert r.returncode == 5


def test_cli_profiles_add_shape_mismatch_needs_force(cli_env: dict[str, str]) -> None:
    key = fake("sk-ant-api03-")
    args = ("setup", "--provider", "anthropic", "--type", "setup-token", "--name", "k")
    r = argentctl(cli_env, *args, stdin=key)
    assert r.returncode == 7
    assert "pass --force" in r.stderr
    assert key not in r.stdout + r.stderr
    assert not Path(cli_env["ARGENT_PROFILES"]).exists()
    r = argentctl(cli_env, *args, "--force", stdin=key)
    assert r.returncode == 0, r.stderr
    assert key not in r.stdout + r.stderr


def test_cli_profiles_add_refuses_whitespace_even_with_force(cli_env: dict[str, str]) -> None:
    args = ("setup", "--provider", "openai", "--type", "api-key", "--name", "k", "--force")
    r = argentctl(cli_env, *args, stdin="sk-proj-abc def-0123456789\n")
    assert r.returncode == 7
    assert r.stderr.startswith(
        "argentctl: error: the secret contains whitespace (a copy-paste accident?); the daemon"
        " would refuse it, so it was not saved"
    )
    assert not Path(cli_env["ARGENT_PROFILES"]).exists()


def test_cli_profiles_add_stdin_without_provider_is_a_usage_error(
    cli_env: dict[str, str],
) -> None:
    r = argentctl(cli_env, "setup", "--name", "k", stdin=fake())
    assert r.returncode == 2
    assert "--provider is required when the secret comes from stdin" in r.stderr


def test_cli_profiles_add_refuses_broken_file(cli_env: dict[str, str]) -> None:
    path = Path(cli_env["ARGENT_PROFILES"])
    path.parent.mkdir(parents=True)
    path.write_text('{"openai:a": {')
    r = argentctl(cli_env, "setup", "--provider", "openai", "--name", "b", stdin=fake("sk-"))
    assert r.returncode == 7
    assert "not valid JSON: line 1 column 15: the text ends early" in r.stderr
    assert path.read_text() == '{"openai:a": {'


def test_cli_setup_on_a_terminal_hides_the_secret(tmp_path: Path) -> None:
    pty = pytest.importorskip("pty")
    import time

    path = tmp_path / "auth.json"
    token = fake()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ["ARGENT_PROFILES"] = str(path)
        os.execv(sys.executable, [sys.executable, "-m", "argent_client.cli", "setup"])
    seen = b""

    def expect(text: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + 20
        while text.encode() not in seen:
            assert time.monotonic() < deadline, f"no {text!r} in {seen!r}"
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break

    try:
        for prompt, answer in [("Provider [", "1"), ("Name (", "me"), ("Type [", ""),
                               ("Label (", "Mine"), ("Secret (input hidden)", token)]:
            expect(prompt)
            os.write(fd, answer.encode() + b"\n")
        expect("added anthropic:me")
    except BaseException:
        os.kill(pid, 9)  # do not hang on a stuck child
        raise
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert token.encode() not in seen
    assert json.loads(path.read_text())["anthropic:me"] == {
        "provider": "anthropic", "type": "setup-token", "token": token, "label": "Mine"
    }
