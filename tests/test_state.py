"""argentd.state: atomic, never-fatal state file, and the coalescing saver."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from argentd.state import Saver, StateStore


class Snap(msgspec.Struct):
    version: int
    cooldowns: dict[str, float]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_store_load_missing_is_none(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "state.json").load() is None


def test_store_save_roundtrip_modes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "state.json"
    store = StateStore(path)
    assert store.save(Snap(1, {"anthropic:a": 123.5}))
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert store.load() == {"version": 1, "cooldowns": {"anthropic:a": 123.5}}
    assert store.save({"version": 2, "cooldowns": {}})
    assert store.load() == {"version": 2, "cooldowns": {}}
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # no temp left


def test_store_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.save({"v": 1})
    old_inode = os.stat(path).st_ino
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        # At the moment of the rename the temp file is complete and private.
        assert json.loads(Path(src).read_text()) == {"v": 2}
        assert mode(Path(src)) == 0o600
        renames.append((os.path.dirname(src), os.path.basename(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert store.save({"v": 2})
    assert renames and renames[0][0] == str(tmp_path)  # same folder: rename is atomic
    assert renames[0][1] != "state.json"
    assert os.stat(path).st_ino != old_inode
    assert store.load() == {"v": 2}


def test_store_save_tightens_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    assert StateStore(path).save({"v": 1})
    assert mode(path) == 0o600


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "JSON list"),
        (b'"text"', "JSON str"),
    ],
)
def test_store_load_corrupt_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, why: str
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    store = StateStore(path)
    with caplog.at_level(logging.WARNING, "argentd.state"):
        assert store.load() is None
    assert not path.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert len(caplog.records) == 1
    assert why in caplog.records[0].getMessage()
    assert aside[0].name in caplog.records[0].getMessage()
    # And the next load is a clean start, not another warning.
    assert store.load() is None


def planted(tmp_path: Path, kind: str) -> Path:
    """`state.json` as another uid could plant it in a folder it can write."""
    path = tmp_path / "state.json"
    if kind == "symlink_to_dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "sparse_2gib":
        with open(path, "wb") as f:
            f.truncate(2 * 1024**3)
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(("kind", "why"), [
    ("symlink_to_dev_zero", "symbolic link"),
    ("fifo", "not a regular file"),
    ("sparse_2gib", "more than the 67108864"),
])
def test_store_load_planted_file_moved_aside_unread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, why: str
) -> None:
    path = planted(tmp_path, kind)
    store = StateStore(path)
    with caplog.at_level(logging.WARNING, "argentd.state"):
        assert store.load() is None  # at once: no hang on the FIFO, no 2 GiB read
    assert why in caplog.text
    assert not os.path.lexists(path)
    assert store.save(Snap(1, {"a": 1.0}))  # and the next write makes a real file
    assert stat.S_ISREG(os.lstat(path).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another uid")
def test_store_load_file_of_another_uid_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"version": 1}')
    os.chown(path, 65534, 65534)
    with caplog.at_level(logging.WARNING, "argentd.state"):
        assert StateStore(path).load() is None
    assert "belongs to uid 65534" in caplog.text


def test_store_prepare_tightens_open_folder_and_removes_orphans(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "argentos"
    folder.mkdir()
    os.chmod(folder, 0o777)
    (folder / ".state.json.abc123.tmp").write_bytes(b"half")  # a write cut by kill -9
    (folder / ".state-12345678.json.x.tmp").write_bytes(b"another daemon's")
    (folder / "notes.tmp").write_bytes(b"not ours")
    with caplog.at_level(logging.INFO, "argentd.state"):
        StateStore(folder / "state.json").prepare()
    assert mode(folder) == 0o700
    assert "had mode 777" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == [".state-12345678.json.x.tmp",
                                                         "notes.tmp"]


def test_store_prepare_creates_private_folder(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "argentos"
    StateStore(folder / "state.json").prepare()
    assert mode(folder) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder of another uid")
def test_store_prepare_refuses_folder_of_another_uid(tmp_path: Path) -> None:
    from argentd.state import UnsafeStateFolder

    folder = tmp_path / "argentos"
    folder.mkdir(mode=0o777)
    os.chown(folder, 65534, 65534)
    with pytest.raises(UnsafeStateFolder, match=r"belongs to uid 65534.*XDG_STATE_HOME"):
        StateStore(folder / "state.json").prepare()


def test_store_prepare_file_in_place_of_folder_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "argentos").write_text("")
    with caplog.at_level(logging.WARNING, "argentd.state"):
        StateStore(tmp_path / "argentos" / "state.json").prepare()  # no exception
    assert "cannot write state file" in caplog.text


def test_store_load_corrupt_twice_keeps_both(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    path.write_bytes(b"first")
    store.load()
    path.write_bytes(b"second")
    store.load()
    aside = sorted(p.read_bytes() for p in tmp_path.iterdir() if "corrupt" in p.name)
    assert aside == [b"first", b"second"]


def test_store_save_unwritable_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A regular file where the folder should be: fails even for root.
    blocker = tmp_path / "state"
    blocker.write_text("")
    store = StateStore(blocker / "state.json")
    with caplog.at_level(logging.INFO, "argentd.state"):
        assert store.save({"v": 1}) is False
        assert store.save({"v": 2}) is False
        assert store.save({"v": 3}) is False
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "cannot write state file" in warnings[0].getMessage()
        blocker.unlink()
        assert store.save({"v": 4}) is True
        assert "written again" in caplog.records[-1].getMessage()
        (blocker / "state.json").unlink()
        blocker.rmdir()
        blocker.write_text("")
        assert store.save({"v": 5}) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # warned again after a success in between


def test_store_save_disk_full_cleans_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.save({"v": 1})

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with caplog.at_level(logging.WARNING, "argentd.state"):
        assert store.save({"v": 2}) is False
    monkeypatch.undo()
    assert "No space left on device" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert store.load() == {"v": 1}  # the old state survived


def test_store_save_unencodable_is_false(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "state.json").save({"v": object()}) is False
    assert not (tmp_path / "state.json").exists()


# ------------------------------------------------------------------ Saver


class RecordingStore(StateStore):
    def __init__(self, path: Path, fail: bool = False) -> None:
        super().__init__(path)
        self.fail = fail
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> bool:
        if self.fail:
            self.writes.append(b"FAILED")
            return False
        ok = super().write(data)
        self.writes.append(data)
        return ok


async def inline(write: Callable[[bytes], bool], data: bytes) -> bool:
    """Write in the trio thread: no worker thread for fake time to run away from."""
    await trio.lowlevel.checkpoint()
    return write(data)


@pytest.mark.trio
async def test_saver_coalesces_burst_within_delay(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = RecordingStore(tmp_path / "state.json")
    value = {"n": 0}
    taken: list[float] = []

    def snapshot() -> dict[str, int]:
        taken.append(trio.current_time())
        return dict(value)

    saver = Saver(store, snapshot, delay=0.5, in_thread=inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(saver.run)
        start = trio.current_time()
        for n in range(1, 4):  # changes at +0, +0.1, +0.2
            value["n"] = n
            saver.mark_dirty()
            await trio.sleep(0.1)
        await trio.sleep(1)
        assert [t - start for t in taken] == pytest.approx([0.5])
        assert store.load() == {"n": 3}
        assert not saver.dirty

        await trio.sleep_until(start + 10)
        value["n"] = 4
        saver.mark_dirty()
        await trio.sleep(1)
        assert [t - start for t in taken] == pytest.approx([0.5, 10.5])
        assert store.load() == {"n": 4}
        nursery.cancel_scope.cancel()
    assert len(store.writes) == 2


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.mark.trio
async def test_saver_real_thread_and_flush(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "state.json")
    saver = Saver(store, lambda: {"v": "threaded"}, delay=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(saver.run)
        saver.mark_dirty()
        with trio.fail_after(10):
            while not store.writes:
                await trio.sleep(0.01)
            assert await saver.flush() is True  # waits for the write in flight
        nursery.cancel_scope.cancel()
    assert store.load() == {"v": "threaded"}
    assert len(store.writes) == 1


@pytest.mark.trio
async def test_saver_flush_writes_pending_now(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "state.json")
    saver = Saver(store, lambda: {"v": "final"}, delay=3600)
    assert await saver.flush() is True
    assert store.writes == []  # nothing pending, nothing written
    saver.mark_dirty()
    assert saver.dirty
    with trio.fail_after(10):
        assert await saver.flush() is True
    assert store.load() == {"v": "final"}
    assert not saver.dirty
    assert await saver.save_now() is True
    assert len(store.writes) == 2


@pytest.mark.trio
async def test_saver_failure_retries_after_retry_delay(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = RecordingStore(tmp_path / "state.json", fail=True)
    taken: list[float] = []

    def snapshot() -> dict[str, int]:
        taken.append(trio.current_time())
        return {"v": 1}

    saver = Saver(store, snapshot, delay=0.5, retry_delay=30, in_thread=inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(saver.run)
        start = trio.current_time()
        saver.mark_dirty()
        await trio.sleep(40)
        assert saver.dirty  # still pending after a failure
        saver.mark_dirty()  # a new change does not hurry a failing disk
        store.fail = False
        await trio.sleep(40)
        nursery.cancel_scope.cancel()
    assert [t - start for t in taken] == pytest.approx([0.5, 30.5, 60.5])
    assert store.writes[:2] == [b"FAILED", b"FAILED"]
    assert store.load() == {"v": 1}
    assert not saver.dirty
