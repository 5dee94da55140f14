"""`argentctl profiles import claude-code|codex|gemini [PATH] [--name N]`.

Reads a tool's own login file (formats in `oauth_sources`) and merges an
`oauth` profile into the profiles file with a `source` naming that file:

    "anthropic:claude-code": {"provider": "anthropic", "type": "oauth",
        "access": "…", "refresh": "…", "expires": <Unix ms>, "label": "…",
        "source": {"format": "claude-code", "path": "~/.claude/.credentials.json"}}

From then on the daemon is the one refresher of that login and keeps the
tool's file in step both ways. Importing again from the same file (after
logging in again with the tool) replaces the profile without `--replace`.
Nothing printed holds a token: only the id, a fingerprint and the expiry.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from .commands import CliError, ExitCode, Out
from .oauth_sources import (
    DEFAULT_PATHS,
    MAX_SOURCE_BYTES,
    PROVIDER_OF,
    TOOL_NAMES,
    SourceError,
    SourceLogin,
    default_path,
    parse_source,
)
from .profile_commands import _after_write, _target_path
from .profiles_file import (
    ProfileExists,
    name_problem,
    read_profiles,
    real_path,
    write_atomic,
)
from .providers import fingerprint


class ImportResult(msgspec.Struct):
    id: str
    path: str
    """The profiles file written."""
    source: str
    format: str
    fingerprint: str
    expires_at: float | None
    refreshable: bool
    replaced: bool


def shown_path(path: Path) -> str:
    """`path` as the profiles file keeps it: `~/…` under the home folder."""
    path = path.expanduser().absolute()
    home = Path.home()
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def read_login(fmt: str, path: Path) -> SourceLogin:
    """The login in the tool's file. Raises `CliError` with the fix."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SOURCE_BYTES + 1)
    except FileNotFoundError:
        raise CliError(f"{path} does not exist", ExitCode.NOT_FOUND,
                       fix=f"log in with {TOOL_NAMES[fmt]} first, or give the file's path"
                       ) from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror}", ExitCode.FAILURE) from None
    try:
        return parse_source(fmt, data)
    except SourceError as exc:
        raise CliError(f"{path}: {exc}", ExitCode.REFUSED,
                       fix=f"is it a {fmt} login file? (default {DEFAULT_PATHS[fmt]})"
                       ) from None


def make_entry(fmt: str, login: SourceLogin, source: str, label: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"provider": PROVIDER_OF[fmt], "type": "oauth",
                             "access": login.access}
    if login.refresh:
        entry["refresh"] = login.refresh
    if login.expires is not None:
        entry["expires"] = int(login.expires * 1000)
    if login.account_id:
        entry["account_id"] = login.account_id
    entry["label"] = label or f"{TOOL_NAMES[fmt].split(' (')[0]} login"
    entry["source"] = {"format": fmt, "path": source}
    return entry


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The lock `profiles add|remove` take on the folder (serialises writers)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _same_file(entry: object, source: Path) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), dict):
        return False
    path = entry["source"].get("path")
    if not isinstance(path, str):
        return False
    return os.path.realpath(Path(path).expanduser()) == os.path.realpath(source)


def import_login(fmt: str, source: Path | None, profiles: Path, *, name: str | None = None,
                 label: str | None = None, replace: bool = False) -> ImportResult:
    """Merge the login of `fmt` at `source` (default: the tool's own path) into `profiles`.

    Raises `CliError`, `ProfileExists`, `ProfilesFileError` or OSError.
    """
    src = (source or default_path(fmt)).expanduser().absolute()
    login = read_login(fmt, src)
    name = name or fmt
    problem = name_problem(name)
    if problem:
        raise CliError(problem, ExitCode.USAGE)
    pid = f"{PROVIDER_OF[fmt]}:{name}"
    target = real_path(profiles)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(target.parent):
        doc = read_profiles(target)
        existing = doc.profiles.get(pid)
        if existing is not None and not replace and not _same_file(existing, src):
            raise ProfileExists(f"{pid} is already in {target} (use --replace, or --name)")
        entry = make_entry(fmt, login, shown_path(src), label)
        if doc.versioned:
            doc.data.setdefault("version", 1)
            order = doc.data.get("order")
            if isinstance(order, dict):
                ids = order.get(PROVIDER_OF[fmt])
                if isinstance(ids, list) and pid not in ids:
                    ids.append(pid)
        doc.profiles[pid] = entry
        write_atomic(target, json.dumps(doc.data, indent=2, ensure_ascii=False) + "\n")
    return ImportResult(id=pid, path=str(target), source=str(src), format=fmt,
                        fingerprint=fingerprint(login.access), expires_at=login.expires,
                        refreshable=login.refresh is not None, replaced=existing is not None)


def cmd_profiles_import(args: argparse.Namespace, out: Out) -> int:
    """`argentctl profiles import FORMAT [PATH] [--name N] [--label L] [--replace]`."""
    from .render import duration

    path, served = _target_path(args)
    result = import_login(args.format, Path(args.path) if args.path else None, path,
                          name=args.name, label=args.label, replace=args.replace)
    if out.json:
        out.print_json(result)
        return ExitCode.OK
    verb = "replaced" if result.replaced else "imported"
    out.line(f"{verb} {result.id} ({result.fingerprint}) from {result.source} into "
             f"{result.path}")
    if result.expires_at is not None:
        left = result.expires_at - time.time()
        out.note("its access token has ended (argentd refreshes it at once)" if left <= 0
                 else f"its access token ends in {duration(left)}", style="dim")
    if result.refreshable:
        out.note("argentd now refreshes this login and writes each new pair back to "
                 f"{result.source}, so the tool stays logged in", style="dim")
    else:
        out.note("this login has no refresh token: it works until its access token ends",
                 style="yellow")
    _after_write(out, Path(result.path), served)
    return ExitCode.OK
