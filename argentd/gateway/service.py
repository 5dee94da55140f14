"""The gateway's lifetime inside the daemon: the local token, the listener, the accept loop.

`Gateway.run` is started in the daemon's nursery beside the socket server
and shares its engine (through `Server.lease_for` and the engine calls in
`proxy`). A listen address that cannot be bound does not stop the daemon:
`run` reports ready anyway and `status()` carries the error.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
from pathlib import Path
from typing import Final

import trio

from argent_client import protocol as P
from argent_client.gateway import TokenFileError, ensure_token, read_token

from .. import log as logmod
from ..server import Server
from .hangups import Hangups
from .http import ClientGone, Exchange, HttpConnection
from .pool import Pool
from .proxy import Proxy
from .stats import Stats

log = logging.getLogger("argentd.gateway")

ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                           errno.ENOBUFS})


def parse_listen(listen: str) -> tuple[str, int]:
    """`"HOST:PORT"` (or `"[V6]:PORT"`) -> (host, port). Raises `ValueError`."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"[gateway] listen = {listen!r} is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class TokenCheck:
    """The local token, re-read when its file changes (`argentctl gateway rotate`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = ensure_token(path)
        logmod.register_secrets([self.token])
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> str:
        stamp = self._stat()
        if stamp != self._stamp and stamp is not None:
            try:
                self.token = read_token(self.path)
                logmod.register_secrets([self.token])
                log.info("gateway token changed (%s)", self.path)
            except (OSError, TokenFileError) as exc:
                log.warning("gateway token file unreadable, keeping the last token: %s", exc)
        self._stamp = stamp
        return self.token

    def ok(self, ex: Exchange, query_key: str | None) -> bool:
        """Whether `ex` carries the local token in any of the places tools put an API key."""
        token = self.current().encode()
        found: list[bytes] = []
        for key, value in ex.headers:
            if key in (b"x-api-key", b"x-goog-api-key", b"api-key"):
                found.append(value.strip())
            elif key == b"authorization":
                scheme, _, rest = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    found.append(rest.strip())
        if query_key:
            found.append(query_key.encode())
        return any(hmac.compare_digest(candidate, token) for candidate in found)


class Gateway:
    """The HTTP gateway of one daemon."""

    def __init__(self, server: Server, *, listen: str, token_path: Path) -> None:
        self.server = server
        self.listen = listen
        self.token_path = token_path
        self.url: str | None = None
        self.error: str | None = None
        self.stats = Stats()
        self._tokens: TokenCheck | None = None

    def status(self) -> P.GatewayStatus:
        return P.GatewayStatus(url=self.url, error=self.error)

    def metrics(self) -> str:
        return self.stats.metrics() if self.listen else ""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; on a fault at start, note it in `status()` and return."""
        if not self.listen:
            task_status.started()
            return
        try:
            host, port = parse_listen(self.listen)
            self._tokens = TokenCheck(self.token_path)
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
        except (OSError, ValueError, TokenFileError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.error = f"cannot listen on {self.listen}: {reason}"
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                self.error += (" (another program has the port: set [gateway] listen in "
                               "argentd.toml to a free HOST:PORT, or \"\" to turn it off)")
            log.error("gateway off: %s", self.error)
            task_status.started()
            return
        sockname = listeners[0].socket.getsockname()
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{sockname[1]}"
        config = self.server.engine.config.gateway
        pool = Pool(config.upstream_connections)
        hangups = Hangups()
        proxy = Proxy(self.server, pool, self.stats, self._tokens.ok, hangups)
        slots = trio.Semaphore(config.max_connections)
        log.info("gateway listening on %s", self.url)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(hangups.run)
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery, slots, proxy)
                task_status.started()
        finally:
            self.url = None
            with trio.CancelScope(shield=True):
                await pool.aclose()
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery,
                      slots: trio.Semaphore, proxy: Proxy) -> None:
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.warning("gateway accept failed: %s", os.strerror(exc.errno or 0))
                await trio.sleep(0.1)
                continue
            nursery.start_soon(self._client, stream, slots, proxy)

    async def _client(self, stream: trio.SocketStream, slots: trio.Semaphore,
                      proxy: Proxy) -> None:
        t = self.server.engine.config.gateway.timeouts
        conn = HttpConnection(stream, header=t.header, idle=t.idle, write=t.write)

        async def handle(ex: Exchange) -> None:
            self.stats.active += 1
            try:
                await proxy.handle(ex)
            finally:
                self.stats.active -= 1

        try:
            await conn.serve(handle)
        except ClientGone:
            pass
        except Exception:
            log.exception("gateway connection failed")
        finally:
            slots.release()
            with trio.CancelScope(shield=True):
                await stream.aclose()
