from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from argentd.model import Profile, ProfileSet
from argentd.profiles import (
    ENV_PRIORITY,
    ProfilesError,
    env_profiles,
    load_profiles,
    profiles_file_exists,
)

NO_ENV: dict[str, str] = {}


def fake(prefix: str = "sk-ant-oat01-") -> str:
    """A fake secret that looks real and is unique to this run."""
    return prefix + secrets.token_hex(20)


def write(tmp_path: Path, data: Any, name: str = "auth-profiles.json", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(mode)
    return path


def load(tmp_path: Path, data: Any, env: dict[str, str] | None = None, **kw: Any) -> ProfileSet:
    return load_profiles(write(tmp_path, data), NO_ENV if env is None else env, **kw)


def one_error(tmp_path: Path, profile: Any, pid: str = "anthropic:x") -> str:
    """The single error message of a flat map holding only `profile` under `pid`."""
    path = write(tmp_path, {pid: profile})
    result = load_profiles(path, NO_ENV)
    assert result.profiles == []
    assert len(result.errors) == 1, result.errors
    prefix = f"{path}: "
    assert result.errors[0].startswith(prefix)
    return result.errors[0][len(prefix) :]


GOOD = {"provider": "anthropic", "type": "setup-token", "token": "sk-ant-oat01-abcdefabcdef"}


# ---------------------------------------------------------------- flat map


def test_load_profiles_flat_map_every_field(tmp_path: Path) -> None:
    token = fake()
    result = load(
        tmp_path,
        {
            "anthropic:titanium": {
                "provider": "anthropic",
                "type": "setup-token",
                "token": token,
                "label": "Titanium Max Sub",
                "priority": -3,
                "max_concurrent": 2,
                "disabled": True,
                "models": ["claude-sonnet-4-5", "claude-opus-4-1"],
                "expires": 1_900_000_000,
                "extra": {"whatever": [1, 2]},
            }
        },
    )
    assert result.errors == []
    assert result.order == {}
    [p] = result.profiles
    assert p.id == "anthropic:titanium"
    assert p.provider == "anthropic"
    assert p.type == "setup-token"
    assert p.secret.reveal() == token
    assert p.label == "Titanium Max Sub"
    assert p.priority == -3
    assert p.max_concurrent == 2
    assert p.disabled is True
    assert p.models == frozenset({"claude-sonnet-4-5", "claude-opus-4-1"})
    assert p.expires == 1_900_000_000.0
    assert p.source == "profile"


def test_load_profiles_flat_map_defaults(tmp_path: Path) -> None:
    result = load(
        tmp_path,
        {"openai:work": {"provider": "openai", "type": "api-key", "token": fake("sk-proj-")}},
    )
    [p] = result.profiles
    assert (p.label, p.priority, p.max_concurrent, p.disabled, p.models, p.expires) == (
        "work",
        0,
        None,
        False,
        None,
        None,
    )


def test_load_profiles_keeps_file_order(tmp_path: Path) -> None:
    ids = ["openai:b", "anthropic:z", "openai:a", "anthropic:c"]
    data = {
        pid: {"provider": pid.split(":")[0], "type": "api-key", "token": fake("sk-")} for pid in ids
    }
    assert [p.id for p in load(tmp_path, data).profiles] == ids


def test_load_profiles_strips_literal_token_and_blank_label(tmp_path: Path) -> None:
    token = fake()
    result = load(tmp_path, {"anthropic:x": {**GOOD, "token": f"  {token}\n", "label": "  "}})
    [p] = result.profiles
    assert p.secret.reveal() == token
    assert p.label == "x"


@pytest.mark.parametrize(
    ("written", "provider"),
    [
        ("anthropic", "anthropic"),
        ("Anthropic", "anthropic"),
        (" OPENAI ", "openai"),
        ("z.ai", "zai"),
        ("Z-AI", "zai"),
        ("z_ai", "zai"),
        ("gemini", "google"),
        ("my-proxy_2", "my-proxy_2"),
    ],
)
def test_load_profiles_normalises_provider(tmp_path: Path, written: str, provider: str) -> None:
    result = load(tmp_path, {f"{provider}:x": {**GOOD, "provider": written}})
    assert result.errors == []
    assert result.profiles[0].provider == provider


def test_load_profiles_id_provider_part_is_normalised_too(tmp_path: Path) -> None:
    result = load(tmp_path, {"Z.AI:main": {**GOOD, "provider": "zai"}})
    assert result.errors == []
    assert [(p.id, p.provider) for p in result.profiles] == [("Z.AI:main", "zai")]


@pytest.mark.parametrize(
    ("written", "type_"),
    [
        ("setup-token", "setup-token"),
        ("setup_token", "setup-token"),
        ("token", "setup-token"),
        ("api-key", "api-key"),
        ("api_key", "api-key"),
        ("API-KEY", "api-key"),
        ("oauth", "oauth"),
    ],
)
def test_load_profiles_type_aliases(tmp_path: Path, written: str, type_: str) -> None:
    result = load(tmp_path, {"anthropic:x": {**GOOD, "type": written}})
    assert result.profiles[0].type == type_


# ---------------------------------------------------------------- expires


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (1_800_000_000, 1_800_000_000.0),
        (1_800_000_000.5, 1_800_000_000.5),
        (1_800_000_000_000, 1_800_000_000.0),
        (1_800_000_000_123, 1_800_000_000.123),
        ("2027-01-15T08:00:00Z", dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC).timestamp()),
        (
            "2027-01-15T10:00:00+02:00",
            dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC).timestamp(),
        ),
        ("2027-01-15T08:00:00", dt.datetime(2027, 1, 15, 8, tzinfo=dt.UTC).timestamp()),
        ("2027-01-15", dt.datetime(2027, 1, 15, tzinfo=dt.UTC).timestamp()),
        (0, None),
        (None, None),
    ],
)
def test_load_profiles_flat_expires(tmp_path: Path, written: Any, expected: float | None) -> None:
    result = load(tmp_path, {"anthropic:x": {**GOOD, "expires": written}})
    assert result.errors == []
    assert result.profiles[0].expires == pytest.approx(expected)


def test_load_profiles_keeps_expired_profile(tmp_path: Path) -> None:
    # Expiry is the engine's business (a profile is not ready), not a load fault.
    result = load(tmp_path, {"anthropic:x": {**GOOD, "expires": 1000}})
    assert result.profiles[0].expires == 1000.0


# ---------------------------------------------------------------- versioned store


def test_load_profiles_versioned_store_every_type(tmp_path: Path) -> None:
    key, token, access, refresh = fake("sk-ant-api03-"), fake(), fake("acc-"), fake("ref-")
    result = load(
        tmp_path,
        {
            "version": 1,
            "profiles": {
                "anthropic:key": {"type": "api_key", "provider": "anthropic", "key": key},
                "anthropic:sub": {
                    "type": "token",
                    "provider": "anthropic",
                    "token": token,
                    "expires": 1_800_000_000_000,
                },
                "openai:codex": {
                    "type": "oauth",
                    "provider": "openai",
                    "access": access,
                    "refresh": refresh,
                    "expires": 1_800_000_500_000,
                    "email": "someone@example.com",
                    "accountId": "acct_123",
                },
            },
            "order": {"anthropic": ["anthropic:sub", "anthropic:key"]},
            "lastGood": {"anthropic": "anthropic:sub"},
            "usageStats": {"anthropic:sub": {"lastUsed": 1_700_000_000_000, "errorCount": 2}},
        },
    )
    assert result.errors == []
    got = [(p.id, p.type, p.secret.reveal(), p.expires) for p in result.profiles]
    assert got == [
        ("anthropic:key", "api-key", key, None),
        ("anthropic:sub", "setup-token", token, 1_800_000_000.0),
        ("openai:codex", "oauth", access, 1_800_000_500.0),
    ]
    assert result.order == {"anthropic": ["anthropic:sub", "anthropic:key"]}


def test_load_profiles_versioned_store_takes_argentd_fields(tmp_path: Path) -> None:
    result = load(
        tmp_path,
        {
            "version": 1,
            "profiles": {
                "anthropic:a": {
                    "type": "setup-token",
                    "provider": "anthropic",
                    "token": fake(),
                    "label": "A",
                    "priority": 4,
                    "max_concurrent": 3,
                    "disabled": True,
                    "models": ["m"],
                }
            },
        },
    )
    [p] = result.profiles
    assert (p.label, p.priority, p.max_concurrent, p.disabled, p.models) == (
        "A",
        4,
        3,
        True,
        frozenset({"m"}),
    )


def store_error(tmp_path: Path, profile: Any, pid: str = "anthropic:x") -> str:
    path = write(tmp_path, {"version": 1, "profiles": {pid: profile}})
    result = load_profiles(path, NO_ENV)
    assert result.profiles == []
    [error] = result.errors
    return error.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("type_", "field"), [("api_key", "key"), ("token", "token"), ("oauth", "access")]
)
def test_load_profiles_store_secret_required_per_type(
    tmp_path: Path, type_: str, field: str
) -> None:
    # The secret sits in the other field: the right one is still missing.
    other = "token" if field != "token" else "key"
    msg = store_error(tmp_path, {"type": type_, "provider": "anthropic", other: fake()})
    assert msg == (
        f'profile "anthropic:x": {field} is required - at $.profiles["anthropic:x"].{field}'
    )


def test_load_profiles_store_type_error_path(tmp_path: Path) -> None:
    msg = store_error(tmp_path, {"type": "api_key", "provider": "anthropic", "key": 42})
    assert msg == 'profile "anthropic:x": expected str, got int - at $.profiles["anthropic:x"].key'


def test_load_profiles_store_key_and_token_ref(tmp_path: Path) -> None:
    msg = store_error(
        tmp_path,
        {"type": "api_key", "provider": "anthropic", "key": fake(), "token_ref": "env:X"},
    )
    assert msg == (
        'profile "anthropic:x": give key or token_ref, not both'
        ' - at $.profiles["anthropic:x"].token_ref'
    )


# ---------------------------------------------------------------- order


def test_load_profiles_order_validated_and_normalised(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "version": 1,
            "profiles": {
                "zai:a": {"type": "api_key", "provider": "zai", "key": fake("zk-")},
                "zai:b": {"type": "api_key", "provider": "zai", "key": fake("zk-")},
                "zai:broken": {"type": "api_key", "provider": "zai"},
                "openai:o": {"type": "api_key", "provider": "openai", "key": fake("sk-")},
            },
            "order": {
                "Z.AI": [
                    "zai:b",
                    "zai:ghost",
                    "zai:b",
                    "openai:o",
                    "zai:broken",
                    "zai:env",
                    "zai:a",
                ],
                "openai": "openai:o",
                "google": [],
            },
        },
    )
    result = load_profiles(path, {"ZAI_API_KEY": fake("zk-")})
    assert result.order == {"zai": ["zai:b", "zai:env", "zai:a"]}
    assert result.errors == [
        f'{path}: profile "zai:broken": key is required - at $.profiles["zai:broken"].key',
        f'{path}: order "Z.AI": unknown profile "zai:ghost", ignored - at $.order["Z.AI"][1]',
        f'{path}: order "Z.AI": profile "openai:o" belongs to provider "openai", ignored'
        ' - at $.order["Z.AI"][3]',
        f'{path}: order "openai": expected array, got str - at $.order["openai"]; ignored',
    ]


# ---------------------------------------------------------------- one message per fault

PROFILE_FAULTS: list[tuple[str, Any, str]] = [
    ("anthropic:x", "sk-ant-oat01-notanobject", 'expected object, got str - at $["anthropic:x"]'),
    ("anthropic:x", [GOOD], 'expected object, got array - at $["anthropic:x"]'),
    ("titanium", GOOD, 'the id must be "provider:name" - at $["titanium"]'),
    ("anthropic:", GOOD, 'the id must be "provider:name" - at $["anthropic:"]'),
    (":x", GOOD, 'the id must be "provider:name" - at $[":x"]'),
    (
        "anthropic:env",
        GOOD,
        'the name "env" is reserved for the environment fallback - at $["anthropic:env"]',
    ),
    (
        "anthropic:env-key",
        GOOD,
        'the name "env-key" is reserved for the environment fallback - at $["anthropic:env-key"]',
    ),
    (
        "anthropic:x",
        {k: v for k, v in GOOD.items() if k != "provider"},
        'provider is required - at $["anthropic:x"].provider',
    ),
    (
        "anthropic:x",
        {**GOOD, "provider": 7},
        'expected str, got int - at $["anthropic:x"].provider',
    ),
    (
        "anthropic:x",
        {**GOOD, "provider": "anth ropic"},
        "provider must be 1-32 letters, digits, '-' or '_' (aliases: z.ai, z-ai, gemini)"
        ' (did you mean anthropic?) - at $["anthropic:x"].provider',
    ),
    (
        "anthropic:x",
        {**GOOD, "provider": "openai"},
        'provider does not match the id\'s "anthropic:" part - at $["anthropic:x"].provider',
    ),
    (
        "anthropic:x",
        {k: v for k, v in GOOD.items() if k != "type"},
        'type is required - at $["anthropic:x"].type',
    ),
    (
        "anthropic:x",
        {**GOOD, "type": "sk-ant-oat01-pastedintothewrongfield"},
        "type must be setup-token, api-key or oauth (aliases: token, setup_token, api_key)"
        ' - at $["anthropic:x"].type',
    ),
    (
        "anthropic:x",
        {k: v for k, v in GOOD.items() if k != "token"},
        'token is required - at $["anthropic:x"].token',
    ),
    ("anthropic:x", {**GOOD, "token": ""}, 'token is empty - at $["anthropic:x"].token'),
    ("anthropic:x", {**GOOD, "token": " \n "}, 'token is empty - at $["anthropic:x"].token'),
    (
        "anthropic:x",
        {**GOOD, "token": "sk-ant-oat01-two words"},
        'token holds whitespace or characters a token cannot have - at $["anthropic:x"].token',
    ),
    (
        "anthropic:x",
        {**GOOD, "token": "sk-ant-oat01-é"},
        'token holds whitespace or characters a token cannot have - at $["anthropic:x"].token',
    ),
    (
        "anthropic:x",
        {**GOOD, "token_ref": "env:TOKEN"},
        'give token or token_ref, not both - at $["anthropic:x"].token_ref',
    ),
    ("anthropic:x", {**GOOD, "label": 3}, 'expected str, got int - at $["anthropic:x"].label'),
    (
        "anthropic:x",
        {**GOOD, "priority": 1.5},
        'expected int, got float - at $["anthropic:x"].priority',
    ),
    (
        "anthropic:x",
        {**GOOD, "priority": ENV_PRIORITY},
        f"priority must be between {-ENV_PRIORITY + 1} and {ENV_PRIORITY - 1}"
        ' - at $["anthropic:x"].priority',
    ),
    (
        "anthropic:x",
        {**GOOD, "max_concurrent": 0},
        'max_concurrent must be at least 1 - at $["anthropic:x"].max_concurrent',
    ),
    (
        "anthropic:x",
        {**GOOD, "max_concurrent": "2"},
        'expected int, got str - at $["anthropic:x"].max_concurrent',
    ),
    (
        "anthropic:x",
        {**GOOD, "disabled": "yes"},
        'expected bool, got str - at $["anthropic:x"].disabled',
    ),
    (
        "anthropic:x",
        {**GOOD, "models": []},
        'models must not be empty (leave it out to serve any model) - at $["anthropic:x"].models',
    ),
    (
        "anthropic:x",
        {**GOOD, "models": ["a", " "]},
        'models[1] is empty - at $["anthropic:x"].models[1]',
    ),
    (
        "anthropic:x",
        {**GOOD, "models": ["a", 2]},
        'expected str, got int - at $["anthropic:x"].models[1]',
    ),
    (
        "anthropic:x",
        {**GOOD, "models": "claude"},
        'expected array, got str - at $["anthropic:x"].models',
    ),
    (
        "anthropic:x",
        {**GOOD, "expires": -5},
        'expires must not be negative - at $["anthropic:x"].expires',
    ),
    (
        "anthropic:x",
        {**GOOD, "expires": "next tuesday"},
        "expires must be Unix seconds, Unix milliseconds or an ISO-8601 date"
        ' - at $["anthropic:x"].expires',
    ),
    (
        "anthropic:x",
        {**GOOD, "expires": True},
        'expected float | str, got bool - at $["anthropic:x"].expires',
    ),
]


@pytest.mark.parametrize(("pid", "profile", "message"), PROFILE_FAULTS)
def test_load_profiles_profile_fault_message(
    tmp_path: Path, pid: str, profile: Any, message: str
) -> None:
    assert one_error(tmp_path, profile, pid) == f"profile {json.dumps(pid)}: {message}"


def test_load_profiles_fault_skips_only_that_profile(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "anthropic:good": GOOD,
            "anthropic:bad": {**GOOD, "provider": "openai"},
            "openai:good": {"provider": "openai", "type": "api-key", "token": fake("sk-")},
        },
    )
    result = load_profiles(path, NO_ENV)
    assert [p.id for p in result.profiles] == ["anthropic:good", "openai:good"]
    assert len(result.errors) == 1
    assert 'profile "anthropic:bad"' in result.errors[0]


# ---------------------------------------------------------------- token_ref


def ref_profile(ref: str) -> dict[str, Any]:
    return {"provider": "anthropic", "type": "setup-token", "token_ref": ref}


def ref_error(tmp_path: Path, ref: str, env: dict[str, str] | None = None, **kw: Any) -> str:
    path = write(tmp_path, {"anthropic:x": ref_profile(ref)})
    result = load_profiles(path, env or NO_ENV, **kw)
    assert result.profiles == []
    [error] = result.errors
    prefix = f'{path}: profile "anthropic:x": '
    suffix = ' - at $["anthropic:x"].token_ref'
    assert error.startswith(prefix)
    assert error.endswith(suffix)
    return error[len(prefix) : -len(suffix)]


def test_load_profiles_token_ref_env(tmp_path: Path) -> None:
    token = fake()
    path = write(tmp_path, {"anthropic:x": ref_profile("env:MY_TOKEN")})
    result = load_profiles(path, {"MY_TOKEN": f"{token}\n"})
    assert result.errors == []
    assert result.profiles[0].secret.reveal() == token


def test_load_profiles_token_ref_file_relative_to_profiles_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = fake()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "anthropic").write_text(token + "\n")
    monkeypatch.chdir("/")
    result = load(tmp_path, {"anthropic:x": ref_profile("file:secrets/anthropic")})
    assert result.errors == []
    assert result.profiles[0].secret.reveal() == token


def test_load_profiles_token_ref_file_absolute_and_crlf(tmp_path: Path) -> None:
    token = fake()
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(token.encode() + b"\r\n")
    result = load(tmp_path, {"anthropic:x": ref_profile(f"file:{target}")})
    assert result.profiles[0].secret.reveal() == token


def test_load_profiles_token_ref_file_expands_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = fake()
    home = tmp_path / "home"
    home.mkdir()
    (home / ".anthropic-token").write_text(token)
    monkeypatch.setenv("HOME", str(home))
    result = load(tmp_path, {"anthropic:x": ref_profile("file:~/.anthropic-token")})
    assert result.profiles[0].secret.reveal() == token


def test_load_profiles_token_ref_file_strips_only_one_newline(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(fake() + "\n\n")
    assert ref_error(tmp_path, "file:tok") == (
        f"token_ref file {tmp_path / 'tok'} (one trailing newline is removed)"
        " holds whitespace or characters a token cannot have"
    )


def test_load_profiles_token_ref_cmd(tmp_path: Path) -> None:
    token = fake()
    (tmp_path / "vault.txt").write_text(token)
    # The command runs in the profiles file's folder.
    result = load(tmp_path, {"anthropic:x": ref_profile("cmd:cat vault.txt; echo")})
    assert result.errors == []
    assert result.profiles[0].secret.reveal() == token


def test_load_profiles_token_ref_cmd_timeout(tmp_path: Path) -> None:
    start = time.monotonic()
    # `; echo` keeps sh from exec-ing sleep, so a child outlives a kill of sh alone.
    msg = ref_error(tmp_path, "cmd:sleep 5; echo sk-late", cmd_timeout=0.2)
    assert msg == "token_ref command timed out after 0.2 s"
    assert time.monotonic() - start < 3


def test_load_profiles_token_ref_fifo_fails_promptly(tmp_path: Path) -> None:
    # A FIFO with no writer: a blocking open would wait forever.
    os.mkfifo(tmp_path / "pipe")
    start = time.monotonic()
    assert ref_error(tmp_path, "file:pipe") == (
        f"token_ref file {tmp_path / 'pipe'} is not a regular file"
    )
    assert time.monotonic() - start < 2


def test_load_profiles_token_ref_device_refused(tmp_path: Path) -> None:
    # /dev/zero never ends: it is refused rather than read to the bound.
    assert ref_error(tmp_path, "file:/dev/zero") == "token_ref file /dev/zero is not a regular file"


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_load_profiles_token_ref_cmd_text_not_in_argv(tmp_path: Path) -> None:
    """Another uid can read /proc/PID/cmdline: the command text must not be there."""
    import threading

    marker = "argent-marker-" + secrets.token_hex(8)
    token = fake()
    # `:` is a builtin: the marker is in the command text and in no program's argv.
    command = (
        f": {marker}; echo $$ > pid; while [ ! -e go ]; do sleep 0.01; done; echo {token}"
    )
    path = write(tmp_path, {"anthropic:x": ref_profile(f"cmd:{command}")})
    got: list[ProfileSet] = []
    loader = threading.Thread(target=lambda: got.append(load_profiles(path, NO_ENV)))
    loader.start()
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text().strip():
            assert time.monotonic() < deadline, "the cmd: helper never started"
            time.sleep(0.01)
        pid = int((tmp_path / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cmdline.split(b"\0")[0] == b"/bin/sh"
        assert marker.encode() not in cmdline
        assert token.encode() not in cmdline
    finally:
        (tmp_path / "go").touch()
        loader.join(10)
    assert got[0].errors == []
    assert got[0].profiles[0].secret.reveal() == token


def test_load_profiles_token_ref_cmd_stdin_is_devnull(tmp_path: Path) -> None:
    # The command gets /dev/null on stdin, not the rest of the script.
    result = load(tmp_path, {"anthropic:x": ref_profile("cmd:cat; echo sk-after-cat-0123")})
    assert result.errors == []
    assert result.profiles[0].secret.reveal() == "sk-after-cat-0123"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("vault:anthropic", 'token_ref must start with "env:", "file:" or "cmd:"'),
        ("sk-ant-oat01-literal", 'token_ref must start with "env:", "file:" or "cmd:"'),
        ("env:", "token_ref env: needs a variable name"),
        ("env:NOT A NAME", "token_ref env: needs a variable name"),
        ("env:UNSET_VAR", "token_ref environment variable UNSET_VAR is not set or empty"),
        ("env:EMPTY_VAR", "token_ref environment variable EMPTY_VAR is not set or empty"),
        (
            "env:SPACED_VAR",
            "token_ref environment variable SPACED_VAR holds whitespace or characters"
            " a token cannot have",
        ),
        ("file:", "token_ref file: needs a path"),
        ("cmd:", "token_ref cmd: needs a command"),
        ("cmd:exit 3", "token_ref command exited with status 3"),
        (
            "cmd:echo sk-ant-oat01-printedthenfailed; exit 1",
            "token_ref command exited with status 1",
        ),
        ("cmd:kill -9 $$", "token_ref command was killed by signal 9"),
        ("cmd:true", "token_ref command printed nothing"),
        ("cmd:printf '\\n \\n'", "token_ref command printed nothing"),
        ("cmd:printf '\\377'", "token_ref command printed text that is not UTF-8"),
        (
            "cmd:printf 'sk-line-one\\nsk-line-two\\n'",
            "token_ref command output is not a single token (print only the secret,"
            " e.g. end the command with `| head -n 1`)",
        ),
    ],
)
def test_load_profiles_token_ref_fault(tmp_path: Path, ref: str, message: str) -> None:
    env = {"EMPTY_VAR": "", "SPACED_VAR": "sk-a b"}
    assert ref_error(tmp_path, ref, env) == message


def test_load_profiles_token_ref_file_faults(tmp_path: Path) -> None:
    assert ref_error(tmp_path, "file:missing") == (
        f"token_ref file {tmp_path / 'missing'} does not exist"
    )
    (tmp_path / "empty").write_text("\n")
    assert ref_error(tmp_path, "file:empty") == f"token_ref file {tmp_path / 'empty'} is empty"
    (tmp_path / "folder").mkdir()
    assert ref_error(tmp_path, "file:folder") == (
        f"token_ref file {tmp_path / 'folder'} is not a regular file"
    )
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    assert ref_error(tmp_path, "file:binary") == (
        f"token_ref file {tmp_path / 'binary'} is not UTF-8 text"
    )


# ---------------------------------------------------------------- file-level faults


def file_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ProfilesError) as info:
        load_profiles(path, NO_ENV)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not valid JSON: line 1 column 1: the file is empty (an empty set of profiles is {})"),
        (
            '{"anthropic:x": ',
            "not valid JSON: line 1 column 17: the text ends early; likely a missing } or ],"
            " or a cut-off file",
        ),
        (
            '{"anthropic:x": {}} x',
            "not valid JSON: line 1 column 21: extra data; likely text after the closing }:"
            " a second object, or an extra }",
        ),
        ("[]", "expected object, got array - at $"),
        ('"sk-ant-oat01-justatoken"', "expected object, got str - at $"),
        ('{"version": 1}', "profiles is required - at $.profiles"),
        ('{"profiles": {}}', "version is required - at $.version"),
        ('{"version": "1", "profiles": {}}', "expected int, got str - at $.version"),
        (
            '{"version": 2, "profiles": {}}',
            "unsupported version 2 (argentd reads version 1) - at $.version",
        ),
        ('{"version": 1, "profiles": []}', "expected object, got array - at $.profiles"),
        ('{"version": 1, "profiles": {}, "order": []}', "expected object, got array - at $.order"),
    ],
)
def test_load_profiles_file_fault(tmp_path: Path, text: str, message: str) -> None:
    assert file_error(tmp_path, text) == message


def test_load_profiles_trailing_comma_on_its_own_line(tmp_path: Path) -> None:
    text = '{\n  "anthropic:x": {"provider": "anthropic"},\n}\n'
    assert file_error(tmp_path, text) == (
        "not valid JSON: line 3 column 1: a trailing comma before } (JSON allows none): remove it"
    )


def test_load_profiles_syntax_error_agrees_with_doctor(tmp_path: Path) -> None:
    from argent_client.doctor import check_profiles_file

    text = '{\n  "anthropic:x": {"provider": "anthropic" "type": "api-key"}\n}\n'
    message = file_error(tmp_path, text)
    assert message == (
        "not valid JSON: line 2 column 43: expecting ',' delimiter;"
        " likely a missing comma between two entries, or a missing quote"
    )
    details = [c.detail for c in check_profiles_file(tmp_path / "auth-profiles.json")]
    assert any(message in d for d in details), details


def test_load_profiles_invalid_utf8_is_a_file_fault(tmp_path: Path) -> None:
    # A Latin-1 é in a label: the daemon must report it, not crash on it.
    path = tmp_path / "auth-profiles.json"
    path.write_bytes(
        b'{"anthropic:x": {"provider": "anthropic", "type": "setup-token",\n'
        b' "token": "sk-ant-oat01-abcdefabcdef", "label": "caf\xe9"}}'
    )
    path.chmod(0o600)
    with pytest.raises(ProfilesError) as info:
        load_profiles(path, NO_ENV)
    assert str(info.value) == (
        f"{path}: not UTF-8 text at line 2 column 53 (byte 117): save the file as UTF-8"
    )


@pytest.mark.parametrize("shape", ['{"anthropic:x": %s', '{"version": 1, "profiles": {"a:b": %s'])
def test_load_profiles_deep_nesting_is_a_file_fault(tmp_path: Path, shape: str) -> None:
    # msgspec raises RecursionError for JSON nested this deep; it must not escape.
    assert file_error(tmp_path, shape % ("[" * 500_000)) == "not valid JSON: nested too deeply"


def test_load_profiles_refuses_a_token_pasted_as_the_name(tmp_path: Path) -> None:
    token = fake() + secrets.token_hex(30)  # real setup tokens are ~108 characters
    path = write(tmp_path, {f"anthropic:{token}": GOOD})
    result = load_profiles(path, NO_ENV)
    assert result.profiles == []
    assert result.errors == [
        f'{path}: profile #1: the id must be "provider:name", a name of at most 64 characters'
        " - at $[#1]"
    ]


def test_load_profiles_provider_typo_suggested(tmp_path: Path) -> None:
    path = write(tmp_path, {"antrhopic:x": {**GOOD, "provider": "antrhopic"}})
    result = load_profiles(path, NO_ENV)
    assert [p.id for p in result.profiles] == ["antrhopic:x"]
    assert result.errors == [
        f'{path}: profile "antrhopic:x": unknown provider "antrhopic" (did you mean'
        ' anthropic?); loaded anyway - at $["antrhopic:x"].provider'
    ]


def test_load_profiles_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    path.mkdir(mode=0o700)
    with pytest.raises(ProfilesError) as info:
        load_profiles(path, NO_ENV)
    assert str(info.value) == f"{path}: not a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_load_profiles_no_read_permission(tmp_path: Path) -> None:
    path = write(tmp_path, {}, mode=0o200)
    with pytest.raises(ProfilesError) as info:
        load_profiles(path, NO_ENV)
    assert str(info.value) == f"{path}: cannot open: Permission denied"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o601, 0o660, 0o666])
def test_load_profiles_refuses_open_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    path = write(tmp_path, {"anthropic:x": GOOD}, mode=mode)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProfilesError) as info:
        load_profiles(Path("auth-profiles.json"), NO_ENV)
    assert str(info.value) == (
        f"auth-profiles.json: mode {mode:04o} lets group or others access this file of"
        f" secrets; refusing it. Fix: chmod 600 {path}"
    )
    assert str(path).startswith("/")


def test_load_profiles_open_mode_fix_quotes_path(tmp_path: Path) -> None:
    folder = tmp_path / "my agent"
    folder.mkdir()
    path = write(folder, {}, mode=0o644)
    with pytest.raises(ProfilesError) as info:
        load_profiles(path, NO_ENV)
    assert str(info.value).endswith(f"Fix: chmod 600 '{path}'")


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_load_profiles_accepts_private_mode(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, {"anthropic:x": GOOD}, mode=mode)
    assert len(load_profiles(path, NO_ENV).profiles) == 1


def test_load_profiles_check_mode_off(tmp_path: Path) -> None:
    path = write(tmp_path, {"anthropic:x": GOOD}, mode=0o644)
    assert len(load_profiles(path, NO_ENV, check_mode=False).profiles) == 1


# ---------------------------------------------------------------- missing file and environment


def test_load_profiles_missing_file_gives_env_only(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "auth-profiles.json"
    key = fake("sk-proj-")
    result = load_profiles(path, {"OPENAI_API_KEY": key})
    assert result.errors == []
    assert result.order == {}
    assert [(p.id, p.source) for p in result.profiles] == [("openai:env", "env")]
    assert profiles_file_exists(path) is False
    assert profiles_file_exists(write(tmp_path, {})) is True


def test_env_profiles_ids_order_and_types() -> None:
    env = {
        "GEMINI_API_KEY": fake("AIza"),
        "Z_AI_API_KEY": fake("zk2-"),
        "ZAI_API_KEY": fake("zk1-"),
        "MINIMAX_API_KEY": fake("mm-"),
        "OPENROUTER_API_KEY": fake("sk-or-v1-"),
        "OPENAI_API_KEY": fake("sk-proj-"),
        "ANTHROPIC_API_KEY": fake("sk-ant-api03-"),
        "ANTHROPIC_OAUTH_TOKEN": fake(),
        "UNRELATED": "x",
    }
    got = [
        (p.id, p.provider, p.type, p.label, p.priority, p.source, p.secret.reveal())
        for p in env_profiles(env)
    ]
    assert got == [
        (
            "anthropic:env",
            "anthropic",
            "setup-token",
            "ANTHROPIC_OAUTH_TOKEN",
            ENV_PRIORITY,
            "env",
            env["ANTHROPIC_OAUTH_TOKEN"],
        ),
        (
            "anthropic:env-key",
            "anthropic",
            "api-key",
            "ANTHROPIC_API_KEY",
            ENV_PRIORITY + 1,
            "env",
            env["ANTHROPIC_API_KEY"],
        ),
        (
            "openai:env",
            "openai",
            "api-key",
            "OPENAI_API_KEY",
            ENV_PRIORITY,
            "env",
            env["OPENAI_API_KEY"],
        ),
        (
            "openrouter:env",
            "openrouter",
            "api-key",
            "OPENROUTER_API_KEY",
            ENV_PRIORITY,
            "env",
            env["OPENROUTER_API_KEY"],
        ),
        (
            "minimax:env",
            "minimax",
            "api-key",
            "MINIMAX_API_KEY",
            ENV_PRIORITY,
            "env",
            env["MINIMAX_API_KEY"],
        ),
        ("zai:env", "zai", "api-key", "ZAI_API_KEY", ENV_PRIORITY, "env", env["ZAI_API_KEY"]),
        (
            "google:env",
            "google",
            "api-key",
            "GEMINI_API_KEY",
            ENV_PRIORITY,
            "env",
            env["GEMINI_API_KEY"],
        ),
    ]


def test_env_profiles_anthropic_api_key_alone_is_env() -> None:
    [p] = env_profiles({"ANTHROPIC_API_KEY": fake("sk-ant-api03-")})
    assert (p.id, p.type, p.rank) == ("anthropic:env", "api-key", 2)


def test_env_profiles_zai_second_name_and_empty_first() -> None:
    key = fake("zk-")
    [p] = env_profiles({"ZAI_API_KEY": "  ", "Z_AI_API_KEY": key})
    assert (p.id, p.label, p.secret.reveal()) == ("zai:env", "Z_AI_API_KEY", key)


def test_env_profiles_bad_value_skipped_with_error() -> None:
    errors: list[str] = []
    secret = "sk-proj-" + "a b" + secrets.token_hex(8)
    assert env_profiles({"OPENAI_API_KEY": secret}, errors=errors) == []
    assert errors == [
        "environment: OPENAI_API_KEY holds whitespace or characters a token cannot have; ignored"
    ]


def test_env_profiles_default_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ANTHROPIC_OAUTH_TOKEN",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "OPENROUTER_API_KEY",
        "MINIMAX_API_KEY",
        "ZAI_API_KEY",
        "Z_AI_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", fake("AIza"))
    assert [p.id for p in env_profiles()] == ["google:env"]


def test_load_profiles_env_after_file_profiles(tmp_path: Path) -> None:
    env = {"ANTHROPIC_API_KEY": fake("sk-ant-api03-")}
    result = load(tmp_path, {"anthropic:a": {**GOOD, "priority": 99}}, env)
    assert [(p.id, p.source) for p in result.profiles] == [
        ("anthropic:a", "profile"),
        ("anthropic:env", "env"),
    ]
    # The fallback sorts after any priority a file may give.
    assert result.profiles[1].priority > result.profiles[0].priority


# ---------------------------------------------------------------- secrets never leak


def test_load_profiles_no_secret_in_any_message_or_repr(tmp_path: Path) -> None:
    used: list[str] = []

    def s(prefix: str = "sk-ant-oat01-") -> str:
        used.append(fake(prefix))
        return used[-1]

    (tmp_path / "tok-good").write_text(s() + "\n")
    (tmp_path / "tok-bad").write_text(s() + "\n\n" + s())
    cmd_secret = s()
    env = {
        "ANTHROPIC_OAUTH_TOKEN": s(),
        "ANTHROPIC_API_KEY": s("sk-ant-api03-"),
        "OPENAI_API_KEY": s("sk-proj-") + " " + s(),
        "OPENROUTER_API_KEY": s("sk-or-v1-"),
        "REF_VAR": s(),
        "REF_BAD": s() + "\t",
        "GEMINI_API_KEY": s("AIza"),
    }
    env["REF_BAD"] = env["REF_BAD"] + "x y"
    flat = {
        "anthropic:ok": {**GOOD, "token": s(), "extra": s()},
        "anthropic:wrongprovider": {**GOOD, "provider": "openai", "token": s()},
        "anthropic:typepasted": {**GOOD, "type": s(), "token": s()},
        "anthropic:providerpasted": {**GOOD, "provider": s()},
        "anthropic:spaced": {**GOOD, "token": s() + " " + s()},
        "anthropic:both": {**GOOD, "token": s(), "token_ref": "env:REF_VAR"},
        "anthropic:bare": s(),
        "anthropic:tokenint": {**GOOD, "token": 5, "unknown": {"nested": [s()]}},
        "anthropic:labelsecret": {**GOOD, "token": s(), "models": [s(), 3]},
        "anthropic:expires": {**GOOD, "token": s(), "expires": s()},
        "anthropic:refenv": {**ref_profile("env:REF_VAR")},
        "anthropic:refbadenv": {**ref_profile("env:REF_BAD")},
        "anthropic:reffile": {**ref_profile("file:tok-good")},
        "anthropic:refbadfile": {**ref_profile("file:tok-bad")},
        "anthropic:refcmdfail": {**ref_profile(f"cmd:echo {cmd_secret}; echo {s()} >&2; exit 4")},
        "anthropic:refcmdlines": {**ref_profile(f"cmd:echo {s()}; echo {s()}")},
        "anthropic:refcmdslow": {**ref_profile(f"cmd:echo {s()}; sleep 5")},
        "anthropic:refscheme": {**ref_profile(s())},
        "anthropic:env": {**GOOD, "token": s()},
        s(): {**GOOD, "token": s()},
    }
    store = {
        "version": 1,
        "profiles": {
            "anthropic:k": {"type": "api_key", "provider": "anthropic", "key": s("sk-ant-api03-")},
            "anthropic:kmissing": {"type": "api_key", "provider": "anthropic", "token": s()},
            "openai:o": {"type": "oauth", "provider": "openai", "access": s(), "refresh": s()},
            "openai:omissing": {"type": "oauth", "provider": "openai", "refresh": s()},
            "openai:typebad": {"type": s(), "provider": "openai", "access": s()},
            "zai:t": {"type": "token", "provider": "zai", "token": s(), "expires": s()},
        },
        "order": {"anthropic": ["anthropic:k", s()], "openai": s(), s(): ["anthropic:k"]},
        "lastGood": {"anthropic": s()},
        "usageStats": {s(): {"lastUsed": 1}},
    }
    messages: list[str] = []
    for i, data in enumerate([flat, store]):
        path = write(tmp_path, data, name=f"p{i}.json")
        result = load_profiles(path, env, cmd_timeout=0.3)
        assert result.profiles, "some profiles load"
        assert len(result.errors) >= 5
        messages += result.errors
        messages += [repr(result), str(result), f"{result}"]
        messages += [repr(p) for p in result.profiles]
    # Every broken-file shape, each with a secret inside.
    for text in [
        "{" + json.dumps(s()) + ":",
        json.dumps([s()]),
        json.dumps(s()),
        json.dumps({"version": s(), "profiles": {}}),
        json.dumps({"version": 1, "profiles": [s()]}),
        json.dumps({"version": 1, "profiles": {}, "order": [s()]}),
        json.dumps({"anthropic:x": GOOD | {"token": s()}}) + s(),
        json.dumps({"anthropic:x": GOOD | {"token": s()}})[:-5],
    ]:
        path = write(tmp_path, text, name="broken.json")
        with pytest.raises(ProfilesError) as info:
            load_profiles(path, env)
        messages += [str(info.value), repr(info.value)]
    open_path = write(
        tmp_path, {"anthropic:x": {**GOOD, "token": s()}}, name="open.json", mode=0o644
    )
    with pytest.raises(ProfilesError) as info:
        load_profiles(open_path, env)
    messages.append(str(info.value))
    env_errors: list[str] = []
    env_profiles(env, errors=env_errors)
    messages += env_errors

    assert len(used) > 50
    text = "\n".join(messages)
    for secret in used:
        assert secret not in text
        # Nor a long piece of one (e.g. after its prefix).
        assert secret[-20:] not in text


def test_profile_repr_shows_fingerprint_only(tmp_path: Path) -> None:
    token = fake()
    result = load(tmp_path, {"anthropic:x": {**GOOD, "token": token}})
    p: Profile = result.profiles[0]
    assert token not in repr(p)
    assert p.secret.fingerprint in repr(p)


def test_load_profiles_secret_shaped_key_shown_by_position(tmp_path: Path) -> None:
    secret = fake()
    path = write(tmp_path, {"anthropic:ok": GOOD, secret: GOOD})
    result = load_profiles(path, NO_ENV)
    assert [p.id for p in result.profiles] == ["anthropic:ok"]
    assert result.errors == [f'{path}: profile #2: the id must be "provider:name" - at $[#2]']


def test_load_profiles_order_secret_shaped_entry_hidden(tmp_path: Path) -> None:
    secret = fake()
    path = write(
        tmp_path,
        {
            "version": 1,
            "profiles": {
                "anthropic:a": {"type": "token", "provider": "anthropic", "token": fake()}
            },
            "order": {"anthropic": [secret, "anthropic:a"]},
        },
    )
    result = load_profiles(path, NO_ENV)
    assert result.order == {"anthropic": ["anthropic:a"]}
    assert result.errors == [
        f'{path}: order "anthropic": unknown entry, ignored - at $.order["anthropic"][0]'
    ]


def test_load_profiles_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    os.mkfifo(path, 0o600)
    with pytest.raises(ProfilesError) as info:
        load_profiles(path, NO_ENV)
    assert str(info.value) == f"{path}: not a regular file"


def test_load_profiles_oversized_secrets(tmp_path: Path) -> None:
    big = "sk-" + "a" * (64 * 1024)
    (tmp_path / "big").write_text(big)
    assert ref_error(tmp_path, "file:big") == (
        f"token_ref file {tmp_path / 'big'} is larger than 65536 bytes"
    )
    assert one_error(tmp_path, {**GOOD, "token": big}) == (
        'profile "anthropic:x": token is longer than 65536 characters - at $["anthropic:x"].token'
    )
