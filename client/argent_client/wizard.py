"""Editing `auth-profiles.json`: read, merge, atomic write; and the setup wizard.

argentd never writes the profiles file; this module is the only writer. It
never clobbers: a file it cannot parse (bad JSON, unknown shape, a duplicate
key) is refused, other profiles and other top-level keys (`order`,
`lastGood`, `usageStats`) are kept, and an existing id is only replaced on
request. A write goes to a temp file created 0600 in the same folder, is
fsynced and renamed over the old file, then the folder is fsynced, so a
reader (the daemon's file watcher) sees the old file or the new one, never
half of one. Concurrent writers are serialised by an advisory lock on the
folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .protocol import ProfileType
from .providers import (
    PROVIDERS,
    TOKEN_SHAPES,
    fingerprint,
    normalise_provider,
    shape_problem,
    valid_provider,
)

_NAME: re.Pattern[str] = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
RESERVED_NAMES = frozenset({"env", "env-key"})
"""Names the daemon keeps for its environment fallback (`anthropic:env`)."""


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a profile name, or None."""
    if name in RESERVED_NAMES:
        return f"the name {name!r} is reserved for the environment fallback"
    if not _NAME.match(name):
        return f"bad name {name!r}: use letters, digits and . _ @ + - (no spaces, no ':')"
    return None

# The versioned store spells types its own way; these are what we write there.
_STORE_TYPE: dict[ProfileType, tuple[str, str]] = {
    "setup-token": ("token", "token"),
    "api-key": ("api_key", "key"),
    "oauth": ("oauth", "access"),
}
_TYPE_ALIASES: dict[str, ProfileType] = {
    "setup-token": "setup-token",
    "setup_token": "setup-token",
    "token": "setup-token",
    "api-key": "api-key",
    "api_key": "api-key",
    "oauth": "oauth",
}


class ProfilesFileError(Exception):
    """The profiles file cannot be read or has a shape we will not rewrite."""


class ProfileExists(Exception):
    """The id is already in the file and `replace` was not given."""


class ProfileNotFound(Exception):
    """The id to remove is not in the file."""


class WizardAborted(Exception):
    """The user declined, or a needed answer is missing."""


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
            raise ProfilesFileError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_profiles(text: str, path: Path) -> ProfilesDoc:
    """Parse the profiles file's text.

    Raises `ProfilesFileError` naming the line/column or JSON path of the
    fault (never a value: the values are secrets).
    """
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ProfilesFileError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
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
    for key, value in profiles.items():
        if not isinstance(value, dict):
            where = "$.profiles" if versioned else "$"
            raise ProfilesFileError(
                f"{path}: profile {key!r} is not an object (at {where}[{key!r}])"
            )
    return ProfilesDoc(data=data, versioned=versioned, exists=True)


def read_profiles(path: Path) -> ProfilesDoc:
    """Read the profiles file; a missing file is an empty flat map.

    Raises `ProfilesFileError` for an unreadable or unparsable file.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ProfilesDoc()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfilesFileError(f"{path}: cannot read: {exc}") from None
    return parse_profiles(text, path)


def _secret_of(entry: dict[str, Any]) -> str | None:
    for key in ("token", "key", "access"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def summarise(doc: ProfilesDoc) -> list[FileProfile]:
    """One `FileProfile` per file entry, in file order, with fingerprints only."""
    out: list[FileProfile] = []
    for pid, entry in doc.profiles.items():
        secret = _secret_of(entry)
        ref = entry.get("token_ref") or entry.get("key_ref")
        if secret is not None:
            fp = fingerprint(secret)
        elif isinstance(ref, str):
            fp = f"ref {ref.split(':', 1)[0]}:…"
        else:
            fp = "(no secret)"
        raw_type = str(entry.get("type", ""))
        priority = entry.get("priority")
        out.append(
            FileProfile(
                id=pid,
                provider=normalise_provider(str(entry.get("provider", pid.split(":", 1)[0]))),
                type=_TYPE_ALIASES.get(raw_type, raw_type or "?"),
                label=str(entry.get("label", "")),
                fingerprint=fp,
                disabled=bool(entry.get("disabled", False)),
                priority=priority if isinstance(priority, int) else None,
            )
        )
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
def _folder_lock(folder: Path) -> Iterator[None]:
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


def _target(path: Path) -> Path:
    # Write through a symlink to its target, so the link (e.g. into a dotfiles
    # folder) is kept rather than replaced by a plain file.
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
        store_type, secret_key = _STORE_TYPE[type]
        entry = {"type": store_type, "provider": provider, secret_key: secret}
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
    path = _target(path)
    _make_private_dirs(path.parent)
    with _folder_lock(path.parent):
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
    path = _target(path)
    if not path.parent.exists():
        raise ProfileNotFound(f"{profile_id} is not in {path} (no such file)")
    with _folder_lock(path.parent):
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


# ------------------------------------------------------------ the wizard


@dataclass(slots=True)
class SetupOptions:
    """What `profiles add` / `setup` was given on the command line."""

    path: Path
    provider: str | None = None
    type: str | None = None
    name: str | None = None
    label: str | None = None
    priority: int | None = None
    secret_stdin: bool = False
    force: bool = False
    replace: bool = False


@dataclass(frozen=True, slots=True)
class SetupResult:
    id: str
    path: str
    fingerprint: str
    replaced: bool


@dataclass(slots=True)
class WizardIO:
    """The wizard's terminal: injectable so tests can drive it."""

    interactive: bool
    ask: Callable[[str], str]
    ask_secret: Callable[[str], str]
    read_stdin: Callable[[], str]
    err: TextIO


def guess_type(provider: str, secret: str) -> ProfileType:
    """The profile type a secret's prefix implies, else `api-key`."""
    for (p, t), prefixes in TOKEN_SHAPES.items():
        if p == provider and secret.startswith(prefixes):
            return t
    return "api-key"


def parse_type(raw: str) -> ProfileType:
    """Normalise a type name (`setup-token`, `api-key`, aliases); raises ValueError."""
    t = _TYPE_ALIASES.get(raw.strip().lower())
    if t is None or t == "oauth":
        raise ValueError(f"unknown type {raw!r}: use setup-token or api-key")
    return t


def _missing(flag: str) -> WizardAborted:
    return WizardAborted(f"{flag} is required when the secret comes from stdin")


def _choose_provider(io: WizardIO) -> str:
    names = [*PROVIDERS, "other"]
    menu = "  ".join(f"{i}) {n}" for i, n in enumerate(names, 1))
    while True:
        raw = io.ask(f"Provider [{menu}]: ").strip()
        if raw.isdigit() and 1 <= int(raw) <= len(names):
            raw = names[int(raw) - 1]
            if raw == "other":
                raw = io.ask("Provider name (lower-case): ").strip()
        name = normalise_provider(raw)
        if name and valid_provider(name):
            return name
        print(f"  not a provider name: {raw!r}", file=io.err)


def _choose_type(io: WizardIO, provider: str) -> ProfileType:
    default: ProfileType = "setup-token" if provider == "anthropic" else "api-key"
    while True:
        raw = io.ask(f"Type [setup-token/api-key] ({default}): ").strip() or default
        try:
            return parse_type(raw)
        except ValueError as exc:
            print(f"  {exc}", file=io.err)


def _choose_name(io: WizardIO, provider: str) -> str:
    while True:
        raw = io.ask(f"Name (the id becomes {provider}:NAME): ").strip()
        problem = name_problem(raw)
        if problem is None:
            return raw
        print(f"  {problem}", file=io.err)


def run_setup(opts: SetupOptions, io: WizardIO) -> SetupResult:
    """Ask for (or take from `opts`) one profile and merge it into the file.

    Interactive (`io.interactive`, which the caller sets only when stdin is
    a terminal and `--secret-stdin` was not given): asks for what the flags
    did not give; the secret is read with hidden input. Otherwise every
    answer comes from flags and the secret from stdin. The secret is never
    echoed or put into a message.
    Raises `WizardAborted`, `ProfilesFileError`, `ProfileExists`, ValueError.
    """
    ask = io.interactive
    if ask:
        print(
            f"Adding a profile to {opts.path}.\n"
            "The secret is read with hidden input and never shown again.",
            file=io.err,
        )
    if opts.provider:
        provider = normalise_provider(opts.provider)
        if not valid_provider(provider):
            raise ValueError(f"not a provider name: {opts.provider!r}")
    else:
        if not ask:
            raise _missing("--provider")
        provider = _choose_provider(io)
    if opts.name:
        problem = name_problem(opts.name)
        if problem:
            raise ValueError(problem)
        name = opts.name
    else:
        if not ask:
            raise _missing("--name")
        name = _choose_name(io, provider)
    profile_id = f"{provider}:{name}"

    # Refuse early, before the secret is typed: a broken file or a taken id.
    doc = read_profiles(_target(opts.path))
    if profile_id in doc.profiles and not opts.replace:
        raise ProfileExists(f"{profile_id} is already in {opts.path} (use --replace)")

    ptype: ProfileType | None = parse_type(opts.type) if opts.type else None
    if ptype is None and ask:
        ptype = _choose_type(io, provider)
    label = opts.label
    if label is None and ask:
        label = io.ask(f"Label ({name}): ").strip() or name

    if not ask:
        secret = io.read_stdin().strip()
    else:
        secret = io.ask_secret("Secret (input hidden): ").strip()
    if not secret:
        raise WizardAborted("no secret given")
    if ptype is None:
        ptype = guess_type(provider, secret)

    problem = shape_problem(provider, ptype, secret)
    if problem and not opts.force:
        if not ask:
            raise WizardAborted(f"{problem}; check it, or pass --force to save it anyway")
        print(f"warning: {problem}", file=io.err)
        if io.ask("Save it anyway? [y/N]: ").strip().lower() not in ("y", "yes"):
            raise WizardAborted("not saved")
    elif problem:
        print(f"warning: {problem} (saved anyway: --force)", file=io.err)

    replaced = add_profile(
        opts.path,
        profile_id,
        provider=provider,
        type=ptype,
        secret=secret,
        label=label,
        priority=opts.priority,
        replace=opts.replace,
    )
    return SetupResult(
        id=profile_id,
        path=str(_target(opts.path)),
        fingerprint=fingerprint(secret),
        replaced=replaced,
    )
