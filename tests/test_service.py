"""argentd.service: sd_notify, the private socket and its lock, socket activation, peer uid."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from argentd.service import (
    AlreadyRunning,
    Notifier,
    UnsafeSocketFolder,
    adopt_systemd_socket,
    bind_unix_socket,
    lock_socket,
    peer_uid,
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short folder: AF_UNIX paths are limited to ~108 bytes."""
    d = tempfile.mkdtemp(prefix="as-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ------------------------------------------------------------------ binding


def test_bind_modes_socket_0600_folder_0700(short_dir: Path) -> None:
    path = short_dir / "run" / "argentd.sock"
    old = os.umask(0o022)  # a usual umask would give 0755 / 0755
    try:
        bound = bind_unix_socket(path)
    finally:
        os.umask(old)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert mode(path) == 0o600
        assert mode(path.parent) == 0o700
        assert os.umask(old) == old  # our umask was restored
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.close()
    finally:
        bound.close()


def test_bind_tightens_own_loose_folder(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = short_dir / "run"
    folder.mkdir()
    os.chmod(folder, 0o755)
    bound = bind_unix_socket(folder / "argentd.sock")
    bound.close()
    assert mode(folder) == 0o700
    assert "had mode 755" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder of another user")
def test_bind_refuses_folder_of_another_user(short_dir: Path) -> None:
    folder = short_dir / "theirs"
    folder.mkdir(mode=0o777)
    os.chown(folder, 12345, 12345)
    with pytest.raises(UnsafeSocketFolder, match=r"belongs to uid 12345, not to you"):
        bind_unix_socket(folder / "argentd.sock")
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a root-owned sticky folder")
def test_bind_refuses_shared_sticky_folder(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /tmp-like: root's, 1777, and we are not root. Clients refuse a socket
    # there, so the daemon does too, before it binds anything.
    folder = short_dir / "shared"
    folder.mkdir()
    os.chmod(folder, 0o1777)
    os.chown(folder, 0, 0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UnsafeSocketFolder, match=r"is shared with other users \(sticky"):
        bind_unix_socket(folder / "argentd.sock")
    assert list(folder.iterdir()) == []


def test_bind_runtime_dir_unset_and_taken_says_what_to_do(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when XDG_RUNTIME_DIR is unset and another uid made /tmp/runtime-<uid> first.
    import argentd.service as service

    def denied(path: Any, mode: int = 0o777, exist_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(service.os, "makedirs", denied)
    with pytest.raises(UnsafeSocketFolder) as info:
        bind_unix_socket(short_dir / "runtime-1000" / "argentos" / "argentd.sock")
    message = str(info.value)
    assert "cannot create the socket folder" in message
    assert "XDG_RUNTIME_DIR is not set" in message and "--socket PATH" in message
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    with pytest.raises(UnsafeSocketFolder, match="a folder of your own"):
        bind_unix_socket(short_dir / "runtime-1000" / "argentos" / "argentd.sock")


def test_bind_second_instance_refused(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    first = bind_unix_socket(path)
    try:
        with pytest.raises(AlreadyRunning) as info:
            bind_unix_socket(path)
        assert str(info.value) == (
            f"another argentd (pid {os.getpid()}) is already serving {path}; stop it "
            f"first, or start this one with another --socket"
        )
        # The first one is untouched and still serving.
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.close()
    finally:
        first.close()


def test_bind_second_instance_in_other_process_refused(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    bound = bind_unix_socket(path)
    try:
        code = textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from argentd.service import AlreadyRunning, bind_unix_socket
            try:
                bind_unix_socket(Path({str(path)!r}))
            except AlreadyRunning as exc:
                print(exc)
                sys.exit(3)
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 3, proc.stderr
        assert f"(pid {os.getpid()}) is already serving {path}" in proc.stdout
    finally:
        bound.close()


def test_bind_replaces_stale_socket(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a crashed daemon's leftover: a file, nobody listening
    dead.close()
    os.chmod(path, 0o777)  # marks the old file (inode numbers get reused)
    bound = bind_unix_socket(path)
    try:
        assert mode(path) == 0o600
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.close()
    finally:
        bound.close()


def test_bind_refuses_live_listener_without_lock(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen(1)  # e.g. systemd holding the socket of a socket unit
    try:
        with pytest.raises(AlreadyRunning, match="already listening on"):
            bind_unix_socket(path)
        assert os.path.exists(path)
    finally:
        other.close()
    # The refused attempt released its lock.
    lock_socket(path).close()


def test_bind_refuses_to_delete_a_regular_file(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="is not a socket"):
        bind_unix_socket(path)
    assert path.read_text() == "precious"


def test_bind_close_unlinks_and_releases(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    bound = bind_unix_socket(path)
    assert bound.lock_fd >= 0
    assert (short_dir / "argentd.sock.lock").read_text().strip() == str(os.getpid())
    bound.close()
    bound.close()  # idempotent
    assert not path.exists()
    assert (short_dir / "argentd.sock.lock").exists()  # never unlinked: see SocketLock
    again = bind_unix_socket(path)
    again.close()


def test_bind_close_leaves_a_socket_that_is_not_ours(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    bound = bind_unix_socket(path)
    os.unlink(path)
    newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    newcomer.bind(str(path))
    try:
        bound.close()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        newcomer.close()


def test_bind_path_too_long(short_dir: Path) -> None:
    path = short_dir / ("x" * 120) / "argentd.sock"
    with pytest.raises(OSError, match="the limit is 107; use a shorter --socket") as info:
        bind_unix_socket(path)
    assert info.value.errno == errno.ENAMETOOLONG
    assert not path.parent.exists()


# ------------------------------------------------------------------ socket activation


ADOPT_CHILD = textwrap.dedent("""
    import json, os, socket, sys
    from argentd.service import adopt_systemd_socket
    src, pid_mode = int(sys.argv[1]), sys.argv[2]
    os.dup2(src, 3)
    os.close(src)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_FDNAMES"] = "argentd.socket"
    os.environ["LISTEN_PID"] = str(os.getpid() if pid_mode == "self" else 1)
    try:
        sock = adopt_systemd_socket()
    except OSError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(0)
    out = {"adopted": sock is not None,
           "env": sorted(k for k in os.environ if k.startswith("LISTEN_"))}
    if sock is not None:
        out.update(fd=sock.fileno(), family=int(sock.family), type=int(sock.type),
                   blocking=sock.getblocking(), inheritable=sock.get_inheritable())
        print(json.dumps(out), flush=True)
        sock.setblocking(True)
        conn, _ = sock.accept()
        conn.sendall(b"served by the adopted socket")
        conn.close()
    else:
        print(json.dumps(out), flush=True)
""")


def run_adopt_child(
    sock: socket.socket, pid_mode: str, path: Path | None = None
) -> dict[str, object]:
    """Run `adopt_systemd_socket` in a child that has `sock` as its fd 3."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ADOPT_CHILD, str(sock.fileno()), pid_mode],
        pass_fds=[sock.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        result: dict[str, object] = json.loads(line)
        if result.get("adopted") and path is not None:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(30)
            client.connect(str(path))
            result["reply"] = client.recv(100).decode()
            client.close()
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_adopt_systemd_socket_listening(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    with listener:
        result = run_adopt_child(listener, "self", path)
    assert result == {
        "adopted": True,
        "env": [],  # LISTEN_* unset for our children
        "fd": 3,
        "family": int(socket.AF_UNIX),
        "type": int(socket.SOCK_STREAM),
        "blocking": False,
        "inheritable": False,
        "reply": "served by the adopted socket",
    }


def test_adopt_systemd_socket_not_yet_listening(short_dir: Path) -> None:
    path = short_dir / "argentd.sock"
    bound_only = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound_only.bind(str(path))
    with bound_only:
        result = run_adopt_child(bound_only, "self", path)
    assert result["reply"] == "served by the adopted socket"


def test_adopt_systemd_socket_other_pid_ignored(short_dir: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_dir / "argentd.sock"))
    listener.listen(1)
    with listener:
        result = run_adopt_child(listener, "other")
    assert result == {"adopted": False,
                      "env": ["LISTEN_FDNAMES", "LISTEN_FDS", "LISTEN_PID"]}


def test_adopt_systemd_socket_wrong_kind(short_dir: Path) -> None:
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(str(short_dir / "dgram"))
    with dgram:
        result = run_adopt_child(dgram, "self")
    assert "is not a Unix stream socket" in str(result["error"])


def test_adopt_systemd_socket_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS"):
        monkeypatch.delenv(name, raising=False)
    assert adopt_systemd_socket() is None
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    assert adopt_systemd_socket() is None
    monkeypatch.setenv("LISTEN_FDS", "bogus")
    assert adopt_systemd_socket() is None


# ------------------------------------------------------------------ peer uid


def test_peer_uid_of_connected_pair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.getuid()
        assert peer_uid(b) == os.getuid()


@pytest.mark.trio
async def test_peer_uid_of_trio_socket(short_dir: Path) -> None:
    bound = bind_unix_socket(short_dir / "argentd.sock")
    try:
        listener = trio.socket.from_stdlib_socket(bound.sock)
        client = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with client:
            await client.connect(str(bound.path))
            conn, _ = await listener.accept()
            with conn:
                assert peer_uid(conn) == os.getuid()
    finally:
        bound.close()


def test_peer_uid_never_raises() -> None:
    a, b = socket.socketpair()
    a.close()
    b.close()
    assert peer_uid(a) is None


# ------------------------------------------------------------------ sd_notify


@pytest.fixture
def notify_socket(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = short_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    with sock:
        yield sock


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_notifier_messages(notify_socket: socket.socket) -> None:
    n = Notifier()
    assert n.enabled
    n.ready()
    assert recv(notify_socket) == "READY=1"
    n.status("2 ready, 1 cooling\nREADY=1")
    assert recv(notify_socket) == "STATUS=2 ready, 1 cooling READY=1"  # no injected line
    n.status("anthropic → openrouter…")
    assert recv(notify_socket) == "STATUS=anthropic → openrouter…"
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv(notify_socket).split("\n")  # one datagram, two assignments
    assert first == "RELOADING=1"
    key, _, usec = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(usec) <= after
    n.stopping()
    assert recv(notify_socket) == "STOPPING=1"
    n.watchdog()
    assert recv(notify_socket) == "WATCHDOG=1"
    n.close()
    n.ready()  # closed: silently dropped


def test_notifier_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"argentd-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    with sock:
        Notifier().ready()
        assert recv(sock) == "READY=1"


def test_notifier_without_systemd_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    n = Notifier()
    assert not n.enabled
    n.ready()
    n.status("x")
    n.reloading()
    n.stopping()
    n.watchdog()
    assert n.watchdog_interval() is None


def test_notifier_unreachable_socket_is_silent(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "nobody-here"))
    n = Notifier()
    assert not n.enabled
    n.ready()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("10000000", None, 5.0),
        ("10000000", "self", 5.0),
        ("10000000", "1", None),
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_notifier_watchdog_interval(
    notify_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    expected: float | None,
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert Notifier().watchdog_interval() == expected


@pytest.mark.trio
async def test_notifier_run_watchdog_pings_every_half_interval(
    notify_socket: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")  # 10 s: ping every 5 s
    times: list[float] = []

    class Recording(Notifier):
        def watchdog(self) -> None:
            times.append(trio.current_time())
            super().watchdog()

    n = Recording()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(n.run_watchdog)
        await trio.sleep(17)
        nursery.cancel_scope.cancel()
    assert [t - start for t in times] == [5.0, 10.0, 15.0]
    assert [recv(notify_socket) for _ in times] == ["WATCHDOG=1"] * 3


@pytest.mark.trio
async def test_notifier_run_watchdog_off_returns(
    notify_socket: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(1):
        await Notifier().run_watchdog()
