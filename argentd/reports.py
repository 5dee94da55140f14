"""What failure reports and provider readings do to a secret's books, and the
cooldowns in force until each ends.

cooldown.py decides (pure); `Reports` applies its verdicts to the books,
keeps a lazy-deletion heap of cooldown ends, and tells the engine, through
the callbacks it was given, what to emit and count, which secret changed
(its waiters are tried, the state is saved) and which new deadline to wake
for. It knows nothing of leases or waiters.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from argent_client.protocol import Limits, ReportParams

from . import cooldown
from .books import Books
from .config import Config
from .model import Profile
from .selection import Selector


class Reports:
    """Failure reports, limits readings and the cooldowns they start."""

    def __init__(
        self,
        books: Books,
        sel: Selector,
        config: Config,
        *,
        emit: Callable[..., None],
        count: Callable[[str], None],
        touched: Callable[[str], None],
        pushed: Callable[[float], None],
    ) -> None:
        """`emit(type, now, **fields)` queues an event, `count(name)` bumps a
        counter, `touched(key)` says secret `key` changed, `pushed(at)` that
        something is due at `at`."""
        self._books, self._sel, self.config = books, sel, config
        self._emit, self._count, self._touched, self._pushed = emit, count, touched, pushed
        self.heap: list[tuple[float, str, str]] = []
        """(until, secret key, model or "") of every cooldown started."""

    def failure(self, p: Profile, key: str, params: ReportParams, model: str | None,
                now: float) -> None:
        """A `params.kind` failure of `p`'s lease on secret `key`, scoped to `model`."""
        kind = params.kind
        self._count(f"failures:{kind}")
        self._emit("failure", now, profile=p.id, lease_id=params.lease_id, kind=kind,
                   provider=p.provider, model=model)
        ks = self._books.keys[key]
        ks.failed(kind, params.status)
        self._touched(key)
        verdict = cooldown.on_failure(ks, kind, params.retry_after, model, self.config, now)
        if verdict.invalid:
            ks.invalid = True
        if verdict.streak is not None:
            ks.streak[kind] = verdict.streak
        if verdict.until is not None:
            self.start(p, key, kind, verdict.until, model, now)

    def observe(self, p: Profile, key: str, limits: Limits, grant: int | None,
                now: float) -> None:
        """Take what a provider response said about secret `key`'s budget and windows."""
        ks = self._books.keys.get(key)
        if ks is None:
            return
        # The reporting lease (if any) is still out: the others are the in-flight ones.
        others = ks.active - 1 if grant is not None else ks.active
        ks.own_budget().observe(limits, grant, others, now)
        self._sel.note_budget(key)
        self._touched(key)  # a reading may show more budget than predicted
        until = cooldown.on_limits(ks, limits, self.config, now)
        if until is not None:
            self.start(p, key, "quota", until, None, now)

    def start(self, p: Profile, key: str, kind: str, until: float, model: str | None,
              now: float) -> None:
        cooldown.start(self._books.keys[key], kind, until, model, now,
                       self.config.policy.recheck)
        self.restored((until, key, model or ""))
        self._count("cooldowns_started")
        self._emit("cooldown_start", now, profile=p.id, kind=kind, until=until, model=model)

    def restored(self, entry: tuple[float, str, str]) -> None:
        """A cooldown (until, key, model or "") stands: wake when it ends."""
        heapq.heappush(self.heap, entry)
        self._pushed(entry[0])

    def probe_succeeded(self, key: str, now: float) -> None:
        """An early-reset probe on `key` worked: its window came back early."""
        if cooldown.probe_succeeded(self._books.keys[key]) is not None:
            self.ended(key, "", now)

    def due(self, now: float) -> bool:
        """End the cooldowns due by `now`; returns whether one ended."""
        heap, ended = self.heap, False
        while heap and heap[0][0] <= now:
            until, key, model = heapq.heappop(heap)
            ks = self._books.keys.get(key)
            if ks is not None and cooldown.end(ks, until, model):
                self.ended(key, model, now)
                ended = True  # else a reset or a later cooldown replaced it
        return ended

    def ended(self, key: str, model: str, now: float) -> None:
        for pid in self._sel.holders(key):
            if pid in self._books.slots:
                self._emit("cooldown_end", now, profile=pid, model=model or None)
        self._touched(key)

    def next(self) -> float | None:
        """The earliest cooldown end that still stands, or None."""
        heap, keys = self.heap, self._books.keys
        while heap:
            until, key, model = heap[0]
            ks = keys.get(key)
            if ks is not None and cooldown.live(ks, until, model):
                return until
            heapq.heappop(heap)
        return None
