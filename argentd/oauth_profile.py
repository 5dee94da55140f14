"""An `oauth` profile's login: its refresh token, account and source file.

`profile_entry.py` calls `oauth_login` for each `type: "oauth"` entry of either
file shape; the fields are

    access      the access token (the flat map also takes `token`)
    refresh     the refresh token (without it the profile lives until `expires`)
    expires     Unix ms (a value below 10^11 is seconds), parsed by profile_entry.py
    account_id  Codex's ChatGPT account (`accountId` too); read from the JWT if absent
    source      {"format": "claude-code"|"codex"|"gemini", "path": "~/…"}: the
                tool's own login file, kept in step both ways

The books (cooldowns, counts) of a login must survive its refreshes, so its
`Secret.key` is not the access token's hash but `login_key(origin)`, where
`origin` is the hash of the refresh token the chain started from (the one
the profiles file holds, or the one credentials.json says the chain began
with). A new login in the file is a new origin: it starts clean.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from argent_client.oauth_sources import FORMATS, codex_account_id

from .model import Secret

MAX_TOKEN: Final = 64 * 1024
_TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")


def refresh_hash(token: str) -> str:
    """A stable id of a refresh token for credentials.json (a truncated SHA-256)."""
    return hashlib.sha256(b"argentd-refresh\0" + token.encode()).hexdigest()[:24]


def login_key(origin: str) -> str:
    """The books key (`Secret.key`) of every access token of the chain `origin`."""
    return hashlib.sha256(b"argentd-state\0oauth\0" + origin.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class OAuthSource:
    format: str
    path: Path
    """Expanded; `shown` is how the profiles file wrote it."""
    shown: str


@dataclass(frozen=True, slots=True)
class OAuthLogin:
    """What an oauth profile carries besides its access token (`Profile.secret`)."""

    refresh: Secret | None
    origin: str | None
    """`refresh_hash` of the refresh token the chain started from (None: no refresh)."""
    account_id: str | None = None
    id_token: Secret | None = None
    source: OAuthSource | None = None
    refreshed_at: float | None = None
    error: str | None = None
    """The last refresh fault (for status), None once a refresh works."""


class OAuthFieldError(Exception):
    """A bad oauth field: `text` and the JSON path below the profile (`.refresh`)."""

    def __init__(self, text: str, at: str) -> None:
        super().__init__(text)
        self.text = text
        self.at = at


class _Source(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    path: str | None = None


class _Fields(msgspec.Struct):
    access: str | None = None
    token: str | None = None
    refresh: str | None = None
    account_id: str | None = None
    accountId: str | None = None  # the versioned store's spelling
    source: _Source | None = None


_FIELDS: Final = msgspec.json.Decoder(_Fields)


def _checked(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise OAuthFieldError(f"{field} is empty", f".{field}")
    if len(value) > MAX_TOKEN or not _TOKEN_RE.fullmatch(value):
        raise OAuthFieldError(
            f"{field} holds whitespace or characters a token cannot have", f".{field}")
    return value


def has_literal_access(raw: msgspec.Raw, is_store: bool) -> bool:
    """Whether an oauth entry gives its access token as a literal (not `token_ref`)."""
    f = _FIELDS.decode(raw)
    return f.access is not None or (not is_store and f.token is not None)


def oauth_login(raw: msgspec.Raw, is_store: bool) -> tuple[Secret, OAuthLogin]:
    """The access token (keyed for its chain) and the login of one oauth entry.

    Raises `OAuthFieldError` or `msgspec.ValidationError`; neither holds a value.
    """
    f = _FIELDS.decode(raw)
    if f.access is not None and f.token is not None:
        raise OAuthFieldError("give access or token, not both", ".token")
    literal = f.access if f.access is not None or is_store else f.token
    if literal is None:
        raise OAuthFieldError("access is required", ".access")
    access = _checked(literal, "access")
    refresh = _checked(f.refresh, "refresh") if f.refresh is not None else None
    account = f.account_id or f.accountId or codex_account_id(access)
    source = None
    if f.source is not None:
        if f.source.format not in FORMATS:
            raise OAuthFieldError(f"source.format must be one of {', '.join(FORMATS)}",
                                  ".source.format")
        if not f.source.path or not f.source.path.strip():
            raise OAuthFieldError("source.path is required", ".source.path")
        shown = f.source.path.strip()
        source = OAuthSource(f.source.format, Path(shown).expanduser(), shown)
    origin = refresh_hash(refresh) if refresh else None
    secret = Secret(access, key=login_key(origin) if origin else None)
    login = OAuthLogin(
        refresh=Secret(refresh) if refresh else None,
        origin=origin,
        account_id=account.strip() if account else None,
        source=source,
    )
    return secret, login
