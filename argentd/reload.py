"""Watch files (the profiles file, `argentd.toml`) and call back when one changes.

Theory of operation. Editors save by writing a temp file and renaming it over
the original, which replaces the inode: a watch on the file itself goes
deaf after the first save. So each file is watched through its *parent
folder* (non-recursively, with watchfiles' Rust notifier), and only events
naming the file count. One task per folder; files in one folder share it.

A folder can vanish (deleted, renamed, not created yet). Then the task
watches the nearest existing ancestor instead, re-arms one level deeper each
time a component appears, and re-arms on the folder itself once it exists
again. Every `recheck` seconds (1 s) and after every batch of events the
task also checks that the armed folder is still the same inode, which
catches a folder replaced without an event reaching us.

Nothing is lost between two watches: each file's signature (inode, size,
times, mode) is kept, and after every (re-)arm the task compares it and
calls back if the file changed while no watch was in place. If the
notifier cannot be set up at all (no inotify watches left, a permission
problem) the task falls back to comparing signatures every `recheck` seconds.

Stopping: the watch thread checks a flag every 50 ms; setting `stop_event`
or cancelling the task raises it, so shutdown does not wait for the
thread's timeout.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeAlias

import trio
from watchfiles._rust_notify import RustNotify

__all__ = ["EventLike", "OnChange", "watch_file", "watch_files"]

log = logging.getLogger("argentd.reload")

OnChange: TypeAlias = Callable[[], Awaitable[None] | None]

STEP_MS: Final = 50
"""How often the watch thread looks at the stop flag (and the quiet gap that ends a batch)."""
RECHECK: Final = 1.0
"""Seconds between checks that the armed folder is still the one on disk."""

_Signature: TypeAlias = tuple[int, int, int, int, int, int] | None


class EventLike(Protocol):
    """`trio.Event` or anything with the same `is_set` / `wait`."""

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


class _StopFlag:
    """What the watch thread polls (via `is_set`) to return early."""

    def __init__(self) -> None:
        self.raised = False

    def is_set(self) -> bool:
        return self.raised


async def watch_file(
    path: Path,
    on_change: OnChange,
    *,
    stop_event: EventLike | None = None,
    debounce_ms: int = 50,
    recheck: float = RECHECK,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`watch_files([path], ...)`: call `on_change()` whenever `path` changes."""
    await watch_files(
        [path],
        on_change,
        stop_event=stop_event,
        debounce_ms=debounce_ms,
        recheck=recheck,
        task_status=task_status,
    )


async def watch_files(
    paths: Sequence[Path],
    on_change: OnChange,
    *,
    stop_event: EventLike | None = None,
    debounce_ms: int = 50,
    recheck: float = RECHECK,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call `on_change()` (sync or async) after any of `paths` is written, replaced,
    created, deleted or has its mode changed.

    Changes within `debounce_ms` of each other are one call; calls for one
    folder never overlap. An exception from `on_change` is logged and the
    watch goes on. A path that is a symlink is watched as well through its
    target's folder (re-pointing the symlink later is seen, the new target's
    folder is not). `task_status.started()` is called once every folder is
    armed, so a change made after `nursery.start` returns is seen.

    Returns when `stop_event` is set; stops promptly when cancelled.
    """
    stop: EventLike = stop_event if stop_event is not None else trio.Event()
    groups: dict[Path, set[str]] = {}
    for path in paths:
        full = Path(os.path.abspath(path))
        targets = [full]
        if full.is_symlink():
            targets.append(full.resolve())
        for target in targets:
            groups.setdefault(target.parent, set()).add(target.name)
    # Each folder's watch thread is busy for the whole run: give them threads of
    # their own rather than seats in trio's shared default pool.
    limiter = trio.CapacityLimiter(len(groups) or 1)
    async with trio.open_nursery() as nursery:
        for folder, names in groups.items():
            watcher = _FolderWatch(folder, frozenset(names), on_change, stop,
                                   debounce_ms=debounce_ms, recheck=recheck, limiter=limiter)
            await nursery.start(watcher.run)
        task_status.started()


class _FolderWatch:
    """Watches one folder for changes to some of its files; see the module docstring."""

    def __init__(
        self,
        folder: Path,
        names: frozenset[str],
        on_change: OnChange,
        stop: EventLike,
        *,
        debounce_ms: int,
        recheck: float,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.folder = folder
        self.limiter = limiter
        self.names = names
        self.on_change = on_change
        self.stop = stop
        self.debounce_ms = max(1, debounce_ms)
        self.step_ms = min(STEP_MS, self.debounce_ms)
        self.recheck = recheck
        self.force_polling = False
        self.signatures = self._signatures()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        while not self.stop.is_set():
            target = _nearest_existing(self.folder)
            notifier = self._arm(target)
            if not started:
                task_status.started()
                started = True
            try:
                if target == self.folder:
                    # Whatever happened while nothing watched this folder.
                    await self._fire_if_changed()
                if notifier is None:
                    await self._pause()  # polling fallback
                    if target == self.folder and not self.stop.is_set():
                        await self._fire_if_changed()
                    continue
                if _nearest_existing(self.folder) != target:
                    continue  # a deeper folder appeared while arming
                await self._watch(notifier, target)
            finally:
                if notifier is not None:
                    notifier.close()

    def _arm(self, target: Path) -> RustNotify | None:
        """A notifier on `target`, or None (then the caller polls)."""
        try:
            notifier = RustNotify([str(target)], False, self.force_polling, 300, False, False)
        except FileNotFoundError:
            return None  # vanished in between; the next round looks again
        except OSError as exc:
            if self.force_polling:
                log.warning("cannot watch %s (%s); checking it every %.0f s",
                            target, exc.strerror or exc, self.recheck)
                return None
            log.warning("cannot watch %s with file notifications (%s); polling it instead",
                        target, exc.strerror or exc)
            self.force_polling = True
            return self._arm(target)
        if target != self.folder:
            log.debug("%s does not exist; watching %s until it does", self.folder, target)
        else:
            log.debug("watching %s for %s", target, ", ".join(sorted(self.names)))
        return notifier

    async def _watch(self, notifier: RustNotify, target: Path) -> None:
        """Serve one armed notifier until the folder needs re-arming or we stop."""
        armed_id = _dir_id(target)
        while True:
            result = await self._next_batch(notifier)
            if result == "stop" or self.stop.is_set():
                return
            if target == self.folder and isinstance(result, set) and self._relevant(result):
                await self._fire()
            if _dir_id(target) != armed_id or _nearest_existing(self.folder) != target:
                return

    async def _next_batch(
        self, notifier: RustNotify
    ) -> set[tuple[int, str]] | Literal["signal", "stop", "timeout"]:
        """The next batch of raw events from the watch thread (or why there is none)."""
        flag = _StopFlag()

        async def relay() -> None:
            try:
                await self.stop.wait()
            finally:  # also on cancellation: the thread must return for us to stop
                flag.raised = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay)
            result = await trio.to_thread.run_sync(
                notifier.watch, self.debounce_ms, self.step_ms,
                max(1, int(self.recheck * 1000)), flag,
                limiter=self.limiter,
            )
            nursery.cancel_scope.cancel()
        return result

    def _relevant(self, changes: set[tuple[int, str]]) -> bool:
        folder = str(self.folder)
        return any(
            os.path.basename(p) in self.names and os.path.normpath(p) != folder
            for _, p in changes
        )

    def _signatures(self) -> dict[str, _Signature]:
        return {name: _signature(self.folder / name) for name in self.names}

    async def _fire_if_changed(self) -> None:
        if self._signatures() != self.signatures:
            await self._fire()

    async def _fire(self) -> None:
        # Taken before the call: a change during the call is a new event.
        self.signatures = self._signatures()
        try:
            result = self.on_change()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("handling a change in %s failed", self.folder)

    async def _pause(self) -> None:
        with trio.move_on_after(self.recheck):
            await self.stop.wait()


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _dir_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _nearest_existing(folder: Path) -> Path:
    """`folder` if it is a directory, else its closest ancestor that is."""
    current = folder
    while not current.is_dir() and current.parent != current:
        current = current.parent
    return current
