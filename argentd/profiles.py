"""Loading `auth-profiles.json` and the environment fallback into a `ProfileSet`.

Theory of operation: the file is opened once, its mode checked on the open
descriptor (a file group or others may access is refused, like ssh refuses an
open private key), and decoded to a map of raw JSON values. A top-level
`version` or `profiles` key marks the versioned store (ids always contain a
`:`, so neither can be a profile id of the flat map). Each profile is then
decoded on its own with a typed decoder (profile_entry.py), so a fault in
one profile skips that profile only and is reported with its id and JSON
path, while a fault of the file as a whole raises `ProfilesError`. After the
file's profiles come the environment fallback profiles (`provider:env`),
which sort after every file profile.

No message built here ever holds a field's value: secrets may sit in any
field of a broken file (a token pasted into `type`, an id's value that is a
bare string), so errors name the field and its JSON path and show only ids
and normalised provider names.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec

from argent_client.facts import (
    MAX_FILE_BYTES,
    MAX_SECRET_BYTES,
    TOKEN_RE,
    ReadFault,
    fallback_sources,
    id_is_shown,
    json_syntax_error,
    normalise_provider,
    read_bounded,
    shown_id,
    suggest_provider,
    utf8_error,
)

from .model import Profile, ProfileSet, Secret
from .profile_entry import ENV_PRIORITY, EntryReader
from .refs import ProfileFault as _Fault
from .refs import Resolver

__all__ = [
    "ENV_PRIORITY",
    "MAX_FILE_BYTES",
    "MAX_SECRET_BYTES",
    "ProfilesError",
    "env_profiles",
    "load_profiles",
    "profiles_file_exists",
]


class ProfilesError(Exception):
    """The profiles file as a whole is unusable.

    Unreadable, not JSON, the wrong shape or open to group/others. The
    message names the file and the JSON path of the fault, never a secret.
    """


# ---------------------------------------------------------------- schema


class _Store(msgspec.Struct):
    """The versioned store; `lastGood`, `usageStats` and the rest are ignored."""

    version: int
    profiles: dict[str, msgspec.Raw]
    order: dict[str, msgspec.Raw] = {}


_TOP: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_STORE: Final = msgspec.json.Decoder(_Store)
_ID_LIST: Final = msgspec.json.Decoder(list[str])


def _key(name: str, index: int) -> tuple[str, str]:
    """How map key `name`, the `index`-th (from 0), shows in a message: (name, path step).

    A key shaped like a profile id or a short name shows as itself
    (`"anthropic:a"`, `["anthropic:a"]`); anything else might be a secret
    pasted in the wrong place and shows as its position (`#3`, `[#3]`).
    """
    shown = shown_id(name, index)
    if shown == name:
        quoted = json.dumps(name)
        return quoted, f"[{quoted}]"
    return shown, f"[{shown}]"


def _rewrite(exc: msgspec.ValidationError, root: str) -> str:
    """msgspec's message with its path re-rooted at `root`, as `text - at path`.

    msgspec messages hold types and paths, never values.
    """
    msg = str(exc)
    text, sep, at = msg.rpartition(" - at `")
    if sep:
        path = root + at.rstrip("`")[1:]
    else:
        text, path = msg, root
    missing = re.fullmatch(r"Object missing required field `(.+)`", text)
    if missing:
        return f"{missing[1]} is required - at {path}.{missing[1]}"
    # Every optional field admits null; saying so would only add noise.
    text = text.replace("`", "").replace(" | null", "")
    return f"{text[:1].lower()}{text[1:]} - at {path}"


# ---------------------------------------------------------------- public API


def profiles_file_exists(path: Path) -> bool:
    """Whether the profiles file exists: `load_profiles` treats a missing one as empty."""
    return path.expanduser().exists()


def load_profiles(
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    check_mode: bool = True,
    cmd_timeout: float = 10.0,
) -> ProfileSet:
    """Load the profiles file at `path`, then the environment fallback of `environ`.

    `environ` defaults to `os.environ`; it feeds `env:` references and the
    fallback profiles. `check_mode` refuses a file with any group/other mode
    bit; `cmd_timeout` bounds each `cmd:` reference. A missing file gives the
    environment profiles only (see `profiles_file_exists`). Blocks while
    `cmd:` references run: call it from a worker thread in async code.

    Returns the profiles in file order then the environment's, the versioned
    store's `order` (validated, provider keys normalised), and one message
    per skipped profile or ignored `order` entry.
    Raises `ProfilesError` for a fault of the file as a whole.
    """
    path = path.expanduser()
    env: Mapping[str, str] = os.environ if environ is None else environ
    result = ProfileSet()
    data = _read(path, check_mode)
    file_ids: set[str] = set()
    raw_order: dict[str, msgspec.Raw] = {}
    if data is not None:
        loader = _Loader(path, env, cmd_timeout, result.errors)
        raw_order = loader.load(data, result.profiles, file_ids)
    result.profiles.extend(env_profiles(env, errors=result.errors))
    if raw_order:
        result.order = _order(raw_order, path, result, file_ids)
    return result


def env_profiles(
    environ: Mapping[str, str] | None = None, *, errors: list[str] | None = None
) -> list[Profile]:
    """The environment fallback profiles of `environ` (default `os.environ`).

    The first profile of a provider is `provider:env`, a second one (only
    anthropic has two: `ANTHROPIC_OAUTH_TOKEN`, then `ANTHROPIC_API_KEY`) is
    `provider:env-key`. An empty variable counts as unset. A value that
    cannot be a token is skipped, with a message appended to `errors`.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    out: list[Profile] = []
    seen: dict[str, int] = {}
    for provider, type_, names in fallback_sources():
        name = next((n for n in names if env.get(n, "").strip()), None)
        if name is None:
            continue
        value = env[name].strip()
        if not TOKEN_RE.fullmatch(value) or len(value) > MAX_SECRET_BYTES:
            if errors is not None:
                errors.append(
                    f"environment: {name} holds whitespace or characters a token"
                    " cannot have; ignored"
                )
            continue
        n = seen.get(provider, 0)
        seen[provider] = n + 1
        out.append(
            Profile(
                id=f"{provider}:env" if n == 0 else f"{provider}:env-key",
                provider=provider,
                type=type_,
                secret=Secret(value),
                label=name,
                priority=ENV_PRIORITY + n,
                source="env",
            )
        )
    return out


# ---------------------------------------------------------------- the file


def _read(path: Path, check_mode: bool) -> bytes | None:
    """The file's bytes, or None when it does not exist. Raises `ProfilesError`."""

    def private(st: os.stat_result) -> None:
        if check_mode and st.st_mode & 0o077:
            fix = shlex.quote(str(path.absolute()))
            raise ProfilesError(
                f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others"
                f" access this file of secrets; refusing it. Fix: chmod 600 {fix}"
            )

    try:
        return read_bounded(path, MAX_FILE_BYTES, check=private)
    except ReadFault as fault:
        why = None if fault.error is None else fault.error.strerror
        raise ProfilesError(f"{path}: " + {
            "open": f"cannot open: {why}",
            "type": "not a regular file",
            "read": f"cannot read: {why}",
            "size": f"larger than {MAX_FILE_BYTES} bytes",
        }[fault.stage]) from None


def _syntax_error(path: Path, data: bytes, detail: str) -> ProfilesError:
    """A `ProfilesError` for bytes msgspec could not parse: line and column, and the fault.

    msgspec counts bytes; the message says where in lines and columns, with
    the words `facts.json_syntax_error` uses (doctor says the same).
    """
    bad_text = utf8_error(data)
    if bad_text:
        return ProfilesError(f"{path}: {bad_text}")
    described = json_syntax_error(data.decode())
    if described is None:
        # Something stdlib json accepts and msgspec does not (NaN, a huge number).
        found = re.search(r"\(byte (\d+)\)", detail)
        offset = int(found[1]) if found else 0
        before = data[:offset]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        what = re.sub(r"\s*\(byte \d+\)", "", detail).lower()
        described = f"line {line} column {column}: {what}"
    return ProfilesError(f"{path}: not valid JSON: {described}")


class _Loader:
    """Turns one file's bytes into profiles (each entry's through `EntryReader`)."""

    def __init__(
        self, path: Path, environ: Mapping[str, str], cmd_timeout: float, errors: list[str]
    ) -> None:
        self.path = path
        self.entries = EntryReader(Resolver(path.absolute().parent, environ, cmd_timeout))
        self.errors = errors

    def load(self, data: bytes, out: list[Profile], file_ids: set[str]) -> dict[str, msgspec.Raw]:
        """Append the file's good profiles to `out` and every id to `file_ids`.

        Returns the versioned store's raw `order` (empty for the flat map).
        Raises `ProfilesError` for bad JSON, text that is not UTF-8 or the wrong shape.
        """
        try:
            # msgspec checks UTF-8 only in what it decodes; a raw profile value
            # would fail later, one profile at a time. It is a fault of the file.
            data.decode()
            top = _TOP.decode(data)
        except msgspec.ValidationError as exc:
            raise ProfilesError(f"{self.path}: {_rewrite(exc, '$')}") from None
        except (UnicodeDecodeError, msgspec.DecodeError) as exc:
            raise _syntax_error(self.path, data, str(exc)) from None
        except RecursionError:
            # msgspec raises it for JSON nested thousands deep: a fault of the file.
            raise ProfilesError(f"{self.path}: not valid JSON: nested too deeply") from None
        if "version" in top or "profiles" in top:
            try:
                store = _STORE.decode(data)
            except msgspec.ValidationError as exc:
                raise ProfilesError(f"{self.path}: {_rewrite(exc, '$')}") from None
            if store.version != 1:
                raise ProfilesError(
                    f"{self.path}: unsupported version {store.version}"
                    " (argentd reads version 1) - at $.version"
                )
            entries, root, is_store = store.profiles, "$.profiles", True
            order = store.order
        else:
            entries, root, is_store = top, "$", False
            order = {}
        for index, (pid, raw) in enumerate(entries.items()):
            file_ids.add(pid)
            shown, step = _key(pid, index)
            where = root + step
            try:
                out.append(self.entries.profile(pid, raw, where, is_store))
            except _Fault as fault:
                self.errors.append(
                    f"{self.path}: profile {shown}: {fault.text} - at {where}{fault.at}"
                )
            except msgspec.ValidationError as exc:
                self.errors.append(f"{self.path}: profile {shown}: {_rewrite(exc, where)}")
            else:
                typo = suggest_provider(out[-1].provider)
                if typo:
                    self.errors.append(
                        f"{self.path}: profile {shown}: unknown provider"
                        f' "{out[-1].provider}" (did you mean {typo}?); loaded anyway'
                        f" - at {where}.provider"
                    )
        return order

def _order(
    raw_order: dict[str, msgspec.Raw], path: Path, result: ProfileSet, file_ids: set[str]
) -> dict[str, list[str]]:
    """The store's `order` with provider keys normalised and only loaded ids kept.

    An id of a profile that was skipped is dropped quietly (its own error says
    why); an unknown id, one of another provider or a malformed entry is
    dropped with a message appended to `result.errors`.
    """
    by_id = {p.id: p for p in result.profiles}
    order: dict[str, list[str]] = {}
    for index, (key, raw) in enumerate(raw_order.items()):
        shown, step = _key(key, index)
        where = "$.order" + step
        head = f"{path}: order {shown}"
        try:
            ids = _ID_LIST.decode(raw)
        except msgspec.ValidationError as exc:
            result.errors.append(f"{head}: {_rewrite(exc, where)}; ignored")
            continue
        provider = normalise_provider(key)
        kept = order.setdefault(provider, [])
        for i, pid in enumerate(ids):
            profile = by_id.get(pid)
            if profile is None:
                if pid not in file_ids:
                    what = f"profile {json.dumps(pid)}" if id_is_shown(pid) else "entry"
                    result.errors.append(f"{head}: unknown {what}, ignored - at {where}[{i}]")
            elif profile.provider != provider:
                result.errors.append(
                    f"{head}: profile {json.dumps(pid)} belongs to provider"
                    f' "{profile.provider}", ignored - at {where}[{i}]'
                )
            elif pid not in kept:
                kept.append(pid)
    return {provider: ids for provider, ids in order.items() if ids}
