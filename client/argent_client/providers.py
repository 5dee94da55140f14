"""What the client side knows about each provider, in one place.

Which environment variables a provider's tools read (for `argentctl exec`
and `lease --env`), which ones the environment fallback takes a secret from,
what a provider's secrets look like (the setup wizard's shape check) and how
a secret is fingerprinted for display. The facts the daemon shares (names,
aliases, the fallback's variables, fingerprints, headers) are defined in
`facts` and re-exported here; the daemon imports `facts`, never this module.
"""

from __future__ import annotations

import re
from typing import Final

from .facts import (
    FALLBACK_ENV,
    KNOWN_PREFIXES,
    PROVIDER_ALIASES,
    PROVIDERS,
    TYPE_ALIASES,
    auth_headers,
    fingerprint,
    normalise_provider,
    token_problem,
    valid_provider,
)
from .protocol import ProfileType

__all__ = [
    "FALLBACK_ENV",
    "KNOWN_PREFIXES",
    "PROVIDERS",
    "PROVIDER_ALIASES",
    "TOKEN_SHAPES",
    "TYPE_ALIASES",
    "a_or_an",
    "auth_headers",
    "conflicting_vars",
    "env_vars",
    "fingerprint",
    "normalise_provider",
    "shape_problem",
    "valid_provider",
]


# ------------------------------------------------------------ env vars

# What a provider's own tools read. Subscription tokens (setup-token, oauth)
# and API keys go to different variables for Anthropic: Claude Code reads a
# subscription token from CLAUDE_CODE_OAUTH_TOKEN (and sends it with the
# OAuth beta header). ANTHROPIC_AUTH_TOKEN is never set: Claude Code 2.1 and
# the anthropic SDK prefer it and send it as a bare bearer, without that
# header, which the API refuses for a subscription token (401).
_KEY_VARS: Final[dict[str, tuple[str, ...]]] = {
    "anthropic": ("ANTHROPIC_API_KEY",),
    "openai": ("OPENAI_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "minimax": ("MINIMAX_API_KEY",),
    "zai": ("ZAI_API_KEY",),
    "google": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
_TOKEN_VARS: Final[dict[str, tuple[str, ...]]] = {
    "anthropic": ("CLAUDE_CODE_OAUTH_TOKEN",),
}
_ALSO_READ: Final[dict[str, tuple[str, ...]]] = {
    "anthropic": ("ANTHROPIC_AUTH_TOKEN",),
}
"""Credential variables a provider's tools read that a child never gets (removed)."""

def _generic_var(provider: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", provider.upper()) + "_API_KEY"


def env_vars(provider: str, type: ProfileType) -> tuple[str, ...]:
    """The variables a secret of `provider` and `type` goes into for a child process.

    Unknown providers get `<PROVIDER>_API_KEY`.
    """
    provider = normalise_provider(provider)
    if type != "api-key" and provider in _TOKEN_VARS:
        return _TOKEN_VARS[provider]
    return _KEY_VARS.get(provider, (_generic_var(provider),))


def conflicting_vars(provider: str, type: ProfileType) -> tuple[str, ...]:
    """Variables of the same provider that must be unset next to `env_vars`.

    A child that inherits `ANTHROPIC_API_KEY` while it is given a setup token
    would use the inherited key (tools prefer it), so the other kind's
    variables are removed.
    """
    provider = normalise_provider(provider)
    given = set(env_vars(provider, type))
    every = (*_KEY_VARS.get(provider, ()), *_TOKEN_VARS.get(provider, ()),
             *_ALSO_READ.get(provider, ()))
    every += tuple(var for var, _ in FALLBACK_ENV.get(provider, ()))
    return tuple(dict.fromkeys(v for v in every if v not in given))


# ------------------------------------------------------------ token shapes

TOKEN_SHAPES: Final[dict[tuple[str, ProfileType], tuple[str, ...]]] = {
    ("anthropic", "setup-token"): ("sk-ant-oat01-",),
    ("anthropic", "api-key"): ("sk-ant-api03-",),
    ("openrouter", "api-key"): ("sk-or-",),
    ("openai", "api-key"): ("sk-",),
    ("google", "api-key"): ("AIza",),
}
"""(provider, type) -> the prefixes a well-formed secret starts with.

A pair that is missing here (MiniMax keys come as `sk-cp-…` and in other
forms, Z.AI keys have no prefix) has no known shape: any plausible secret passes.
"""

MIN_SECRET_LEN: Final = 16


def a_or_an(word: str) -> str:
    """The indefinite article for `word`: `an api-key`, `a setup-token`."""
    return "an" if word[:1].lower() in "aeio" else "a"


def shape_problem(provider: str, type: ProfileType, secret: str) -> str | None:
    """Why `secret` does not look like a `provider` `type` secret, or None if it does.

    The message never contains the secret, at most its expected prefix.
    """
    problem = token_problem(secret)
    if problem:
        return problem
    if len(secret) < MIN_SECRET_LEN:
        return f"the secret is only {len(secret)} characters long"
    provider = normalise_provider(provider)
    expected = TOKEN_SHAPES.get((provider, type))
    if expected and not secret.startswith(expected):
        other = [
            t for (p, t), prefixes in TOKEN_SHAPES.items()
            if p == provider and t != type and secret.startswith(prefixes)
        ]
        hint = f"; it looks like {a_or_an(other[0])} {other[0]}" if other else ""
        shown = " or ".join(f"{p!r}" for p in expected)
        return f"{provider} {type} secrets start with {shown}{hint}"
    return None
