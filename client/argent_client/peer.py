"""Who serves the socket: a client trusts only its own user's argentd.

A lease carries a secret, and the token a client receives is the one it will
send to the provider: a socket served by another user would hand the agent
that user's token (and learn what the agent does with it), or collect the
agent's failure reports. So before a client sends anything it checks:

1. the socket's folder belongs to this user and has mode 0700 (no one else
   can put a socket there), and
2. the process that listens on the socket runs as this user: SO_PEERCRED on
   Linux, LOCAL_PEERCRED (`getpeereid`) on macOS and the BSDs.

Either failure raises `DaemonUnavailable` with `reason: "untrusted"` and a
message naming the fix; the environment fallback is not used then.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import Final

from .protocol import DaemonUnavailable

_SOL_LOCAL: Final = 0
_LOCAL_PEERCRED: Final = 1
_XUCRED: Final = struct.Struct("=Ii")
"""The head of macOS's `struct xucred`: cr_version, cr_uid."""


def _untrusted(path: object, why: str, fix: str) -> DaemonUnavailable:
    return DaemonUnavailable(f"refusing the argentd socket {path}: {why}. Fix: {fix}",
                             socket=str(path), reason="untrusted")


def check_folder(path: Path, *, uid: int | None = None) -> None:
    """Raise `DaemonUnavailable` unless `path`'s folder is `uid`'s own (default: ours), 0700.

    A folder that does not exist passes: connecting will say the daemon is
    unreachable.
    """
    uid = os.geteuid() if uid is None else uid
    folder = path.parent
    try:
        st = os.stat(folder)
    except OSError:
        return
    own = ("choose a socket in a folder of your own with mode 700: the default "
           "($XDG_RUNTIME_DIR/argentos/), or `mkdir -m 700 ~/.argentd` and point "
           "`argentd --socket` and ARGENT_SOCKET at ~/.argentd/argentd.sock")
    if st.st_uid != uid:
        raise _untrusted(path, f"its folder {folder} belongs to uid {st.st_uid}, not to you "
                               f"(uid {uid}), so another user could stand in for argentd", own)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise _untrusted(path, f"its folder {folder} has mode {mode:04o}, so other users "
                               "could put a socket of their own there",
                         f"`chmod 700 {folder}` (or {own})")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of the Unix socket, or None if unknown."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, 256)
        _version, uid = _XUCRED.unpack_from(raw)
        return int(uid)
    return None  # pragma: no cover - no peer credentials on this platform


def check_peer(sock: socket.socket, path: object, *, uid: int | None = None) -> None:
    """Raise `DaemonUnavailable` unless the server on `sock` runs as `uid` (default: ours)."""
    uid = os.geteuid() if uid is None else uid
    try:
        theirs = peer_uid(sock)
    except OSError as exc:
        raise _untrusted(path, f"cannot tell who serves it ({exc.strerror or exc})",
                         "make sure it is argentd's Unix socket") from None
    if theirs is not None and theirs != uid:
        raise _untrusted(path, f"the process serving it runs as uid {theirs}, not as you "
                               f"(uid {uid}); another user may be standing in for argentd",
                         "stop that process or remove the socket, then start your own "
                         "`argentd`, in a folder of your own with mode 700")
