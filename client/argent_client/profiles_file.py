"""Editing `auth-profiles.json`: read, merge, atomic write.

argentd never writes the profiles file; this module is the only writer (for
`argentctl profiles add|remove` and the setup wizard). It never clobbers: a
file it cannot parse (bad JSON, unknown shape, a duplicate key) is refused,
other profiles and other top-level keys (`order`, `lastGood`, `usageStats`)
are kept, and an existing id is only replaced on request. A write goes to a
temp file created 0600 in the same folder, is fsynced and renamed over the
old file, then the folder is fsynced, so a reader (the daemon's file
watcher) sees the old file or the new one, never half of one. Concurrent
writers are serialised by an advisory lock on the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .facts import (
    MAX_FILE_BYTES,
    RESERVED_NAMES,
    SECRET_FIELD,
    TYPE_ALIASES,
    ReadFault,
    did_you_mean,
    fingerprint,
    id_is_shown,
    json_syntax_error,
    normalise_provider,
    read_bounded,
    shown_id,
    suggest_provider,
    token_problem,
    utf8_error,
    valid_provider,
)
from .protocol import ProfileType

_NAME: re.Pattern[str] = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")

def name_problem(name: str) -> str | None:
    """Why `name` cannot be a profile name, or None."""
    if name in RESERVED_NAMES:
        return f"the name {name!r} is reserved for the environment fallback"
    if not _NAME.match(name):
        return f"bad name {name!r}: use letters, digits and . _ @ + - (no spaces, no ':')"
    return None

# The versioned store spells types its own way; these are what we write there.
_STORE_TYPE: dict[ProfileType, str] = {
    "setup-token": "token",
    "api-key": "api_key",
    "oauth": "oauth",
}


class ProfilesFileError(Exception):
    """The profiles file cannot be read or has a shape we will not rewrite."""


class ProfileExists(Exception):
    """The id is already in the file and `replace` was not given."""


class ProfileNotFound(Exception):
    """The id to remove is not in the file."""


@dataclass(slots=True)
class ProfilesDoc:
    """A parsed profiles file: `data` is the whole JSON object, kept as read."""

    data: dict[str, Any] = field(default_factory=dict)
    versioned: bool = False
    exists: bool = False

    @property
    def profiles(self) -> dict[str, Any]:
        """The id -> profile map (the whole object for the flat shape)."""
        if self.versioned:
            profiles: dict[str, Any] = self.data["profiles"]
            return profiles
        return self.data


@dataclass(frozen=True, slots=True)
class FileProfile:
    """What `profiles list` shows of one file entry: never the secret."""

    id: str
    provider: str
    type: str
    label: str
    fingerprint: str
    disabled: bool = False
    priority: int | None = None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            shown = json.dumps(key) if id_is_shown(key) else "(not shown: it may be a secret)"
            raise ProfilesFileError(f"duplicate key {shown}")
        out[key] = value
    return out


def parse_profiles(text: str, path: Path) -> ProfilesDoc:
    """Parse the profiles file's text.

    Raises `ProfilesFileError` naming the line/column or JSON path of the
    fault (never a value: the values are secrets).
    """
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError:
        raise ProfilesFileError(f"{path}: not valid JSON: {json_syntax_error(text)}") from None
    except RecursionError:
        raise ProfilesFileError(f"{path}: not valid JSON: nested too deeply") from None
    except ProfilesFileError as exc:
        raise ProfilesFileError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise ProfilesFileError(f"{path}: the top level must be a JSON object (at $)")
    versioned = "profiles" in data or "version" in data
    if versioned:
        profiles = data.get("profiles")
        if not isinstance(profiles, dict):
            raise ProfilesFileError(
                f'{path}: a versioned store needs a "profiles" object (at $.profiles)'
            )
    else:
        profiles = data
    for index, (key, value) in enumerate(profiles.items()):
        if not isinstance(value, dict):
            where = "$.profiles" if versioned else "$"
            shown = shown_id(key, index)
            step = json.dumps(key) if shown == key else shown
            raise ProfilesFileError(
                f"{path}: profile {step} is not an object (at {where}[{step}])"
            )
    return ProfilesDoc(data=data, versioned=versioned, exists=True)


def _read_fault(fault: ReadFault) -> str:
    error = fault.error
    why = "" if error is None else error.strerror or str(error)
    return {
        "open": f"cannot open: {why}",
        "type": "not a regular file",
        "read": f"cannot read: {why}",
        "size": f"larger than {MAX_FILE_BYTES} bytes",
    }[fault.stage]


def read_profiles(path: Path) -> ProfilesDoc:
    """Read the profiles file; a missing file is an empty flat map.

    Opened non-blocking and refused unless it is a regular file of at most
    `MAX_FILE_BYTES`, as the daemon does (a FIFO must not hang argentctl).
    Raises `ProfilesFileError` for an unreadable or unparsable file.
    """
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except ReadFault as fault:
        raise ProfilesFileError(f"{path}: {_read_fault(fault)}") from None
    if data is None:
        return ProfilesDoc()
    bad = utf8_error(data)
    if bad:
        raise ProfilesFileError(f"{path}: {bad}")
    return parse_profiles(data.decode(), path)


def _secret_of(entry: dict[str, Any]) -> str | None:
    for key in ("token", "key", "access"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def summarise(doc: ProfilesDoc) -> list[FileProfile]:
    """One `FileProfile` per file entry, in file order, with fingerprints only.

    An id that may be a secret pasted in the wrong place shows as `#N`, as the
    daemon shows it (`facts.shown_id`).
    """
    out: list[FileProfile] = []
    for index, (pid, entry) in enumerate(doc.profiles.items()):
        secret = _secret_of(entry)
        ref = entry.get("token_ref") or entry.get("key_ref")
        if secret is not None:
            fp = fingerprint(secret)
        elif isinstance(ref, str):
            fp = f"ref {ref.split(':', 1)[0]}:…"
        else:
            fp = "(no secret)"
        raw_type = entry.get("type")
        # Field values are shown only when they are what the field should hold:
        # a secret pasted into `type` or `provider` must not be printed.
        shown_type = TYPE_ALIASES.get(raw_type.strip().lower(), "?") if isinstance(
            raw_type, str) else "?"
        raw_provider = entry.get("provider", pid.split(":", 1)[0] if ":" in pid else None)
        provider = normalise_provider(raw_provider) if isinstance(raw_provider, str) else "?"
        if not valid_provider(provider) or not id_is_shown(provider):
            provider = "?"
        priority = entry.get("priority")
        out.append(
            FileProfile(
                id=shown_id(pid, index),
                provider=provider,
                type=shown_type,
                label=str(entry.get("label", "")),
                fingerprint=fp,
                disabled=bool(entry.get("disabled", False)),
                priority=priority if isinstance(priority, int) else None,
            )
        )
    return out


def _problem(pid: str, entry: dict[str, Any], versioned: bool) -> tuple[str, str] | None:
    """What the daemon would refuse in one entry: (text, path below the entry), or None.

    A subset of the daemon's checks (it also runs `token_ref`s and checks
    every field's type), in its words; never a value.
    """
    id_provider, sep, name = pid.partition(":")
    if not sep or not id_provider.strip() or not name.strip():
        return 'the id must be "provider:name"', ""
    if not id_is_shown(pid):
        return 'the id must be "provider:name", a name of at most 64 characters', ""
    if name in RESERVED_NAMES:
        return f'the name "{name}" is reserved for the environment fallback', ""
    raw_provider = entry.get("provider")
    if raw_provider is None:
        return "provider is required", ".provider"
    if not isinstance(raw_provider, str):
        return "provider must be a string", ".provider"
    provider = normalise_provider(raw_provider)
    if not valid_provider(provider):
        return (
            "provider must be 1-32 letters, digits, '-' or '_' (aliases: z.ai, z-ai, gemini)"
            + did_you_mean(provider),
            ".provider",
        )
    if normalise_provider(id_provider) != provider:
        shown = json.dumps(normalise_provider(id_provider) + ":")
        return f"provider does not match the id's {shown} part", ".provider"
    raw_type = entry.get("type")
    if raw_type is None:
        return "type is required", ".type"
    type_ = TYPE_ALIASES.get(raw_type.strip().lower()) if isinstance(raw_type, str) else None
    if type_ is None:
        return (
            "type must be setup-token, api-key or oauth (aliases: token, setup_token, api_key)",
            ".type",
        )
    field = SECRET_FIELD[type_] if versioned else "token"
    literal, ref = entry.get(field), entry.get("token_ref")
    if literal is not None and ref is not None:
        return f"give {field} or token_ref, not both", ".token_ref"
    if ref is None:
        if literal is None:
            return f"{field} is required", f".{field}"
        if not isinstance(literal, str) or token_problem(literal.strip()):
            return f"{field} holds whitespace or characters a token cannot have", f".{field}"
    if suggest_provider(provider):
        return f'unknown provider "{provider}"{did_you_mean(provider)}; loaded anyway', ".provider"
    return None


def problems(doc: ProfilesDoc, path: Path) -> list[str]:
    """One message per entry the daemon would skip (or load with a warning), in file order."""
    out: list[str] = []
    root = "$.profiles" if doc.versioned else "$"
    for index, (pid, entry) in enumerate(doc.profiles.items()):
        found = _problem(pid, entry, doc.versioned)
        if found is None:
            continue
        text, at = found
        shown = shown_id(pid, index)
        quoted = json.dumps(pid) if shown == pid else shown
        out.append(f"{path}: profile {quoted}: {text} - at {root}[{quoted}]{at}")
    return out


# ------------------------------------------------------------ writing


def _make_private_dirs(folder: Path) -> None:
    """Create `folder` and missing parents with mode 0700 (they may hold secrets)."""
    missing: list[Path] = []
    cur = folder
    while not cur.exists():
        missing.append(cur)
        cur = cur.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
            os.chmod(d, 0o700)  # umask may have taken bits off


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` so read-merge-write is atomic."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`: 0600 temp file, fsync, rename, fsync folder.

    The folder is created 0700 if missing. Raises OSError.
    """
    folder = path.parent
    _make_private_dirs(folder)
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a umask cannot widen it, but 0277 would narrow it
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _dump(doc: ProfilesDoc) -> str:
    return json.dumps(doc.data, indent=2, ensure_ascii=False) + "\n"


def real_path(path: Path) -> Path:
    """`path` with symlinks resolved: where a write must go.

    Writing through a symlink to its target keeps the link (e.g. into a
    dotfiles folder) rather than replacing it with a plain file.
    """
    return Path(os.path.realpath(path))


def make_entry(
    versioned: bool,
    *,
    provider: str,
    type: ProfileType,
    secret: str,
    label: str | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """The JSON object for one profile in the given file shape."""
    entry: dict[str, Any]
    if versioned:
        entry = {"type": _STORE_TYPE[type], "provider": provider, SECRET_FIELD[type]: secret}
    else:
        entry = {"provider": provider, "type": type, "token": secret}
    if label:
        entry["label"] = label
    if priority is not None:
        entry["priority"] = priority
    return entry


def add_profile(
    path: Path,
    profile_id: str,
    *,
    provider: str,
    type: ProfileType,
    secret: str,
    label: str | None = None,
    priority: int | None = None,
    replace: bool = False,
) -> bool:
    """Merge one profile into the file at `path` (created if missing).

    Returns True when an existing id was replaced. Raises
    `ProfilesFileError` (unparsable file: left untouched), `ProfileExists`
    (id present and not `replace`) or OSError.
    """
    path = real_path(path)
    _make_private_dirs(path.parent)
    with folder_lock(path.parent):
        doc = read_profiles(path)
        profiles = doc.profiles
        existed = profile_id in profiles
        if existed and not replace:
            raise ProfileExists(f"{profile_id} is already in {path} (use --replace)")
        profiles[profile_id] = make_entry(
            doc.versioned,
            provider=provider,
            type=type,
            secret=secret,
            label=label,
            priority=priority,
        )
        order = doc.data.get("order") if doc.versioned else None
        # An explicit order list is exhaustive for the daemon: a profile left
        # out of it would never be chosen.
        if isinstance(order, dict):
            ids = order.get(provider)
            if isinstance(ids, list) and profile_id not in ids:
                ids.append(profile_id)
        write_atomic(path, _dump(doc))
    return existed


def remove_profile(path: Path, profile_id: str) -> None:
    """Remove one profile (and its `order` mentions) from the file.

    Raises `ProfileNotFound`, `ProfilesFileError` or OSError.
    """
    path = real_path(path)
    if not path.parent.exists():
        raise ProfileNotFound(f"{profile_id} is not in {path} (no such file)")
    with folder_lock(path.parent):
        doc = read_profiles(path)
        if profile_id not in doc.profiles:
            where = path if doc.exists else f"{path} (no such file)"
            raise ProfileNotFound(f"{profile_id} is not in {where}")
        del doc.profiles[profile_id]
        order = doc.data.get("order") if doc.versioned else None
        if isinstance(order, dict):
            for ids in order.values():
                if isinstance(ids, list) and profile_id in ids:
                    ids.remove(profile_id)
        write_atomic(path, _dump(doc))


def file_mode(path: Path) -> int | None:
    """The permission bits of `path`, or None if it does not exist."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
