"""The wire-protocol server: one trio task per connection around the engine.

Theory of operation: a connection task reads bytes, cuts them into lines
and answers every complete line at once (the engine is synchronous), so
pipelined requests cost one send for a whole batch of replies. Only two
kinds of request outlive their line: a `lease` that `wait`s (a task in the
connection's nursery parks on the waiter's result) and `reload` (file I/O in
a thread). Whatever the engine decided besides the reply — events, waiters
it served, a new deadline — is drained by `Server.after_change()` after
every call. One timer task sleeps until the engine's next deadline.

Every connection is wrapped: an exception in one is logged and ends that
connection only. A connection's writes go through one lock, so a reply, a
served waiter and an event never interleave.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import trio

from argent_client import protocol as P

from . import __version__
from .engine import Engine
from .views import metrics, status

log = logging.getLogger("argentd")

GONE: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)
"""What a read or write raises when the peer has gone (or we closed it)."""
RECV_SIZE: Final = 65536
EVENT_QUEUE: Final = 1024
"""A subscriber that falls this many events behind is disconnected."""
LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)


@dataclass(eq=False)
class Conn:
    """One client connection over a non-blocking stdlib socket.

    Reads and writes call the socket directly and only wait (through trio's
    `wait_readable`/`wait_writable`) when it would block: one readiness wait,
    one recv and one send per request, where trio's socket wrappers spend a
    failing recv and extra checkpoints on each.
    """

    id: int
    sock: socket.socket
    lock: trio.StrictFIFOLock = field(default_factory=trio.StrictFIFOLock)
    events: trio.MemorySendChannel[bytes] | None = None
    closed: bool = False

    async def recv(self) -> bytes:
        """The next bytes from the peer (b"" at EOF)."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError("connection closed")
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue

    async def send(self, data: bytes) -> None:
        """Write all of `data`; raises OSError if the peer is gone."""
        if self.closed:
            raise trio.ClosedResourceError("connection closed")
        if not self.lock.locked():
            try:
                n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n == len(data):
                return
            data = data[n:]
        # Taking the lock before any wait keeps concurrent writers in order.
        async with self.lock:
            view = memoryview(data)
            while view:
                if self.closed:
                    raise trio.ClosedResourceError("connection closed")
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    n = self.sock.send(view)
                except (BlockingIOError, InterruptedError):
                    continue
                view = view[n:]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


class Server:
    """Serves the protocol for `engine` on a listening socket.

    `reload` is the daemon's reload coroutine (returns the `reload` result);
    `config_status` returns the current `status.config`; `on_change` is
    called after every engine change that should reach the state file.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        reload: Callable[[str], Awaitable[P.ReloadResult]],
        config_status: Callable[[], P.ConfigStatus],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        uid: int | None = None,
        peer_uid: Callable[[Any], int | None] | None = None,
    ) -> None:
        self.engine = engine
        self._reload = reload
        self._config_status = config_status
        self._on_change = on_change
        self.clock = clock
        self.uid = os.getuid() if uid is None else uid
        self._peer_uid = peer_uid
        self._conn_ids = 0
        self._conns: dict[int, Conn] = {}
        self._subscribers: dict[int, Conn] = {}
        self._waiting: dict[int, tuple[trio.Event, list[P.LeaseResult | P.ArgentError]]] = {}
        self._timer_wakeup = trio.Event()
        self._timer_target = math.inf
        self._lat_counts = [0] * len(LATENCY_BUCKETS)
        self._lat_sum = 0.0
        self._lat_n = 0
        self.status_extras: list[Callable[[P.StatusResult], None]] = []
        """Adapters (the cluster) that add their part to each `status` result."""
        self.metrics_extras: list[Callable[[], str]] = []
        """Adapters that add their lines to `metrics`."""
        self._want_events()
        self._handlers: dict[str, Callable[[Conn, Any], msgspec.Struct]] = {
            "hello": self._hello,
            "renew": self._renew,
            "release": self._release,
            "report_failure": self._report,
            "status": self._status,
            "reset": self._reset,
            "disable": self._disable,
            "enable": self._enable,
            "metrics": self._metrics,
        }

    # ------------------------------------------------------------ lifecycle

    async def serve(
        self,
        listener: socket.socket,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on the listening socket until cancelled."""
        listener.setblocking(False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer)
            task_status.started()
            while True:
                try:
                    await trio.lowlevel.wait_readable(listener)
                    sock, _ = listener.accept()
                    sock.setblocking(False)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    # EMFILE and friends: back off instead of spinning.
                    log.warning("accept failed: %s", exc.strerror or exc)
                    await trio.sleep(0.1)
                    continue
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
        while True:
            self._timer_wakeup = trio.Event()
            deadline = self.engine.next_deadline()
            self._timer_target = math.inf if deadline is None else deadline
            if deadline is None:
                await self._timer_wakeup.wait()
                continue
            delay = deadline - self.clock()
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._timer_wakeup.wait()
                    continue
            try:
                self.engine.advance(self.clock())
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
            self._conns.pop(conn.id, None)
            self._drop_subscriber(conn)
            self.engine.disconnect(conn.id, now=self.clock())
            self.after_change()

    async def _read_loop(self, conn: Conn, nursery: trio.Nursery) -> None:
        buf = bytearray()  # a partial line (amortised appends: no quadratic copies)
        while True:
            data = await conn.recv()
            if not data:
                return
            if not buf and data[-1:] == b"\n" and data.count(b"\n") == 1:
                # The common case, one whole request: no splitting, no copies.
                lines = [data[:-1]]
            else:
                buf += data
                if b"\n" not in data:
                    if len(buf) > P.MAX_LINE:
                        await self._too_long(conn)
                        return
                    continue
                *lines, rest = bytes(buf).split(b"\n")
                buf = bytearray(rest)
            replies: list[bytes] = []
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
            if replies:
                await conn.send(replies[0] if len(replies) == 1 else b"".join(replies))
            if len(buf) > P.MAX_LINE:
                await self._too_long(conn)
                return

    async def _too_long(self, conn: Conn) -> None:
        err = P.InvalidRequest(f"line longer than {P.MAX_LINE} bytes; closing the connection")
        await conn.send(P.encode_error(None, err))

    def _handle_line(self, conn: Conn, line: bytes, nursery: trio.Nursery) -> bytes | None:
        """Answer one line; returns the reply, or None when it comes later or never."""
        start = time.perf_counter()
        rid: P.RequestId = None
        notify = False
        result: msgspec.Struct | None
        try:
            typed = P.decode_typed(line)
            if typed is None:  # malformed somehow: the two-step decode says how
                req = P.decode_request(line)
                notify = req.id is msgspec.UNSET
                rid = None if isinstance(req.id, msgspec.UnsetType) else req.id
                method, params = req.method, P.decode_params(req)
            else:
                method, req_id, params = typed
                notify = req_id is msgspec.UNSET
                rid = None if isinstance(req_id, msgspec.UnsetType) else req_id
            if method == "lease":
                assert isinstance(params, P.LeaseParams)
                result = self._lease(conn, rid, notify, params, nursery)
            elif method == "subscribe":
                self._subscribe(conn, nursery)
                result = P.SubscribeResult()
            elif method == "reload":
                nursery.start_soon(self._reload_task, conn, rid, notify)
                result = None
            else:
                result = self._handlers[method](conn, params)
            reply = None if notify or result is None else P.encode_result(rid, result)
        except P.ArgentError as exc:
            reply = None if notify else P.encode_error(rid, exc)
        except Exception as exc:
            log.exception("internal error answering a request")
            reply = None if notify else P.encode_error(rid, P.InternalError(
                f"internal error: {type(exc).__name__}"))
        self.after_change()
        self._observe(time.perf_counter() - start)
        return reply

    def _observe(self, seconds: float) -> None:
        self._lat_n += 1
        self._lat_sum += seconds
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if i < len(LATENCY_BUCKETS):
            self._lat_counts[i] += 1

    # ------------------------------------------------------------ methods

    def _hello(self, conn: Conn, params: Any) -> msgspec.Struct:
        return P.HelloResult("argentd", __version__, P.PROTOCOL_VERSION, os.getpid())

    def _lease(
        self, conn: Conn, rid: P.RequestId, notify: bool, params: P.LeaseParams,
        nursery: trio.Nursery,
    ) -> P.LeaseResult | None:
        """A lease now, or None when the request waits (its reply comes later)."""
        now = self.clock()
        try:
            return self.engine.lease(params, conn=conn.id, now=now)
        except P.NoProfileAvailable:
            if params.wait <= 0:
                raise
        wid = self.engine.wait(params, conn=conn.id, now=now)
        done = trio.Event()
        box: list[P.LeaseResult | P.ArgentError] = []
        self._waiting[wid] = (done, box)
        nursery.start_soon(self._await_lease, conn, rid, notify, wid, done, box)
        return None

    async def _await_lease(
        self, conn: Conn, rid: P.RequestId, notify: bool, wid: int, done: trio.Event,
        box: list[P.LeaseResult | P.ArgentError],
    ) -> None:
        try:
            await done.wait()
        finally:
            if not box:  # cancelled: the connection is closing
                self._waiting.pop(wid, None)
                self.engine.cancel_wait(wid)
        if notify:
            return
        result = box[0]
        if isinstance(result, P.ArgentError):
            await self._send_quietly(conn, P.encode_error(rid, result))
        else:
            await self._send_quietly(conn, P.encode_result(rid, result))

    def _renew(self, conn: Conn, params: P.RenewParams) -> msgspec.Struct:
        return P.RenewResult(self.engine.renew(params.lease_id, params.ttl, now=self.clock()))

    def _release(self, conn: Conn, params: P.ReleaseParams) -> msgspec.Struct:
        self.engine.release(params.lease_id, now=self.clock(), usage=params.usage,
                            limits=params.limits, success=params.success)
        return P.ReleaseResult()

    def _report(self, conn: Conn, params: P.ReportParams) -> msgspec.Struct:
        return self.engine.report(params, conn=conn.id, now=self.clock())

    def _status(self, conn: Conn, params: Any) -> msgspec.Struct:
        result = status(self.engine, self._config_status(), now=self.clock())
        for add in self.status_extras:
            add(result)
        return result

    def _reset(self, conn: Conn, params: P.ProfileParams) -> msgspec.Struct:
        return P.ProfileStateResult(self.engine.reset(params.profile, now=self.clock()))

    def _disable(self, conn: Conn, params: P.ProfileParams) -> msgspec.Struct:
        state = self.engine.set_disabled(params.profile, True, now=self.clock())
        return P.ProfileStateResult(state)

    def _enable(self, conn: Conn, params: P.ProfileParams) -> msgspec.Struct:
        state = self.engine.set_disabled(params.profile, False, now=self.clock())
        return P.ProfileStateResult(state)

    def _metrics(self, conn: Conn, params: Any) -> msgspec.Struct:
        cumulative = []
        total = 0
        for bound, n in zip(LATENCY_BUCKETS, self._lat_counts, strict=True):
            total += n
            cumulative.append((bound, total))
        text = metrics(self.engine, now=self.clock(), latency_buckets=cumulative,
                       latency_sum=self._lat_sum, latency_count=self._lat_n)
        return P.MetricsResult(text + "".join(extra() for extra in self.metrics_extras))

    async def _reload_task(self, conn: Conn, rid: P.RequestId, notify: bool) -> None:
        result = await self._reload("reload method")
        if not notify:
            await self._send_quietly(conn, P.encode_result(rid, result))

    async def _send_quietly(self, conn: Conn, data: bytes) -> None:
        """Send from a task beside the reader: a vanished peer closes the connection."""
        try:
            await conn.send(data)
        except GONE:
            conn.close()

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
