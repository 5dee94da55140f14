"""Facts the daemon and the client share, each defined once.

Provider names and aliases, profile types and where each type keeps its
secret in the versioned store, the names kept for the environment fallback
and the variables it reads, what a token may contain, how an id read from a
file may be shown, how a secret is fingerprinted, the headers a provider
expects, the size limits of the profiles file, how a file of secrets is read
(`read_bounded`), and how a JSON syntax error is described. The daemon
imports this module (and `protocol`); it loads nothing but the standard
library, so `import argentd.engine` stays light.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .protocol import ProfileType

# ------------------------------------------------------------ providers

PROVIDERS: Final = ("anthropic", "openai", "openrouter", "minimax", "zai", "google")
"""Providers with known headers, env vars and token shapes (others are allowed)."""

PROVIDER_ALIASES: Final = {"z.ai": "zai", "z-ai": "zai", "z_ai": "zai", "gemini": "google"}

PROVIDER_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""A provider name once normalised: 1-32 lower-case letters, digits, '-' or '_'."""


def normalise_provider(name: str) -> str:
    """Lower-case `name` and map aliases (`z.ai`, `z-ai` -> `zai`)."""
    low = name.strip().lower()
    return PROVIDER_ALIASES.get(low, low)


def valid_provider(name: str) -> bool:
    """Whether `name` (already normalised) is a usable provider name."""
    return bool(PROVIDER_RE.fullmatch(name))


def suggest_provider(name: str) -> str | None:
    """The known provider `name` is probably a typo of (`antrhopic` -> `anthropic`), or None.

    None when `name` is itself known (or an alias of a known one) or close to
    none. Only known names are ever returned, so the result is safe to show.
    """
    import difflib

    low = normalise_provider(name)
    if low in PROVIDERS:
        return None
    close = difflib.get_close_matches(low, [*PROVIDERS, *PROVIDER_ALIASES], n=1, cutoff=0.75)
    return normalise_provider(close[0]) if close else None


def did_you_mean(name: str) -> str:
    """`" (did you mean anthropic?)"` for a likely typo of a known provider, else `""`."""
    known = suggest_provider(name)
    return f" (did you mean {known}?)" if known else ""


# ------------------------------------------------------------ types and secrets

TYPE_ALIASES: Final[dict[str, ProfileType]] = {
    "setup-token": "setup-token",
    "setup_token": "setup-token",
    "token": "setup-token",
    "api-key": "api-key",
    "api_key": "api-key",
    "oauth": "oauth",
}
"""Every spelling of a profile type in either file shape -> the canonical type."""

SECRET_FIELD: Final[dict[ProfileType, str]] = {
    "api-key": "key",
    "setup-token": "token",
    "oauth": "access",
}
"""Type -> the field that holds its secret in the versioned store (the flat map uses `token`)."""

RESERVED_NAMES: Final = frozenset({"env", "env-key"})
"""Profile names kept for the environment fallback (`anthropic:env`, `anthropic:env-key`)."""

TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")
"""What a secret may hold: printable ASCII without spaces (it goes into HTTP headers)."""

MAX_SECRET_BYTES: Final = 64 * 1024
"""The longest secret (literal, `file:` or `cmd:` output) the daemon accepts."""

MAX_FILE_BYTES: Final = 8 * 1024 * 1024
"""The largest profiles file the daemon reads (8 MiB)."""


def token_problem(value: str) -> str | None:
    """Why the daemon would refuse `value` as a secret, or None. Never holds the value."""
    if not value:
        return "the secret is empty"
    if len(value) > MAX_SECRET_BYTES:
        return f"the secret is longer than {MAX_SECRET_BYTES} characters"
    if any(ch.isspace() for ch in value):
        return "the secret contains whitespace (a copy-paste accident?)"
    if not TOKEN_RE.fullmatch(value):
        return "the secret has characters a token cannot have (only printable ASCII)"
    return None


# ------------------------------------------------------------ environment fallback

FALLBACK_ENV: Final[dict[str, tuple[tuple[str, ProfileType], ...]]] = {
    "anthropic": (("ANTHROPIC_OAUTH_TOKEN", "setup-token"), ("ANTHROPIC_API_KEY", "api-key")),
    "openai": (("OPENAI_API_KEY", "api-key"),),
    "openrouter": (("OPENROUTER_API_KEY", "api-key"),),
    "minimax": (("MINIMAX_API_KEY", "api-key"),),
    "zai": (("ZAI_API_KEY", "api-key"), ("Z_AI_API_KEY", "api-key")),
    "google": (("GEMINI_API_KEY", "api-key"),),
}
"""Provider -> the (variable, type) pairs the environment fallback reads, in order.

One profile per (provider, type): of several variables of one type the
first one set wins (`ZAI_API_KEY`, then `Z_AI_API_KEY`).
"""


def fallback_sources() -> Iterator[tuple[str, ProfileType, tuple[str, ...]]]:
    """`FALLBACK_ENV` as (provider, type, variables) in order, one entry per profile."""
    for provider, pairs in FALLBACK_ENV.items():
        types: dict[ProfileType, list[str]] = {}
        for var, type_ in pairs:
            types.setdefault(type_, []).append(var)
        for type_, names in types.items():
            yield provider, type_, tuple(names)


# ------------------------------------------------------------ showing ids

_SHOWN_KEY: Final = re.compile(r"[^\x00-\x1f]{1,24}|[^:\x00-\x1f]{1,32}:[^\x00-\x1f]{1,64}")
"""Keys shown as themselves: short names, or `provider:name` ids. Secrets are longer."""


def id_is_shown(key: str) -> bool:
    """Whether a key read from a file may be printed as itself.

    A key shaped like a profile id (`provider:name`) or a short name is; any
    other may be a secret pasted in the wrong place (a token as the id).
    """
    return bool(_SHOWN_KEY.fullmatch(key))


def shown_id(key: str, index: int) -> str:
    """How the `index`-th (from 0) key of a file shows: itself, or `#N` (from 1)."""
    return key if id_is_shown(key) else f"#{index + 1}"


# ------------------------------------------------------------ fingerprints and headers

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
"""Known secret shapes: a fingerprint shows this prefix, never more."""


def fingerprint(secret: str) -> str:
    """A display fingerprint: a short known prefix plus a hash suffix.

    The prefix is at most the token shape (`sk-ant-oat01-`) and never more
    than a quarter of the secret, so it cannot help rebuild it.
    """
    digest = hashlib.sha256(secret.encode()).hexdigest()[:6]
    prefix = ""
    for known in KNOWN_PREFIXES:
        if secret.startswith(known) and len(known) * 4 <= len(secret):
            prefix = known
            break
    return f"{prefix}…{digest}"


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


# ------------------------------------------------------------ JSON syntax errors

_JSON_HINTS: Final = (
    ("Expecting property name enclosed in double quotes",
     "a key without double quotes (JSON has no single quotes)"),
    ("Expecting ',' delimiter", "a missing comma between two entries, or a missing quote"),
    ("Expecting ':' delimiter", "a missing ':' after a key"),
    ("Unterminated string", "a missing closing quote"),
    ("Invalid control character", "a line break or tab inside a string (a missing quote?)"),
    ("Invalid \\escape", "a backslash in a string: write it as \\\\"),
    ("Expecting value", "a missing value (or single quotes instead of double)"),
    ("Extra data", "text after the closing }: a second object, or an extra }"),
)


def _trailing_comma(text: str, exc: json.JSONDecodeError) -> str | None:
    """The closing bracket a trailing comma stands before, or None."""
    if exc.pos < len(text) and text[exc.pos] in "}]" and text[: exc.pos].rstrip().endswith(","):
        return text[exc.pos]
    return None


def json_syntax_error(text: str) -> str | None:
    """`line L column C: <what>; <the likely fault>` for text that is not JSON, else None.

    Both the daemon and doctor describe a syntax error with it, so they say
    the same. The message holds positions and the parser's words, never the
    text itself (it may hold secrets).
    """
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        msg = re.sub(r": line \d+ column \d+ \(char \d+\)$", "", exc.msg)
        msg = re.sub(r" (starting )?at$", "", msg)
        where = f"line {exc.lineno} column {exc.colno}"
        if not text.strip():
            return f"{where}: the file is empty (an empty set of profiles is {{}})"
        if exc.pos >= len(text.rstrip()) and msg.startswith(("Expecting", "Unterminated")):
            return f"{where}: the text ends early; likely a missing }} or ], or a cut-off file"
        closing = _trailing_comma(text, exc)
        if closing:
            return f"{where}: a trailing comma before {closing} (JSON allows none): remove it"
        if text[exc.pos:exc.pos + 1] == "," and text[:exc.pos].rstrip().endswith(","):
            return f"{where}: a doubled comma (JSON wants one between items): remove one"
        hint = next((h for prefix, h in _JSON_HINTS if msg.startswith(prefix)), None)
        tail = f"; likely {hint}" if hint else ""
        return f"{where}: {msg[:1].lower()}{msg[1:]}{tail}"
    except RecursionError:
        return "line 1 column 1: nested too deeply"
    return None


def utf8_error(data: bytes) -> str | None:
    """`not UTF-8 text at line L column C (byte B): save the file as UTF-8`, or None."""
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return (
            f"not UTF-8 text at line {line} column {column} (byte {exc.start}):"
            " save the file as UTF-8"
        )
    return None


# ------------------------------------------------------------ reading a file


class ReadFault(Exception):
    """Why `read_bounded` could not read a file.

    `stage` is "open" or "read" (with the `OSError` as `error`), "type" (not
    a regular file) or "size" (over the limit); each reader words it its way.
    """

    def __init__(self, stage: str, error: OSError | None = None) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error


def read_bounded(
    path: str | os.PathLike[str], limit: int,
    check: Callable[[os.stat_result], None] | None = None,
) -> bytes | None:
    """A regular file's bytes, at most `limit` of them; None when it does not exist.

    Opened non-blocking, so a FIFO planted at the path cannot hang the reader,
    and refused unless it is a regular file. `check` sees the open
    descriptor's `fstat` (a chmod race cannot slip past it) and may raise.
    Raises `ReadFault`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReadFault("open", exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ReadFault("type")
        if check is not None:
            check(st)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ReadFault("read", exc) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ReadFault("size")
    return data
