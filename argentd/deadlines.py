"""When the engine next has work: lazy-deletion heaps of lease expiries,
cooldown ends, waiter deadlines and waiter wake-ups.

An entry is pushed whenever a time is set and never removed when the time
changes (a renew, a reset, a release): the engine tells `next` which tops
still stand for something, and drops the rest as they surface. The lease
heap is rebuilt when ended leases outnumber live ones, so it does not grow
with every lease granted within one TTL.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator


class Deadlines:
    """The engine's wake-up times (see the module docstring)."""

    def __init__(self) -> None:
        self.leases: list[tuple[float, str]] = []
        """(expires_at, lease id)."""
        self.cooldowns: list[tuple[float, str, str]] = []
        """(until, secret key, model or "")."""
        self.waiters: list[tuple[float, int]] = []
        """(deadline, waiter id)."""
        self._wakes: list[float] = []
        """Times at which a reason holding a waiter back ends (a refill, ...)."""
        self._wake_set: set[float] = set()
        self._earliest = math.inf

    def _pushed(self, at: float) -> None:
        if at < self._earliest:
            self._earliest = at

    def lease(self, at: float, lease_id: str) -> None:
        heapq.heappush(self.leases, (at, lease_id))
        self._pushed(at)

    def cooldown(self, until: float, key: str, model: str) -> None:
        heapq.heappush(self.cooldowns, (until, key, model))
        self._pushed(until)

    def waiter(self, deadline: float, waiter_id: int) -> None:
        heapq.heappush(self.waiters, (deadline, waiter_id))
        self._pushed(deadline)

    def wake(self, at: float) -> None:
        """Try the waiters again at `at` (one entry per distinct time)."""
        if at not in self._wake_set:
            self._wake_set.add(at)
            heapq.heappush(self._wakes, at)
            self._pushed(at)

    def take_earliest(self) -> float:
        """The earliest time pushed since the last call (inf if none)."""
        earliest, self._earliest = self._earliest, math.inf
        return earliest

    def rebuild_leases(self, live: Iterator[tuple[float, str]], count: int) -> None:
        """Rebuild the lease heap from the `count` live leases when it holds
        more than twice as many entries."""
        if len(self.leases) > 2 * count + 64:
            self.leases = list(live)
            heapq.heapify(self.leases)

    def due_leases(self, now: float) -> Iterator[str]:
        """Pop the ids of leases due by `now` (live or not: the caller checks)."""
        # self.leases, not a local: ending a lease may rebuild the heap.
        while self.leases and self.leases[0][0] <= now:
            yield heapq.heappop(self.leases)[1]

    def due_cooldowns(self, now: float) -> Iterator[tuple[float, str, str]]:
        """Pop the cooldown ends due by `now` (live or not: the caller checks)."""
        heap = self.cooldowns
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)

    def drop_wakes(self, now: float) -> None:
        """Forget wake-ups due by `now` (the tick that passes them tries every waiter)."""
        wakes = self._wakes
        while wakes and wakes[0] <= now:
            self._wake_set.discard(heapq.heappop(wakes))

    def next(
        self,
        lease_live: Callable[[float, str], bool],
        cooldown_live: Callable[[float, str, str], bool],
        waiter_live: Callable[[float, int], bool],
        has_waiters: bool,
    ) -> float | None:
        """The earliest time that still stands for something, or None."""
        lh, ch, wh = self.leases, self.cooldowns, self.waiters
        while lh and not lease_live(*lh[0]):
            heapq.heappop(lh)
        while ch and not cooldown_live(*ch[0]):
            heapq.heappop(ch)
        while wh and not waiter_live(*wh[0]):
            heapq.heappop(wh)
        times = [h[0][0] for h in (lh, ch, wh) if h]
        if has_waiters and self._wakes:
            times.append(self._wakes[0])  # a wake-up only matters to a waiter
        return min(times) if times else None
