"""Cluster-wide rate budgets: one request bucket per secret in Redis, taken ahead by each host.

Theory of operation
-------------------
A provider counts a key's requests from every host; a host predicting the
key's budget from its own leases (budget.py) grants what the others have
already spent. With the cluster, a secret whose budget has a known refill
rate gets one token bucket in Redis for the whole cluster
(cluster_scripts.BUDGET, `{name}:budget:{key}`: limit, rate, level, when,
and a serial counting every token taken). A host grants a lease on that
secret only with a *token* it took from that bucket, so all hosts together
never grant more than the bucket holds.

The hot path never waits on Redis: the host takes its tokens ahead. While
it has demand (a lease granted or refused here in the last `DEMAND_IDLE`
s) the cluster task keeps `HOLD` tokens per secret in hand (more while the
bucket is far from spent: a lease then never waits for an ask). Redis answers
each ask with a token valid now, or *booked*: valid at the time its bucket
will have refilled to it (at most `MAX_AHEAD` ahead), so hosts that all
want a spent key queue for it in Redis instead of racing at each refill.
`Budget.ready_at` asks the secret's `BudgetShare` (pure, no I/O): ready
when a token is valid here, else the booked token's time (the engine wakes
its waiters then by itself). A token unused `TOKEN_IDLE` s after it became
valid goes back to the bucket.

Readings keep the bucket true: a host sends the limit and refill rate its
own prediction took from each provider reading (the latest wins), and
`remaining` with the serial of the token its lease used: every token taken
after it may not have been counted, so the level becomes `remaining -
(serial now - serial)`, plus the refill since the host took the reading
(the provider counted before that), from the newest reading only (by serial), as a
host's own prediction does (budget.py): a rate a little off, or tokens
taken and never used, are corrected by the next reading. A Redis that restarted empty gets the
bucket back from the next host's ask. A new bucket starts empty at most
(its own prediction, if lower): a host's prediction does not count the
other hosts' leases in flight, and the first reading taken with a token
sets the level anyway.

While Redis is unreachable, or an ask goes unanswered for `FALLBACK_AFTER`
s (Redis slow), the share is not in charge: the host's own prediction
decides, as without a cluster.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from argent_client.protocol import Limits

from .budget import Bucket
from .keystate import Gate

HOLD: Final = 1
"""Tokens (valid or booked) a host keeps in hand per secret while it has demand..."""
HOLD_MAX: Final = 16
"""... and up to this many while the bucket holds `HOLD_SHARE` times as many: a
budget far from spent costs no round trip per lease."""
HOLD_SHARE: Final = 4
DEMAND_IDLE: Final = 0.5
"""Seconds after the last lease granted or refused here that the host still takes tokens."""
TOKEN_IDLE: Final = 0.5
"""Seconds a valid token may go unused before it goes back to the bucket."""
FALLBACK_AFTER: Final = 0.5
"""Seconds an ask may go unanswered before the host's own prediction decides."""
MAX_AHEAD: Final = 2.0
"""Seconds ahead Redis books a token; past that it books none (ask again later)."""
FIRST_WAIT: Final = 1.0
"""Seconds a secret whose refill rate is not known yet admits one lease at a time here."""
READING_EVERY: Final = 0.02
"""Seconds a reading may wait for an ask to go with (the cluster task looks every 10 ms)."""
NO_TOKEN_WAIT: Final = 1.0
"""Without a token nor an ask out: when readiness says to look again (the
cluster task delivers the token as soon as it comes)."""


@dataclass(slots=True, eq=False)
class BudgetShare:
    """This host's share of one secret's cluster bucket (`Budget.shared`, `KeyState.gate`)."""

    key: str
    poke: Callable[[str], None]
    """Asks the cluster task to plan this key again (sync; sets a trio event)."""
    connected: bool = False
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    """(valid from, local clock; serial) of the tokens in hand, oldest first."""
    last_ask: float = float("-inf")
    asked_at: float | None = None
    """When the ask now out was sent (local clock), or None."""
    retry_at: float = float("-inf")
    """Redis booked no token (too far ahead): no ask before this."""
    last_demand: float = float("-inf")
    grants: dict[int, tuple[int, float]] = field(default_factory=dict)
    """Grant number (Budget.grants) -> (serial of the token it used, when granted),
    until its reading."""
    reading: tuple[int, int, float] | None = None
    """(serial, remaining, when taken here) of the newest reading not yet sent."""
    limit: float = 0.0
    rate: float | None = None
    level: float = 0.0
    """The local prediction's bucket, as last seen (sent with each ask; Redis takes
    its rate and level only to start a bucket it lacks)."""
    sample: float | None = None
    """The largest lower bound of the refill rate read since the last ask (see `observed`)."""
    give: int = 0
    """Tokens to give back with the next ask."""
    shared_level: float | None = None
    shared_rate: float | None = None
    """The cluster bucket's level and refill rate, as Redis last answered."""
    first_grant: float | None = None
    """When the first lease on the secret was granted here (while its budget is unknown)."""
    granted_n: int = 0
    """Leases granted here while its budget is unknown."""
    held_first: bool = False
    """A lease was refused while the first one was out (deliver when FIRST_WAIT is over)."""
    untokened: int = 0
    """Leases granted while connected without a token (Redis slow, or a probe)."""

    # ------------------------------------------------------------ engine side (sync, pure reads)

    def ready_at(self, now: float) -> float | None:
        """When this host may grant the next lease on the secret, or None when the
        share is not in charge (disconnected, or Redis slow: the local prediction decides)."""
        if not self.connected or self.rate is None:
            return None
        if self.tokens:
            return max(now, self.tokens[0][0])
        if self.asked_at is not None:
            if now - self.asked_at >= FALLBACK_AFTER:
                return None
            return self.asked_at + FALLBACK_AFTER  # wake then: perhaps to go on alone
        if self.retry_at > now:
            return self.retry_at
        return now + NO_TOKEN_WAIT

    def take(self, grant: int, now: float) -> None:
        """A lease is granted (Budget.grant): it spends the oldest valid token."""
        self.last_demand = now
        if self.tokens and self.tokens[0][0] <= now:
            _, serial = self.tokens.popleft()
            self.grants[grant] = (serial, now)
            if len(self.grants) > 4096:  # leases that never said a reading
                del self.grants[next(iter(self.grants))]
        elif self.connected:
            self.untokened += 1
        if self.connected and self._want(now):
            self.poke(self.key)  # down to the low-water mark: fetch more

    def observed(self, grant: int | None, limits: Limits, bucket: Bucket, now: float) -> None:
        """A provider reading of lease `grant` was taken into `bucket` (Budget.observe).

        The local bucket's rate (missing / time to reset, budget.py) runs high:
        `remaining` is whole requests (up to one more is missing than it says)
        and the reading is taken a while after the provider counted. The rate
        sent is a lower bound instead: one request fewer, over the time from
        the lease's grant (before the provider counted it) to the reset.
        """
        self.limit, self.level = bucket.limit, bucket.at(now)
        if self.rate is None:
            self.rate = bucket.rate
        remaining = limits.requests_remaining
        held = self.grants.pop(grant, None) if grant is not None else None
        if held is None or remaining is None:
            return
        serial, granted_at = held
        if self.reading is None or serial > self.reading[0]:
            self.reading = (serial, remaining, now)  # the newest tells the most
            if self.connected and now - self.last_ask >= READING_EVERY:
                self.poke(self.key)  # else the cluster task's next look sends it
        reset, missing = limits.requests_reset, bucket.limit - remaining
        if reset is not None and missing >= 2 and reset > granted_at:
            low = (missing - 1) / (reset - granted_at)
            self.sample = low if self.sample is None else max(self.sample, low)

    # ------------------------------------------------------------ the gate (selection tells it)

    def open(self, active: int, now: float) -> bool:
        """Shut only while the secret's refill rate is not known, one lease is out
        here and the first went out less than FIRST_WAIT ago: hosts starting
        together do not all spend a key's burst before a reading tells it (a
        first reading often does not: a bucket nearly full is full again
        before its reading arrives). Once known, the budget holds through `Budget.ready_at`
        (readiness reason `budget`)."""
        if self.rate is not None or not self.connected or active == 0:
            return True
        first = self.first_grant
        return first is None or now - first >= FIRST_WAIT

    def granted(self, active: int, now: float) -> None:
        self.last_demand = now
        if self.rate is None:
            self.granted_n += 1
            if self.first_grant is None:
                self.first_grant = now

    def refused(self, active: int, now: float) -> None:
        self.last_demand = now
        if self.rate is None and not self.open(active, now):
            self.held_first = True
        if self.connected and not self.tokens and self.asked_at is None:
            self.poke(self.key)

    # ------------------------------------------------------------ the cluster task

    def set_connected(self, connected: bool) -> None:
        """A session began or ended: tokens of an old session mean nothing now."""
        self.connected = connected
        self.tokens.clear()
        self.grants.clear()
        self.asked_at = None
        self.retry_at = float("-inf")
        self.reading = None
        self.give = 0

    def first_over(self, now: float) -> bool:
        """Whether a lease held back by the first one may go now (once)."""
        first = self.first_grant
        if not self.held_first or first is None or now - first < FIRST_WAIT:
            return False
        self.held_first = False
        return True

    def due(self, now: float) -> bool:
        """Whether an ask should go now (tokens idle, demand unmet, a reading to send)."""
        if not self.connected or self.rate is None or self.asked_at is not None:
            return False
        while self.tokens and self.tokens[0][0] + TOKEN_IDLE < now:
            self.tokens.popleft()
            self.give += 1
        if self.give or self._want(now):
            return True
        # A reading alone waits a little: a key leased hundreds of times a second
        # would cost a script per lease (it goes with the next ask anyway).
        return self.reading is not None and now - self.last_ask >= READING_EVERY

    def _want(self, now: float) -> int:
        if now - self.last_demand >= DEMAND_IDLE or now < self.retry_at:
            return 0
        hold = HOLD
        if self.shared_level is not None:
            hold = max(HOLD, min(HOLD_MAX, int(self.shared_level / HOLD_SHARE)))
        if len(self.tokens) > hold // 2:
            return 0  # enough in hand: one ask per half a hold, not per lease
        return hold - len(self.tokens)

    def ask(self, now: float) -> list[str]:
        """The BUDGET script's arguments for the ask sent now (marks it out)."""
        assert self.rate is not None
        want = self._want(now)
        serial: object = ""
        remaining: object = ""
        age = 0
        if self.reading is not None:
            serial, remaining, at = self.reading
            age = max(0, int((now - at) * 1000))
        self.reading = None
        give, self.give = self.give, 0
        sample, self.sample = self.sample, None
        self.asked_at = self.last_ask = now
        return [str(want), str(give), repr(self.limit), repr(self.rate),
                repr(min(self.level, 0.0)),
                str(serial), str(remaining), str(int(MAX_AHEAD * 1000)),
                "" if sample is None else repr(sample), str(age)]

    def took(self, reply: Any, want: int, now: float) -> bool:
        """Record Redis' reply (`[last serial, level, rate, wait_ms...]`) received at `now`;
        True when it brought tokens (the engine should look at its waiters: serve
        them now, or wake them when a booked token becomes valid)."""
        self.asked_at = None
        if not self.connected:
            return False  # an answer of a session that has ended
        last = int(reply[0])
        self.shared_level, self.shared_rate = float(reply[1]), float(reply[2])
        waits = [int(w) for w in reply[3:]]
        first = last - len(waits) + 1
        for i, wait in enumerate(waits):
            self.tokens.append((now + wait / 1000, first + i))
        if len(waits) < want:
            self.retry_at = now + MAX_AHEAD / 2
        return bool(waits)

    def lost(self) -> None:
        """The ask out got no answer (the session ended)."""
        self.asked_at = None


def wants(args: list[str]) -> int:
    """How many tokens an ask's arguments (`BudgetShare.ask`) asked for."""
    return int(args[0])


@dataclass(slots=True, eq=False)
class Gates:
    """Two gates on one secret (its cluster slots and its budget share), as one."""

    first: Gate
    second: Gate

    def open(self, active: int, now: float) -> bool:
        return self.first.open(active, now) and self.second.open(active, now)

    def granted(self, active: int, now: float) -> None:
        self.first.granted(active, now)
        self.second.granted(active, now)

    def refused(self, active: int, now: float) -> None:
        self.first.refused(active, now)
        self.second.refused(active, now)


def gate_of(*gates: Gate | None) -> Gate | None:
    """The `KeyState.gate` of a secret with these gates (None for none)."""
    present = [g for g in gates if g is not None]
    if not present:
        return None
    out = present[0]
    for g in present[1:]:
        out = Gates(out, g)
    return out
