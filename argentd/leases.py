"""What the engine hands out and queues: leases, waiters, and its outbox.

Plain records, no decisions: the engine (engine.py) creates and ends them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from argent_client.protocol import ArgentError, Event, LeaseParams, LeaseResult

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
