"""`argentctl doctor`: check the profiles file, the config and the daemon.

Each check says ok, warn, fail or skip, what it saw and, when it is not
ok, the exact command or edit that fixes it. The profiles file is parsed
here (stdlib json, via `wizard.read_profiles`), never by importing the
daemon, so doctor works when the daemon will not start.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec
from rich.console import Console
from rich.text import Text

from . import paths
from .facts import FALLBACK_ENV
from .profiles_file import ProfilesFileError, file_mode, problems, read_profiles
from .protocol import PROTOCOL_VERSION, ArgentError, DaemonUnavailable, StatusResult

CheckStatus = Literal["ok", "warn", "fail", "skip"]

START_FIX = (
    "start the daemon: run `argentd` in a terminal, or install it as a user service "
    "with `argentctl service install` (then `systemctl --user start argentd` on Linux)"
)


class Check(msgspec.Struct):
    """One doctor finding; `fix` is set whenever `status` is warn or fail."""

    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


# ------------------------------------------------------------ profiles file


def _fix_file(path: Path) -> str:
    return f"edit {path} at the place shown; argentd reloads it on its own when it changes"


def check_profiles_file(
    path: Path, *, daemon_lines: Sequence[str] | None = None, fallback: Sequence[str] = ()
) -> list[Check]:
    """Exists, parses with a supported shape, each profile valid, mode 0600 and owned by us.

    `daemon_lines` are the daemon's own messages about this file when it
    serves it (they cover what only the daemon can check, such as `cmd:`
    references); without them each profile is checked here. `fallback`
    names the environment fallback profiles: with any, a missing file is a
    warning, not a failure.
    """
    path = path.expanduser().absolute()
    if not path.exists():
        if fallback:
            return [
                Check(
                    "profiles_file",
                    "warn",
                    f"{path} does not exist; only the environment fallback is served"
                    f" ({', '.join(fallback)})",
                    "add a profile with `argentctl setup` (it creates the file with mode 0600)",
                )
            ]
        return [
            Check(
                "profiles_file",
                "fail",
                f"{path} does not exist",
                "add a profile with `argentctl setup` (it creates the file with mode 0600)",
            )
        ]
    checks = [Check("profiles_file", "ok", str(path))]
    try:
        doc = read_profiles(path)
    except ProfilesFileError as exc:
        syntax = "not valid JSON" in str(exc) or "not UTF-8" in str(exc)
        checks.append(
            Check(
                "profiles_parse",
                "fail",
                str(exc),
                f"edit {path} at that line and column" if syntax else
                f"edit {path}: it must be a JSON object, either a flat map "
                '{"provider:name": {...}} or {"version": 1, "profiles": {...}}',
            )
        )
        doc = None
    checks.append(_mode_check(path))
    if doc is None:
        return checks
    shape = "versioned store" if doc.versioned else "flat map"
    n = len(doc.profiles)
    if daemon_lines is None:
        found = problems(doc, path)
    else:
        prefixes = (f"{path}: profile ", f"{path}: order ")
        found = [line for line in daemon_lines if line.startswith(prefixes)]
        if all(c.status == "ok" for c in checks):
            # A fault of the whole file that the checks above do not see (yet).
            checks += [
                Check("profiles_daemon", "fail", f"the daemon says: {line}",
                      "fix it, or `argentctl reload` if it is already fixed")
                for line in daemon_lines if not line.startswith(prefixes)
            ]
    skipped = [line for line in found if not _warning(line)]
    detail = f"{shape}, {n} profile(s)"
    if found:
        detail += f": {len(skipped)} skipped, {len(found) - len(skipped)} warning(s) (below)"
    parse = Check("profiles_parse", "fail" if skipped else "ok", detail,
                  _fix_file(path) if skipped else None)
    checks.insert(1, parse)
    for line in found:
        checks.append(Check("profile", "warn" if _warning(line) else "fail",
                            line.removeprefix(f"{path}: "), _fix_file(path)))
    return checks


def _warning(line: str) -> bool:
    """Whether a problem line is a warning: the profile is loaded anyway."""
    return "; loaded anyway - at " in line


def _mode_check(path: Path) -> Check:
    st = path.stat()
    mode = file_mode(path) or 0
    if st.st_uid != os.getuid():
        return Check(
            "profiles_mode",
            "fail",
            f"owned by uid {st.st_uid}, not by you (uid {os.getuid()})",
            f"chown {os.getuid()} {_q(path)} && chmod 600 {_q(path)}",
        )
    if mode & 0o077:
        return Check(
            "profiles_mode",
            "fail",
            f"mode is {mode:04o}: other users can read your secrets; argentd refuses it",
            f"chmod 600 {_q(path)}",
        )
    return Check("profiles_mode", "ok", f"mode {mode:04o}")


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def check_git(path: Path) -> Check:
    """Fail when `path` sits in a git work tree that does not ignore it."""
    path = path.expanduser().absolute()
    folder = path.parent
    if shutil.which("git") is None:
        return Check("profiles_git", "skip", "git is not installed")
    if not folder.is_dir():
        return Check("profiles_git", "skip", f"{folder} does not exist")
    try:
        inside = _git(folder, "rev-parse", "--is-inside-work-tree")
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return Check("profiles_git", "ok", "not inside a git work tree")
        top = Path(_git(folder, "rev-parse", "--show-toplevel").stdout.strip())
        rel = os.path.relpath(path.resolve(), top.resolve())
        tracked = _git(folder, "ls-files", "--error-unmatch", "--", path.name)
        if tracked.returncode == 0:
            return Check(
                "profiles_git",
                "fail",
                f"{path} is committed to the git repository at {top}",
                f"git -C {_q(top)} rm --cached -- {_q(rel)} && "
                f"echo {_q('/' + rel)} >> {_q(top / '.gitignore')}; "
                "then rotate every secret in it: they are in the history",
            )
        ignored = _git(folder, "check-ignore", "-q", "--", path.name)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("profiles_git", "skip", f"git failed: {exc}")
    if ignored.returncode == 0:
        return Check("profiles_git", "ok", f"inside {top}, ignored by git")
    return Check(
        "profiles_git",
        "fail",
        f"{path} is inside the git work tree {top} and not ignored: "
        "a `git add -A` would commit your secrets",
        f"echo {_q('/' + rel)} >> {_q(top / '.gitignore')}  "
        "(or move the file out of the work tree and point ARGENT_PROFILES at it)",
    )


# ------------------------------------------------------------ config and daemon


def check_config(path: Path, daemon_lines: Sequence[str] = ()) -> Check:
    """`argentd.toml`: parses as TOML, if present, and the daemon's own verdict on it.

    `daemon_lines` are the daemon's messages about this file (unknown keys,
    bad routes): one check, one verdict, for the file.
    """
    if not path.exists():
        return Check("config", "ok", f"{path} not present: defaults apply")
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        return Check(
            "config", "fail", f"{path}: invalid TOML: {exc}", f"fix the TOML syntax in {path}"
        )
    except OSError as exc:
        return Check("config", "fail", f"{path}: cannot read: {exc}", f"check {_q(path)}")
    if daemon_lines:
        return Check(
            "config", "fail", "\n".join(daemon_lines),
            f"edit {path} as the message says; argentd reloads it on its own when it changes",
        )
    return Check("config", "ok", str(path))


def _untrusted_check(exc: ArgentError) -> Check:
    """The client refused the socket itself (wrong owner, open folder): its message has the fix."""
    detail, _, fix = str(exc).partition(" Fix: ")
    return Check("socket", "fail", detail, fix or START_FIX)


def probe_daemon(socket_path: Path) -> tuple[list[Check], StatusResult | None]:
    """Reach the daemon: socket, version and its view of the config."""
    from .client import Client  # the CLI imports doctor; keep the socket code lazy

    checks: list[Check] = []
    try:
        client = Client(socket_path, timeout=5.0, fallback_env=False, client_name="doctor")
    except ArgentError as exc:
        if exc.data.get("reason") == "untrusted":
            return [_untrusted_check(exc)], None
        return [Check("socket", "fail", f"{socket_path}: {exc}", START_FIX)], None
    try:
        try:
            hello = client.hello()
        except DaemonUnavailable as exc:
            if exc.data.get("reason") == "untrusted":
                return [_untrusted_check(exc)], None
            stale = " (a stale socket file: the daemon is gone)" if socket_path.exists() else ""
            checks.append(Check("socket", "fail", f"{exc}{stale}", START_FIX))
            return checks, None
        checks.append(Check("socket", "ok", f"{socket_path} (pid {hello.pid})"))
        if hello.protocol != PROTOCOL_VERSION:
            checks.append(
                Check(
                    "daemon_version",
                    "fail",
                    f"{hello.server} {hello.version} speaks protocol {hello.protocol}, "
                    f"this argentctl speaks {PROTOCOL_VERSION}",
                    "install the same argentd version for the daemon and argentctl, "
                    "then restart the daemon",
                )
            )
        else:
            checks.append(
                Check("daemon_version", "ok", f"{hello.server} {hello.version}, protocol 1")
            )
        status = client.status()
    except ArgentError as exc:
        checks.append(Check("daemon", "fail", f"{exc.code}: {exc}", START_FIX))
        return checks, None
    finally:
        client.close()
    checks.append(_profiles_check(status))
    from .gateway_cmd import doctor_check

    checks.append(doctor_check(status))
    oauth = _oauth_check(status, time.time())
    if oauth is not None:
        checks.append(oauth)
    return checks, status


def _oauth_check(status: StatusResult, now: float) -> Check | None:
    """OAuth logins whose access token ends within a day with no working refresh."""
    logins = [p for p in status.profiles if p.type == "oauth" and not p.removed]
    if not logins:
        return None
    dying = [p for p in logins if p.expires_at is not None and p.expires_at - now < 86400
             and (p.refresh_error or p.state in ("invalid", "expired"))]
    if not dying:
        return Check("oauth", "ok", f"{len(logins)} OAuth login(s) refreshed by argentd")
    first = dying[0]
    why = first.refresh_error or first.last_error or first.state
    return Check(
        "oauth", "warn",
        f"{', '.join(p.id for p in dying)}: the access token ends within a day and "
        f"cannot be refreshed ({why})",
        "log in again with the tool, then `argentctl profiles import claude-code|codex|gemini`",
    )


def _daemon_config_check(status: StatusResult, lines: Sequence[str]) -> Check:
    """What the daemon reported that belongs to neither file (the environment)."""
    if lines:
        return Check(
            "daemon_config", "fail", "\n".join(lines),
            "fix what the message names, then `argentctl reload`",
        )
    if status.config.error:
        return Check("daemon_config", "ok", "the daemon's problems are listed under each file")
    return Check("daemon_config", "ok", f"loaded {status.config.profiles_path} without error")


def _profiles_check(status: StatusResult) -> Check:
    live = [p for p in status.profiles if not p.removed]
    if not live:
        return Check(
            "daemon_profiles", "warn", "the daemon has no profiles", "add one: `argentctl setup`"
        )
    counts: dict[str, int] = {}
    for p in live:
        counts[p.state] = counts.get(p.state, 0) + 1
    detail = f"{len(live)} profile(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    invalid = [p.id for p in live if p.state == "invalid"]
    if invalid:
        return Check(
            "daemon_profiles",
            "warn",
            f"{detail}; invalid (rejected secret): {', '.join(invalid)}",
            "replace the secret with `argentctl profiles add --replace ...`, "
            "or `argentctl reset ID` if it was a false alarm",
        )
    return Check("daemon_profiles", "ok", detail)


def run_doctor(
    *,
    profiles_path: Path | None = None,
    socket_path: Path | None = None,
    config_path: Path | None = None,
    fallback_profiles_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[Check]:
    """Every check, in a fixed order: one verdict per file, then the daemon.

    The daemon is asked first so that, when no `profiles_path` is given, the
    file it actually reads is the one checked; when it is unreachable,
    `fallback_profiles_path` (else the default path) is. Each line of the
    daemon's `config.error` goes under the file it names.
    """
    env = os.environ if environ is None else environ
    sock = socket_path or paths.default_socket_path()
    daemon_checks, status = probe_daemon(sock)
    path = profiles_path
    if path is None and status is not None:
        path = Path(status.config.profiles_path)
    path = (path or fallback_profiles_path or paths.default_profiles_path()).expanduser().absolute()
    config = config_path
    if config is None and status is not None and status.config.config_path:
        config = Path(status.config.config_path)
    config = (config or paths.default_config_path()).expanduser()

    lines = status.config.error.splitlines() if status and status.config.error else []
    about_config = [line for line in lines if line.startswith(f"{config}:")]
    daemon_path = Path(status.config.profiles_path) if status is not None else None
    about_profiles: list[str] | None = None
    if daemon_path is not None and _same_file(daemon_path, path):
        about_profiles = [line for line in lines if line.startswith(f"{daemon_path}:")]
    # What belongs to neither checked file: the environment, or the file the
    # daemon serves when another one was checked.
    placed = {*about_config, *(about_profiles or ())}
    rest = [line for line in lines if line not in placed]
    if status is not None:
        fallback = [p.id for p in status.profiles if p.source == "env" and not p.removed]
    else:
        fallback = [var for pairs in FALLBACK_ENV.values() for var, _ in pairs
                    if env.get(var, "").strip()]
    checks = check_profiles_file(path, daemon_lines=about_profiles, fallback=fallback)
    checks.append(check_git(path))
    if daemon_path is not None and not _same_file(daemon_path, path):
        checks.append(
            Check(
                "profiles_path",
                "warn",
                f"you checked {path}, but the daemon reads {daemon_path}",
                "pass the same --profiles / ARGENT_PROFILES to argentd and argentctl",
            )
        )
    checks.append(check_config(config, about_config))
    if status is not None:
        daemon_checks.insert(2, _daemon_config_check(status, rest))
    return checks + daemon_checks


def _same_file(a: Path, b: Path) -> bool:
    return os.path.realpath(a.expanduser()) == os.path.realpath(b.expanduser())


def failed(checks: list[Check]) -> bool:
    """Whether any check failed (warnings do not count)."""
    return any(c.status == "fail" for c in checks)


_MARKS: dict[str, tuple[str, str]] = {
    "ok": ("[ok]", "green"),
    "warn": ("[warn]", "yellow"),
    "fail": ("[FAIL]", "bold red"),
    "skip": ("[skip]", "dim"),
}


def render(checks: list[Check], console: Console) -> None:
    """Print one line per check, and an indented `fix:` line under each problem."""
    for c in checks:
        mark, style = _MARKS[c.status]
        line = Text()
        line.append(mark, style=style)
        line.append(f" {c.name}: ", style="bold")
        first, *rest = c.detail.splitlines() or [""]
        line.append(first)
        console.print(line, soft_wrap=True)
        for more in rest:
            console.print(Text(f"    {more}"), soft_wrap=True)
        if c.fix and c.status in ("warn", "fail"):
            console.print(Text(f"    fix: {c.fix}"), soft_wrap=True)
