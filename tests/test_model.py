from __future__ import annotations

import pickle
import re
import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from argent_client.providers import KNOWN_PREFIXES as _KNOWN_PREFIXES
from argentd.model import (
    ENV_RANK,
    Profile,
    Secret,
    auth_headers,
    fingerprint,
    normalise_provider,
    secret_key,
)

FINGERPRINT = re.compile(r"(?P<prefix>.*)…(?P<hash>[0-9a-f]{6})")


def fake(prefix: str = "sk-ant-oat01-") -> str:
    return prefix + secrets.token_hex(20)


def profile(provider: str, type_: str, token: str, source: str = "profile") -> Profile:
    return Profile(
        id=f"{provider}:x",
        provider=provider,
        type=type_,  # type: ignore[arg-type]
        secret=Secret(token),
        source=source,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- fingerprint


@pytest.mark.parametrize(
    ("prefix", "shown"),
    [
        ("sk-ant-oat01-", "sk-ant-oat01-"),
        ("sk-ant-api03-", "sk-ant-api03-"),
        ("sk-or-v1-", "sk-or-v1-"),
        ("sk-proj-", "sk-proj-"),
        ("AIza", "AIza"),
        ("sk-", "sk-"),
        ("", ""),
        ("zz-", ""),
    ],
)
def test_fingerprint_known_prefix_and_hash(prefix: str, shown: str) -> None:
    # Long enough that every known prefix stays under a quarter of the secret.
    secret = prefix + secrets.token_hex(32)
    m = FINGERPRINT.fullmatch(fingerprint(secret))
    assert m is not None
    assert m["prefix"] == shown


def test_fingerprint_prefix_dropped_when_over_a_quarter() -> None:
    secret = "sk-ant-oat01-" + "abcdefghij"  # 23 chars: 13 * 4 > 23
    # The shorter known shape `sk-` (3 * 4 <= 23) is all that shows.
    assert FINGERPRINT.fullmatch(fingerprint(secret))["prefix"] == "sk-"  # type: ignore[index]
    assert fingerprint("sk-abc").startswith("…")


def test_fingerprint_is_stable_and_distinct() -> None:
    a, b = fake(), fake()
    assert fingerprint(a) == fingerprint(a)
    assert fingerprint(a) != fingerprint(b)


@given(st.text(min_size=1, max_size=200))
def test_fingerprint_never_reveals_more_than_prefix(secret: str) -> None:
    fp = fingerprint(secret)
    m = FINGERPRINT.fullmatch(fp)
    assert m is not None
    assert m["prefix"] in ("", *_KNOWN_PREFIXES)
    assert len(m["prefix"]) * 4 <= len(secret)
    assert secret.startswith(m["prefix"])


@given(st.sampled_from(_KNOWN_PREFIXES), st.text(alphabet="abcdef0123456789", max_size=120))
def test_fingerprint_shown_part_at_most_a_quarter(prefix: str, rest: str) -> None:
    secret = prefix + rest
    shown = FINGERPRINT.fullmatch(fingerprint(secret))["prefix"]  # type: ignore[index]
    assert len(shown) <= len(secret) / 4


def test_secret_key_stable_and_not_the_fingerprint_hash() -> None:
    token = fake()
    assert secret_key(token) == secret_key(token)
    assert re.fullmatch(r"[0-9a-f]{24}", secret_key(token))
    assert secret_key(token) != secret_key(fake())
    assert token not in secret_key(token)


# ---------------------------------------------------------------- Secret


def test_secret_shows_only_fingerprint() -> None:
    token = fake()
    s = Secret(token)
    shown = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>80}", "{}".format(s)]  # noqa: UP032
    shown += ["%s" % s, "%r" % (s,)]  # noqa: UP031
    for text in shown:
        assert token not in text
        assert text == f"<secret {s.fingerprint}>"
    assert token not in repr([s, {"k": s}])
    assert s.reveal() == token


def test_secret_equality_and_hash() -> None:
    token = fake()
    assert Secret(token) == Secret(token)
    assert Secret(token) != Secret(fake())
    assert hash(Secret(token)) == hash(Secret(token))
    assert Secret(token).key == secret_key(token)
    assert Secret(token).__eq__(token) is NotImplemented


def test_secret_refuses_pickle() -> None:
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(Secret(fake()))


def test_secret_has_no_dict() -> None:
    # __slots__ keeps vars()/__dict__ dumps from finding the value.
    with pytest.raises(TypeError):
        vars(Secret(fake()))


# ---------------------------------------------------------------- auth_headers


def test_auth_headers_anthropic_setup_token() -> None:
    token = fake()
    assert auth_headers(profile("anthropic", "setup-token", token)) == {
        "Authorization": f"Bearer {token}",
        "anthropic-beta": "oauth-2025-04-20",
    }


def test_auth_headers_anthropic_oauth() -> None:
    token = fake("sk-ant-oat01-")
    assert auth_headers(profile("anthropic", "oauth", token)) == {
        "Authorization": f"Bearer {token}",
        "anthropic-beta": "oauth-2025-04-20",
    }


def test_auth_headers_anthropic_api_key() -> None:
    token = fake("sk-ant-api03-")
    assert auth_headers(profile("anthropic", "api-key", token)) == {"x-api-key": token}
    assert auth_headers(profile("anthropic", "api-key", token, source="env")) == {
        "x-api-key": token
    }


@pytest.mark.parametrize("provider", ["openai", "openrouter", "minimax", "zai", "my-proxy"])
@pytest.mark.parametrize("type_", ["api-key", "setup-token", "oauth"])
def test_auth_headers_openai_style_bearer(provider: str, type_: str) -> None:
    token = fake("sk-")
    assert auth_headers(profile(provider, type_, token)) == {"Authorization": f"Bearer {token}"}


def test_auth_headers_google() -> None:
    key = fake("AIza")
    assert auth_headers(profile("google", "api-key", key)) == {"x-goog-api-key": key}
    access = fake("ya29.")
    assert auth_headers(profile("google", "oauth", access)) == {"Authorization": f"Bearer {access}"}


# ---------------------------------------------------------------- Profile and names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("anthropic", "anthropic"),
        (" Anthropic ", "anthropic"),
        ("z.ai", "zai"),
        ("Z-AI", "zai"),
        ("z_ai", "zai"),
        ("gemini", "google"),
        ("openrouter", "openrouter"),
    ],
)
def test_normalise_provider(name: str, expected: str) -> None:
    assert normalise_provider(name) == expected


def test_profile_rank_tiers() -> None:
    assert profile("anthropic", "setup-token", fake()).rank == 0
    assert profile("openai", "oauth", fake()).rank == 0
    assert profile("anthropic", "api-key", fake()).rank == 1
    assert profile("anthropic", "setup-token", fake(), source="env").rank == ENV_RANK == 2


def test_profile_serves() -> None:
    p = profile("anthropic", "api-key", fake())
    assert p.serves(None) and p.serves("anything")
    restricted = Profile(
        id="anthropic:r",
        provider="anthropic",
        type="api-key",
        secret=Secret(fake()),
        models=frozenset({"claude-sonnet-4-5"}),
    )
    assert restricted.serves("claude-sonnet-4-5")
    assert restricted.serves(None)
    assert not restricted.serves("claude-opus-4-1")


def test_profile_repr_hides_secret() -> None:
    token = fake()
    p = profile("anthropic", "setup-token", token)
    assert token not in repr(p)
    assert token not in str(p)
