"""`state.json`: the engine's snapshot on disk, written atomically and never fatally.

`StateStore` reads and writes the file; what is in it is the engine's
business (a msgspec Struct or a dict, encoded with `msgspec.json`). A
missing file is a fresh start, a corrupt one is moved aside with a warning,
and a failing write (read-only folder, full disk) is one warning, not a
crash: the daemon keeps serving from memory and tries again later.

The folder is the user's own: `prepare()` creates it 0700, tightens a
folder of ours that group or others could write (another user may have
planted files in it: everything found there is checked), refuses one that
belongs to someone else, and removes the temp files a killed daemon left.
`load()` reads only a regular file of ours, not through a symlink, without
blocking on a FIFO, and at most `MAX_BYTES`; anything else is moved aside.

`Saver` is the trio side: the server calls `mark_dirty()` after each state
change, and `run()` writes the snapshot at most `delay` seconds after the
first change of a burst (a burst of changes is one write). Bound: a change
reaches the disk within `delay` seconds plus the duration of at most two
writes (one possibly in flight when it happened, then its own); while the
disk keeps failing, attempts are spaced `retry_delay` seconds apart.
`flush()` at shutdown writes whatever is pending.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

__all__ = ["MAX_BYTES", "Saver", "StateStore", "UnsafeStateFolder"]

log = logging.getLogger("argentd.state")

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
MAX_BYTES: Final = 64 * 1024 * 1024
"""A state file larger than this is not read (it is moved aside)."""


class UnsafeStateFolder(OSError):
    """The state folder belongs to another user; the message says which and what to do."""


class StateStore:
    """Reads and atomically writes one state file (normally `state.json`).

    No method raises for an I/O problem: failures are logged and reported in
    the return value.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failing = False
        """A write failed and was reported; the next failure stays quiet."""

    # ------------------------------------------------------------- reading

    def prepare(self) -> None:
        """Make the folder ours and private; remove temp files a killed daemon left.

        Raises `UnsafeStateFolder` when the folder belongs to another user. A
        folder that cannot be made (a file in its place, a read-only parent)
        is one warning: the daemon then keeps its state in memory.
        """
        folder = self.path.parent
        try:
            os.makedirs(folder, mode=DIR_MODE, exist_ok=False)
            os.chmod(folder, DIR_MODE)  # makedirs' mode is filtered by the umask
        except FileExistsError:
            pass
        except OSError as exc:
            self._report_failure(exc)
            return
        try:
            st = os.stat(folder)
        except OSError as exc:
            self._report_failure(exc)
            return
        if not stat.S_ISDIR(st.st_mode):
            self._report_failure(NotADirectoryError(errno.ENOTDIR, "not a directory"))
            return
        if st.st_uid != os.geteuid():
            raise UnsafeStateFolder(
                f"state folder {folder} belongs to uid {st.st_uid}, not to you (uid "
                f"{os.geteuid()}); remove it, or set XDG_STATE_HOME to a folder of your own")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            log.warning("state folder %s had mode %03o; setting it to 700 (what others may "
                        "have put in it is checked before use)", folder, mode)
            os.chmod(folder, DIR_MODE)
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Temp files of ours from a write that a kill interrupted."""
        prefix = f".{self.path.name}."
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix) and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.path.parent / name)
                    log.info("removed %s, left by an interrupted write", name)

    def load(self) -> dict[str, Any] | None:
        """The decoded file, or None when there is nothing usable.

        Missing file: None. Unreadable file: a warning, None. A file that is
        not a JSON object (bad JSON, empty, a list...), not a regular file
        of ours (a symlink, a FIFO, another user's file) or larger than
        `MAX_BYTES` is renamed to `state.json.corrupt-<UTC time>` with a
        warning, and None returned, so the next start does not trip over it
        again.
        """
        flags = (os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.move_aside("it is a symbolic link")
                return None
            log.warning("cannot read state file %s (%s); starting with a clean state",
                        self.path, exc.strerror or exc)
            return None
        try:
            st = os.fstat(fd)
            why = _not_ours(st)
            if why is None:
                data = _read_at_most(fd, MAX_BYTES)
        except OSError as exc:
            log.warning("cannot read state file %s (%s); starting with a clean state",
                        self.path, exc.strerror or exc)
            return None
        finally:
            os.close(fd)
        if why is not None:
            self.move_aside(why)
            return None
        try:
            decoded = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            self.move_aside(f"not valid JSON ({exc})")
            return None
        if not isinstance(decoded, dict):
            self.move_aside(f"top level is a JSON {type(decoded).__name__}, not an object")
            return None
        return decoded

    def move_aside(self, why: str, *, kept: str = "started with a clean state") -> None:
        """Rename the file to `<name>.corrupt-<UTC time>` and say so (`why`, then `kept`)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.replace(self.path, target)
        except OSError as exc:
            log.warning("state file %s is corrupt: %s; could not move it aside (%s); %s",
                        self.path, why, exc.strerror or exc, kept)
            return
        log.warning("state file %s is corrupt: %s; moved it to %s and %s", self.path, why,
                    target.name, kept)

    # ------------------------------------------------------------- writing

    @staticmethod
    def encode(snapshot: object) -> bytes:
        """`snapshot` (a msgspec Struct, dict, ...) as the bytes of the file.

        Raises `TypeError` / `msgspec.EncodeError` for an unencodable value
        (a bug, not an I/O fault).
        """
        return msgspec.json.format(msgspec.json.encode(snapshot), indent=1) + b"\n"

    def save(self, snapshot: object) -> bool:
        """Encode `snapshot` and `write` it. True when it is on disk; never raises."""
        try:
            data = self.encode(snapshot)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            log.error("cannot encode the state snapshot: %s", exc)
            return False
        return self.write(data)

    def write(self, data: bytes) -> bool:
        """Replace the file with `data` atomically. True on success; never raises.

        Temp file in the same folder (created 0600), write, fsync, rename over
        the file, fsync the folder: after a crash the file is the old or the
        new content, never a mix. A missing folder is created 0700. An
        `OSError` is logged as one warning until a write succeeds again.
        """
        folder = self.path.parent
        tmp: str | None = None
        try:
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
            try:
                os.fchmod(fd, FILE_MODE)  # mkstemp says 0600 already; be explicit
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            tmp = None
            fsync_dir(folder)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._report_failure(exc)
            return False
        if self._failing:
            self._failing = False
            log.info("state file %s written again", self.path)
        return True

    def _report_failure(self, exc: OSError) -> None:
        if self._failing:
            log.debug("state file %s still not writable: %s", self.path, exc)
            return
        self._failing = True
        log.warning("cannot write state file %s (%s); keeping state in memory and "
                    "retrying later", self.path, exc.strerror or exc)


def _not_ours(st: os.stat_result) -> str | None:
    """Why an open state file must not be read, or None when it may."""
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid != os.geteuid():
        return f"it belongs to uid {st.st_uid}, not to you"
    if st.st_size > MAX_BYTES:
        return f"it is {st.st_size} bytes, more than the {MAX_BYTES} a state file may be"
    return None


def _read_at_most(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes of `fd` (a file that grew while read is cut there)."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def fsync_dir(folder: Path) -> None:
    """fsync `folder` so the rename itself is durable; some filesystems refuse (ignored)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


async def _to_thread(write: Callable[[bytes], bool], data: bytes) -> bool:
    return await trio.to_thread.run_sync(write, data)


def _now() -> float:
    """trio's clock; outside `trio.run` (a change before the loop starts) "long ago"."""
    try:
        return trio.current_time()
    except RuntimeError:
        return -float("inf")


class Saver:
    """Writes the engine's snapshot shortly after changes, off the event loop.

    `snapshot` is called in the trio thread (the engine is not thread-safe)
    and its result encoded there; only the file I/O runs in a worker thread.
    """

    def __init__(
        self,
        store: StateStore,
        snapshot: Callable[[], object],
        *,
        delay: float = 0.5,
        retry_delay: float = 30.0,
        in_thread: Callable[[Callable[[bytes], bool], bytes], Awaitable[bool]] | None = None,
    ) -> None:
        self.store = store
        self.snapshot = snapshot
        self.delay = delay
        self.retry_delay = retry_delay
        self._in_thread = in_thread or _to_thread
        """Runs the blocking write; tests pass an inline runner to keep fake time exact."""
        self._dirty_since: float | None = None
        self._not_before = -float("inf")
        self._wakeup = trio.Event()
        self._write_lock = trio.Lock()

    @property
    def dirty(self) -> bool:
        """Whether a change is waiting to be written."""
        return self._dirty_since is not None

    def mark_dirty(self) -> None:
        """Note a state change (cheap; call it from the trio thread after each change)."""
        if self._dirty_since is None:
            self._dirty_since = _now()
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write pending changes until cancelled; call `flush()` after it ends."""
        task_status.started()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._dirty_since is not None:
                await trio.sleep_until(max(self._dirty_since + self.delay, self._not_before))
                await self._write_pending()

    async def flush(self) -> bool:
        """Write now if a change is pending (after any write in flight). True when
        nothing is left unwritten."""
        return await self._write_pending()

    async def save_now(self) -> bool:
        """Write the current snapshot now, pending changes or not. True on success."""
        if self._dirty_since is None:
            self._dirty_since = _now()
        return await self._write_pending()

    async def _write_pending(self) -> bool:
        async with self._write_lock:
            if self._dirty_since is None:
                return True  # a concurrent flush wrote it while we waited
            since = self._dirty_since
            self._dirty_since = None
            attempt = trio.current_time()
            try:
                data = self.store.encode(self.snapshot())
            except Exception:
                log.exception("cannot take the state snapshot")
                return False
            ok = await self._in_thread(self.store.write, data)
            if not ok:
                # Keep the change pending, but do not hammer a failing disk.
                if self._dirty_since is None:
                    self._dirty_since = since
                self._not_before = attempt + self.retry_delay
            return ok
