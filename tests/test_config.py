from __future__ import annotations

from pathlib import Path

import pytest

from argentd.config import (
    DAY,
    DEFAULT_CONFIG,
    DEFAULT_COOLDOWNS,
    EFFECTS,
    HOUR,
    Backoff,
    Config,
    ConfigError,
    CooldownConfig,
    LeaseConfig,
    load_config,
    parse_config,
    split_target,
)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text.encode())
    return str(info.value)


# ---------------------------------------------------------------- defaults


def test_parse_config_empty_is_defaults() -> None:
    assert parse_config(b"") == DEFAULT_CONFIG == Config()


def test_config_defaults_match_design() -> None:
    c = DEFAULT_CONFIG
    assert c.profiles is None and c.socket is None
    assert c.routes == {}
    assert c.cooldown.rate_limit == Backoff(base=60.0, factor=5.0, cap=HOUR)
    assert c.cooldown.quota == Backoff(base=5 * HOUR, factor=2.0, cap=DAY)
    assert c.cooldown.retry_after_cap == 7 * DAY
    assert c.lease == LeaseConfig(ttl=600.0, max_ttl=DAY, affinity_idle=HOUR)
    assert CooldownConfig() == DEFAULT_COOLDOWNS


def test_effects_cover_design_table() -> None:
    assert EFFECTS == {
        "rate_limit": "cooldown",
        "quota": "cooldown",
        "auth": "invalid",
        "overloaded": "count",
        "timeout": "count",
        "server_error": "count",
    }


def test_cooldown_backoff_per_kind() -> None:
    c = DEFAULT_COOLDOWNS
    assert c.backoff("rate_limit") is c.rate_limit
    assert c.backoff("quota") is c.quota
    for kind in ("auth", "overloaded", "timeout", "server_error"):
        assert c.backoff(kind) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "seconds"), [(1, 60.0), (2, 300.0), (3, 1500.0), (4, 3600.0), (50, 3600.0)]
)
def test_backoff_rate_limit_default(n: int, seconds: float) -> None:
    assert DEFAULT_COOLDOWNS.rate_limit.duration(n) == seconds


@pytest.mark.parametrize(
    ("n", "seconds"), [(0, 5 * HOUR), (1, 5 * HOUR), (2, 10 * HOUR), (3, 20 * HOUR), (4, DAY)]
)
def test_backoff_quota_default(n: int, seconds: float) -> None:
    assert DEFAULT_COOLDOWNS.quota.duration(n) == seconds


def test_backoff_huge_n_hits_cap_without_overflow() -> None:
    assert Backoff(base=1.0, factor=10.0, cap=99.0).duration(10_000) == 99.0
    assert Backoff(base=7.0).duration(10_000) == 7.0


# ---------------------------------------------------------------- every key


def test_parse_config_every_key() -> None:
    c = parse_config(
        b"""
profiles = "~/agents/auth-profiles.json"
socket = "/run/user/1000/argentos/argentd.sock"

[cooldown]
retry_after_cap = 86400

[cooldown.rate_limit]
base = 30
factor = 3
cap = 1800

[cooldown.quota]
base = 3600.5
factor = 1.5
cap = 43200

[lease]
ttl = 120
max_ttl = 7200
affinity_idle = 900

[routes]
default = [
    "anthropic/claude-sonnet-4-5",
    "openrouter/anthropic/claude-sonnet-4.5",
    "minimax/MiniMax-M2",
]
cheap = ["zai/glm-4.6"]
"""
    )
    assert c == Config(
        profiles="~/agents/auth-profiles.json",
        socket="/run/user/1000/argentos/argentd.sock",
        cooldown=CooldownConfig(
            rate_limit=Backoff(base=30.0, factor=3.0, cap=1800.0),
            quota=Backoff(base=3600.5, factor=1.5, cap=43200.0),
            retry_after_cap=86400.0,
        ),
        lease=LeaseConfig(ttl=120.0, max_ttl=7200.0, affinity_idle=900.0),
        routes={
            "default": [
                "anthropic/claude-sonnet-4-5",
                "openrouter/anthropic/claude-sonnet-4.5",
                "minimax/MiniMax-M2",
            ],
            "cheap": ["zai/glm-4.6"],
        },
    )


# ---------------------------------------------------------------- partial tables


def test_parse_config_partial_rate_limit_keeps_kind_defaults() -> None:
    c = parse_config(b"[cooldown.rate_limit]\nbase = 30\n")
    assert c.cooldown.rate_limit == Backoff(base=30.0, factor=5.0, cap=HOUR)
    assert c.cooldown.quota == DEFAULT_COOLDOWNS.quota


def test_parse_config_partial_quota_keeps_kind_defaults() -> None:
    c = parse_config(b"[cooldown.quota]\ncap = 172800\n")
    assert c.cooldown.quota == Backoff(base=5 * HOUR, factor=2.0, cap=2 * DAY)
    assert c.cooldown.rate_limit == DEFAULT_COOLDOWNS.rate_limit


def test_parse_config_partial_lease_and_cooldown() -> None:
    c = parse_config(b"[lease]\nttl = 60\n[cooldown]\nretry_after_cap = 10\n")
    assert c.lease == LeaseConfig(ttl=60.0, max_ttl=DAY, affinity_idle=HOUR)
    assert c.cooldown == CooldownConfig(retry_after_cap=10.0)


def test_parse_config_partial_base_over_default_cap() -> None:
    assert error("[cooldown.rate_limit]\nbase = 7200\n") == (
        "argentd.toml: cap must be >= base - at `$.cooldown.rate_limit`"
    )


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "Object contains unknown field `colour`"),
        ("[cooldown]\nbogus = 1", "Object contains unknown field `bogus` - at `$.cooldown`"),
        (
            "[cooldown.rate_limit]\nbasis = 1",
            "Object contains unknown field `basis` - at `$.cooldown.rate_limit`",
        ),
        ("[lease]\nttls = 1", "Object contains unknown field `ttls` - at `$.lease`"),
        ("profiles = 3", "Expected `str | null`, got `int` - at `$.profiles`"),
        ("socket = true", "Expected `str | null`, got `bool` - at `$.socket`"),
        ("cooldown = 3", "Expected `object`, got `int` - at `$.cooldown`"),
        (
            '[cooldown.rate_limit]\nbase = "60"',
            "Expected `float`, got `str` - at `$.cooldown.rate_limit.base`",
        ),
        ("[cooldown.rate_limit]\nbase = 0", "base must be > 0 - at `$.cooldown.rate_limit`"),
        ("[cooldown.quota]\nfactor = 0.5", "factor must be >= 1 - at `$.cooldown.quota`"),
        ("[cooldown.quota]\ncap = 10", "cap must be >= base - at `$.cooldown.quota`"),
        ("[lease]\nttl = 0", "need 0 < ttl <= max_ttl - at `$.lease`"),
        ("[lease]\nttl = 90000", "need 0 < ttl <= max_ttl - at `$.lease`"),
        ("[lease]\naffinity_idle = 0", "affinity_idle must be > 0 - at `$.lease`"),
        ('routes = ["a/b"]', "Expected `object`, got `array` - at `$.routes`"),
        ('[routes]\ndefault = "anthropic/x"', "Expected `array`, got `str` - at `$.routes[...]`"),
        ("[routes]\ndefault = [1]", "Expected `str`, got `int` - at `$.routes[...][0]`"),
        ("[routes]\ndefault = []", "route 'default' has no targets - at `$.routes.default`"),
        (
            '[routes]\ndefault = ["anthropic/x", "/claude"]',
            "route 'default' target '/claude' is not `provider/model` - at `$.routes.default[1]`",
        ),
        (
            '[routes]\ndefault = ["anthropic/"]',
            "route 'default' target 'anthropic/' is not `provider/model`"
            " - at `$.routes.default[0]`",
        ),
        ("profiles = ", "not valid TOML: Invalid value (at end of document)"),
    ],
)
def test_parse_config_error(text: str, message: str) -> None:
    assert error(text) == f"argentd.toml: {message}"


def test_parse_config_error_names_given_path() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/x\.toml: Object contains unknown field"):
        parse_config(b"nope = 1", "/etc/x.toml")


# ---------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("target", "split"),
    [
        ("openrouter/anthropic/claude-sonnet-4.5", ("openrouter", "anthropic/claude-sonnet-4.5")),
        ("anthropic/claude-sonnet-4-5", ("anthropic", "claude-sonnet-4-5")),
        ("minimax/MiniMax-M2", ("minimax", "MiniMax-M2")),
        ("Z.AI/glm-4.6", ("zai", "glm-4.6")),
        ("anthropic", ("anthropic", None)),
    ],
)
def test_split_target(target: str, split: tuple[str, str | None]) -> None:
    assert split_target(target) == split


def test_config_route_targets() -> None:
    c = parse_config(
        b'[routes]\ndefault = ["anthropic/claude-sonnet-4-5",'
        b' "openrouter/anthropic/claude-sonnet-4.5", "openai"]\n'
    )
    assert c.route_targets("default") == [
        ("anthropic", "claude-sonnet-4-5"),
        ("openrouter", "anthropic/claude-sonnet-4.5"),
        ("openai", None),
    ]
    assert c.route_targets("missing") is None


# ---------------------------------------------------------------- load_config


def test_load_config_missing_gives_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "argentd.toml") is DEFAULT_CONFIG


def test_load_config_missing_required(tmp_path: Path) -> None:
    path = tmp_path / "argentd.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, required=True)
    assert str(info.value) == f"{path}: no such file"


def test_load_config_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "argentd.toml"
    path.write_text("[lease]\nttl = 30\n")
    assert load_config(path).lease.ttl == 30.0


def test_load_config_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read: Is a directory"


def test_load_config_invalid_names_file(tmp_path: Path) -> None:
    path = tmp_path / "argentd.toml"
    path.write_text("[lease]\nttl = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: need 0 < ttl <= max_ttl - at `$.lease`"
