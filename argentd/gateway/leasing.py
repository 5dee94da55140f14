"""The gateway's side of the engine: lease, wait, report, release, let go.

Every lease a request takes is held under its own negative connection id
(socket connections have positive ones), kept in the request's `open` set
until its lease ended: whatever is still there when the request ends (a
client gone mid-stream, a cancelled daemon) is ended without claiming
success by `engine.disconnect(id)` (`Leases.let_go`). Each call runs on the
engine in-process (no socket round trip) and ends with
`server.after_change()`, which hands the outcome to waiters and watchers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import msgspec
import trio

from argent_client import protocol as P
from argent_client.classify import Failure

from ..server import Server
from .upstreams import Target


@dataclass
class Buffered:
    """A whole upstream answer kept to pass back if no other attempt succeeds."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class Fault:
    """An attempt that failed before any byte reached the client."""

    kind: Literal["profile", "provider"]
    failure: Failure
    limits: P.Limits | None
    answer: Buffered | None
    """What upstream said (None: no answer at all, a timeout or broken connection)."""


@dataclass
class Held:
    lease: P.LeaseResult
    index: int
    """Which target of the plan it is for."""
    conn: int


class Leases:
    """Lease calls for gateway requests, on the daemon's one engine."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.engine = server.engine
        self._ids: Iterator[int] = itertools.count(-1, -1)

    def _conn(self, open_: set[int]) -> int:
        conn = next(self._ids)
        open_.add(conn)
        return conn

    async def acquire(self, open_: set[int], params: P.LeaseParams,
                      targets: tuple[Target, ...], start: int, wait_until: float) -> Held:
        """A lease for the first target from `start` with a ready profile, else the
        first one any target can give before `wait_until`.

        Raises `NoProfileAvailable` (with the soonest `retry_after`) or
        `UnknownProvider` when no target has any profile.
        """
        now = self.server.now()
        busy: list[tuple[int, P.NoProfileAvailable]] = []
        unknown: P.ArgentError | None = None
        for i in range(start, len(targets)):
            conn = self._conn(open_)
            try:
                lease = self.engine.lease(for_target(params, targets[i]), conn=conn, now=now)
            except P.NoProfileAvailable as exc:
                open_.discard(conn)
                busy.append((i, exc))
                continue
            except (P.UnknownProvider, P.UnknownRoute) as exc:
                open_.discard(conn)
                unknown = unknown or exc
                continue
            finally:
                self.server.after_change()
            return Held(lease, i, conn)
        if not busy:
            if unknown is not None:
                raise unknown
            raise P.NoProfileAvailable("no profile is ready")
        left = wait_until - now
        if left <= 0:
            raise _soonest(busy)
        return await self._wait_any(open_, params, targets, left, busy)

    async def _wait_any(self, open_: set[int], params: P.LeaseParams,
                        targets: tuple[Target, ...], left: float,
                        busy: list[tuple[int, P.NoProfileAvailable]]) -> Held:
        won: list[Held] = []
        waited: list[tuple[int, P.NoProfileAvailable]] = []

        async def one(i: int, conn: int, scope: trio.CancelScope) -> None:
            wanted = msgspec.structs.replace(for_target(params, targets[i]), wait=left)
            try:
                lease = await self.server.lease_for(wanted, conn=conn)
            except P.NoProfileAvailable as exc:
                waited.append((i, exc))
                return
            except P.ArgentError:
                return
            won.append(Held(lease, i, conn))
            scope.cancel()

        conns = {i: self._conn(open_) for i, _ in busy}
        async with trio.open_nursery() as nursery:
            for i, conn in conns.items():
                nursery.start_soon(one, i, conn, nursery.cancel_scope)
        if not won:
            raise _soonest(waited or busy)
        winner = min(won, key=lambda h: h.index)
        now = self.server.now()
        for conn in conns.values():
            if conn != winner.conn:
                self.engine.disconnect(conn, now=now)  # a second grant, or a waiter left
                open_.discard(conn)
        self.server.after_change()
        return winner

    def report(self, open_: set[int], held: Held, fault: Fault, *,
               failover: bool) -> P.ReportResult:
        f = fault.failure
        params = P.ReportParams(
            kind=f.kind, lease_id=held.lease.lease_id, retry_after=f.retry_after,
            status=f.status, message=f.message, limits=fault.limits, failover=failover,
            model=None,
        )
        now = self.server.now()
        try:
            result = self.engine.report(params, conn=held.conn, now=now)
            if result.next is None:
                open_.discard(held.conn)
            return result
        except P.LeaseNotFound:
            open_.discard(held.conn)  # expired meanwhile: the profile still pays
            params = msgspec.structs.replace(params, lease_id=None,
                                             profile=held.lease.profile, failover=False)
            try:
                return self.engine.report(params, conn=held.conn, now=now)
            except P.ArgentError:
                return P.ReportResult(profile_state="ready")
        finally:
            self.server.after_change()

    def release(self, open_: set[int], held: Held, usage: P.Usage | None,
                limits: P.Limits | None) -> None:
        open_.discard(held.conn)
        try:
            self.engine.release(held.lease.lease_id, now=self.server.now(), usage=usage,
                                limits=limits)
        except P.LeaseNotFound:
            pass
        finally:
            self.server.after_change()

    def let_go(self, open_: set[int]) -> None:
        """End without success whatever a request still holds."""
        if not open_:
            return
        now = self.server.now()
        for conn in open_:
            self.engine.disconnect(conn, now=now)
        open_.clear()
        self.server.after_change()


def for_target(params: P.LeaseParams, target: Target) -> P.LeaseParams:
    """The request's lease parameters for one target (its provider, its model)."""
    return msgspec.structs.replace(params, provider=target.provider,
                                   model=target.model or params.model)


def _soonest(busy: list[tuple[int, P.NoProfileAvailable]]) -> P.NoProfileAvailable:
    def when(item: tuple[int, P.NoProfileAvailable]) -> float:
        r = item[1].data.get("retry_after")
        return float(r) if isinstance(r, int | float) else math.inf

    return min(busy, key=when)[1]
