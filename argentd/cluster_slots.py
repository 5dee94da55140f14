"""Cluster-wide `max_concurrent`: the slots a host holds in Redis, as a gate on its engine.

Theory of operation
-------------------
A secret whose profiles set `max_concurrent` has one sorted set of slots in
Redis for the whole cluster (cluster_scripts.SLOTS). A host leases from
that secret only while it *holds* a free slot: `readiness` asks the
secret's `SlotGate` (KeyState.gate), which answers from what this host
holds, without a round trip; selection tells it what it granted and when
it found nothing ready. So the hot path never waits on
Redis, and the cluster never has more leases out than slots.

The cluster task keeps each gate's holding right (`plan`): one slot per
lease out here, each expiring with its lease's TTL (a dead host frees its
slots by itself), plus one *spare* while this host has demand, so the next
lease here is granted at once. A spare expires after `SPARE_TTL` unless
renewed. A lease that finds the gate shut marks the key `wanted`: the task
asks Redis for a slot at once and, when none is free, publishes a *want*;
a host holding an idle spare gives it back, and a host whose lease ends
gives its slot back to Redis instead of keeping it as a spare while
another host wants one.

While Redis is unreachable (`connected` false) the gate admits every
lease: each host goes on alone with its own `max_concurrent`, as DESIGN
says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

SPARE_TTL: Final = 3.0
"""Seconds a spare slot lives in Redis unless renewed: a host that dies frees
its slots after this long or its leases' TTL, whichever is later."""
RENEW_EVERY: Final = 0.5
"""Seconds between renewals of the slots a host holds (and heartbeats)."""
VALID_FOR: Final = SPARE_TTL - 1.0
"""Seconds after a plan was sent that the gate trusts its slots without a renewal."""
SPARE_IDLE: Final = 60.0
"""A host keeps a spare while a lease was asked for on it this recently."""
YIELD_IDLE: Final = 0.1
"""A spare unused this long goes back when another host wants a slot."""
WANT_TTL: Final = 1.0
"""Seconds another host's want holds (it repeats it while it still wants)."""


@dataclass(slots=True, eq=False)
class SlotGate:
    """The engine's view of one secret's cluster slots (`KeyState.gate`)."""

    key: str
    limit: int
    poke: Callable[[str], None]
    """Asks the cluster task to plan this key again (sync; sets a trio event)."""
    connected: bool = False
    held: int = 0
    """Slots this host holds in Redis, as the last plan's reply said."""
    valid_until: float = 0.0
    """Until when (local clock) they are surely still held: renewals push it on."""
    last_demand: float = float("-inf")
    last_admit: float = float("-inf")
    wanted: bool = False
    """A lease found the gate shut since the last plan."""
    remote_want: float = float("-inf")
    """When another host last said it wants a slot of this key."""
    active: int = 0
    """Leases out here when the engine last asked."""
    planned: bool = False
    """A plan was answered in this session (until then slots for the leases out
    here, granted while alone, are kept whatever the others hold)."""
    planned_active: int = 0
    """Leases out here when the last plan was made."""

    def open(self, active: int, now: float) -> bool:
        """Whether this host holds a free slot (always, while Redis is unreachable)."""
        return not self.connected or (active < self.held and now < self.valid_until)

    def granted(self, active: int, now: float) -> None:
        self.last_demand = self.last_admit = now
        self.active = active + 1
        if self.connected and active + 1 >= self.held:
            self.poke(self.key)  # the last slot is taken: fetch a spare now
        # Otherwise the planner's next look (SLOT_POLL) gives the slot its lease's TTL.

    def refused(self, active: int, now: float) -> None:
        self.last_demand = now
        self.active = active
        if self.connected and not self.open(active, now) and not self.wanted:
            self.wanted = True
            self.poke(self.key)


@dataclass(slots=True)
class Plan:
    """What one SLOTS call asks for one key."""

    key: str
    limit: int
    keep: int
    ttls_ms: list[int] = field(default_factory=list)

    @property
    def spare(self) -> bool:
        return len(self.ttls_ms) > self.keep


def plan(gate: SlotGate, lease_expiries: Iterable[float], now: float) -> Plan:
    """The slots `gate`'s host should hold at `now`: one per lease out here
    (longest first, each for its remaining TTL), plus a spare while it has
    demand and no other host waits for one (or it waits itself)."""
    remaining = sorted((max(0.05, e - now) for e in lease_expiries), reverse=True)
    active = len(remaining)
    spare = now - gate.last_demand < SPARE_IDLE
    if now - gate.remote_want < WANT_TTL and not gate.wanted:
        # Another host waits: a spare unused for a moment goes back to it.
        spare = spare and now - gate.last_admit < YIELD_IDLE
    ttls = [int(r * 1000) + 1 for r in remaining]
    if spare or gate.wanted:
        ttls.append(int(SPARE_TTL * 1000))
    ttls = ttls[: max(gate.limit, active)]
    keep = min(gate.held, active) if gate.planned else active
    gate.planned_active = active
    return Plan(key=gate.key, limit=gate.limit, keep=keep, ttls_ms=ttls)


def took(gate: SlotGate, p: Plan, allowed: int, sent_at: float) -> bool:
    """Record the reply to plan `p` sent at `sent_at`; True when the engine should
    look at its waiters again (the gate opened wider)."""
    before = gate.held if gate.planned else 0
    gate.held = allowed
    gate.planned = True
    gate.valid_until = sent_at + VALID_FOR
    still_short = allowed < len(p.ttls_ms) and gate.wanted
    gate.wanted = still_short
    return allowed > before


class _Lease(Protocol):
    key: str
    expires_at: float


def plan_all(gates: Mapping[str, SlotGate], keys: Iterable[str], leases: Iterable[_Lease],
             now: float) -> list[Plan]:
    """The plans of `keys` (each has a gate) given every lease out here."""
    expiries: dict[str, list[float]] = {k: [] for k in keys}
    for lease in leases:
        if lease.key in expiries:
            expiries[lease.key].append(lease.expires_at)
    return [plan(gates[k], e, now) for k, e in expiries.items()]


def took_all(gates: Mapping[str, SlotGate], plans: Iterable[Plan], replies: Iterable[Any],
             sent_at: float) -> tuple[list[str], list[str]]:
    """Record the SLOTS replies: (keys whose gate opened wider, keys still wanting a slot)."""
    opened, wants = [], []
    for p, reply in zip(plans, replies, strict=True):
        gate = gates.get(p.key)
        if gate is None:
            continue
        if took(gate, p, int(reply[0]), sent_at):
            opened.append(p.key)
        if gate.wanted:
            wants.append(p.key)
    return opened, wants


def update_gate(gates: dict[str, SlotGate], key: str, limits: list[int],
                poke: Callable[[str], None], connected: bool, now: float) -> bool:
    """Keep `gates[key]` in step with the `max_concurrent` of the profiles holding
    `key` (`limits`; none: no gate). True when a gate was made (plan it)."""
    if not limits:
        gates.pop(key, None)
        return False
    gate = gates.get(key)
    if gate is not None:
        gate.limit = min(limits)
        return False
    gates[key] = SlotGate(key, min(limits), poke, connected=connected, last_demand=now)
    return True
