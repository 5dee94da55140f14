"""The shape of `state.json`: what the engine persists, keyed by id and secret key.

No field holds a secret: keys are `Secret.key` (a truncated SHA-256).
"""

from __future__ import annotations

from typing import Final

import msgspec

SNAPSHOT_VERSION: Final = 1


class KeySnapshot(msgspec.Struct, omit_defaults=True):
    cooldown_until: float | None = None
    cooldown_kind: str | None = None
    model_cooldowns: dict[str, float] = {}
    streak: dict[str, int] = {}
    error_count: int = 0
    invalid: bool = False
    last_error: str | None = None
    last_used: float | None = None
    requests: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    orphaned_at: float | None = None
    """Since when no loaded profile holds this secret (books.py keeps it a while)."""
    proven: bool = False
    probe_at: float | None = None


class ProfileSnapshot(msgspec.Struct, omit_defaults=True):
    key: str
    user_disabled: bool | None = None


class KeptFlag(msgspec.Struct, omit_defaults=True):
    """A user flag set on `profile` with secret `key`, which it no longer holds."""

    profile: str
    key: str
    user_disabled: bool
    since: float
    """When the profile stopped holding `key` (books.py keeps it ORPHAN_KEEP)."""


class Snapshot(msgspec.Struct, omit_defaults=True):
    version: int = SNAPSHOT_VERSION
    keys: dict[str, KeySnapshot] = {}
    """Secret key -> its state."""
    profiles: dict[str, ProfileSnapshot] = {}
    """Profile id -> the secret key it had and its user flags."""
    kept_flags: list[KeptFlag] = []
    """User flags set with a secret their profile no longer holds (books.py)."""


def decode_snapshot(data: object) -> Snapshot:
    """Convert a loaded JSON object into a Snapshot.

    Raises `msgspec.ValidationError` when it has the wrong shape.
    """
    return msgspec.convert(data, Snapshot)
