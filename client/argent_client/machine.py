"""The facts of this machine a service plan depends on, gathered once (`Host.detect`).

Platform, home, uid, the systemd user unit folder, where `argentd` is,
whether unprivileged user namespaces work (the sandbox drop-in needs them)
and whether a systemd user manager answers (`systemctl --user` needs one).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from .paths import default_socket_path
from .units import LABEL, render_systemd_units

Platform: TypeAlias = Literal["linux", "darwin"]


# ---------------------------------------------------------------- the machine


class ServiceError(Exception):
    """A service action cannot be planned or carried out; the message says why."""


def find_argentd() -> Path:
    """The `argentd` of this installation: beside `sys.executable`, else on PATH.

    Raises `ServiceError` when neither exists.
    """
    # The venv's own script comes first: it is the argentd that matches this
    # argentctl, whatever PATH says. sys.executable is not resolved, because a
    # venv's python is a symlink to the base interpreter.
    beside = Path(sys.executable).absolute().parent / "argentd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("argentd")
    if found:
        return Path(found).absolute()
    raise ServiceError(
        f"argentd not found beside {sys.executable} or on PATH; install the argentd package first"
    )


def userns_blocked(proc_sys: Path = Path("/proc/sys")) -> str | None:
    """Why unprivileged user namespaces are blocked here, or None when they look usable."""
    checks = (
        ("user/max_user_namespaces", "0", "user.max_user_namespaces is 0"),
        ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0"),
        (
            "kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "AppArmor restricts unprivileged user namespaces",
        ),
    )
    for name, bad, reason in checks:
        try:
            value = (proc_sys / name).read_text().strip()
        except OSError:
            continue
        if value == bad:
            return reason
    return None


def user_bus_missing(environ: Mapping[str, str], uid: int) -> str | None:
    """Why there is no systemd user manager to talk to, or None when there seems to be one.

    `systemctl --user` needs the user's bus (`$XDG_RUNTIME_DIR/bus`) or the
    manager's private socket; an ssh session without lingering, `su` or a
    container often has neither, and then fails with "Failed to connect to bus".
    """
    if shutil.which("systemctl") is None:
        return "systemctl is not installed (no systemd here)"
    if environ.get("DBUS_SESSION_BUS_ADDRESS"):
        return None
    runtime = Path(environ.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}")
    for candidate in (runtime / "bus", runtime / "systemd" / "private"):
        try:
            if stat.S_ISSOCK(candidate.stat().st_mode):
                return None
        except OSError:
            continue
    return f"no user bus at {runtime / 'bus'}: no systemd user manager runs for you"


@dataclass(frozen=True)
class Host:
    """Every fact about this machine that a plan depends on."""

    platform: Platform
    home: Path
    uid: int
    config_home: Path
    """`$XDG_CONFIG_HOME` (when absolute), else `~/.config`: systemd's user unit root."""
    argentd: Path | None
    """None when not found (install then fails; uninstall and status do not need it)."""
    userns_blocked: str | None = None
    socket_path: Path = field(default_factory=default_socket_path)
    no_user_bus: str | None = None
    """Why `systemctl --user` cannot reach a user manager here, or None when it can."""

    @classmethod
    def detect(
        cls, platform: Platform | None = None, *, environ: Mapping[str, str] | None = None
    ) -> Host:
        """The running machine; `platform` overrides `sys.platform` (tests).

        Raises `ServiceError` on a platform that is neither Linux nor macOS.
        """
        env = os.environ if environ is None else environ
        plat = platform or current_platform()
        home = Path(env.get("HOME") or Path.home())
        xdg = env.get("XDG_CONFIG_HOME", "")
        config_home = Path(xdg) if os.path.isabs(xdg) else home / ".config"
        try:
            argentd: Path | None = find_argentd()
        except ServiceError:
            argentd = None
        return cls(
            platform=plat,
            home=home,
            uid=os.getuid(),
            config_home=config_home,
            argentd=argentd,
            userns_blocked=userns_blocked() if plat == "linux" else None,
            no_user_bus=user_bus_missing(env, os.getuid()) if plat == "linux" else None,
        )

    @property
    def unit_dir(self) -> Path:
        return self.config_home / "systemd" / "user"

    @property
    def plist_path(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def log_dir(self) -> Path:
        return self.home / "Library" / "Logs" / "argentos"

    def unit_files(self) -> list[Path]:
        """Every file an install may write on this platform."""
        if self.platform == "darwin":
            return [self.plist_path]
        return [self.unit_dir / rel for rel in render_systemd_units(Path("argentd"))]

    def require_argentd(self) -> Path:
        if self.argentd is None:
            raise ServiceError(
                f"argentd not found beside {sys.executable} or on PATH; "
                "install the argentd package first"
            )
        return self.argentd


def current_platform() -> Platform:
    """`linux` or `darwin`; raises `ServiceError` elsewhere."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "darwin"
    raise ServiceError(f"no service support on {sys.platform}: only Linux (systemd) and macOS")
