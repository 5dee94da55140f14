"""The real `Server` in the test's own trio run, on a real Unix socket, in fake time.

`serving(...)` builds an `Engine` from profiles made with `profile(...)`, a
`Server` on `Clock.fake(EPOCH)` and a listening socket in a short temp
folder, and yields an `InProc` whose `connect()` gives `Peer`s: line-oriented
clients over the real socket, as any program would talk to the daemon.

Run tests with pytest-trio's `autojump_clock` fixture (a
`MockClock(autojump_threshold=0)`): time then only moves when every task is
blocked, straight to the next deadline, so `trio.current_time()` after a reply
is the exact fake time the server answered at, and Unix times in replies are
`EPOCH + that`. No process is started; a 25-minute cooldown takes microseconds.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import trio

from argent_client import protocol as P
from argentd.clock import Clock
from argentd.config import DEFAULT_CONFIG, Config
from argentd.engine import Engine
from argentd.model import Profile, ProfileSet, ProfileType, Secret
from argentd.server import Server

from .conftest import make_secret

EPOCH: Final = 1_800_000_000.0
"""Unix time at fake time 0: `now` in the engine is `EPOCH + trio.current_time()`."""
FAKE_LIMIT: Final = 30 * 24 * 3600.0
"""Fake seconds after which a test in `serving()` fails rather than hangs."""

PREFIX: Final[dict[ProfileType, str]] = {"setup-token": "sk-ant-oat01-",
                                          "api-key": "sk-ant-api03-", "oauth": "sk-ant-oat01-"}


def profile(pid: str, type_: ProfileType = "api-key", **kw: Any) -> Profile:
    """Profile `provider:name` with a fresh secret (remembered for leak checks)."""
    provider = pid.split(":", 1)[0]
    prefix = "sk-proj-" if provider == "openai" else PREFIX[type_]
    return Profile(pid, provider, type_, Secret(make_secret(prefix)), **kw)


class Peer:
    """One client connection to the in-process server."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.buf = b""
        self.next_id = 1

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[await self.sock.send(view):]

    async def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = await self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    async def read(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(await self.read_line())
        return msg

    async def eof(self) -> bool:
        """Whether the server closed the connection (discarding what it sent first)."""
        try:
            while True:
                await self.read_line()
        except (EOFError, OSError):
            return True

    def line(self, method: str, params: dict[str, Any] | None = None,
             *, notify: bool = False) -> bytes:
        """A request line (with a fresh id unless `notify`)."""
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        if not notify:
            msg["id"] = self.next_id
            self.next_id += 1
        return json.dumps(msg).encode() + b"\n"

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request; its reply (event notifications skipped)."""
        line = self.line(method, params)
        rid = self.next_id - 1
        await self.send(line)
        while True:
            reply = await self.read()
            if reply.get("id") == rid:
                return reply

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        reply = await self.request(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    async def event(self, type_: str | None = None) -> dict[str, Any]:
        """The next event notification (of `type_`, when given)."""
        while True:
            msg = await self.read()
            if msg.get("method") == "event" and type_ in (None, msg["params"]["type"]):
                params: dict[str, Any] = msg["params"]
                return params

    def close(self) -> None:
        self.sock.close()


@dataclass
class InProc:
    engine: Engine
    server: Server
    path: Path
    configs: list[P.ConfigStatus] = field(default_factory=list)
    """Every `status.config` the server asked for (one per `status` built)."""
    peers: list[Peer] = field(default_factory=list)

    def now(self) -> float:
        return EPOCH + trio.current_time()

    async def connect(self) -> Peer:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(str(self.path))
        peer = Peer(sock)
        self.peers.append(peer)
        return peer


async def _no_reload(reason: str) -> P.ReloadResult:
    return P.ReloadResult(0)


@asynccontextmanager
async def serving(
    *profiles: Profile,
    config: Config = DEFAULT_CONFIG,
    reload: Callable[[str], Awaitable[P.ReloadResult]] = _no_reload,
    clock: Clock | None = None,
    **server_kw: Any,
) -> AsyncIterator[InProc]:
    """Serve `profiles` in-process until the block ends; see the module docstring.

    `clock` defaults to `Clock.fake(EPOCH)`; `server_kw` go to `Server`.
    """
    folder = Path(tempfile.mkdtemp(prefix="ip-", dir="/tmp"))  # AF_UNIX paths are short
    path = folder / "s"
    clock = clock or Clock.fake(EPOCH)
    engine = Engine(ProfileSet(list(profiles)), config, now=clock.now())
    engine.take_outbox()
    configs: list[P.ConfigStatus] = []

    def config_status() -> P.ConfigStatus:
        configs.append(P.ConfigStatus(profiles_path=str(folder / "auth-profiles.json"),
                                      loaded_at=EPOCH))
        return configs[-1]

    server = Server(engine, reload=reload, config_status=config_status, clock=clock,
                    **server_kw)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4096)
    inproc = InProc(engine, server, path, configs)
    try:
        # In fake time a test that hangs would hang for real: fail it instead.
        with trio.fail_after(FAKE_LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, listener)
                try:
                    yield inproc
                finally:
                    for peer in inproc.peers:
                        peer.close()
                    nursery.cancel_scope.cancel()
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)
