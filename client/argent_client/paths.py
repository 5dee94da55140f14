"""Where argentd's files live; one function per path, shared by daemon and client.

Precedence, the same for the daemon and every client: a command-line flag,
then the environment (`ARGENT_SOCKET`, `ARGENT_PROFILES`, `ARGENT_CONFIG`),
then `socket` / `profiles` in `argentd.toml`, then the platform default.
"""

from __future__ import annotations

import os
import tomllib
import warnings
from pathlib import Path

import platformdirs

APP = "argentos"


def runtime_socket_path() -> Path:
    """The platform default: `user_runtime_dir("argentos")/argentd.sock`."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (cron, some ssh
        # sessions); its fallback path is still the right answer.
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_runtime_dir(APP)) / "argentd.sock"


def home_profiles_path() -> Path:
    """The platform default: `~/.argentos/agents/main/agent/auth-profiles.json`."""
    return Path.home() / ".argentos" / "agents" / "main" / "agent" / "auth-profiles.json"


def default_config_path() -> Path:
    """`$ARGENT_CONFIG`, else `user_config_dir("argentos")/argentd.toml`."""
    env = os.environ.get("ARGENT_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir(APP)) / "argentd.toml"


def config_value(key: str) -> Path | None:
    """The path `key` names in argentd.toml, or None (no file, no key, unreadable)."""
    try:
        with default_config_path().open("rb") as fh:
            value = tomllib.load(fh).get(key)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return Path(value).expanduser() if isinstance(value, str) and value else None


def default_socket_path() -> Path:
    """`$ARGENT_SOCKET`, else `socket` in argentd.toml, else `runtime_socket_path()`."""
    env = os.environ.get("ARGENT_SOCKET")
    if env:
        return Path(env).expanduser()
    return config_value("socket") or runtime_socket_path()


def default_profiles_path() -> Path:
    """`$ARGENT_PROFILES`, else `profiles` in argentd.toml, else `home_profiles_path()`."""
    env = os.environ.get("ARGENT_PROFILES")
    if env:
        return Path(env).expanduser()
    return config_value("profiles") or home_profiles_path()


def state_dir() -> Path:
    """`user_state_dir("argentos")`: where `state.json` lives."""
    return Path(platformdirs.user_state_dir(APP))
