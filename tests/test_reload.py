"""argentd.reload: folder-based file watching on the real filesystem."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import trio

from argentd.reload import _FolderWatch, watch_file, watch_files

WAIT = 10.0
"""Upper bound for one notification to arrive (a slow, busy CI box)."""


class Calls:
    """An `on_change` callback that records what `path` held at each call."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.send, self.recv = trio.open_memory_channel[str | None](1000)
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        content = None
        if self.path is not None:
            try:
                content = self.path.read_text()
            except OSError:
                content = None
        self.send.send_nowait(content)

    async def next(self) -> str | None:
        with trio.fail_after(WAIT):
            return await self.recv.receive()

    async def until(self, content: str) -> None:
        """Wait for a call that saw `content` (earlier calls are fine)."""
        with trio.fail_after(WAIT):
            while await self.recv.receive() != content:
                pass


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_relevant_filters_by_name(tmp_path: Path) -> None:
    w = _FolderWatch(tmp_path, frozenset({"a.json"}), lambda: None, trio.Event(),
                     debounce_ms=50, recheck=1.0)
    assert w._relevant({(2, str(tmp_path / "a.json"))})
    assert not w._relevant({(1, str(tmp_path / "a.json.tmp")), (2, str(tmp_path / "b"))})
    assert not w._relevant({(3, str(tmp_path))})


@pytest.mark.trio
async def test_watch_file_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    path.write_text("v1")
    calls = Calls(path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, calls, stop_event=stop, task_status=task_status))
        for n in range(2, 5):  # an editor saving three times
            atomic_write(path, f"v{n}")
            await calls.until(f"v{n}")
        stop.set()


@pytest.mark.trio
async def test_watch_file_in_place_write(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    path.write_text("v1")
    calls = Calls(path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, calls, stop_event=stop, task_status=task_status))
        with open(path, "w") as f:
            f.write("v2")
        await calls.until("v2")
        with open(path, "a") as f:
            f.write("+more")
        await calls.until("v2+more")
        stop.set()


@pytest.mark.trio
async def test_watch_file_delete_and_recreate(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    path.write_text("v1")
    calls = Calls(path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, calls, stop_event=stop, task_status=task_status))
        path.unlink()
        assert await calls.next() is None
        path.write_text("v2")
        await calls.until("v2")
        atomic_write(path, "v3")
        await calls.until("v3")
        stop.set()


@pytest.mark.trio
async def test_watch_file_folder_deleted_and_recreated(tmp_path: Path) -> None:
    folder = tmp_path / "agents" / "main" / "agent"
    folder.mkdir(parents=True)
    path = folder / "auth-profiles.json"
    path.write_text("v1")
    calls = Calls(path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, calls, stop_event=stop, task_status=task_status))
        shutil.rmtree(tmp_path / "agents")
        assert await calls.next() is None
        folder.mkdir(parents=True)
        atomic_write(path, "v2")
        await calls.until("v2")
        # Re-armed on the new folder, not just lucky once.
        atomic_write(path, "v3")
        await calls.until("v3")
        with open(path, "w") as f:
            f.write("v4")
        await calls.until("v4")
        stop.set()


@pytest.mark.trio
async def test_watch_file_folder_missing_at_start(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "auth-profiles.json"
    calls = Calls(path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, calls, stop_event=stop, task_status=task_status))
        path.parent.mkdir(parents=True)
        atomic_write(path, "v1")
        await calls.until("v1")
        atomic_write(path, "v2")
        await calls.until("v2")
        stop.set()


@pytest.mark.trio
async def test_watch_file_ignores_unrelated_file_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    path.write_text("v1")
    other = tmp_path / "notes.txt"
    calls = Calls(path)
    probe = Calls()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, calls, stop_event=stop, task_status=task_status))
        await nursery.start(lambda task_status: watch_file(
            other, probe, stop_event=stop, task_status=task_status))
        other.write_text("unrelated")
        atomic_write(tmp_path / "notes2.txt", "unrelated too")
        path.read_text()  # reading the watched file is no change either
        await probe.next()  # the probe, same folder, saw its event: so did the watcher
        atomic_write(path, "v2")
        # Had the unrelated write counted, the first call would have seen "v1".
        assert await calls.next() == "v2"
        stop.set()
    assert calls.count == 1


@pytest.mark.trio
async def test_watch_file_chmod_fires(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    path.write_text("v1")
    os.chmod(path, 0o644)
    calls = Calls(path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, calls, stop_event=stop, task_status=task_status))
        os.chmod(path, 0o600)  # the fix for a refused, too-open file
        assert await calls.next() == "v1"
        stop.set()


@pytest.mark.trio
async def test_watch_files_two_folders_async_callback(tmp_path: Path) -> None:
    profiles = tmp_path / "home" / "auth-profiles.json"
    config = tmp_path / "config" / "argentd.toml"
    profiles.parent.mkdir()
    config.parent.mkdir()
    seen: list[tuple[str | None, str | None]] = []
    changed = trio.Event()

    def read(p: Path) -> str | None:
        return p.read_text() if p.exists() else None

    async def on_change() -> None:
        nonlocal changed
        await trio.lowlevel.checkpoint()
        seen.append((read(profiles), read(config)))
        changed.set()

    async def until(state: tuple[str | None, str | None]) -> None:
        nonlocal changed
        with trio.fail_after(WAIT):
            while not seen or seen[-1] != state:
                await changed.wait()
                changed = trio.Event()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_files(
            [profiles, config], on_change, stop_event=stop, task_status=task_status))
        atomic_write(profiles, "p1")
        await until(("p1", None))
        atomic_write(config, "c1")
        await until(("p1", "c1"))
        stop.set()


@pytest.mark.trio
async def test_watch_file_symlink_target_edited(tmp_path: Path) -> None:
    (tmp_path / "dotfiles").mkdir()
    (tmp_path / "agent").mkdir()
    target = tmp_path / "dotfiles" / "auth.json"
    target.write_text("v1")
    link = tmp_path / "agent" / "auth-profiles.json"
    link.symlink_to(target)
    calls = Calls(link)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            link, calls, stop_event=stop, task_status=task_status))
        atomic_write(target, "v2")
        await calls.until("v2")
        stop.set()


@pytest.mark.trio
async def test_watch_file_callback_error_keeps_watching(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "auth-profiles.json"
    path.write_text("v1")
    calls = Calls(path)
    first = True

    def flaky() -> None:
        nonlocal first
        if first:
            first = False
            calls.send.send_nowait("raised")
            raise RuntimeError("reload blew up")
        calls()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, flaky, stop_event=stop, task_status=task_status))
        atomic_write(path, "v2")
        assert await calls.next() == "raised"
        atomic_write(path, "v3")
        await calls.until("v3")
        stop.set()
    assert "reload blew up" in caplog.text


@pytest.mark.trio
async def test_watch_file_stop_event_is_prompt(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    calls = Calls(path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        # recheck=60: stopping must not wait for the watch thread's timeout.
        await nursery.start(lambda task_status: watch_file(
            path, calls, stop_event=stop, recheck=60, task_status=task_status))
        stopped_at = trio.current_time()
        stop.set()
    assert trio.current_time() - stopped_at < 2
    assert calls.count == 0


@pytest.mark.trio
async def test_watch_file_cancel_is_prompt(tmp_path: Path) -> None:
    path = tmp_path / "auth-profiles.json"
    path.write_text("v1")
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: watch_file(
            path, lambda: None, recheck=60, task_status=task_status))
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - cancelled_at < 2
