"""A chain: one OAuth login's pairs over time, and when the next one is due.

Each oauth profile with a refresh token is a *chain*, one books key for all
of its pairs (`oauth_profile.login_key`). This module holds what the
refresher (oauth.py) decides without I/O:

- **Which pair a chain starts from** (`overlay`): the profiles file's, or the
  newer one credentials.json stored for it. While the file's entry is
  unchanged (its refresh token is the chain's origin, current or a spent
  one) the stored pair wins; a new login in the file wins over the stored
  pair, which is then forgotten.
- **When** (`due_at`): `refresh_before` seconds before the access token
  ends, never sooner than half its life after the last refresh, so a token
  shorter than `refresh_before` is not refreshed in a loop.
- **After a fault** (`backoff`): 10 s doubling to 10 min.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Final

from . import log as logmod
from .credentials import StoredLogin
from .model import Profile, ProfileSet, Secret
from .oauth_config import OAuthConfig
from .oauth_profile import OAuthLogin, login_key, refresh_hash

log = logging.getLogger("argentd.oauth")

BACKOFF_BASE: Final = 10.0
BACKOFF_CAP: Final = 600.0


def due_at(expires: float | None, refreshed_at: float | None, refresh_before: float) -> float:
    """When a token ending at `expires` (Unix s) is refreshed; inf when it never ends."""
    if expires is None:
        return math.inf
    due = expires - refresh_before
    if refreshed_at is not None and refreshed_at < expires:
        due = max(due, refreshed_at + min(refresh_before, (expires - refreshed_at) / 2))
    return due


def backoff(failures: int) -> float:
    """Seconds before the next try after `failures` faults in a row (>= 1)."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(max(0, failures - 1), 16)))


@dataclass(slots=True)
class Chain:
    """What the refresher keeps per oauth profile id, besides the engine's profile."""

    origin: str
    seen_failures: int = -1
    """The engine's failure count last seen (-1: not yet looked)."""
    failures: int = 0
    next_try: float = 0.0
    auth_pending: bool = False
    auth_used: bool = False
    synced: bool = False
    """The tool's file was compared since the chain was loaded."""
    asked: bool = False
    """The cluster was asked which host refreshes it (oauth_claims)."""
    owner: str | None = None
    """The other host that refreshes it, as last heard (None: this host)."""


def with_pair(p: Profile, login: OAuthLogin, access: str, refresh: str | None,
              expires: float | None, **changes: Any) -> Profile:
    """`p` holding a new pair of its chain (same books key)."""
    assert login.origin is not None
    new_login = dataclasses.replace(
        login, refresh=Secret(refresh) if refresh else login.refresh, **changes)
    return dataclasses.replace(
        p, secret=Secret(access, key=login_key(login.origin)), expires=expires, oauth=new_login)


@dataclass(slots=True)
class Overlaid:
    """What `overlay` found."""

    profiles: ProfileSet
    chains: dict[str, Chain]
    dropped: list[str]
    """Profile ids whose stored login a new login in the file replaced."""


def overlay(profiles: ProfileSet, logins: dict[str, StoredLogin], chains: dict[str, Chain],
            config: OAuthConfig, *, store_readable: bool) -> Overlaid:
    """`profiles` with each oauth login's newer stored pair (from `logins`) in place
    of the file's, and the chain of each (kept from `chains` while its origin stays).

    A login that cannot be refreshed (no refresh token, no token endpoint, a
    refresh token another profile holds too) keeps its access token and gets
    its `error`. Stored logins are only dropped while `store_readable`.
    """
    out: list[Profile] = []
    kept: dict[str, Chain] = {}
    dropped: list[str] = []
    owners: dict[str, str] = {}
    for p in profiles.profiles:
        login = p.oauth
        problem = None
        if login is not None and login.refresh is None:
            problem = ("no refresh token: this login ends with its access token; import "
                       "it again from the tool (`argentctl profiles import …`)")
        elif login is not None and config.provider(p.provider) is None:
            problem = (f"no token endpoint for provider {p.provider!r}: add "
                       f"[oauth.{p.provider}] token_url and client_id to argentd.toml")
        elif login is not None and login.origin in owners:
            # Refreshing one token twice revokes the login: one profile owns it.
            problem = (f"holds the same refresh token as {owners[login.origin]}, "
                       "which alone refreshes it")
        if login is None or problem is not None:
            if login is not None:
                p = dataclasses.replace(p, oauth=dataclasses.replace(
                    login, refresh=None, error=problem))
            out.append(p)
            continue
        assert login.origin is not None and login.refresh is not None
        owners[login.origin] = p.id
        logmod.register_secrets([login.refresh.reveal()])
        stored = logins.get(p.id)
        known = set()
        if stored is not None:
            known = {stored.origin, *stored.retired}
            if stored.refresh:
                known.add(refresh_hash(stored.refresh))
        if stored is not None and login.origin in known:
            if not stored.access:  # only a revoked mark: the file's pair stands
                out.append(p)
                kept[p.id] = chains.get(p.id) or Chain(login.origin)
                continue
            login = dataclasses.replace(login, origin=stored.origin)
            p = with_pair(p, login, stored.access, stored.refresh, stored.expires,
                          account_id=stored.account_id or login.account_id,
                          id_token=Secret(stored.id_token) if stored.id_token else None,
                          refreshed_at=stored.refreshed_at)
        elif stored is not None and store_readable:
            log.info("%s: a new login in the profiles file replaces the stored one", p.id)
            dropped.append(p.id)
        assert p.oauth is not None and p.oauth.origin is not None
        chain = chains.get(p.id)
        if chain is None or chain.origin != p.oauth.origin:
            chain = Chain(p.oauth.origin)
        # The profile comes new from the file: compare with the tool's file again, and
        # ask the cluster again (the refusal note went with the old profile).
        chain.synced, chain.asked, chain.owner = False, False, None
        kept[p.id] = chain
        out.append(p)
    return Overlaid(ProfileSet(out, profiles.order, profiles.errors), kept, dropped)
