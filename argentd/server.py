"""The wire-protocol server: one trio task per connection around the engine.

Theory of operation: a connection task reads bytes, cuts them into lines
and answers the complete lines of each read at once (the engine is
synchronous), so pipelined requests cost one send for a batch of replies;
replies are sent as soon as they reach `FLUSH_AT` bytes, so a peer that does
not read stops its own pipeline (back-pressure) instead of making the daemon
build every reply first. Only two kinds of request outlive their line: a
`lease` that `wait`s (a task in the connection's nursery parks on the
waiter's result) and `reload` (file I/O in a thread); each connection may
have at most `MAX_WAITING` and `MAX_RELOADS` of them at once (the methods
themselves, from decoding a line to its reply, are in methods.py). Whatever the
engine decided besides the reply — events, waiters it served, a new
deadline — is drained by `Server.after_change()` after every call. One timer
task sleeps until the engine's next deadline, on the same `Clock` that
gives the engine its `now`.

Unfinished lines are bounded: a line must end within `LINE_TIMEOUT` seconds
of its first byte, and all connections together may hold `MAX_BUFFERED`
bytes of them; past either, the connection is told why and closed.

Every connection is wrapped: an exception in one is logged and ends that
connection only. A connection's writes go through one lock, so a reply, a
served waiter and an event never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import trio

from argent_client import protocol as P

from . import methods
from .clock import Clock
from .connection import GONE, Conn
from .engine import Engine
from .methods import LATENCY_BUCKETS
from .methods import MAX_RELOADS as MAX_RELOADS
from .methods import MAX_WAITING as MAX_WAITING

log = logging.getLogger("argentd")

EVENT_QUEUE: Final = 1024
"""A subscriber that falls this many events behind is disconnected."""
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""accept() out of resources: wait `ACCEPT_BACKOFF` and try again (as trio's serve_listeners)."""
ACCEPT_IGNORABLE_ERRNOS: Final = frozenset(
    getattr(errno, name) for name in ("ECONNABORTED", "EPROTO", "EPERM", "ETIMEDOUT",
                                      "ECONNRESET") if hasattr(errno, name)
)
"""accept() failed for that one connection (as trio's SocketListener): take the next."""
ACCEPT_BACKOFF: Final = 0.1
MAX_BUFFERED: Final = 64 * 1024 * 1024
"""Bytes of unfinished lines all connections together may hold in the daemon."""
LINE_TIMEOUT: Final = 30.0
"""Seconds a line may stay unfinished before its connection is closed."""
FLUSH_AT: Final = 64 * 1024
"""Replies to one read are sent once they reach this many bytes, not all at the end."""


class Server:
    """Serves the protocol for `engine` on a listening socket.

    `reload` is the daemon's reload coroutine (returns the `reload` result);
    `config_status` returns the current `status.config`; `on_change` is
    called after every engine change that should reach the state file.
    `clock` gives the engine its `now` (the daemon's; tests pass
    `Clock.fake(epoch)` to run under `MockClock`).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        reload: Callable[[str], Awaitable[P.ReloadResult]],
        config_status: Callable[[], P.ConfigStatus],
        on_change: Callable[[], None] = lambda: None,
        clock: Clock | None = None,
        uid: int | None = None,
        peer_uid: Callable[[Any], int | None] | None = None,
        gateway_status: Callable[[], P.GatewayStatus] | None = None,
        extra_metrics: Callable[[], str] | None = None,
    ) -> None:
        self.engine = engine
        self._reload = reload
        self._config_status = config_status
        self._on_change = on_change
        self.clock = clock or Clock()
        self.now = self.clock.now
        self.uid = os.getuid() if uid is None else uid
        self._peer_uid = peer_uid
        self._gateway_status = gateway_status
        self._extra_metrics = extra_metrics
        self._conn_ids = 0
        self._conns: dict[int, Conn] = {}
        self._subscribers: dict[int, Conn] = {}
        self._waiting: dict[int, tuple[trio.Event, list[P.LeaseResult | P.ArgentError]]] = {}
        self._timer_wakeup = trio.Event()
        self._timer_target = math.inf
        self._buffered = 0
        """Bytes of unfinished lines held across connections."""
        self._lat_counts = [0] * len(LATENCY_BUCKETS)
        self._lat_sum = 0.0
        self._lat_n = 0
        self.status_extras: list[Callable[[P.StatusResult], None]] = []
        """Adapters (the cluster) that add their part to each `status` result."""
        self.metrics_extras: list[Callable[[], str]] = []
        """Adapters that add their lines to `metrics`."""
        self._want_events()

    # ------------------------------------------------------------ lifecycle

    async def serve(
        self,
        listener: socket.socket,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on the listening socket until cancelled.

        Out of descriptors or memory (`ACCEPT_CAPACITY_ERRNOS`), accept is
        tried again after `ACCEPT_BACKOFF` seconds; a connection that died
        in the backlog is skipped; any other `OSError` is a bug (a closed or
        wrong listener) and propagates.
        """
        listener.setblocking(False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer)
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(listener)
                try:
                    sock, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    if exc.errno in ACCEPT_IGNORABLE_ERRNOS:
                        continue
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.warning("accept failed: %s; trying again in %.1f s",
                                exc.strerror or exc, ACCEPT_BACKOFF)
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                sock.setblocking(False)
                nursery.start_soon(self._connection, sock)

    def after_change(self) -> None:
        """Deliver what the engine decided and re-arm the timer."""
        out = self.engine.take_outbox()
        if out.events and log.isEnabledFor(logging.DEBUG):
            for event in out.events:
                fields = msgspec.structs.asdict(event)
                detail = " ".join(
                    f"{k}={v}" for k, v in fields.items() if v is not None and k != "type"
                )
                log.debug("event %s %s", event.type, detail)
        for event in out.events:
            if event.type == "paid_fallback":  # `[policy] paid_fallback = "notify"`
                log.info("paid fallback: %s leased %s (%s)", event.client or "a client",
                         event.profile, event.message)
        for wid, result in out.served:
            slot = self._waiting.pop(wid, None)
            if slot is not None:
                slot[1].append(result)
                slot[0].set()
        if out.events and self._subscribers:
            for event in out.events:
                line = P.encode_event(event)
                for conn in list(self._subscribers.values()):
                    assert conn.events is not None
                    try:
                        conn.events.send_nowait(line)
                    except trio.WouldBlock:
                        log.warning("subscriber %d fell behind; disconnecting it", conn.id)
                        self._drop_subscriber(conn)
                        conn.close()  # wakes its pump and reader: the connection ends
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._drop_subscriber(conn)
        if out.changed:
            self._on_change()
        if self.engine.take_earliest() < self._timer_target:
            self._timer_wakeup.set()

    async def _timer(self) -> None:
        """Advance the engine at its deadlines (sleeping on the clock `now` reads).

        With a wall clock to follow, it wakes at least every
        `clock.resync_every` seconds to re-sync (after a suspend a deadline
        is then at most that late).
        """
        longest = self.clock.resync_every or math.inf
        while True:
            self._timer_wakeup = trio.Event()
            deadline = self.engine.next_deadline()
            self._timer_target = math.inf if deadline is None else deadline
            delay = math.inf if deadline is None else deadline - self.now()
            if delay > 0:
                with trio.move_on_after(min(delay, longest)):
                    await self._timer_wakeup.wait()
                self.clock.resync()
                if deadline is None or self.now() < deadline:
                    continue
            try:
                self.engine.advance(self.now())
                self.after_change()
            except Exception:
                # A bug here must not take every client down with the timer:
                # log it and try again shortly.
                log.exception("advancing the engine failed")
                await trio.sleep(1.0)

    # ------------------------------------------------------------ connections

    async def _connection(self, sock: socket.socket) -> None:
        self._conn_ids += 1
        conn = Conn(self._conn_ids, sock)
        self._conns[conn.id] = conn
        try:
            if self._peer_uid is not None:
                uid = self._peer_uid(sock)
                if uid is not None and uid != self.uid:
                    log.warning("refused connection from uid %d", uid)
                    err = P.PermissionDenied(
                        f"argentd serves uid {self.uid} only; you are uid {uid}"
                    )
                    await conn.send(P.encode_error(None, err))
                    return
            async with trio.open_nursery() as nursery:
                with contextlib.suppress(*GONE):
                    await self._read_loop(conn, nursery)
                nursery.cancel_scope.cancel()
        except GONE:
            pass  # the peer went away before we said anything
        except Exception:
            log.exception("connection %d failed", conn.id)
        finally:
            conn.close()
            self._hold(conn, 0)
            self._conns.pop(conn.id, None)
            self._drop_subscriber(conn)
            self.engine.disconnect(conn.id, now=self.now())
            self.after_change()

    async def _read_loop(self, conn: Conn, nursery: trio.Nursery) -> None:
        buf = bytearray()  # a partial line (amortised appends: no quadratic copies)
        line_deadline = math.inf
        while True:
            if not buf:
                data = await conn.recv()
            else:
                with trio.move_on_at(line_deadline) as waited:
                    data = await conn.recv()
                if waited.cancelled_caught:
                    await self._refuse(conn, P.InvalidRequest(
                        f"a line stayed unfinished for {LINE_TIMEOUT:g} s; closing the "
                        f"connection"))
                    return
            if not data:
                return
            if not buf and data[-1:] == b"\n" and data.count(b"\n") == 1:
                # The common case, one whole request: no splitting, no copies.
                lines = [data[:-1]]
            else:
                started = not buf
                buf += data
                if b"\n" in data:
                    *lines, rest = bytes(buf).split(b"\n")
                    buf = bytearray(rest)
                    started = bool(rest)
                else:
                    lines = []
                if started:
                    line_deadline = trio.current_time() + LINE_TIMEOUT
                if not self._hold(conn, len(buf)):
                    await self._refuse(conn, P.InvalidRequest(
                        f"the daemon holds {MAX_BUFFERED} bytes of unfinished lines from all "
                        f"connections; closing this one"))
                    return
            replies: list[bytes] = []
            size = 0
            for line in lines:
                if len(line) > P.MAX_LINE:
                    if replies:
                        await conn.send(b"".join(replies))
                    await self._too_long(conn)
                    return
                if not line.strip():
                    continue
                reply = self._handle_line(conn, line, nursery)
                if reply:
                    replies.append(reply)
                    size += len(reply)
                    if size >= FLUSH_AT:
                        # Send as we go: a peer that does not read stops this loop
                        # (back-pressure), and the others get their turn meanwhile.
                        await conn.send(replies[0] if len(replies) == 1 else b"".join(replies))
                        replies.clear()
                        size = 0
                        await trio.lowlevel.checkpoint()
            if replies:
                await conn.send(replies[0] if len(replies) == 1 else b"".join(replies))
            if len(buf) > P.MAX_LINE:
                await self._too_long(conn)
                return

    def _hold(self, conn: Conn, size: int) -> bool:
        """Account `size` bytes of unfinished line for `conn`; False past `MAX_BUFFERED`."""
        self._buffered += size - conn.partial
        conn.partial = size
        return self._buffered <= MAX_BUFFERED or size == 0

    async def _too_long(self, conn: Conn) -> None:
        await self._refuse(conn, P.InvalidRequest(
            f"line longer than {P.MAX_LINE} bytes; closing the connection"))

    async def _refuse(self, conn: Conn, err: P.ArgentError) -> None:
        """Say why the connection ends (the caller then returns, which closes it)."""
        log.warning("connection %d: %s", conn.id, err.message)
        await conn.send(P.encode_error(None, err))

    async def _send_quietly(self, conn: Conn, data: bytes) -> None:
        """Send from a task beside the reader: a vanished peer closes the connection."""
        try:
            await conn.send(data)
        except GONE:
            conn.close()

    # ------------------------------------------------------------ requests (methods.py)

    # What each request does is in methods.py, as functions of the server;
    # bound here as class attributes, they are its methods.
    _handle_line = methods.handle_line
    _dispatch = methods.dispatch
    _observe = methods.observe
    _ignored_lease = methods.ignored_lease
    _lease = methods.lease
    _await_lease = methods.await_lease
    lease_for = methods.lease_for
    _metrics = methods.metrics_reply
    _reload_task = methods.reload_task

    # ------------------------------------------------------------ events

    def _subscribe(self, conn: Conn, nursery: trio.Nursery) -> None:
        if conn.events is not None:
            return
        send, recv = trio.open_memory_channel[bytes](EVENT_QUEUE)
        conn.events = send
        self._subscribers[conn.id] = conn
        self._want_events()
        nursery.start_soon(self._pump_events, conn, recv)

    async def _pump_events(self, conn: Conn, recv: trio.MemoryReceiveChannel[bytes]) -> None:
        async with recv:
            async for line in recv:
                await self._send_quietly(conn, line)
                if conn.closed:
                    return

    def _drop_subscriber(self, conn: Conn) -> None:
        if self._subscribers.pop(conn.id, None) is not None and conn.events is not None:
            conn.events.close()
            self._want_events()

    def _want_events(self) -> None:
        """Events are built only for subscribers and the debug log."""
        self.engine.events_wanted = bool(self._subscribers) or log.isEnabledFor(logging.DEBUG)
