"""Where argentd's files live; one function per path, shared by daemon and client."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "argentos"


def default_socket_path() -> Path:
    """`$ARGENT_SOCKET`, else `user_runtime_dir("argentos")/argentd.sock`."""
    env = os.environ.get("ARGENT_SOCKET")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_runtime_dir(APP)) / "argentd.sock"


def default_profiles_path() -> Path:
    """`$ARGENT_PROFILES`, else `~/.argentos/agents/main/agent/auth-profiles.json`."""
    env = os.environ.get("ARGENT_PROFILES")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".argentos" / "agents" / "main" / "agent" / "auth-profiles.json"


def default_config_path() -> Path:
    """`$ARGENT_CONFIG`, else `user_config_dir("argentos")/argentd.toml`."""
    env = os.environ.get("ARGENT_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir(APP)) / "argentd.toml"


def state_dir() -> Path:
    """`user_state_dir("argentos")`: where `state.json` lives."""
    return Path(platformdirs.user_state_dir(APP))
