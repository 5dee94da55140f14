"""Which host of a cluster refreshes each OAuth login (DESIGN, "Cluster": OAuth
stays on one host).

Theory of operation
-------------------
A refresh token works once: two hosts refreshing the same login revoke each
other. With `[cluster]` on, a chain (oauth_chain) is refreshed only by the
host that owns it in Redis (`Cluster.claim_login`):

- **The key** is the chain's books key, `login_key(origin)`: a salted hash of
  the hash of the refresh token the chain started from. Every host whose
  profiles file holds that login finds the same key; no token reaches Redis.
- **Claims**: a host claims each chain once its link is up (so `status` names
  the owner before any refresh is due), and again right before each refresh.
  The claim is one atomic script, so of two hosts due at the same instant
  exactly one sends the refresh token.
- **A host that does not own it** never sends the refresh token: its access
  token serves while valid, the profile's `refresh_error` names the owner,
  and while its refresh is due it asks again every `RECHECK` seconds.
- **The owner's heartbeat** renews its claims; a dead owner's lapse
  `cluster.OWNER_TTL` seconds after its last heartbeat, and the next host
  that asks takes the chain over.
- **Redis unreachable**: an owner seen in the last `OWNER_TTL` seconds still
  holds (its claim would, and it may be refreshing alone meanwhile); with
  none seen, the host refreshes alone, as without a cluster. Only the first
  refresh after start waits (up to `FIRST_CONNECT`) for the link to come up.
- **Which token is live** (cluster_claims.py): a claim carries the mark
  of the host's refresh token (`live_mark`); the owner sets the login's
  live mark in Redis when it claims and after each refresh. A host taking
  over from a dead owner gets the login only if its token is the live one;
  else its token is spent (the dead owner refreshed since): it is never
  sent (the endpoint would refuse it, and a provider that revokes on reuse
  would revoke the live pair too) and the profile's `refresh_error` says
  so, with the fix; a token found spent is never offered again. A pair
  adopted from elsewhere is marked live too (`refreshed`), so an owner whose
  token it spent does not send it either. The chains the refresher no
  longer holds (a removed profile, a revoked login) are released (`keep`):
  their claims are not renewed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

import trio

from argent_client.oauth_sources import fix_for
from argent_client.protocol import UnknownProfile

from .cluster_claims import Claim, Ownership, live_mark
from .engine import Engine
from .oauth_chain import Chain

log = logging.getLogger("argentd.oauth")

RECHECK: Final = 60.0
"""Seconds between a refused refresh and the next look at its owner."""
ASK_POLL: Final = 1.0
"""Seconds between looks at a cluster link not up yet, while a chain was never asked."""
FIRST_CONNECT: Final = 5.0
"""Seconds the first refresh waits for the cluster link to come up: a host that
just started has not heard yet whether another host owns its logins."""


class Claims(Protocol):
    """What the refresher needs of `argentd.cluster.Cluster`."""

    host: str
    connected: bool
    claims: Ownership

    async def claim_login(self, key: str, mark: str = "") -> Claim | None: ...


@dataclass(frozen=True, slots=True)
class Refused:
    """Why this host does not refresh a chain: `host` refreshes it, or (`spent`)
    `host` refreshed it and this host's refresh token is spent."""

    host: str
    spent: bool = False


class Owners:
    """The owners of this host's chains as the cluster says (see the module docstring).

    `cluster` gives the daemon's cluster task (None: no `[cluster]`, every chain
    is this host's); `show` tells the engine's profiles through `engine` and
    `after_change`; `clock` gives `now`.
    """

    def __init__(self, cluster: Callable[[], Claims | None], engine: Callable[[], Engine],
                 after_change: Callable[[], None], clock: Callable[[], float]) -> None:
        self._cluster = cluster
        self._engine = engine
        self._after_change = after_change
        self._clock = clock
        self._seen: dict[str, tuple[str, float]] = {}
        """Chain key -> (its owner, when Redis last said so)."""
        self._settled = False
        """The link came up, or the first refresh waited FIRST_CONNECT for it."""
        self._spent: dict[str, str] = {}
        """Live mark of a refresh token Redis said is spent -> the host that spent it."""
        self._shown: dict[str, str] = {}
        """Profile id -> the refusal note this put in its `refresh_error`."""

    def enabled(self) -> bool:
        return self._cluster() is not None

    def connected(self) -> bool:
        cluster = self._cluster()
        if cluster is not None and cluster.connected:
            self._settled = True
            return True
        return False

    async def other_owner(self, key: str, mark: str = "") -> Refused | None:
        """Why this host may not refresh chain `key` with its refresh token of
        `live_mark` `mark`, or None when it may (it owns it, there is no cluster,
        or Redis is unreachable and no other owner was seen within the claims'
        TTL). A token once found spent is never sent. Raises nothing."""
        cluster = self._cluster()
        if cluster is None:
            return None
        if mark in self._spent:
            return Refused(self._spent[mark], spent=True)
        if not self._settled:
            with trio.move_on_after(FIRST_CONNECT):
                while not cluster.connected:
                    await trio.sleep(0.01)
            self._settled = True
        now = self._clock()
        claim = await cluster.claim_login(key, mark)
        if claim is not None and claim.owner is None:
            by = claim.spent_by or "?"
            if mark:
                self._spent[mark] = by
            return Refused(by, spent=True)
        owner = claim.owner if claim is not None else None
        if owner is not None:
            self._seen[key] = (owner, now)
        else:
            from .cluster import OWNER_TTL  # a cluster is configured: coredis is loaded

            seen = self._seen.get(key)
            if seen is None or now - seen[1] >= OWNER_TTL:
                return None
            owner = seen[0]
        return None if owner == cluster.host else Refused(owner)

    def mark(self, pid: str) -> str:
        """The live mark of profile `pid`'s refresh token now ('' without one)."""
        login = self._engine().profile(pid).oauth
        return live_mark(login.refresh.reveal()) if login and login.refresh else ""

    def refreshed(self, key: str, mark: str) -> None:
        """This host got the refresh token of `mark` for chain `key`: the live one."""
        cluster = self._cluster()
        if cluster is not None:
            cluster.claims.refreshed(key, mark)

    def keep(self, keys: Iterable[str]) -> None:
        """Release the claims of every chain not in `keys` (no longer renewed)."""
        cluster = self._cluster()
        if cluster is not None:
            cluster.claims.keep(set(keys))

    def show(self, pid: str, chain: Chain, refused: Refused | None, now: float) -> None:
        """Say on profile `pid` (its `refresh_error`, an event, the log) why this
        host does not refresh its chain; None: this one does again."""
        was, chain.owner = chain.owner, refused.host if refused is not None else None
        engine = self._engine()
        try:
            p = engine.profile(pid)
        except UnknownProfile:
            return
        login = p.oauth
        if login is None:
            return
        note = None
        if refused is not None:
            note = (spent(refused.host, fix_for(login.source.format) if login.source else None)
                    if refused.spent else refusal(refused.host))
        if note == login.error or (note is None and login.error != self._shown.get(pid)):
            return  # said already; a fault of its own refresh is not ours to clear
        if note is None:
            self._shown.pop(pid, None)
        else:
            self._shown[pid] = note
        engine.replace_profile(dataclasses.replace(
            p, oauth=dataclasses.replace(login, error=note)), now=now)
        if note is not None:
            kind = "spent" if refused is not None and refused.spent else "owned"
            engine.emit("refresh_error", now, profile=pid, kind=kind, message=note)
            log.warning("%s: not refreshed here: %s", pid, note)
        else:
            log.info("%s: refreshed here again (host %r no longer owns its refresh token)",
                     pid, was)
        self._after_change()


def refusal(owner: str) -> str:
    """The `refresh_error` of a login another host refreshes (no token in it)."""
    return (f"refresh token owned by host {owner!r} of the cluster, which alone refreshes "
            "it: this host uses the access token it has until it expires; for a login of "
            "its own, log in with the tool here and run `argentctl profiles import …`")


def spent(by: str, fix: str | None) -> str:
    """The `refresh_error` of a login whose refresh token here another host spent."""
    who = "another host" if by == "?" else f"host {by!r}"
    return (f"this host's refresh token for the login was spent by {who} of the cluster, "
            "which refreshed it: it is not sent from here (the token endpoint would refuse "
            "it, and may revoke the live login too); this host uses the access token it has "
            "until it expires. Fix: "
            + (fix or "log in again with the provider's tool here, then run "
               "`argentctl profiles import …`"))
