"""What the engine hands out and queues: leases (and the book of those out),
waiters, and its outbox.

Records, no decisions: the engine (engine.py) creates and ends them.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from argent_client.protocol import ArgentError, Event, LeaseNotFound, LeaseParams, LeaseResult

from .model import Profile, auth_headers


@dataclass(slots=True)
class Lease:
    """One profile bound to one client until `expires_at`."""

    id: str
    profile_id: str
    conn: int | None
    client: str | None
    expires_at: float
    detached: bool
    model: str | None
    session: str | None
    route: str | None
    target: int
    """Index into the route's targets this lease was granted for."""
    params: LeaseParams
    """The request it answered: a failover asks again with the same ttl and model."""
    key: str
    """The secret key it handed out: a reload may replace the profile's secret meanwhile."""
    grant: int = 0
    """Its number among the grants on that key (rate budgets count from it)."""
    probe: bool = False
    """The early-reset probe of a cooling profile: its success ends the cooldown."""


class LeaseBook:
    """The leases out: by id, by connection, and a lazy-deletion heap of their
    expiries (rebuilt when ended leases outnumber live ones, so it does not
    grow with every lease granted within one TTL)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Lease] = {}
        self._by_conn: dict[int, dict[str, None]] = {}
        self.heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Lease]:
        return iter(self._by_id.values())

    def get(self, lease_id: str) -> Lease:
        """The lease `lease_id`. Raises `LeaseNotFound`."""
        lease = self._by_id.get(lease_id)
        if lease is None:
            raise LeaseNotFound(f"no lease {lease_id!r} (released or expired)", lease_id=lease_id)
        return lease

    def add(self, lease: Lease) -> None:
        self._by_id[lease.id] = lease
        if lease.conn is not None:
            self._by_conn.setdefault(lease.conn, {})[lease.id] = None
        heapq.heappush(self.heap, (lease.expires_at, lease.id))

    def extend(self, lease: Lease, expires_at: float) -> None:
        lease.expires_at = expires_at
        heapq.heappush(self.heap, (expires_at, lease.id))

    def remove(self, lease: Lease) -> None:
        del self._by_id[lease.id]
        if lease.conn is not None:
            ids = self._by_conn[lease.conn]
            del ids[lease.id]
            if not ids:
                del self._by_conn[lease.conn]
        if len(self.heap) > 2 * len(self._by_id) + 64:
            self.heap = [(le.expires_at, le.id) for le in self._by_id.values()]
            heapq.heapify(self.heap)

    def of_conn(self, conn: int) -> list[Lease]:
        """The leases attached to connection `conn`."""
        return [self._by_id[lid] for lid in self._by_conn.get(conn, ())]

    def due(self, now: float) -> Iterator[Lease]:
        """Pop the leases whose TTL ended by `now` (the caller removes each)."""
        # self.heap, not a local: removing a lease may rebuild it.
        while self.heap and self.heap[0][0] <= now:
            at, lid = heapq.heappop(self.heap)
            lease = self._by_id.get(lid)
            if lease is not None and lease.expires_at == at:
                yield lease

    def next_expiry(self) -> float | None:
        heap = self.heap
        while heap:
            at, lid = heap[0]
            lease = self._by_id.get(lid)
            if lease is not None and lease.expires_at == at:
                return at
            heapq.heappop(heap)
        return None


def lease_result(lease: Lease, p: Profile) -> LeaseResult:
    """The `lease` reply for `lease` on profile `p` (the one place a secret goes out)."""
    return LeaseResult(
        lease_id=lease.id,
        profile=p.id,
        provider=p.provider,
        type=p.type,
        token=p.secret.reveal(),
        label=p.label,
        headers=auth_headers(p),
        expires_at=lease.expires_at,
        source=p.source,
        model=lease.model,
        probe=lease.probe,
    )


@dataclass(slots=True)
class Waiter:
    """A lease request parked until a profile is ready or `deadline` passes."""

    id: int
    params: LeaseParams
    conn: int | None
    deadline: float


@dataclass(slots=True)
class Outbox:
    """What the engine decided besides its return values, for the adapter to deliver."""

    events: list[Event] = field(default_factory=list)
    served: list[tuple[int, LeaseResult | ArgentError]] = field(default_factory=list)
    """(waiter id, its lease or its error), in the order they were decided."""
    changed: bool = False
    """Persistent state changed: the adapter should schedule a save."""


_ID_BATCH: Final = 512


def _lease_ids() -> Iterator[str]:
    """Unguessable lease ids, `l_` + 16 hex: one urandom read per 512 ids
    (a getrandom call per lease was a fifth of a lease's cost)."""
    while True:
        pool = secrets.token_bytes(8 * _ID_BATCH).hex()
        for i in range(0, len(pool), 16):
            yield "l_" + pool[i : i + 16]


new_lease_id = _lease_ids().__next__
"""The next lease id."""
