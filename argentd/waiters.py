"""Lease requests that wait for a profile: the engine's queue of waiters.

Waiters are served first come, first served. The queue holds them; the
engine decides, through the `attempt` it passes to `serve`, whether one
gets a lease now, an error (its deadline passed), or stays.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from argent_client.protocol import ArgentError, LeaseParams, LeaseResult

from .leases import Waiter

Served = LeaseResult | ArgentError
Attempt = Callable[[Waiter], "Served | None"]


class WaitQueue:
    """The waiters, in arrival order."""

    def __init__(self) -> None:
        self._waiters: dict[int, Waiter] = {}
        self._ids = itertools.count(1)

    def __bool__(self) -> bool:
        return bool(self._waiters)

    def __len__(self) -> int:
        return len(self._waiters)

    def get(self, waiter_id: int) -> Waiter | None:
        return self._waiters.get(waiter_id)

    def add(self, params: LeaseParams, conn: int | None, deadline: float) -> Waiter:
        """Queue a request behind every earlier one."""
        w = Waiter(next(self._ids), params, conn, deadline)
        self._waiters[w.id] = w
        return w

    def cancel(self, waiter_id: int) -> None:
        self._waiters.pop(waiter_id, None)

    def drop_conn(self, conn: int) -> None:
        """Forget every waiter of connection `conn` (it closed)."""
        for wid in [w.id for w in self._waiters.values() if w.conn == conn]:
            del self._waiters[wid]

    def of_conn(self, conn: int) -> int:
        """How many waiters connection `conn` has queued."""
        return sum(1 for w in self._waiters.values() if w.conn == conn)

    def serve(self, attempt: Attempt) -> list[tuple[int, Served]]:
        """Offer each waiter, in order, to `attempt`; those it answers leave the queue.

        Returns (waiter id, answer) in the order they were answered.
        """
        out: list[tuple[int, Served]] = []
        for wid in list(self._waiters):
            w = self._waiters.get(wid)
            if w is None:
                continue
            result = attempt(w)
            if result is not None:
                del self._waiters[wid]
                out.append((wid, result))
        return out
