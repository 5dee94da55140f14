"""The protocol's methods on the server: one line in, its reply out.

`Server` (server.py) takes these as its methods (`Server._dispatch` is
`dispatch`, and so on), so each one's `self` is the server: its engine, its
clock and the bounds it keeps per connection. A line is decoded in one
typed decode when it is well formed (`handle_line`), dispatched on its
method to the engine (`dispatch`), and answered now, or later for the two
kinds that outlive their line: a `lease` that waits (a task parks on the
waiter, `await_lease`; at most `MAX_WAITING` per connection) and `reload`
(`reload_task`; at most `MAX_RELOADS`). `lease_for` is the same waiting
lease for an adapter inside the daemon (the gateway).
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from argent_client import protocol as P

from . import __version__
from .connection import Conn
from .views import metrics, status

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("argentd")

LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
MAX_WAITING: Final = 256
"""Waiting `lease` requests one connection may have at once (`limit_exceeded` past it)."""
MAX_RELOADS: Final = 4
"""`reload` requests one connection may have in flight at once."""


def handle_line(self: Server, conn: Conn, line: bytes, nursery: trio.Nursery) -> bytes | None:
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
        result = self._dispatch(conn, rid, notify, method, params, nursery)
        reply = None if notify or result is None else P.encode_result(rid, result)
    except P.ArgentError as exc:
        reply = None if notify else P.encode_error(rid, exc)
    except RecursionError:  # msgspec's depth limit: a parse error like any other
        reply = P.encode_error(None, P.ParseError("parse error: JSON nested too deeply"))
    except Exception as exc:
        log.exception("internal error answering a request")
        reply = None if notify else P.encode_error(rid, P.InternalError(
            f"internal error: {type(exc).__name__}"))
    self.after_change()
    self._observe(time.perf_counter() - start)
    return reply


def dispatch(
    self: Server, conn: Conn, rid: P.RequestId, notify: bool, method: str, params: msgspec.Struct,
    nursery: trio.Nursery,
) -> msgspec.Struct | None:
    """The result of one decoded request, or None when its reply comes later."""
    now = self.now()
    engine = self.engine
    match method, params:
        case "hello", _:
            return P.HelloResult("argentd", __version__, P.PROTOCOL_VERSION, os.getpid())
        case "lease", P.LeaseParams() as p:
            if notify:
                self._ignored_lease(conn)
                return None
            return self._lease(conn, rid, p, nursery, now)
        case "renew", P.RenewParams() as p:
            return P.RenewResult(engine.renew(p.lease_id, p.ttl, now=now))
        case "release", P.ReleaseParams() as p:
            engine.release(p.lease_id, now=now, usage=p.usage, limits=p.limits,
                           success=p.success)
            return P.ReleaseResult()
        case "report_failure", P.ReportParams() as p:
            if notify and p.failover:  # nobody would learn the next lease's id
                p = msgspec.structs.replace(p, failover=False)
            return engine.report(p, conn=conn.id, now=now)
        case "status", _:
            result = status(engine, self._config_status(), now=now)
            if self._gateway_status is not None:
                result.gateway = self._gateway_status()
            for add in self.status_extras:
                add(result)
            return result
        case "reset", P.ProfileParams() as p:
            return P.ProfileStateResult(engine.reset(p.profile, now=now))
        case "disable" | "enable", P.ProfileParams() as p:
            state = engine.set_disabled(p.profile, method == "disable", now=now)
            return P.ProfileStateResult(state)
        case "metrics", _:
            return self._metrics(now)
        case "subscribe", _:
            self._subscribe(conn, nursery)
            return P.SubscribeResult()
        case "reload", _:
            if conn.reloads >= MAX_RELOADS:
                raise P.LimitExceeded(
                    f"this connection already has {MAX_RELOADS} reloads in flight; wait "
                    f"for their replies", limit=MAX_RELOADS)
            conn.reloads += 1
            nursery.start_soon(self._reload_task, conn, rid, notify)
            return None
    raise P.MethodNotFound(f"unknown method {method!r}")  # decode let through a new one


def observe(self: Server, seconds: float) -> None:
    self._lat_n += 1
    self._lat_sum += seconds
    i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
    if i < len(LATENCY_BUCKETS):
        self._lat_counts[i] += 1


def ignored_lease(self: Server, conn: Conn) -> None:
    """A `lease` without an `id`: granting it would strand a lease nobody can name."""
    if not conn.warned_notify:
        conn.warned_notify = True
        log.warning("connection %d sent `lease` as a notification (no id); ignored, "
                    "since its reply is the only way to learn the lease id", conn.id)


def lease(
    self: Server, conn: Conn, rid: P.RequestId, params: P.LeaseParams, nursery: trio.Nursery,
    now: float,
) -> P.LeaseResult | None:
    """A lease now, or None when the request waits (its reply comes later)."""
    try:
        return self.engine.lease(params, conn=conn.id, now=now)
    except P.NoProfileAvailable:
        if params.wait <= 0:
            raise
        if conn.waiting >= MAX_WAITING:
            raise P.LimitExceeded(
                f"this connection already has {MAX_WAITING} leases waiting; wait for "
                f"their replies before asking for more", limit=MAX_WAITING) from None
    wid = self.engine.wait(params, conn=conn.id, now=now)
    done = trio.Event()
    box: list[P.LeaseResult | P.ArgentError] = []
    self._waiting[wid] = (done, box)
    conn.waiting += 1
    nursery.start_soon(self._await_lease, conn, rid, wid, done, box)
    return None


async def await_lease(
    self: Server, conn: Conn, rid: P.RequestId, wid: int, done: trio.Event,
    box: list[P.LeaseResult | P.ArgentError],
) -> None:
    try:
        await done.wait()
    finally:
        conn.waiting -= 1
        if not box:  # cancelled: the connection is closing
            self._waiting.pop(wid, None)
            self.engine.cancel_wait(wid)
    result = box[0]
    if isinstance(result, P.ArgentError):
        await self._send_quietly(conn, P.encode_error(rid, result))
    else:
        await self._send_quietly(conn, P.encode_result(rid, result))


async def lease_for(self: Server, params: P.LeaseParams, *, conn: int) -> P.LeaseResult:
    """A lease for an adapter inside the daemon (the gateway): now, or after
    waiting up to `params.wait` seconds, like a socket client's `lease`.

    `conn` names the holder (the gateway uses negative ids, which no
    socket connection has): `engine.disconnect(conn)` ends whatever it
    still holds. Raises `ArgentError` (`NoProfileAvailable` when the wait
    ran out).
    """
    now = self.now()
    try:
        try:
            return self.engine.lease(params, conn=conn, now=now)
        except P.NoProfileAvailable:
            if params.wait <= 0:
                raise
        wid = self.engine.wait(params, conn=conn, now=now)
        done = trio.Event()
        box: list[P.LeaseResult | P.ArgentError] = []
        self._waiting[wid] = (done, box)
    finally:
        self.after_change()
    try:
        await done.wait()
    finally:
        if not box:  # cancelled
            self._waiting.pop(wid, None)
            self.engine.cancel_wait(wid)
    result = box[0]
    if isinstance(result, P.ArgentError):
        raise result
    return result


def metrics_reply(self: Server, now: float) -> P.MetricsResult:
    cumulative = []
    total = 0
    for bound, n in zip(LATENCY_BUCKETS, self._lat_counts, strict=True):
        total += n
        cumulative.append((bound, total))
    text = metrics(self.engine, now=now, latency_buckets=cumulative,
                   latency_sum=self._lat_sum, latency_count=self._lat_n)
    if self._extra_metrics is not None:
        text += self._extra_metrics()
    return P.MetricsResult(text + "".join(extra() for extra in self.metrics_extras))


async def reload_task(self: Server, conn: Conn, rid: P.RequestId, notify: bool) -> None:
    try:
        result = await self._reload("reload method")
    finally:
        conn.reloads -= 1
    if not notify:
        await self._send_quietly(conn, P.encode_result(rid, result))
