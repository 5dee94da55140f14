"""`[cluster]`: one rotation view across hosts, through Redis or Valkey.

Theory of operation
-------------------
The local engine stays the authority for its own leases and answers every
request from memory. This trio task keeps its books in step with the
other hosts' (DESIGN, "Cluster"):

- **Books** (cluster_books.py): the engine tells `_book_changed(key)`
  after a call that may have changed a secret's cooldowns, streaks, flags
  or budget. The flusher sends the differences to Redis, one atomic script
  per key (cluster_scripts.BOOK) that merges them and publishes the book's
  new state on `{name}:bus`; every host takes a newer state in (three-way,
  newest version only) through `engine.restore`, as a state file would be.
  A message about a key whose ops are on their way waits for their reply.
- **Slots** (cluster_slots.py): a secret with `max_concurrent` gets a
  `SlotGate` in its KeyState; the planner keeps the slots this host holds
  in Redis right (cluster_scripts.SLOTS).
- **Budgets** (cluster_budgets.py, cluster_shares.py): a secret's request
  budget is one bucket in Redis (cluster_scripts.BUDGET); a host grants a
  lease on it only with a token taken from it ahead (`BudgetShare`).
- **OAuth** (cluster_claims.py): one host owns each login's refresh token
  and marks which one is live (cluster_scripts.CLAIM).
- **Faults**: every call is bounded (cluster_link.OP_TIMEOUT) and a
  heartbeat every `RENEW_EVERY` s proves the link alive; a failure ends the
  session: the gates open (each host goes on alone), `status.cluster` says
  why, and the link reconnects with backoff. A new session first pushes and
  reads every book (the merge: later cooldown end, larger streak, newer
  reading win), so a Redis that restarted empty loses nothing a host knows.
- **Never a secret**: keys are `Secret.key` (a salted, truncated SHA-256),
  values are times, counts and host names.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Final

import msgspec
import trio

from argent_client import protocol as P

from . import cluster_books as B
from . import cluster_scripts as S
from .books import Slot
from .cluster_budgets import gate_of
from .cluster_claims import Claim, Ownership
from .cluster_inflight import InFlight
from .cluster_link import Link, Session, SessionLost, display_url, heartbeat, scripts
from .cluster_shares import Shares
from .cluster_slots import RENEW_EVERY, SlotGate, plan_all, took_all, update_gate
from .cluster_views import Histogram, metrics_text
from .config import ClusterConfig
from .engine import Engine
from .keystate import KeyState
from .snapshot import ProfileSnapshot, Snapshot

log = logging.getLogger("argentd")

SLOT_POLL: Final = 0.01
"""Seconds between looks at the leases out on gated secrets (an ended lease frees its slot)."""
HOST_STALE: Final = 10.0
"""A host without a heartbeat this long is no longer listed."""
OWNER_TTL: Final = 300
"""Seconds a refresh-token claim outlives its host's last heartbeat."""

_MESSAGE = msgspec.json.Decoder(dict[str, Any])


class Cluster:
    """Shares `engine`'s books with the other hosts of `config` (see the module docstring).

    `after_change` delivers what the engine decided (the server's); `on_change`
    asks for a save of the state file (the daemon's); `clock` gives `now`.
    """

    def __init__(
        self,
        config: ClusterConfig,
        engine: Engine,
        *,
        after_change: Callable[[], None],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        password: str | None = None,
        broken: str | None = None,
    ) -> None:
        """`broken` names a fault of the config (a password that cannot be read):
        then `run` never connects and status says why."""
        assert config.url is not None
        self._broken = broken
        self.name = config.name
        self.host = config.host or socket.gethostname()
        self.url = display_url(config.url)
        self.engine = engine
        self.clock = clock
        self._after_change = after_change
        self._on_change = on_change
        self.link = Link(config.url, password)
        self.channel = f"{self.name}:bus"
        self.connected = False
        self.error: str | None = "not connected yet"
        self.hosts: list[str] = []
        self.latency: float | None = None
        self.skew: float | None = None
        """Redis' TIME minus this host's clock (seconds), from the last heartbeat."""
        self.books: dict[str, B.KeyBook] = {}
        self.gates: dict[str, SlotGate] = {}
        self._index: dict[str, list[Slot]] = {}
        self._dirty: set[str] = set()
        self._force: set[str] = set()
        self._slots_dirty: set[str] = set()
        self._later: set[str] = set()
        self._flying: set[str] = set()
        """Keys whose book ops are on their way: a message about one waits in `_held`."""
        self._held: dict[str, B.Fields] = {}
        self._stale = True
        self._wake = trio.Event()
        self._session: Session | None = None
        self._shas: dict[str, str] = {}
        self.claims = Ownership(self.host, self._key)
        """The refresh-token claims this host holds (cluster_claims.py)."""
        self.lag = Histogram()
        """Propagation lag of other hosts' changes (argentd_cluster_propagation_seconds)."""
        self.inflight = InFlight()
        self._budgeted: set[str] = set()
        self.budgets = Shares(clock, self._deliver, lambda key: self._key("budget", key))
        """The shared rate budgets (cluster_shares.py)."""
        engine.on_book_change = self._book_changed
        self._reindex()

    # ------------------------------------------------------------ engine side

    def _book_changed(self, key: str) -> None:
        # Called inside the engine's call, right after a reading: lower it by the
        # other hosts' leases in flight before anything else is granted.
        ks = self._ks(key)
        if ks is not None:
            if self.connected and self.inflight.after_change(key, ks, self.clock()):
                self._budgeted.add(key)
            self.budgets.known(key, ks)
        self._dirty.add(key)
        self._wake.set()

    def _set_gate(self, key: str, ks: KeyState) -> None:
        ks.gate = gate_of(self.gates.get(key), self.budgets.by_key.get(key))

    def _poke_slots(self, key: str) -> None:
        self._slots_dirty.add(key)
        self._wake.set()

    def changed(self) -> None:
        """The daemon's profiles or state changed (a reload): look at the keys again."""
        self._stale = True
        self._wake.set()

    def _reindex(self) -> None:
        """Which profiles hold each key; a gate on each key with `max_concurrent`."""
        self._stale = False
        index: dict[str, list[Slot]] = {}
        for slot in self.engine.active_profiles():
            if not slot.removed:
                index.setdefault(slot.profile.secret.key, []).append(slot)
        for key in index.keys() - self._index.keys():
            self.books.setdefault(key, B.KeyBook())
            self._force.add(key)
        for key in self._index.keys() - index.keys():
            self.books.pop(key, None)
            self.gates.pop(key, None)
            self.budgets.drop(key)
        self._index = index
        for key, slots in index.items():
            ks = self._ks(key)
            if ks is None:
                continue
            self.budgets.ensure(key, ks)
            limits = [s.profile.max_concurrent for s in slots if s.profile.max_concurrent]
            if update_gate(self.gates, key, limits, self._poke_slots, self.connected,
                           self.clock()):
                self._slots_dirty.add(key)
            self._set_gate(key, ks)
        self.engine.set_gated(bool(index))
        if self._force or self._slots_dirty:
            self._wake.set()

    def _ks(self, key: str) -> KeyState | None:
        slots = self._index.get(key)
        if not slots:
            return None
        try:
            ks = self.engine.key_state(slots[0].profile.id)
        except (P.ArgentError, KeyError):
            return None
        return ks if slots[0].profile.secret.key == key else None

    def _disabled(self, key: str) -> bool | None:
        return B.disabled_flag(s.user_disabled for s in self._index.get(key, ()))

    def _deliver(self, opened: Iterable[str] = ()) -> None:
        """Let the engine act on what changed (serve waiters; those of the secrets
        whose gates `opened` too) and deliver it."""
        now = self.clock()
        self.engine.advance(now)
        for key in opened:
            self.engine.key_changed(key, now=now)
        self._after_change()
        self._on_change()

    # ------------------------------------------------------------ lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a session with Redis until cancelled (the daemon serves meanwhile)."""
        task_status.started()
        if self._broken is not None:
            self.error = self._broken
            return
        await self.link.run(self._run_session, self._down)

    def _down(self, error: str) -> None:
        was = self.connected
        self._session = None
        self.error = error
        self._set_connected(False, deliver=was)
        for gate in self.gates.values():
            gate.planned = False
        for book in self.books.values():
            # The next session's merge starts knowing nothing of Redis (it may
            # come back empty): whatever it hears is taken against an empty base.
            book.version, book.synced, book.reading = 0, {}, ()
        if was:
            log.warning("cluster: lost Redis at %s (%s); going on alone, retrying", self.url,
                        error)

    def _set_connected(self, connected: bool, *, deliver: bool = True) -> None:
        self.connected = connected
        for gate in self.gates.values():
            gate.connected = connected
        self.budgets.set_connected(connected)
        if not connected and deliver:
            # Gates open, budgets local: waiters may be served alone.
            self._deliver([*self.gates, *self.budgets.by_key])

    async def _run_session(self, session: Session) -> None:
        client = session.client
        for name, text in S.ALL.items():
            sha = await session.call(client.script_load, text)
            self._shas[name] = sha.decode() if isinstance(sha, bytes) else str(sha)
        async with client.pubsub(channels=[self.channel]) as pubsub, trio.open_nursery() as n:
            n.start_soon(self._listen, pubsub)
            await self._heartbeat(session)
            if self._stale:
                self._reindex()
            # The merge: every book pushed and read again (the remote side may be
            # empty after a restart, or newer after our absence).
            self._force |= self._index.keys()
            await self._flush_books(session)
            await self._plan_slots(session, list(self.gates))
            # An empty Redis must not let another host take this host's logins.
            await self.claims.renew(partial(self._scripts, session), OWNER_TTL)
            self._session = session
            self.error = None
            self._set_connected(True)
            self._deliver()
            log.info("cluster: connected to %s as %s (%d host(s))", self.url, self.host,
                     len(self.hosts))
            n.start_soon(self._renew_loop, session)
            n.start_soon(self._poll, session)
            n.start_soon(self.budgets.run, session, self._scripts)
            await self._flush_loop(session)

    async def _flush_loop(self, session: Session) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if self._stale:
                self._reindex()
            if self._dirty or self._force:
                await self._flush_books(session)
            if self._slots_dirty:
                keys, self._slots_dirty = self._slots_dirty, set()
                await self._plan_slots(session, [k for k in keys if k in self.gates])

    async def _renew_loop(self, session: Session) -> None:
        while True:
            await trio.sleep(RENEW_EVERY)
            await self._heartbeat(session)
            if self._stale:
                self._reindex()
            self._slots_dirty |= self.gates.keys()
            self._wake.set()
            await self.claims.renew(partial(self._scripts, session), OWNER_TTL)

    async def _poll(self, session: Session) -> None:
        """Ended leases: the engine does not say so, so look. A gated secret's slot
        frees up; a budgeted secret's count in flight goes to the other hosts."""
        while True:
            await trio.sleep(SLOT_POLL)
            for key, gate in self.gates.items():
                ks = self._ks(key)
                if ks is not None and ks.active != gate.planned_active:
                    self._slots_dirty.add(key)
            if self._slots_dirty:
                self._wake.set()
            self.budgets.poll(self.clock())
            if self._later:  # readings held back (READING_EVERY)
                self._dirty, self._later = self._dirty | self._later, set()
                self._wake.set()
            actives = ((k, ks.active) for k in self._budgeted
                       if (ks := self._ks(k)) and self.budgets.counts_in_flight(k, ks))
            counts = self.inflight.to_send(actives, self.clock())
            if counts:
                msg = msgspec.json.encode({"h": self.host, "a": counts})
                await session.call(session.client.publish, self.channel, msg)

    # ------------------------------------------------------------ Redis calls

    def _key(self, kind: str, key: str) -> str:
        return f"{self.name}:{kind}:{key}"

    async def _scripts(self, session: Session,
                       calls: list[tuple[str, list[str], list[str]]]) -> list[Any]:
        """Run (script, keys, args) calls (cluster_link.scripts); their replies in order."""
        return await scripts(session, self._shas, calls)

    async def _heartbeat(self, session: Session) -> None:
        self.hosts, self.latency, self.skew = await heartbeat(
            session, self._shas["heartbeat"], f"{self.name}:hosts", self.host, HOST_STALE)

    async def _flush_books(self, session: Session) -> None:
        forced = self._force
        keys = self._dirty | forced
        self._dirty, self._force = set(), set()
        now = self.clock()
        calls: list[tuple[str, list[str], list[str]]] = []
        sent_ops: list[tuple[str, list[B.Op]]] = []
        for key in keys:
            ks = self._ks(key)
            book = self.books.get(key)
            if ks is None or book is None:
                continue
            local = B.local_fields(ks, book, self._disabled(key), now)
            sent = B.ops(local, book.synced, now)
            signature = B.reading_signature(ks.budget)
            if ks.budget is not None and signature != book.reading and (
                    key in forced or now - book.reading_at >= B.READING_EVERY):
                book.reading, book.reading_at = signature, now
                sent += [("max", f, v) for f, v in B.reading_fields(ks.budget, self.host,
                                                                    now).items()]
            elif ks.budget is not None and signature != book.reading:
                self._later.add(key)  # a reading too soon after the last: with the next
            if not sent and book.version and key not in forced:
                continue  # nothing to say, and its remote state is known
            flat = [x for op in sent for x in op]
            calls.append(("book", [self._key("book", key)],
                          [self.channel, self.host, key, repr(now), *flat]))
            sent_ops.append((key, sent))
        if not calls:
            return
        self._flying = {key for key, _ in sent_ops}
        try:
            replies = await self._scripts(session, calls)
        finally:
            self._flying, held, self._held = set(), self._held, {}
        changed = False
        for (key, sent), reply in zip(sent_ops, replies, strict=True):
            changed |= self._take(key, B.pairs(reply), sent)
        for key, fields in held.items():  # heard meanwhile: newer than the reply, or dropped
            changed |= self._take(key, fields, None)
        if changed:
            self._deliver()

    def _take(self, key: str, fields: B.Fields, sent: Iterable[B.Op] | None) -> bool:
        """Take a remote state of `key`'s book; True if the engine's view changed."""
        book = self.books.get(key)
        ks = self._ks(key)
        if book is None or ks is None:
            return False
        now = self.clock()
        local = B.local_fields(ks, book, self._disabled(key), now)
        new = B.take(book, local, fields, sent)
        if new is None:
            return False  # an older state overtaken by one already taken
        changed = False
        shared = {k: v for k, v in local.items() if k not in B.READINGS}
        if new != shared:
            profiles: dict[str, ProfileSnapshot] = {}
            flag = B.remote_disabled(new)
            if flag is not None and new.get("d") != local.get("d"):
                book.disabled = flag
                for slot in self._index.get(key, ()):
                    profiles[slot.profile.id] = ProfileSnapshot(key=key, user_disabled=flag[0])
            snap = B.to_snapshot(ks, new, now)
            self.engine.restore(Snapshot(keys={key: snap}, profiles=profiles), now=now)
            changed = True
        if B.apply_reading(ks, book, fields, self.host, now):
            changed = True
            self.budgets.known(key, ks)
        return changed

    async def _plan_slots(self, session: Session, keys: list[str]) -> None:
        if not keys:
            return
        now = self.clock()
        plans = plan_all(self.gates, keys, self.engine.leases(), now)
        calls = [("slots", [self._key("slots", p.key)],
                  [self.channel, self.host, str(p.limit), str(p.keep),
                   *(str(t) for t in p.ttls_ms)]) for p in plans]
        opened, wants = took_all(self.gates, plans, await self._scripts(session, calls), now)
        if wants:
            await self._scripts(session, [("want", [], [self.channel, self.host, k])
                                          for k in wants])
        if opened:
            self._deliver(opened)

    async def claim_login(self, key: str, mark: str = "") -> Claim | None:
        """Claim the OAuth login whose books key is `key` for this host's refresh
        token of `live_mark` `mark` (cluster_claims.py): the owner, or the host
        whose newer token made this one spent, or None while Redis is unreachable
        (the caller decides; DESIGN keeps refreshing local then). Raises nothing."""
        session = self._session
        if session is None:
            return None
        try:
            return await self.claims.claim(partial(self._scripts, session), key, mark, OWNER_TTL)
        except SessionLost:
            return None

    async def claim_refresh_token(self, key: str) -> str | None:
        """The host that owns the refresh token of books key `key` (`claim_login`
        without a mark; "" when a live mark says this host's token is spent)."""
        claim = await self.claim_login(key)
        return None if claim is None else claim.owner or ""

    # ------------------------------------------------------------ messages

    async def _listen(self, pubsub: Any) -> None:
        async for message in pubsub:
            if message.get("type") != "message":
                continue
            try:
                msg = _MESSAGE.decode(message["data"])
                self._message(msg)
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                log.warning("cluster: ignored a malformed message on %s: %s", self.channel, exc)

    def _message(self, msg: dict[str, Any]) -> None:
        host, key = msg.get("h"), msg.get("k")
        if host == self.host or not isinstance(host, str):
            return
        if isinstance(msg.get("a"), dict):
            self.inflight.heard(host, msg["a"], self.clock())
            return
        if not isinstance(key, str):
            return
        if "v" in msg:
            sent_at = msg.get("t")
            if isinstance(sent_at, int | float):
                self.lag.observe(max(0.0, self.clock() - float(sent_at)))
            if key in self._flying:  # taken after the reply (cluster_books.py, `take`)
                self._held[key] = B.pairs(msg["v"])  # pub/sub keeps Redis' order: the newest
                return
            if self._take(key, B.pairs(msg["v"]), None):
                self._deliver()
            return
        gate = self.gates.get(key)
        if gate is None:
            return
        if msg.get("w"):
            gate.remote_want = self.clock()
            self._poke_slots(key)
        elif msg.get("f") and gate.wanted:
            self._poke_slots(key)

    def status(self) -> P.ClusterStatus:
        """`status.cluster`: never the password."""
        hosts = list(self.hosts) if self.connected else []
        return P.ClusterStatus(name=self.name, host=self.host, connected=self.connected,
                               hosts=hosts, error=self.error, url=self.url,
                               latency=self.latency, skew=self.skew)

    def add_status(self, result: P.StatusResult) -> None:
        result.cluster = self.status()

    def metrics(self) -> str:
        """Prometheus lines: argentd_cluster_connected, hosts and the propagation lag."""
        return metrics_text(self.connected, len(self.hosts) if self.connected else 0, self.lag)

