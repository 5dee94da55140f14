"""What the client side knows about each provider, in one place.

Which environment variables a provider's tools read (for `argentctl exec`
and `lease --env`), which ones the environment fallback takes a secret from,
what a provider's secrets look like (the setup wizard's shape check) and how
a secret is fingerprinted for display. The daemon may import these tables;
the client never imports the daemon.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from .protocol import ProfileType

PROVIDERS: Final = ("anthropic", "openai", "openrouter", "minimax", "zai", "google")
"""Providers with known headers, env vars and token shapes (others are allowed)."""

PROVIDER_ALIASES: Final = {"z.ai": "zai", "z-ai": "zai", "z_ai": "zai", "gemini": "google"}

TYPE_ALIASES: Final[dict[str, ProfileType]] = {
    "setup-token": "setup-token",
    "setup_token": "setup-token",
    "token": "setup-token",
    "api-key": "api-key",
    "api_key": "api-key",
    "oauth": "oauth",
}
"""Every spelling of a profile type in either file shape -> the canonical type."""

_PROVIDER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def normalise_provider(name: str) -> str:
    """Lower-case `name` and map aliases (`z.ai`, `z-ai` -> `zai`)."""
    low = name.strip().lower()
    return PROVIDER_ALIASES.get(low, low)


def valid_provider(name: str) -> bool:
    """Whether `name` (already normalised) is a usable provider name."""
    return bool(_PROVIDER_NAME.fullmatch(name))


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

FALLBACK_ENV: Final[dict[str, tuple[tuple[str, ProfileType], ...]]] = {
    "anthropic": (("ANTHROPIC_OAUTH_TOKEN", "setup-token"), ("ANTHROPIC_API_KEY", "api-key")),
    "openai": (("OPENAI_API_KEY", "api-key"),),
    "openrouter": (("OPENROUTER_API_KEY", "api-key"),),
    "minimax": (("MINIMAX_API_KEY", "api-key"),),
    "zai": (("ZAI_API_KEY", "api-key"), ("Z_AI_API_KEY", "api-key")),
    "google": (("GEMINI_API_KEY", "api-key"),),
}
"""Provider -> the (variable, type) pairs the environment fallback reads, in order."""


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


# ------------------------------------------------------------ headers


def auth_headers(provider: str, type: ProfileType, token: str) -> dict[str, str]:
    """The HTTP headers `provider` expects for a secret of `type`.

    Anthropic: a setup token or OAuth access token goes as a bearer with the
    OAuth beta header; an API key as `x-api-key` alone. Google API keys go as
    `x-goog-api-key`; everyone else takes `Authorization: Bearer`.
    """
    if provider == "anthropic":
        if type == "api-key":
            return {"x-api-key": token}
        return {"Authorization": f"Bearer {token}", "anthropic-beta": "oauth-2025-04-20"}
    if provider == "google" and type == "api-key":
        return {"x-goog-api-key": token}
    return {"Authorization": f"Bearer {token}"}


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
_TOKEN_CHARS: Final = re.compile(r"[\x21-\x7e]+")
"""What the daemon accepts: printable ASCII without spaces (it goes into HTTP headers)."""


def shape_problem(provider: str, type: ProfileType, secret: str) -> str | None:
    """Why `secret` does not look like a `provider` `type` secret, or None if it does.

    The message never contains the secret, at most its expected prefix.
    """
    if not secret:
        return "the secret is empty"
    if any(ch.isspace() for ch in secret):
        return "the secret contains whitespace (a copy-paste accident?)"
    if not _TOKEN_CHARS.fullmatch(secret):
        return "the secret has characters a token cannot have (only printable ASCII)"
    if len(secret) < MIN_SECRET_LEN:
        return f"the secret is only {len(secret)} characters long"
    provider = normalise_provider(provider)
    expected = TOKEN_SHAPES.get((provider, type))
    if expected and not secret.startswith(expected):
        other = [
            t for (p, t), prefixes in TOKEN_SHAPES.items()
            if p == provider and t != type and secret.startswith(prefixes)
        ]
        hint = f"; it looks like a {other[0]}" if other else ""
        shown = " or ".join(f"{p!r}" for p in expected)
        return f"{provider} {type} secrets start with {shown}{hint}"
    return None


# ------------------------------------------------------------ fingerprints

# Known secret shapes: the fingerprint shows this prefix, never more.
KNOWN_PREFIXES: Final = (
    "sk-ant-oat01-",
    "sk-ant-api03-",
    "sk-ant-ort01-",
    "sk-or-v1-",
    "sk-proj-",
    "sk-cp-",
    "sk-",
    "AIza",
)


def fingerprint(secret: str) -> str:
    """A display fingerprint: a short known prefix plus a hash suffix.

    The prefix is at most the token shape (`sk-ant-oat01-`) and never more
    than a quarter of the secret, so it cannot help rebuild it. Must agree
    with the daemon's `argentd.model.fingerprint` (a test checks it).
    """
    digest = hashlib.sha256(secret.encode()).hexdigest()[:6]
    prefix = ""
    for known in KNOWN_PREFIXES:
        if secret.startswith(known) and len(known) * 4 <= len(secret):
            prefix = known
            break
    return f"{prefix}…{digest}"
