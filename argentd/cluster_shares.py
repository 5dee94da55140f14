"""The cluster task's side of the shared rate budgets: a `BudgetShare` per secret, and its asks.

cluster_budgets.py says what a share is and what Redis keeps; this is the
plumbing between them: which secrets have a share (every secret the cluster
indexes; it takes charge once the secret's refill rate is known), the loop
that sends each share's ask (cluster_scripts.BUDGET, pipelined, its own
task so no book flush delays a token) and the engine told when tokens came.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from .cluster_budgets import BudgetShare, wants
from .cluster_link import Session, SessionLost
from .keystate import KeyState

Scripts = Callable[[Session, list[tuple[str, list[str], list[str]]]], Awaitable[list[Any]]]
"""Runs (script, keys, args) calls in pipelines; their replies in order (Cluster._scripts)."""


class Shares:
    """Every secret's `BudgetShare`, kept by the cluster task."""

    def __init__(self, clock: Callable[[], float], deliver: Callable[[list[str]], None],
                 redis_key: Callable[[str], str]) -> None:
        """`deliver(keys)` lets the engine serve those secrets' waiters; `redis_key(key)`
        names a secret's bucket in Redis."""
        self.clock = clock
        self._deliver = deliver
        self._redis_key = redis_key
        self.by_key: dict[str, BudgetShare] = {}
        self.connected = False
        self._dirty: set[str] = set()
        self._wake = trio.Event()

    def poke(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.set()

    def ensure(self, key: str, ks: KeyState) -> BudgetShare:
        """`key`'s share, made when the cluster first indexes the secret."""
        share = self.by_key.get(key)
        if share is None:
            share = self.by_key[key] = BudgetShare(key, self.poke, connected=self.connected)
            self.known(key, ks)
        return share

    def drop(self, key: str) -> None:
        self.by_key.pop(key, None)

    def known(self, key: str, ks: KeyState) -> None:
        """After a reading (here or from another host): once the secret's refill rate
        is known its share takes charge of the request budget (`Budget.shared`)."""
        budget = ks.budget
        bucket = budget.requests if budget is not None else None
        share = self.by_key.get(key)
        if budget is None or bucket is None or bucket.rate is None or share is None:
            return
        if share.rate is None:
            now = self.clock()
            share.limit, share.rate, share.level = bucket.limit, bucket.rate, bucket.at(now)
            share.last_demand = now
            self.poke(key)
        budget.shared = share

    def counts_in_flight(self, key: str, ks: KeyState) -> bool:
        """Whether the other hosts need `key`'s count of leases in flight here
        (cluster_inflight.py): for its token budget, or its request budget while
        no shared bucket decides it."""
        share = self.by_key.get(key)
        budget = ks.budget
        return budget is not None and (budget.tokens is not None or share is None
                                       or share.rate is None or not share.connected)

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        for share in self.by_key.values():
            share.set_connected(connected)
        if connected:
            self._dirty |= self.by_key.keys()
            self._wake.set()

    def poll(self, now: float) -> None:
        """The cluster task's frequent look: idle tokens, unmet demand, first leases."""
        first = []
        for key, share in self.by_key.items():
            if share.due(now):
                self.poke(key)
            if share.first_over(now):
                first.append(key)
        if first:
            self._deliver(first)

    async def run(self, session: Session, scripts: Scripts) -> None:
        """Send the shares' asks as they come, until the session ends."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            keys, self._dirty = self._dirty, set()
            await self.plan(session, scripts, keys)

    async def plan(self, session: Session, scripts: Scripts, keys: Iterable[str]) -> None:
        """Ask Redis for the tokens the shares want, give back idle ones, send readings."""
        now = self.clock()
        asks = [(k, share, share.ask(now)) for k in keys
                if (share := self.by_key.get(k)) is not None and share.due(now)]
        if not asks:
            return
        try:
            replies = await scripts(session, [("budget", [self._redis_key(k)], args)
                                              for k, _, args in asks])
        except SessionLost:
            for _, share, _ in asks:
                share.lost()
            raise
        now = self.clock()
        opened = [k for (k, share, args), reply in zip(asks, replies, strict=True)
                  if share.took(reply, wants(args), now)]
        if opened:
            self._deliver(opened)
