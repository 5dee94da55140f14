"""`credentials.json`, where refreshed OAuth pairs live, and the tools' login files.

Theory of operation: the token endpoint hands out single-use refresh
tokens, so a pair it returned must be on disk before anyone sees it (a
restart would otherwise present the spent token, and the provider revokes
the whole chain on reuse). `CredentialsStore.save` writes a temp file 0600
in the same folder, fsyncs it, renames it over the file and fsyncs the
folder: after a crash the file is the old or the new content, never half.
It is the only file argentd writes secrets to.

The file is refused, like the profiles file, when group or others may read
it, when it is not a regular file, or when it does not decode; a refused
file is never overwritten (it may hold the only live refresh token), and the
message says how to fix it.

Shape (one entry per profile id; hashes are `refresh_hash`, never tokens):

    {"version": 1, "logins": {"anthropic:max": {
        "origin": hash of the refresh token the chain began with (the profiles file's),
        "replaced": hash of the refresh token this pair replaced,
        "retired": hashes of the chain's spent refresh tokens (newest last),
        "access", "refresh", "expires" (Unix s), "account_id", "id_token",
        "refreshed_at", "revoked": hash of a refresh token the endpoint refused}}}

A tool's own login file (`source`) is written back with `write_source_cas`:
only if it still holds the refresh token argentd used, atomically, with its
mode kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from argent_client.oauth_sources import (
    MAX_SOURCE_BYTES,
    SourceLogin,
    parse_source,
    update_source,
)

from .oauth_profile import OAuthSource
from .state import fsync_dir

MAX_BYTES: Final = 8 * 1024 * 1024
RETIRED_KEPT: Final = 32


class CredentialsError(Exception):
    """credentials.json is refused; the message names the file and the fix, never a token."""


class StoredLogin(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    origin: str
    access: str | None = None
    refresh: str | None = None
    expires: float | None = None
    account_id: str | None = None
    id_token: str | None = None
    replaced: str | None = None
    retired: list[str] = []
    refreshed_at: float | None = None
    revoked: str | None = None

    def __repr__(self) -> str:
        return f"StoredLogin(origin={self.origin!r}, expires={self.expires!r})"

    __str__ = __repr__


class _File(msgspec.Struct, forbid_unknown_fields=True):
    version: int = 1
    logins: dict[str, StoredLogin] = {}


_DECODER: Final = msgspec.json.Decoder(_File)
_ENCODER: Final = msgspec.json.Encoder()


def _write_temp(path: Path, data: bytes, mode: int) -> str:
    """`data` in a new temp file of `mode` beside `path`, fsynced; returns its path.
    Raises OSError (and leaves no temp file)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Temp file `mode` beside `path`, fsync, rename over it, fsync the folder. Raises OSError."""
    folder = path.parent
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


class CredentialsStore:
    """Reads and atomically writes one credentials.json; `lock()` serialises refreshes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(f".{path.name}.lock")

    def load(self) -> dict[str, StoredLogin]:
        """The stored logins by profile id; {} when the file does not exist.

        Raises `CredentialsError` for a refused file (open mode, not a regular
        file, unreadable, corrupt).
        """
        fix_path = shlex.quote(str(self.path))
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CredentialsError(
                f"{self.path}: cannot open: {exc.strerror}; refreshed OAuth logins are not "
                f"used or refreshed until it can be read (it must be a regular file you own, "
                f"mode 0600)") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CredentialsError(f"{self.path}: not a regular file; refusing it. "
                                       f"Fix: move it away (mv {fix_path} {fix_path}.bad)")
            if st.st_mode & 0o077:
                raise CredentialsError(
                    f"{self.path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
                    f"read this file of OAuth secrets; refusing it (no OAuth login is "
                    f"refreshed meanwhile). Fix: chmod 600 {fix_path}")
            with open(fd, "rb", closefd=False) as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise CredentialsError(f"{self.path}: cannot read: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(data) > MAX_BYTES:
            raise CredentialsError(f"{self.path}: larger than {MAX_BYTES} bytes; refusing it")
        try:
            return _DECODER.decode(data).logins
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise CredentialsError(
                f"{self.path}: corrupt ({_no_values(exc)}); refusing it (no OAuth login is "
                f"refreshed meanwhile). Fix: move it aside (mv {fix_path} {fix_path}.bad); "
                f"argentd then starts again from the logins in the profiles file, and a "
                f"login it had already refreshed must be imported again "
                f"(`argentctl profiles import …`)") from None

    def save(self, logins: dict[str, StoredLogin]) -> None:
        """Replace the file with `logins` (0600, atomic, fsynced). Raises OSError."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = _ENCODER.encode(_File(logins=logins)) + b"\n"
        _write_atomic(self.path, data, 0o600)

    def acquire(self) -> int:
        """Take the exclusive lock (blocking); returns the descriptor to `release`.

        Held from reading the file through the token endpoint's answer to
        writing it: two daemons of one user that hold the same login take
        turns, and the second re-reads the file and finds the pair the first
        stored instead of spending the same refresh token again.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """`acquire` ... `release` as a context manager (blocking)."""
        fd = self.acquire()
        try:
            yield
        finally:
            self.release(fd)


def _no_values(exc: Exception) -> str:
    """msgspec's message (types and paths, never values) without backticks."""
    return str(exc).replace("`", "")


def retire(stored: StoredLogin | None, spent: str) -> list[str]:
    """The chain's spent refresh-token hashes plus `spent`, newest last, bounded."""
    old = [h for h in (stored.retired if stored else []) if h != spent]
    return [*old, spent][-RETIRED_KEPT:]


# ------------------------------------------------------------ the tools' files


def read_source(src: OAuthSource) -> tuple[bytes, SourceLogin]:
    """The bytes and the login of a tool's file. Raises OSError or `SourceError`."""
    with open(src.path, "rb") as f:
        data = f.read(MAX_SOURCE_BYTES + 1)
    return data, parse_source(src.format, data)


def write_source_cas(src: OAuthSource, expected_refresh: str | None, login: SourceLogin,
                     *, now: float) -> bool:
    """Write `login` into the tool's file if it still holds `expected_refresh`.

    Keeps every other field and the file's mode; atomic. False when the
    file holds another refresh token (the tool moved on: nothing is
    written). Raises OSError or `SourceError`.
    """
    target = Path(os.path.realpath(src.path))
    real = OAuthSource(src.format, target, src.shown)
    data, current = read_source(real)
    if current.refresh != expected_refresh:
        return False
    new = update_source(src.format, data, login, now=now)
    mode = stat.S_IMODE(os.stat(target).st_mode)
    folder = target.parent
    tmp = _write_temp(target, new, mode)
    try:
        # Compare and swap: the tool may have written between our read and now.
        with open(target, "rb") as f:
            if f.read(MAX_SOURCE_BYTES + 1) != data:
                os.unlink(tmp)
                return False
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return True
