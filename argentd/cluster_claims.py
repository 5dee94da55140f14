"""Refresh-token claims and live marks in Redis: cluster.py's side of oauth_claims.py.

Theory of operation
-------------------
One host refreshes each OAuth login (`{name}:owner:{key}` = its host name,
`OWNER_TTL` renewed by its heartbeat). A claim says *who* refreshes, not
*which* refresh token is the live one; the live mark says that:

- **The live mark** `{name}:live:{key}` is a hash, `m` = `live_mark(token)`
  of the refresh token live for the login (a salted, truncated SHA-256, like
  every key of the cluster: never the token), `h` = the host that set it.
  It expires `LIVE_TTL` after its owner's last claim, so the logins of dead
  hosts leave Redis by themselves.
- **Who sets it**: the owner, when it claims and none is set, and after each
  refresh (`refreshed`: the new token's mark, sent with `fresh`, which sets
  it whatever was there: that token just came from the endpoint). A host
  that refreshed while Redis was unreachable sends it on the next renewal.
- **Taking over**: when no host owns the login, a host that asks with its
  token's mark gets it only if no live mark is set or its mark is the live
  one; else its token is spent (`Claim.spent_by` names the host that set the
  mark) and it must not send it: the endpoint would refuse it, and a
  provider that revokes on reuse would revoke the live pair too.
- **A spent owner**: a host that got a pair without refreshing (its tool
  refreshed, the pair was adopted: oauth.py) sends it `fresh` too, even
  while another host owns the login. The owner's claim right before its
  refresh is judged like any other: its token spent, it does not send it
  and frees the login for the host holding the live one. Renewals are not
  judged (one could cross a `fresh` claim of the same host).
- **Release**: renewals go only to the logins the refresher still holds
  (`keep`); a removed profile's claim lapses after `OWNER_TTL`.

The script is cluster_scripts.CLAIM: one atomic step per claim.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

LIVE_TTL: Final = 30 * 86400
"""Seconds a live mark outlives its owner's last claim."""

Scripts = Callable[[list[tuple[str, list[str], list[str]]]], Awaitable[list[Any]]]
"""Runs (script, keys, args) calls and returns their replies (Cluster._scripts)."""


def live_mark(refresh: str) -> str:
    """The mark of refresh token `refresh` in Redis (salted, truncated SHA-256)."""
    return hashlib.sha256(b"argentd-live\0" + refresh.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class Claim:
    """What Redis answered a claim."""

    owner: str | None
    """The host that refreshes the login (None: this host's token is spent)."""
    spent_by: str | None = None
    """With no owner: the host that set the live mark, which the asking token is not."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Ownership:
    """This host's claims: `owned` maps each login key it owns to (its token's
    mark, whether that mark still has to be set as the live one)."""

    def __init__(self, host: str, redis_key: Callable[[str, str], str]) -> None:
        self.host = host
        self._redis_key = redis_key
        self.owned: dict[str, tuple[str, bool]] = {}

    def call(self, key: str, mark: str, mode: str, ttl: int) -> tuple[str, list[str], list[str]]:
        """The CLAIM script call for login `key` with token mark `mark` ('' unknown)."""
        return ("claim", [self._redis_key("owner", key), self._redis_key("live", key)],
                [self.host, str(ttl), mark, mode, str(LIVE_TTL)])

    def answer(self, key: str, mark: str, fresh: bool, reply: Any, *,
               renewal: bool = False) -> Claim:
        """Record the reply of a claim of `key` (`mark`, `fresh` as sent); a
        renewal does not bring back a claim `keep` dropped meanwhile."""
        owner, spent_by = _text(reply[0]), _text(reply[1])
        cur = self.owned.get(key)
        if owner == self.host:
            if cur == (mark, fresh) or (cur is None and not renewal):
                self.owned[key] = (mark, False)  # else `refreshed` changed it meanwhile
            return Claim(owner)
        self.owned.pop(key, None)
        return Claim(owner) if owner else Claim(None, spent_by or "?")

    async def claim(self, run: Scripts, key: str, mark: str, ttl: int) -> Claim:
        """Claim login `key` for this host's token of mark `mark`; raises the link's errors."""
        fresh = self.owned.get(key) == (mark, True)
        (reply,) = await run([self.call(key, mark, "fresh" if fresh else "claim", ttl)])
        return self.answer(key, mark, fresh, reply)

    async def renew(self, run: Scripts, ttl: int) -> None:
        """Renew every claim this host holds (one pipelined round trip)."""
        items = sorted(self.owned.items())
        if not items:
            return
        calls = [self.call(key, mark, "fresh" if fresh else "renew", ttl)
                 for key, (mark, fresh) in items]
        for (key, (mark, fresh)), reply in zip(items, await run(calls), strict=True):
            self.answer(key, mark, fresh, reply, renewal=True)

    def refreshed(self, key: str, mark: str) -> None:
        """This host just got the token of `mark` for login `key`: it is the live one."""
        self.owned[key] = (mark, True)

    def keep(self, keys: set[str]) -> None:
        """Stop renewing the claims of every login not in `keys` (they lapse by themselves)."""
        for key in [k for k in self.owned if k not in keys]:
            del self.owned[key]
