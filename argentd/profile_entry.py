"""One entry of the profiles file: its fields, and the checks that make it a `Profile`.

`profiles.py` reads the file and cuts it into entries (either shape: the
flat map or the versioned store); `EntryReader.profile` decodes one entry
on its own, so a fault in it skips that profile only, reported with the
field's JSON path (`_Fault.at`). No message built here ever holds a field's
value: a secret may sit in any field of a broken entry.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Final

import msgspec

from argent_client.facts import (
    RESERVED_NAMES,
    SECRET_FIELD,
    TYPE_ALIASES,
    did_you_mean,
    id_is_shown,
    normalise_provider,
    valid_provider,
)

from .model import Profile, Secret
from .oauth_profile import OAuthFieldError, has_literal_access, oauth_login
from .refs import ProfileFault as _Fault
from .refs import Resolver, checked_token

ENV_PRIORITY: Final = 1 << 30
"""Priority of environment fallback profiles; file priorities must stay below it."""

_MS_THRESHOLD: Final = 1e11
"""A numeric `expires` above this is milliseconds (1e11 s is the year 5138)."""


class _FlatProfile(msgspec.Struct):
    """One profile of the flat map. Unknown fields are tolerated (and never read)."""

    provider: str | None = None
    type: str | None = None
    token: str | None = None
    token_ref: str | None = None
    label: str | None = None
    priority: int = 0
    max_concurrent: int | None = None
    disabled: bool = False
    models: list[str] | None = None
    expires: float | str | None = None


class _StoreProfile(_FlatProfile):
    """One profile of the versioned store: the secret sits in `key`/`token`/`access`."""

    key: str | None = None
    access: str | None = None

_FLAT_PROFILE: Final = msgspec.json.Decoder(_FlatProfile)
_STORE_PROFILE: Final = msgspec.json.Decoder(_StoreProfile)


class EntryReader:
    """Builds the profile of one entry; `refs` resolves its `token_ref`."""

    def __init__(self, refs: Resolver) -> None:
        self.refs = refs

    def profile(self, pid: str, raw: msgspec.Raw, where: str, is_store: bool) -> Profile:
        """Build the profile `pid`. Raises `_Fault` or `msgspec.ValidationError`."""
        id_provider, sep, name = pid.partition(":")
        if not sep or not id_provider.strip() or not name.strip():
            raise _Fault('the id must be "provider:name"')
        if not id_is_shown(pid):
            # Longer ids may be a secret pasted as the id (the name is the label too).
            raise _Fault('the id must be "provider:name", a name of at most 64 characters')
        if name in RESERVED_NAMES:
            raise _Fault(f'the name "{name}" is reserved for the environment fallback')
        p = (_STORE_PROFILE if is_store else _FLAT_PROFILE).decode(raw)
        if p.provider is None:
            raise _Fault("provider is required", ".provider")
        provider = normalise_provider(p.provider)
        if not valid_provider(provider):
            raise _Fault(
                "provider must be 1-32 letters, digits, '-' or '_' (aliases: z.ai, z-ai, gemini)"
                + did_you_mean(provider),
                ".provider",
            )
        if normalise_provider(id_provider) != provider:
            # The value itself is not shown: it may be a secret pasted in the wrong field.
            shown = json.dumps(normalise_provider(id_provider) + ":")
            raise _Fault(f"provider does not match the id's {shown} part", ".provider")
        if p.type is None:
            raise _Fault("type is required", ".type")
        type_ = TYPE_ALIASES.get(p.type.strip().lower())
        if type_ is None:
            raise _Fault(
                "type must be setup-token, api-key or oauth (aliases: token, setup_token, api_key)",
                ".type",
            )
        if not -ENV_PRIORITY < p.priority < ENV_PRIORITY:
            raise _Fault(
                f"priority must be between {-ENV_PRIORITY + 1} and {ENV_PRIORITY - 1}", ".priority"
            )
        if p.max_concurrent is not None and p.max_concurrent < 1:
            raise _Fault("max_concurrent must be at least 1", ".max_concurrent")
        models: frozenset[str] | None = None
        if p.models is not None:
            if not p.models:
                raise _Fault(
                    "models must not be empty (leave it out to serve any model)", ".models"
                )
            for i, model in enumerate(p.models):
                if not model.strip():
                    raise _Fault(f"models[{i}] is empty", f".models[{i}]")
            models = frozenset(m.strip() for m in p.models)
        expires = _expires(p.expires)
        label = p.label.strip() if p.label and p.label.strip() else name
        if type_ == "oauth" and (p.token_ref is None or has_literal_access(raw, is_store)):
            try:  # access, refresh, account_id, source: see oauth_profile.py
                secret_obj, login = oauth_login(raw, is_store)
            except OAuthFieldError as exc:
                raise _Fault(exc.text, exc.at) from None
            return Profile(id=pid, provider=provider, type=type_, secret=secret_obj,
                           label=label, priority=p.priority, max_concurrent=p.max_concurrent,
                           disabled=p.disabled, models=models, expires=expires,
                           source="profile", oauth=login)
        # The secret comes last: a `cmd:` reference runs only for an otherwise good profile.
        secret = self.secret(p, SECRET_FIELD[type_] if is_store else "token")
        return Profile(
            id=pid,
            provider=provider,
            type=type_,
            secret=Secret(secret),
            label=label,
            priority=p.priority,
            max_concurrent=p.max_concurrent,
            disabled=p.disabled,
            models=models,
            expires=expires,
            source="profile",
        )

    def secret(self, p: _FlatProfile, field: str) -> str:
        """The literal in `field` or the resolved `token_ref`. Raises `_Fault`."""
        literal: str | None = getattr(p, field)
        if literal is not None and p.token_ref is not None:
            raise _Fault(f"give {field} or token_ref, not both", ".token_ref")
        if p.token_ref is not None:
            return self.refs.resolve(p.token_ref)
        if literal is None:
            raise _Fault(f"{field} is required", f".{field}")
        return checked_token(literal.strip(), field, f".{field}")


def _expires(value: float | str | None) -> float | None:
    """Unix seconds of an `expires` value; 0 and null mean none. Raises `_Fault`.

    Numbers above 1e11 are milliseconds (what the versioned store writes),
    smaller ones seconds; a string is ISO-8601, UTC when it has no offset.
    """
    at = ".expires"
    if value is None:
        return None
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Fault(
                "expires must be Unix seconds, Unix milliseconds or an ISO-8601 date", at
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()
    if value != value or value < 0 or value == float("inf"):
        raise _Fault("expires must not be negative", at)
    if value == 0:
        return None
    return value / 1000 if value > _MS_THRESHOLD else float(value)
