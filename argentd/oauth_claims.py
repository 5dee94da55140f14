"""Which host of a cluster refreshes each OAuth login (DESIGN, "Cluster": OAuth
stays on one host).

Theory of operation
-------------------
A refresh token works once: two hosts refreshing the same login revoke each
other. With `[cluster]` on, a chain (oauth_chain) is refreshed only by the
host that owns it in Redis (`Cluster.claim_refresh_token`):

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

Limit: the claim says who refreshes, not which refresh token is the live
one. A host taking over from a dead owner that had refreshed holds a spent
token; the endpoint refuses it (`invalid_grant`: the profile is `invalid`,
with the fix) and, for providers that revoke on reuse, the dead owner's
newer pair too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Final, Protocol

import trio

from argent_client.protocol import UnknownProfile

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

    async def claim_refresh_token(self, key: str) -> str | None: ...


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

    def enabled(self) -> bool:
        return self._cluster() is not None

    def connected(self) -> bool:
        cluster = self._cluster()
        if cluster is not None and cluster.connected:
            self._settled = True
            return True
        return False

    async def other_owner(self, key: str) -> str | None:
        """The other host that refreshes chain `key`, or None when this host may
        (it owns it, there is no cluster, or Redis is unreachable and no other
        owner was seen within the claims' TTL). Raises nothing."""
        cluster = self._cluster()
        if cluster is None:
            return None
        if not self._settled:
            with trio.move_on_after(FIRST_CONNECT):
                while not cluster.connected:
                    await trio.sleep(0.01)
            self._settled = True
        now = self._clock()
        owner = await cluster.claim_refresh_token(key)
        if owner is not None:
            self._seen[key] = (owner, now)
        else:
            from .cluster import OWNER_TTL  # a cluster is configured: coredis is loaded

            seen = self._seen.get(key)
            if seen is None or now - seen[1] >= OWNER_TTL:
                return None
            owner = seen[0]
        return None if owner == cluster.host else owner

    def show(self, pid: str, chain: Chain, owner: str | None, now: float) -> None:
        """Say on profile `pid` (its `refresh_error`, an event, the log) which other
        host refreshes its chain; None: this one does again."""
        was, chain.owner = chain.owner, owner
        if owner == was:
            return
        engine = self._engine()
        try:
            p = engine.profile(pid)
        except UnknownProfile:
            return
        login = p.oauth
        if login is None or (owner is None and (was is None or login.error != refusal(was))):
            return  # a fault of its own refresh is not ours to clear
        note = refusal(owner) if owner is not None else None
        engine.replace_profile(dataclasses.replace(
            p, oauth=dataclasses.replace(login, error=note)), now=now)
        if note is not None:
            engine.emit("refresh_error", now, profile=pid, kind="owned", message=note)
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
