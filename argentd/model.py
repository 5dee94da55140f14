"""The in-memory shape of auth profiles, and the one place a secret is held.

A `Secret` never shows its value in `repr`, `str` or an f-string; code that
needs the value calls `reveal()`, which only the lease reply does. Everything
else (logs, status, state, errors) uses `fingerprint` or `key`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from argent_client.facts import (
    PROVIDER_ALIASES,
    PROVIDERS,
    TYPE_ALIASES,
    fingerprint,
    normalise_provider,
)
from argent_client.facts import (
    auth_headers as provider_headers,
)
from argent_client.protocol import ProfileType, Source

if TYPE_CHECKING:
    from .oauth_profile import OAuthLogin

__all__ = [
    "PROVIDERS",
    "PROVIDER_ALIASES",
    "TYPE_ALIASES",
    "Profile",
    "ProfileSet",
    "Secret",
    "auth_headers",
    "fingerprint",
    "normalise_provider",
    "secret_key",
]

TYPE_RANK: Final[dict[ProfileType, int]] = {"setup-token": 0, "oauth": 0, "api-key": 1}
"""Tier inside a priority: subscription tokens before per-token API keys."""
ENV_RANK: Final = 2
"""Environment fallback profiles come after every file profile."""

def secret_key(secret: str) -> str:
    """A stable id of a secret for state files: a truncated SHA-256.

    Same secret, same key, so two profiles that hold one secret share its
    cooldown, and a changed secret starts clean.
    """
    return hashlib.sha256(b"argentd-state\0" + secret.encode()).hexdigest()[:24]


class Secret:
    """A credential value that refuses to print itself."""

    __slots__ = ("_value", "fingerprint", "key")

    def __init__(self, value: str, key: str | None = None) -> None:
        """`key` overrides the books key: an OAuth login keeps one across refreshes."""
        self._value = value
        self.fingerprint = fingerprint(value)
        self.key = secret_key(value) if key is None else key

    def reveal(self) -> str:
        """The secret itself: only for the lease reply and the child of `exec`."""
        return self._value

    def __repr__(self) -> str:
        return f"<secret {self.fingerprint}>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.key == other.key and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self.key)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not picklable")


@dataclass(frozen=True, slots=True)
class Profile:
    """One credential as loaded from the profiles file or the environment."""

    id: str
    provider: str
    type: ProfileType
    secret: Secret
    label: str = ""
    priority: int = 0
    max_concurrent: int | None = None
    disabled: bool = False
    models: frozenset[str] | None = None
    expires: float | None = None
    """Unix seconds after which the secret is no longer valid."""
    source: Source = "profile"
    oauth: OAuthLogin | None = None
    """An `oauth` profile's refresh token, account and source file (oauth_profile.py)."""

    @property
    def rank(self) -> int:
        """The type tier: 0 subscription, 1 API key, 2 environment fallback."""
        return ENV_RANK if self.source == "env" else TYPE_RANK[self.type]

    def serves(self, model: str | None) -> bool:
        """Whether this profile may serve `model` (any model when unrestricted)."""
        return model is None or self.models is None or model in self.models


@dataclass(slots=True)
class ProfileSet:
    """What one load of the profiles file (plus the environment) produced."""

    profiles: list[Profile] = field(default_factory=list)
    order: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """One message per skipped profile (file faults raise instead)."""


def auth_headers(profile: Profile) -> dict[str, str]:
    """The HTTP headers `profile`'s provider expects for its secret."""
    headers = provider_headers(profile.provider, profile.type, profile.secret.reveal())
    login = profile.oauth
    if login is not None and login.account_id and profile.provider == "openai-codex":
        headers["chatgpt-account-id"] = login.account_id
    return headers
