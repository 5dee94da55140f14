"""The login files of Claude Code, Codex and Gemini CLI: read one, write one back.

Pure functions over bytes, shared by `argentctl profiles import` (which reads
a tool's login into the profiles file) and the daemon (which keeps that file
in step after each refresh). No message here ever holds a token: errors name
the file's format and the JSON path that is wrong.

The shapes, as the tools write them:

- `claude-code` — `~/.claude/.credentials.json`:
  `{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt" (Unix ms), "scopes", …}}`
- `codex` — `~/.codex/auth.json`:
  `{"OPENAI_API_KEY", "tokens": {"id_token", "access_token", "refresh_token", "account_id"},
  "last_refresh"}`; the access token is a JWT whose `exp` is its expiry.
- `gemini` — `~/.gemini/oauth_creds.json`:
  `{"access_token", "refresh_token", "expiry_date" (Unix ms), "id_token", "scope", …}`
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

SourceFormat = Literal["claude-code", "codex", "gemini"]
FORMATS: Final[tuple[str, ...]] = get_args(SourceFormat)

PROVIDER_OF: Final[dict[str, str]] = {
    "claude-code": "anthropic",
    "codex": "openai-codex",
    "gemini": "google",
}
"""The argentd provider of each tool's login."""

DEFAULT_PATHS: Final[dict[str, str]] = {
    "claude-code": "~/.claude/.credentials.json",
    "codex": "~/.codex/auth.json",
    "gemini": "~/.gemini/oauth_creds.json",
}

TOOL_NAMES: Final[dict[str, str]] = {
    "claude-code": "Claude Code (`claude`, then /login)",
    "codex": "Codex (`codex login`)",
    "gemini": "Gemini CLI (`gemini`, then /auth)",
}
"""How to log in again with each tool (for error messages)."""

MAX_SOURCE_BYTES: Final = 1024 * 1024
_MS_THRESHOLD: Final = 1e11


class SourceError(Exception):
    """A login file that cannot be read as its format; the message has no token."""


@dataclass(frozen=True, slots=True)
class SourceLogin:
    """One OAuth login as a tool's file holds it. `expires` is Unix seconds."""

    access: str
    refresh: str | None = None
    expires: float | None = None
    account_id: str | None = None
    id_token: str | None = None

    def __repr__(self) -> str:
        return f"SourceLogin(expires={self.expires!r}, account_id={self.account_id!r})"


def default_path(fmt: str) -> Path:
    return Path(DEFAULT_PATHS[fmt]).expanduser()


def fix_for(fmt: str) -> str:
    """What to do when the login of `fmt` is revoked."""
    return (f"log in again with {TOOL_NAMES.get(fmt, fmt)}, then run "
            f"`argentctl profiles import {fmt}`")


# ------------------------------------------------------------ JWTs


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The (unverified) payload of a JWT, or None when `token` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT access token (Unix seconds), or None."""
    claims = jwt_claims(token)
    exp = claims.get("exp") if claims else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def codex_account_id(token: str) -> str | None:
    """The ChatGPT account id a Codex access or id token names, or None."""
    claims = jwt_claims(token) or {}
    auth = claims.get("https://api.openai.com/auth")
    value = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
    return value if isinstance(value, str) and value else None


# ------------------------------------------------------------ reading


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return value / 1000 if value > _MS_THRESHOLD else float(value)


def _text(obj: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise SourceError(f"{where}.{key} is missing")
        return None
    if not isinstance(value, str):
        raise SourceError(f"{where}.{key} must be a string")
    return value


def _object(data: bytes, fmt: str) -> dict[str, Any]:
    if len(data) > MAX_SOURCE_BYTES:
        raise SourceError(f"larger than {MAX_SOURCE_BYTES} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" at line {line} column {getattr(exc, 'colno', '?')}" if line else ""
        raise SourceError(f"not valid JSON{where} (a {fmt} login file)") from None
    if not isinstance(obj, dict):
        raise SourceError("the top level must be a JSON object (at $)")
    return obj


def _section(obj: dict[str, Any], key: str) -> dict[str, Any]:
    section = obj.get(key)
    if not isinstance(section, dict):
        raise SourceError(f"no login in it: $.{key} is missing or not an object")
    return section


def parse_source(fmt: str, data: bytes) -> SourceLogin:
    """The login in the bytes of a `fmt` file. Raises `SourceError` (no token in it)."""
    obj = _object(data, fmt)
    if fmt == "claude-code":
        o = _section(obj, "claudeAiOauth")
        access = _text(o, "accessToken", "$.claudeAiOauth", required=True)
        assert access is not None
        return SourceLogin(access, _text(o, "refreshToken", "$.claudeAiOauth"),
                           _seconds(o.get("expiresAt")))
    if fmt == "codex":
        o = _section(obj, "tokens")
        access = _text(o, "access_token", "$.tokens", required=True)
        assert access is not None
        id_token = _text(o, "id_token", "$.tokens")
        account = _text(o, "account_id", "$.tokens") or codex_account_id(access) or (
            codex_account_id(id_token) if id_token else None)
        return SourceLogin(access, _text(o, "refresh_token", "$.tokens"), jwt_expiry(access),
                           account, id_token)
    if fmt == "gemini":
        access = _text(obj, "access_token", "$", required=True)
        assert access is not None
        return SourceLogin(access, _text(obj, "refresh_token", "$"),
                           _seconds(obj.get("expiry_date")), None, _text(obj, "id_token", "$"))
    raise SourceError(f"unknown login format {fmt!r} (known: {', '.join(FORMATS)})")


# ------------------------------------------------------------ writing


def update_source(fmt: str, data: bytes, login: SourceLogin, *, now: float) -> bytes:
    """The bytes of the `fmt` file `data` holding `login` instead, every other field kept.

    Raises `SourceError` when `data` is not a `fmt` file.
    """
    obj = _object(data, fmt)
    ms = None if login.expires is None else int(login.expires * 1000)
    if fmt == "claude-code":
        o = _section(obj, "claudeAiOauth")
        o["accessToken"] = login.access
        if login.refresh:
            o["refreshToken"] = login.refresh
        if ms is not None:
            o["expiresAt"] = ms
    elif fmt == "codex":
        o = _section(obj, "tokens")
        o["access_token"] = login.access
        if login.refresh:
            o["refresh_token"] = login.refresh
        if login.id_token:
            o["id_token"] = login.id_token
        stamp = dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")
        obj["last_refresh"] = stamp
    elif fmt == "gemini":
        obj["access_token"] = login.access
        if login.refresh:
            obj["refresh_token"] = login.refresh
        if login.id_token:
            obj["id_token"] = login.id_token
        if ms is not None:
            obj["expiry_date"] = ms
    else:
        raise SourceError(f"unknown login format {fmt!r}")
    return (json.dumps(obj, indent=2) + "\n").encode()
