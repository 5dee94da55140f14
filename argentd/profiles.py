"""Loading `auth-profiles.json` and the environment fallback into a `ProfileSet`.

Theory of operation: the file is opened once, its mode checked on the open
descriptor (a file group or others may access is refused, like ssh refuses an
open private key), and decoded to a map of raw JSON values. A top-level
`version` or `profiles` key marks the versioned store (ids always contain a
`:`, so neither can be a profile id of the flat map). Each profile is then
decoded on its own with a typed decoder, so a fault in one profile skips that
profile only and is reported with its id and JSON path, while a fault of the
file as a whole raises `ProfilesError`. After the file's profiles come the
environment fallback profiles (`provider:env`), which sort after every file
profile.

No message built here ever holds a field's value: secrets may sit in any
field of a broken file (a token pasted into `type`, an id's value that is a
bare string), so errors name the field and its JSON path and show only ids
and normalised provider names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shlex
import signal
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec

from argent_client.protocol import ProfileType

from .model import TYPE_ALIASES, Profile, ProfileSet, Secret, normalise_provider

ENV_PRIORITY: Final = 1 << 30
"""Priority of environment fallback profiles; file priorities must stay below it."""

RESERVED_NAMES: Final = frozenset({"env", "env-key"})
"""Profile names kept for the environment fallback (`anthropic:env`, `anthropic:env-key`)."""

ENV_SOURCES: Final[tuple[tuple[str, ProfileType, tuple[str, ...]], ...]] = (
    ("anthropic", "setup-token", ("ANTHROPIC_OAUTH_TOKEN",)),
    ("anthropic", "api-key", ("ANTHROPIC_API_KEY",)),
    ("openai", "api-key", ("OPENAI_API_KEY",)),
    ("openrouter", "api-key", ("OPENROUTER_API_KEY",)),
    ("minimax", "api-key", ("MINIMAX_API_KEY",)),
    ("zai", "api-key", ("ZAI_API_KEY", "Z_AI_API_KEY")),
    ("google", "api-key", ("GEMINI_API_KEY",)),
)
"""Environment fallback, in order: provider, type, variables (the first set one wins)."""

MAX_FILE_BYTES: Final = 8 * 1024 * 1024
MAX_SECRET_BYTES: Final = 64 * 1024
_MS_THRESHOLD: Final = 1e11
"""A numeric `expires` above this is milliseconds (1e11 s is the year 5138)."""

_PROVIDER_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWN_KEY: Final = re.compile(r"[^\x00-\x1f]{1,24}|[^:\x00-\x1f]{1,32}:[^\x00-\x1f]{1,64}")
"""Keys shown in messages: short names, or `provider:name` ids. Secrets are longer."""
_TOKEN_RE: Final = re.compile(r"[\x21-\x7e]+")
"""Printable ASCII without spaces: anything else would corrupt an HTTP header."""
_STORE_SECRET_FIELD: Final[dict[ProfileType, str]] = {
    "api-key": "key",
    "setup-token": "token",
    "oauth": "access",
}


class ProfilesError(Exception):
    """The profiles file as a whole is unusable.

    Unreadable, not JSON, the wrong shape or open to group/others. The
    message names the file and the JSON path of the fault, never a secret.
    """


# ---------------------------------------------------------------- schema


class _FlatProfile(msgspec.Struct):
    """One profile of the flat map. Unknown fields are tolerated (and never read)."""

    provider: str | None = None
    type: str | None = None
    token: str | None = None
    token_ref: str | None = None
    label: str | None = None
    priority: int = 0
    max_concurrent: int | None = None
    disabled: bool = False
    models: list[str] | None = None
    expires: float | str | None = None


class _StoreProfile(_FlatProfile):
    """One profile of the versioned store: the secret sits in `key`/`token`/`access`."""

    key: str | None = None
    access: str | None = None


class _Store(msgspec.Struct):
    """The versioned store; `lastGood`, `usageStats` and the rest are ignored."""

    version: int
    profiles: dict[str, msgspec.Raw]
    order: dict[str, msgspec.Raw] = {}


_TOP: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_STORE: Final = msgspec.json.Decoder(_Store)
_FLAT_PROFILE: Final = msgspec.json.Decoder(_FlatProfile)
_STORE_PROFILE: Final = msgspec.json.Decoder(_StoreProfile)
_ID_LIST: Final = msgspec.json.Decoder(list[str])


class _Fault(Exception):
    """A fault inside one profile: `text` and the path below the profile (`.token`)."""

    def __init__(self, text: str, at: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.at = at


def _key(name: str, index: int) -> tuple[str, str]:
    """How map key `name`, the `index`-th (from 0), shows in a message: (name, path step).

    A key shaped like a profile id or a short name shows as itself
    (`"anthropic:a"`, `["anthropic:a"]`); anything else might be a secret
    pasted in the wrong place and shows as its position (`#3`, `[#3]`).
    """
    if _SHOWN_KEY.fullmatch(name):
        quoted = json.dumps(name)
        return quoted, f"[{quoted}]"
    return f"#{index + 1}", f"[#{index + 1}]"


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


def resolve_ref(ref: str, environ: Mapping[str, str], folder: Path,
                cmd_timeout: float = 10.0) -> str:
    """The secret an `env:NAME`, `file:PATH` or `cmd:COMMAND` reference points to
    (a relative path from `folder`). Raises ValueError, whose text holds no secret."""
    try:
        return _Loader(folder / "-", environ, cmd_timeout, []).resolve(ref)
    except _Fault as exc:
        raise ValueError(exc.text.replace("token_ref", "reference")) from None


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
    for provider, type_, names in ENV_SOURCES:
        name = next((n for n in names if env.get(n, "").strip()), None)
        if name is None:
            continue
        value = env[name].strip()
        if not _TOKEN_RE.fullmatch(value) or len(value) > MAX_SECRET_BYTES:
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
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the load.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProfilesError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProfilesError(f"{path}: not a regular file")
        # Checked on the open descriptor so a chmod race cannot slip past it.
        if check_mode and st.st_mode & 0o077:
            fix = shlex.quote(str(path.absolute()))
            raise ProfilesError(
                f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others"
                f" access this file of secrets; refusing it. Fix: chmod 600 {fix}"
            )
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ProfilesError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ProfilesError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    return data


class _Loader:
    """Turns one file's bytes into profiles; keeps what every profile needs."""

    def __init__(
        self, path: Path, environ: Mapping[str, str], cmd_timeout: float, errors: list[str]
    ) -> None:
        self.path = path
        self.folder = path.absolute().parent
        self.environ = environ
        self.cmd_timeout = cmd_timeout
        self.errors = errors

    def load(self, data: bytes, out: list[Profile], file_ids: set[str]) -> dict[str, msgspec.Raw]:
        """Append the file's good profiles to `out` and every id to `file_ids`.

        Returns the versioned store's raw `order` (empty for the flat map).
        Raises `ProfilesError` for bad JSON or the wrong shape.
        """
        try:
            top = _TOP.decode(data)
        except msgspec.ValidationError as exc:
            raise ProfilesError(f"{self.path}: {_rewrite(exc, '$')}") from None
        except msgspec.DecodeError as exc:
            raise ProfilesError(f"{self.path}: not valid JSON: {exc}") from None
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
                out.append(self.profile(pid, raw, where, is_store))
            except _Fault as fault:
                self.errors.append(
                    f"{self.path}: profile {shown}: {fault.text} - at {where}{fault.at}"
                )
            except msgspec.ValidationError as exc:
                self.errors.append(f"{self.path}: profile {shown}: {_rewrite(exc, where)}")
        return order

    def profile(self, pid: str, raw: msgspec.Raw, where: str, is_store: bool) -> Profile:
        """Build the profile `pid`. Raises `_Fault` or `msgspec.ValidationError`."""
        id_provider, sep, name = pid.partition(":")
        if not sep or not id_provider.strip() or not name.strip():
            raise _Fault('the id must be "provider:name"')
        if name in RESERVED_NAMES:
            raise _Fault(f'the name "{name}" is reserved for the environment fallback')
        p = (_STORE_PROFILE if is_store else _FLAT_PROFILE).decode(raw)
        if p.provider is None:
            raise _Fault("provider is required", ".provider")
        provider = normalise_provider(p.provider)
        if not _PROVIDER_RE.fullmatch(provider):
            raise _Fault(
                "provider must be 1-32 letters, digits, '-' or '_' (aliases: z.ai, z-ai, gemini)",
                ".provider",
            )
        if normalise_provider(id_provider) != provider:
            # The value itself is not shown: it may be a secret pasted in the wrong field.
            shown = json.dumps(normalise_provider(id_provider) + ":")
            raise _Fault(f"provider does not match the id's {shown} part", ".provider")
        if p.type is None:
            raise _Fault("type is required", ".type")
        type_ = TYPE_ALIASES.get(p.type.strip().lower())
        if type_ is None:
            raise _Fault(
                "type must be setup-token, api-key or oauth (aliases: token, setup_token, api_key)",
                ".type",
            )
        if not -ENV_PRIORITY < p.priority < ENV_PRIORITY:
            raise _Fault(
                f"priority must be between {-ENV_PRIORITY + 1} and {ENV_PRIORITY - 1}", ".priority"
            )
        if p.max_concurrent is not None and p.max_concurrent < 1:
            raise _Fault("max_concurrent must be at least 1", ".max_concurrent")
        models: frozenset[str] | None = None
        if p.models is not None:
            if not p.models:
                raise _Fault(
                    "models must not be empty (leave it out to serve any model)", ".models"
                )
            for i, model in enumerate(p.models):
                if not model.strip():
                    raise _Fault(f"models[{i}] is empty", f".models[{i}]")
            models = frozenset(m.strip() for m in p.models)
        expires = _expires(p.expires)
        # The secret comes last: a `cmd:` reference runs only for an otherwise good profile.
        secret = self.secret(p, _STORE_SECRET_FIELD[type_] if is_store else "token")
        label = p.label.strip() if p.label and p.label.strip() else name
        return Profile(
            id=pid,
            provider=provider,
            type=type_,
            secret=Secret(secret),
            label=label,
            priority=p.priority,
            max_concurrent=p.max_concurrent,
            disabled=p.disabled,
            models=models,
            expires=expires,
            source="profile",
        )

    def secret(self, p: _FlatProfile, field: str) -> str:
        """The literal in `field` or the resolved `token_ref`. Raises `_Fault`."""
        literal: str | None = getattr(p, field)
        if literal is not None and p.token_ref is not None:
            raise _Fault(f"give {field} or token_ref, not both", ".token_ref")
        if p.token_ref is not None:
            return self.resolve(p.token_ref)
        if literal is None:
            raise _Fault(f"{field} is required", f".{field}")
        return _checked(literal.strip(), field, f".{field}")

    def resolve(self, ref: str) -> str:
        """The secret `ref` (`env:NAME`, `file:PATH`, `cmd:COMMAND`) points to.

        Raises `_Fault` whose text holds neither the secret nor the command's
        output (nor the command, which may itself embed a secret).
        """
        at = ".token_ref"
        scheme, sep, arg = ref.partition(":")
        arg = arg.strip()
        if not sep or scheme not in ("env", "file", "cmd"):
            raise _Fault('token_ref must start with "env:", "file:" or "cmd:"', at)
        if scheme == "env":
            if not _ENV_NAME_RE.fullmatch(arg):
                raise _Fault("token_ref env: needs a variable name", at)
            value = self.environ.get(arg, "").strip()
            if not value:
                raise _Fault(f"token_ref environment variable {arg} is not set or empty", at)
            return _checked(value, f"token_ref environment variable {arg}", at)
        if scheme == "file":
            if not arg:
                raise _Fault("token_ref file: needs a path", at)
            return self.read_secret_file(Path(arg).expanduser(), at)
        if not arg:
            raise _Fault("token_ref cmd: needs a command", at)
        return self.run(arg, at)

    def read_secret_file(self, target: Path, at: str) -> str:
        """The secret in file `target`, minus one trailing newline. Raises `_Fault`."""
        target = target if target.is_absolute() else self.folder / target
        what = f"token_ref file {target}"
        try:
            with target.open("rb") as f:
                data = f.read(MAX_SECRET_BYTES + 1)
        except FileNotFoundError:
            raise _Fault(f"{what} does not exist", at) from None
        except OSError as exc:
            raise _Fault(f"{what} cannot be read: {exc.strerror}", at) from None
        if len(data) > MAX_SECRET_BYTES:
            raise _Fault(f"{what} is larger than {MAX_SECRET_BYTES} bytes", at)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise _Fault(f"{what} is not UTF-8 text", at) from None
        text = text.removesuffix("\n").removesuffix("\r")
        if not text:
            raise _Fault(f"{what} is empty", at)
        return _checked(text, f"{what} (one trailing newline is removed)", at)

    def run(self, command: str, at: str) -> str:
        """The stripped stdout of `/bin/sh -c command`. Raises `_Fault`."""
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                # stderr could echo what the command printed; it is dropped.
                stderr=subprocess.DEVNULL,
                cwd=self.folder,
                # Its own process group, so a timeout kills the shell's children
                # too and nobody keeps the pipe open.
                start_new_session=True,
            )
        except OSError as exc:
            raise _Fault(f"token_ref command could not start: {exc.strerror}", at) from None
        try:
            out, _ = proc.communicate(timeout=self.cmd_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise _Fault(f"token_ref command timed out after {self.cmd_timeout:g} s", at) from None
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        if proc.returncode < 0:
            raise _Fault(f"token_ref command was killed by signal {-proc.returncode}", at)
        if proc.returncode != 0:
            raise _Fault(f"token_ref command exited with status {proc.returncode}", at)
        try:
            text = out.decode().strip()
        except UnicodeDecodeError:
            raise _Fault("token_ref command printed text that is not UTF-8", at) from None
        if not text:
            raise _Fault("token_ref command printed nothing", at)
        if not _TOKEN_RE.fullmatch(text) or len(text) > MAX_SECRET_BYTES:
            raise _Fault(
                "token_ref command output is not a single token (print only the"
                " secret, e.g. end the command with `| head -n 1`)",
                at,
            )
        return text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _checked(value: str, what: str, at: str) -> str:
    """`value` if it can be a token. Raises `_Fault` (without the value) if not."""
    if not value:
        raise _Fault(f"{what} is empty", at)
    if len(value) > MAX_SECRET_BYTES:
        raise _Fault(f"{what} is longer than {MAX_SECRET_BYTES} characters", at)
    if not _TOKEN_RE.fullmatch(value):
        raise _Fault(f"{what} holds whitespace or characters a token cannot have", at)
    return value


def _expires(value: float | str | None) -> float | None:
    """Unix seconds of an `expires` value; 0 and null mean none. Raises `_Fault`.

    Numbers above 1e11 are milliseconds (what the versioned store writes),
    smaller ones seconds; a string is ISO-8601, UTC when it has no offset.
    """
    at = ".expires"
    if value is None:
        return None
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Fault(
                "expires must be Unix seconds, Unix milliseconds or an ISO-8601 date", at
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()
    if value != value or value < 0 or value == float("inf"):
        raise _Fault("expires must not be negative", at)
    if value == 0:
        return None
    return value / 1000 if value > _MS_THRESHOLD else float(value)


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
                    what = f"profile {json.dumps(pid)}" if _SHOWN_KEY.fullmatch(pid) else "entry"
                    result.errors.append(f"{head}: unknown {what}, ignored - at {where}[{i}]")
            elif profile.provider != provider:
                result.errors.append(
                    f"{head}: profile {json.dumps(pid)} belongs to provider"
                    f' "{profile.provider}", ignored - at {where}[{i}]'
                )
            elif pid not in kept:
                kept.append(pid)
    return {provider: ids for provider, ids in order.items() if ids}
