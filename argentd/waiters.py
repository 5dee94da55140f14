"""Lease requests that wait for a profile: the engine's queue of waiters.

Theory of operation
-------------------
Waiters are served first come, first served. Waiters asking the same thing
(route, provider, model, pinned profile, client: the `Group` key; a session
only says which profile is preferred) form one FIFO group: when its first
waiter cannot be served, none behind it can, so an engine call tries each
group at most until its first refusal, never every waiter.

A group is tried only when something may have made one of its profiles
ready: the engine *marks* the providers a change touches (a lease ended, a
cooldown ended, an `enable`, a budget reading; a reload marks all), and a
group is woken at the time the engine computed when its head was refused
(the soonest `until` of its profiles' readiness: a cooldown's end, a refill).
A new waiter joining a non-empty group is not tried at all: the group's head
was refused and nothing changed since. So an engine call costs O(groups it
can serve + waiters served), and queueing W waiters costs O(W).

Groups sharing a provider are tried in the order of their first waiters
(a heap on waiter id), so arrival order holds across groups as well.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from argent_client.protocol import ArgentError, LeaseParams, LeaseResult

from .leases import Waiter

Served = LeaseResult | ArgentError
GroupKey = tuple[str | None, str | None, str | None, str | None, str | None]


def group_key(params: LeaseParams) -> GroupKey:
    """What makes two waiting requests equal for serving."""
    return (params.route, params.provider, params.model, getattr(params, "profile", None),
            params.client)


@dataclass(slots=True)
class Group:
    key: GroupKey
    providers: tuple[str, ...]
    """Providers of its targets: a change to one of them may serve it."""
    waiters: OrderedDict[int, Waiter] = field(default_factory=OrderedDict)
    wake_at: float | None = None
    """When the engine asked to try it again (a reason holding its head ends)."""


class WaitQueue:
    """The waiters, grouped and indexed (see the module docstring)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.waiting: dict[int, Group] = {}
        """Waiter id -> its group (test it, not the queue, on a hot path: a dict's
        truth costs no Python call)."""
        self._groups: dict[GroupKey, Group] = {}
        self._by_provider: dict[str, dict[GroupKey, Group]] = {}
        self._by_conn: dict[int | None, dict[int, None]] = {}
        self._dirty: dict[GroupKey, Group] = {}
        """Groups to try at the next `serve`."""
        self._wakes: list[tuple[float, int, GroupKey]] = []
        self._wake_seq = itertools.count()
        self._deadlines: list[tuple[float, int]] = []
        """(deadline, waiter id), lazily deleted."""

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def __len__(self) -> int:
        return len(self.waiting)

    def get(self, waiter_id: int) -> Waiter | None:
        g = self.waiting.get(waiter_id)
        return None if g is None else g.waiters.get(waiter_id)

    def of_conn(self, conn: int) -> int:
        """How many waiters connection `conn` has queued."""
        return len(self._by_conn.get(conn, ()))

    # ------------------------------------------------------------ changes

    def add(
        self, params: LeaseParams, conn: int | None, deadline: float, providers: Iterable[str]
    ) -> Waiter:
        """Queue a request behind every earlier one; `providers` serve its targets."""
        w = Waiter(next(self._ids), params, conn, deadline)
        key = group_key(params)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = Group(key, tuple(dict.fromkeys(providers)))
            for prov in g.providers:
                self._by_provider.setdefault(prov, {})[key] = g
        if not g.waiters:
            self._dirty[key] = g  # the first in line: try it
        g.waiters[w.id] = w
        self.waiting[w.id] = g
        self._by_conn.setdefault(conn, {})[w.id] = None
        heapq.heappush(self._deadlines, (deadline, w.id))
        return w

    def cancel(self, waiter_id: int) -> None:
        g = self.waiting.pop(waiter_id, None)
        if g is None:
            return
        w = g.waiters.pop(waiter_id)
        conns = self._by_conn[w.conn]
        del conns[waiter_id]
        if not conns:
            del self._by_conn[w.conn]
        if not g.waiters:
            self._drop_group(g)

    def _drop_group(self, g: Group) -> None:
        del self._groups[g.key]
        self._dirty.pop(g.key, None)
        for prov in g.providers:
            groups = self._by_provider[prov]
            del groups[g.key]
            if not groups:
                del self._by_provider[prov]

    def drop_conn(self, conn: int) -> None:
        """Forget every waiter of connection `conn` (it closed)."""
        for wid in list(self._by_conn.get(conn, ())):
            self.cancel(wid)

    def mark(self, provider: str) -> None:
        """Something about `provider`'s profiles changed: try its groups."""
        groups = self._by_provider.get(provider)
        if groups:
            self._dirty.update(groups)

    def mark_all(self) -> None:
        self._dirty.update(self._groups)

    def wake(self, waiter: Waiter, at: float) -> None:
        """Try `waiter`'s group again at `at` (once per group and time)."""
        g = self.waiting.get(waiter.id)
        if g is not None and (g.wake_at is None or at < g.wake_at):
            g.wake_at = at
            heapq.heappush(self._wakes, (at, next(self._wake_seq), g.key))

    def next_time(self) -> float | None:
        """The earliest wake-up or deadline still standing, or None."""
        wakes, deadlines = self._wakes, self._deadlines
        while wakes:
            at, _, key = wakes[0]
            g = self._groups.get(key)
            if g is not None and g.wake_at == at:
                break
            heapq.heappop(wakes)
        while deadlines and deadlines[0][1] not in self.waiting:
            heapq.heappop(deadlines)
        times = [h[0][0] for h in (wakes, deadlines) if h]
        return min(times) if times else None

    def due(self, now: float) -> list[Waiter]:
        """Take out the waiters whose deadline passed by `now`, oldest first."""
        out = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, wid = heapq.heappop(deadlines)
            w = self.get(wid)
            if w is not None:
                out.append(w)
                self.cancel(wid)
        return out

    def woken(self, now: float) -> None:
        """Mark the groups whose wake-up time has come."""
        wakes = self._wakes
        while wakes and wakes[0][0] <= now:
            at, _, key = heapq.heappop(wakes)
            g = self._groups.get(key)
            if g is not None and g.wake_at == at:
                g.wake_at = None
                self._dirty[key] = g

    # ------------------------------------------------------------ serving

    def serve(self, attempt: Callable[[Waiter], Served | None]) -> list[tuple[int, Served]]:
        """Offer the first waiter of each marked group, oldest first, to
        `attempt`; an answered waiter leaves and the next of its group is
        offered; a refused one (None) ends its group's turn.

        Returns (waiter id, answer) in the order they were answered.
        """
        out: list[tuple[int, Served]] = []
        if not self._dirty:
            return out
        heap = [(next(iter(g.waiters)), g.key) for g in self._dirty.values() if g.waiters]
        self._dirty = {}
        heapq.heapify(heap)
        while heap:
            wid, key = heapq.heappop(heap)
            g = self._groups.get(key)
            if g is None or wid not in g.waiters:
                continue
            result = attempt(g.waiters[wid])
            if result is None:
                continue
            out.append((wid, result))
            self.cancel(wid)
            self._dirty.pop(key, None)  # tried here: being tried again is not needed
            if g.waiters:
                heapq.heappush(heap, (next(iter(g.waiters)), key))
        return out
