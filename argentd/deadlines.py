"""When the engine next has work: a lazy-deletion heap of cooldown ends
(leases.py keeps the lease expiries, waiters.py the waiters' deadlines and
wake-ups), and the earliest time any of them was given since the adapter
last asked (`take_earliest`).

An entry is pushed whenever a cooldown is set and never removed when it
changes (a reset, a later cooldown): the engine tells `next` which tops
still stand for something, and drops the rest as they surface.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator


class Deadlines:
    """The engine's wake-up times (see the module docstring)."""

    def __init__(self) -> None:
        self.cooldowns: list[tuple[float, str, str]] = []
        """(until, secret key, model or "")."""
        self._earliest = math.inf

    def _pushed(self, at: float) -> None:
        if at < self._earliest:
            self._earliest = at

    def cooldown(self, until: float, key: str, model: str) -> None:
        heapq.heappush(self.cooldowns, (until, key, model))
        self._pushed(until)

    def pushed(self, at: float) -> None:
        """Another heap (lease expiries, waiters) holds a time `take_earliest`
        must see."""
        self._pushed(at)

    def take_earliest(self) -> float:
        """The earliest time pushed since the last call (inf if none)."""
        earliest, self._earliest = self._earliest, math.inf
        return earliest

    def due_cooldowns(self, now: float) -> Iterator[tuple[float, str, str]]:
        """Pop the cooldown ends due by `now` (live or not: the caller checks)."""
        heap = self.cooldowns
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)

    def next(self, live: Callable[[float, str, str], bool]) -> float | None:
        """The earliest cooldown end that still stands (`live`), or None."""
        heap = self.cooldowns
        while heap and not live(*heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None
