"""How argentd meets its service manager and its socket.

- `Notifier`: sd_notify messages (`READY=1`, `STATUS=`, `RELOADING=1`,
  `STOPPING=1`, watchdog pings) through sdnotify; a no-op without systemd.
- `bind_unix_socket`: the listening socket, private to the user (folder 0700,
  socket created 0600 under a umask, so there is no window where it is
  wider), guarded by an exclusive `flock` on `<socket>.lock` so a second
  daemon for the same socket refuses to start and a dead daemon's socket is
  replaced.
- `adopt_systemd_socket`: the listening socket systemd passed as fd 3.
- `peer_uid`: the uid at the other end of a connection (SO_PEERCRED /
  LOCAL_PEERCRED).
- `raise_fd_limit`: lifts the soft open-files limit to the hard one, so a
  crowd of agents does not run the daemon out of descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import resource
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import sdnotify
import trio

__all__ = [
    "AlreadyRunning",
    "BoundSocket",
    "Notifier",
    "SocketLock",
    "UnsafeSocketFolder",
    "adopt_systemd_socket",
    "bind_unix_socket",
    "lock_socket",
    "peer_uid",
    "raise_fd_limit",
]

log = logging.getLogger("argentd.service")

BACKLOG: Final = max(socket.SOMAXCONN, 4096)
"""The kernel caps it at its own maximum (`net.core.somaxconn`, 4096 on current
Linux). A client that connects with a timeout gets EAGAIN, not a wait, when
the backlog is full, so a burst of agents must fit in it."""
FD_LIMIT_CAP: Final = 65536
"""`raise_fd_limit` goes no higher: far more than any user's agents need, and
below the limits macOS refuses (`kern.maxfilesperproc`)."""
SD_LISTEN_FDS_START: Final = 3
_SUN_PATH_MAX: Final = 104 if sys.platform == "darwin" else 108
"""Bytes in `sockaddr_un.sun_path`, the terminating NUL included."""


# ------------------------------------------------------------------ sd_notify


class Notifier:
    """Sends sd_notify messages to `$NOTIFY_SOCKET`; never raises.

    Without `NOTIFY_SOCKET` (not under systemd, or under launchd) every
    method does nothing. sdnotify encodes messages as Latin-1 and drops any
    other text silently, so messages are passed to it as their UTF-8 bytes
    spelled in Latin-1 (a byte-exact round trip); newlines in `status`
    text are replaced, since a newline starts a new assignment.
    """

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier: sdnotify.SystemdNotifier | None = None
        if self.enabled:
            self._notifier = sdnotify.SystemdNotifier()
            sock = getattr(self._notifier, "socket", None)
            if sock is None:
                log.warning("cannot reach NOTIFY_SOCKET; service notifications are off")
                self.enabled = False
            else:
                # A receiver that does not read must not freeze the event loop:
                # when its queue is full the datagram is dropped instead.
                sock.setblocking(False)

    def send(self, *assignments: str) -> None:
        """Send `assignments` (`"READY=1"`, ...) as one datagram."""
        if self._notifier is None or not self.enabled:
            return
        payload = "\n".join(assignments).encode("utf-8").decode("latin-1")
        try:
            self._notifier.notify(payload)
        except Exception:  # sdnotify swallows errors itself; belt and braces
            log.debug("sd_notify failed", exc_info=True)

    def ready(self) -> None:
        """`READY=1`: startup (or a reload) is complete."""
        self.send("READY=1")

    def status(self, text: str) -> None:
        """`STATUS=<text>`: one line shown by `systemctl status`."""
        self.send("STATUS=" + " ".join(text.splitlines()))

    def reloading(self) -> None:
        """`RELOADING=1` with `MONOTONIC_USEC` (what `Type=notify-reload` needs); send
        `ready()` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """`STOPPING=1`: shutdown has begun."""
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """`WATCHDOG=1`: one keep-alive ping."""
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when the
        watchdog is off, set for another process (`WATCHDOG_PID`) or unparsable."""
        if not self.enabled:
            return None
        raw = os.environ.get("WATCHDOG_USEC")
        if not raw:
            return None
        pid = os.environ.get("WATCHDOG_PID")
        try:
            if pid and int(pid) != os.getpid():
                return None
            usec = int(raw)
        except ValueError:
            log.warning("ignoring a malformed WATCHDOG_USEC/WATCHDOG_PID")
            return None
        if usec <= 0:
            return None
        return usec / 1e6 / 2

    async def run_watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping every `watchdog_interval()` seconds until cancelled; returns at once
        when the watchdog is off."""
        interval = self.watchdog_interval()
        task_status.started()
        if interval is None:
            return
        next_ping = trio.current_time() + interval
        while True:
            # sleep_until on a fixed grid: a slow tick does not push later pings back.
            await trio.sleep_until(next_ping)
            self.watchdog()
            next_ping += interval

    def close(self) -> None:
        """Close the notify socket (later messages are dropped)."""
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
        self.enabled = False


# ------------------------------------------------------------------ the socket


class AlreadyRunning(Exception):
    """Another live argentd holds this socket; the message names it and its pid."""


class UnsafeSocketFolder(OSError):
    """The socket's folder belongs to another user; the message says which."""


@dataclass
class SocketLock:
    """An exclusive `flock` on `<socket>.lock`, held while `fd` stays open.

    The lock file is never deleted: unlinking it would let two daemons lock
    two different inodes under one name.
    """

    path: Path
    fd: int

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class BoundSocket:
    """A listening Unix socket bound by this process, and the lock that guards it."""

    sock: socket.socket
    path: Path
    lock: SocketLock
    _ident: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def lock_fd(self) -> int:
        return self.lock.fd

    def close(self) -> None:
        """Close the socket, unlink its file (only if it is still ours), release the lock.

        Idempotent; never raises for I/O errors.
        """
        if self._ident is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._ident:
                    os.unlink(self.path)
            self._ident = None
        self.sock.close()
        self.lock.close()


def _where_to_put_it(folder: Path) -> str:
    """What to do when the socket's folder cannot be ours."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        return (f"XDG_RUNTIME_DIR is not set, so the socket went under {folder.parent}; log "
                f"in through a session that sets it (systemd-logind does; `loginctl "
                f"enable-linger` for services), or give a socket path in a folder of your "
                f"own (--socket PATH or ARGENT_SOCKET)")
    return "choose a socket path in a folder of your own (--socket PATH or ARGENT_SOCKET)"


def _check_folder(folder: Path) -> None:
    """Create `folder` 0700, or make an existing one of ours 0700.

    Raises `UnsafeSocketFolder` when it belongs to another user (a shared
    sticky folder like /tmp included: clients refuse a socket there) or cannot
    be created for lack of permission (the message says
    what to do), `NotADirectoryError` when it is not a folder.
    """
    try:
        os.makedirs(folder, mode=0o700, exist_ok=False)
        os.chmod(folder, 0o700)  # makedirs' mode is filtered by the umask
        return
    except FileExistsError:
        pass
    except PermissionError as exc:
        raise UnsafeSocketFolder(
            f"cannot create the socket folder {folder} ({exc.strerror}: "
            f"{exc.filename or folder}); {_where_to_put_it(folder)}") from None
    try:
        st = os.stat(folder)
    except PermissionError as exc:
        raise UnsafeSocketFolder(
            f"cannot look at the socket folder {folder} ({exc.strerror}); "
            f"{_where_to_put_it(folder)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "socket folder is not a directory", str(folder))
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.geteuid():
        if mode & 0o077:
            log.warning("socket folder %s had mode %03o; setting it to 700", folder, mode)
            os.chmod(folder, 0o700)
        return
    if st.st_uid == 0 and mode & stat.S_ISVTX:
        # Clients refuse a socket in a shared folder (another uid could bind the
        # path while argentd is down and hand out tokens of its own), so say so
        # now rather than from every client.
        raise UnsafeSocketFolder(
            f"socket folder {folder} is shared with other users (sticky, owned by "
            f"root): while argentd is down another user could bind the path and "
            f"clients would refuse it; {_where_to_put_it(folder)}")
    raise UnsafeSocketFolder(
        f"socket folder {folder} belongs to uid {st.st_uid}, not to you (uid "
        f"{os.geteuid()}); {_where_to_put_it(folder)}"
    )


def lock_socket(path: Path) -> SocketLock:
    """Take the exclusive lock `<path>.lock` for socket `path` (without waiting).

    Writes our pid into the lock file. Raises `AlreadyRunning` (naming the
    socket and the holder's pid when known) if another process holds it,
    `OSError` when the lock file cannot be opened.
    """
    lock_path = path.with_name(path.name + ".lock")
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(lock_path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f" (pid {holder})" if holder else ""
        raise AlreadyRunning(
            f"another argentd{who} is already serving {path}; stop it first, or start "
            f"this one with another --socket"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only a courtesy for the message above
    return SocketLock(lock_path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def _remove_stale(path: Path) -> None:
    """Remove a socket file left by a dead daemon (we hold the lock, so none is alive).

    Raises `AlreadyRunning` if something still answers on it (a socket unit
    of systemd holds it, or a daemon without our lock), `FileExistsError`
    if `path` is not a socket (we never delete a user's file).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket; not replacing it",
                              str(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: stale
    except BlockingIOError:
        raise AlreadyRunning(f"something is listening on {path} (its backlog is full)") from None
    except OSError:
        pass
    else:
        raise AlreadyRunning(
            f"something is already listening on {path} (a systemd socket unit?); "
            f"not replacing it"
        )
    finally:
        probe.close()
    log.info("removing stale socket %s", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def bind_unix_socket(path: Path) -> BoundSocket:
    """Bind and listen on Unix socket `path`, private to this user.

    Creates the folder 0700 (tightens an existing folder of ours to 0700),
    locks `<path>.lock`, replaces a stale socket file, binds under
    `umask(0o177)` so the socket is born 0600, and listens (`BACKLOG`).
    `umask` is process-wide: call this before starting other threads that
    create files. Raises `AlreadyRunning` when another daemon serves `path`,
    `UnsafeSocketFolder` / `OSError` when it cannot be set up (the message
    names the path).
    """
    path = Path(os.path.abspath(path))
    size = len(os.fsencode(path))
    if size >= _SUN_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG,
                      f"socket path is {size} bytes, the limit is {_SUN_PATH_MAX - 1}; "
                      f"use a shorter --socket", str(path))
    _check_folder(path.parent)
    lock = lock_socket(path)
    sock: socket.socket | None = None
    try:
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        st = os.lstat(path)
        sock.listen(BACKLOG)
        sock.setblocking(False)
        return BoundSocket(sock, path, lock, (st.st_dev, st.st_ino))
    except BaseException:
        if sock is not None:
            sock.close()
        lock.close()
        raise


def adopt_systemd_socket() -> socket.socket | None:
    """The listening socket systemd passed (fd 3), or None when there is none for us.

    Applies when `LISTEN_PID` is our pid and `LISTEN_FDS` >= 1 (extra fds are
    ignored with a warning); then unsets `LISTEN_PID`, `LISTEN_FDS` and
    `LISTEN_FDNAMES` so children do not see them, and returns fd 3 as a
    non-blocking, close-on-exec socket, listening. Raises `OSError` when fd 3
    is not an AF_UNIX stream socket.
    """
    pid = os.environ.get("LISTEN_PID", "")
    fds = os.environ.get("LISTEN_FDS", "")
    try:
        if int(pid) != os.getpid() or int(fds) < 1:
            return None
    except ValueError:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if int(fds) > 1:
        log.warning("systemd passed %s sockets; using the first (fd 3) only", fds)
    fd = SD_LISTEN_FDS_START
    try:
        probe_fd = os.dup(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"LISTEN_FDS is set but fd 3 is not open: {exc.strerror}") \
            from None
    try:
        probe = socket.socket(fileno=probe_fd)
    except OSError as exc:
        os.close(probe_fd)
        raise OSError(exc.errno, f"LISTEN_FDS is set but fd 3 is not a socket: {exc.strerror}") \
            from None
    with probe:
        kind = probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        family = probe.family
    if family != socket.AF_UNIX or kind != socket.SOCK_STREAM:
        raise OSError(errno.EINVAL, "the socket systemd passed (fd 3) is not a Unix stream "
                      "socket; use ListenStream=%t/argentos/argentd.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
    sock.set_inheritable(False)
    sock.setblocking(False)
    accepting = getattr(socket, "SO_ACCEPTCONN", None)
    if accepting is not None and not sock.getsockopt(socket.SOL_SOCKET, accepting):
        sock.listen(BACKLOG)
    return sock


def raise_fd_limit(want: int = FD_LIMIT_CAP) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most `want`).

    Every connection costs the daemon a descriptor and the usual default
    soft limit (1024) is below what a busy machine's agents can open at
    once; the hard limit is what the admin allows. Never lowers the limit,
    never raises; returns the soft limit in force afterwards.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return -1
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.debug("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
            return soft
        log.debug("raised the open-files limit from %d to %d", soft, target)
        return target
    return soft


class _HasSockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


_SO_PEERCRED: Final = getattr(socket, "SO_PEERCRED", None)
_SOL_LOCAL: Final = 0
_LOCAL_PEERCRED: Final = getattr(socket, "LOCAL_PEERCRED", 0x001)
_XUCRED: Final = struct.Struct("=Ii")  # cr_version, cr_uid: the head of struct xucred
_XUCRED_SIZE: Final = 76  # u_int + uid_t + short (+2 pad) + 16 gid_t


def peer_uid(sock: _HasSockopt) -> int | None:
    """The uid of the process at the other end of connected Unix socket `sock`.

    SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS and the BSDs; None when the
    platform cannot say (the caller then decides). Never raises.
    """
    try:
        if _SO_PEERCRED is not None:
            creds = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            return int(uid)
        if sys.platform == "darwin" or "bsd" in sys.platform:
            raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED_SIZE)
            version, uid = _XUCRED.unpack_from(raw)
            return int(uid) if version == 0 else None
    except (OSError, struct.error):
        return None
    return None
