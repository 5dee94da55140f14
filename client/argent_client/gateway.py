"""What the daemon's gateway and argentctl share: the local token file, exec's variables.

The gateway's *local token* is a random secret in
`user_runtime_dir("argentos")/gateway.token` (0600). The daemon makes it at
its first start and keeps it; `argentctl gateway rotate` replaces it (the
daemon notices the new file on the next request). A tool sends it where it
would send its API key; it opens the gateway and nothing else, so it is
not a provider credential.

`gateway_env` builds the environment of `argentctl exec --gateway`: the
provider's base-URL variable at the gateway, its API-key variable holding
the local token, and every other credential variable of that provider
removed. Stdlib only at import: the daemon imports this module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Final

TOKEN_FILE: Final = "gateway.token"
TOKEN_PREFIX: Final = "argent-gw-"
MAX_TOKEN_FILE: Final = 4096


class TokenFileError(Exception):
    """The token file cannot be read or written; the message names the file and the fix."""


def token_path() -> Path:
    """`user_runtime_dir("argentos")/gateway.token`."""
    import platformdirs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR unset: the fallback is still right
        return Path(platformdirs.user_runtime_dir("argentos")) / TOKEN_FILE


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def read_token(path: Path) -> str:
    """The token in `path`. Raises `FileNotFoundError`, or `TokenFileError` for a bad file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"{path}: not a regular file; remove it and restart argentd")
        if st.st_uid != os.getuid():
            raise TokenFileError(f"{path}: owned by uid {st.st_uid}, not you; remove it")
        if st.st_mode & 0o077:
            raise TokenFileError(f"{path}: readable by others; run `chmod 600 {path}`")
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    token = data.decode("ascii", errors="replace").strip()
    if len(data) > MAX_TOKEN_FILE or len(token) < 16 or not token.isprintable() or " " in token:
        raise TokenFileError(f"{path}: does not hold a token; run `argentctl gateway rotate`")
    return token


def write_token(path: Path, token: str) -> None:
    """Write `token` to `path` atomically with mode 0600 (its folder made 0700 if missing)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_token(path: Path) -> str:
    """The token in `path`, made first if there is none. Raises `TokenFileError`."""
    try:
        return read_token(path)
    except FileNotFoundError:
        pass
    try:
        write_token(path, new_token())
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot write: {exc.strerror}") from None
    return read_token(path)


def rotate_token(path: Path) -> str:
    """Replace the token in `path` with a new one and return it. Raises `TokenFileError`."""
    token = new_token()
    try:
        write_token(path, token)
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot write: {exc.strerror}") from None
    return token


# ------------------------------------------------------------ exec --gateway

BASE_URL_VARS: Final[dict[str, tuple[str, str]]] = {
    "anthropic": ("ANTHROPIC_BASE_URL", "/anthropic"),
    "openai": ("OPENAI_BASE_URL", "/openai/v1"),
    "openrouter": ("OPENAI_BASE_URL", "/openrouter/api/v1"),
    "zai": ("ANTHROPIC_BASE_URL", "/zai/api/anthropic"),
    "minimax": ("ANTHROPIC_BASE_URL", "/minimax/anthropic"),
}
"""Provider -> (the base-URL variable its tools read, the gateway path standing in for it)."""

_API_KEY_VAR: Final = {"ANTHROPIC_BASE_URL": "ANTHROPIC_API_KEY",
                       "OPENAI_BASE_URL": "OPENAI_API_KEY"}

_CREDENTIAL_VARS: Final[dict[str, tuple[str, ...]]] = {
    "ANTHROPIC_BASE_URL": ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN",
                           "ANTHROPIC_OAUTH_TOKEN"),
    "OPENAI_BASE_URL": ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID"),
}
"""Variables that would make the tool send another credential than the local token."""


def gateway_env(
    base: Mapping[str, str],
    url: str,
    token: str,
    *,
    provider: str | None = None,
    route: str | None = None,
    drop_providers: set[str] | frozenset[str] = frozenset(),
) -> dict[str, str]:
    """`base` with a tool pointed at the gateway at `url` (`http://HOST:PORT`).

    For a provider, its base-URL variable gets the provider URL; for a route,
    both `ANTHROPIC_BASE_URL` and `OPENAI_BASE_URL` get the route URL (it
    speaks both dialects). The matching API-key variables hold `token`; the
    credential variables of the provider (or of `drop_providers`, the
    route's) are removed. Raises `ValueError` for a provider without a known
    base-URL variable.
    """
    url = url.rstrip("/")
    values: dict[str, str] = {}
    if route is not None:
        values["ANTHROPIC_BASE_URL"] = f"{url}/route/{route}"
        values["OPENAI_BASE_URL"] = f"{url}/route/{route}/v1"
        providers = set(drop_providers)
    else:
        if provider is None or provider not in BASE_URL_VARS:
            known = ", ".join(BASE_URL_VARS)
            raise ValueError(f"no base-URL variable known for provider {provider!r} "
                             f"(known: {known}); use --route or set it by hand")
        var, path = BASE_URL_VARS[provider]
        values[var] = url + path
        providers = {provider, *drop_providers}
    from .providers import conflicting_vars, env_vars

    unset: set[str] = set()
    for var in list(values):
        unset |= set(_CREDENTIAL_VARS.get(var, ()))
        values[_API_KEY_VAR[var]] = token
    for prov in providers:
        unset |= set(env_vars(prov, "api-key")) | set(conflicting_vars(prov, "api-key"))
    env = {k: v for k, v in base.items() if k not in unset}
    env.update(values)
    env["ARGENT_GATEWAY"] = url
    return env
