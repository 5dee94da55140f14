"""The refresher: argentd is the one process that refreshes each OAuth login.

Theory of operation
-------------------
Each oauth profile with a refresh token is a *chain*: the login's pairs
over time, one books key for all of them (`oauth_profile.login_key`). The
engine always holds the chain's current pair as the profile's secret; this
module gets the next one when it is due and swaps it in with
`Engine.replace_profile`, so cooldowns, counts and leases stay. What needs
no I/O (the starting pair, `due_at`, `backoff`) is in oauth_chain.py.

- **When**: `due_at` (`refresh_before` seconds before the access token
  ends), or at once after an `auth` report against it (once per token: a
  token that came from such a refresh is not refreshed again for its own
  `auth` report).
- **One at a time**: a refresh token is in flight at most once (`_busy`),
  whatever the number of leases asking; leases keep the current access token
  while it is valid, else wait in the engine's queue (within their `wait`)
  and are served by the swap.
- **Order of writes** (the crash story): the endpoint's answer -> the pair
  in credentials.json (fsynced) -> the tool's own file (compare and swap) ->
  the engine. A kill -9 before the first write loses the answer only: the
  old pair is used again, at worst refused by the endpoint.
- **Before each refresh**, under the credentials lock: credentials.json is
  read again (another daemon of this user may have refreshed the chain) and
  so is the tool's file (the tool may have refreshed on its own); a pair
  whose refresh token is not one this chain has spent is adopted.
- **In a cluster** (oauth_claims.py): the last step before the refresh token
  leaves is a claim of the chain; a chain another host owns, or whose refresh
  token here another host spent, is not refreshed here; its `error` says why.
- **Faults**: `revoked` (invalid_grant) marks the profile invalid with the
  fix and stops the chain; anything else backs off (10 s doubling to 10 min)
  while the old token serves; past its end the profile shows `expired`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
import trio

from argent_client.oauth_sources import SourceError, SourceLogin, fix_for, jwt_expiry
from argent_client.protocol import UnknownProfile

from . import log as logmod
from .cluster_claims import live_mark
from .credentials import (
    CredentialsError,
    CredentialsStore,
    StoredLogin,
    read_source,
    retire,
    write_source_cas,
)
from .engine import Engine
from .model import Profile, ProfileSet, Secret
from .oauth_chain import Chain, backoff, due_at, overlay, with_pair
from .oauth_claims import ASK_POLL, RECHECK, Claims, Owners
from .oauth_config import OAuthConfig
from .oauth_profile import login_key, refresh_hash
from .token_endpoint import DEFAULT_LIFETIME, Answer, Http, refresh_call

log = logging.getLogger("argentd.oauth")

_T = TypeVar("_T")


class Refresher:
    """Refreshes the engine's oauth profiles; see the module docstring."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        store: CredentialsStore,
        config: Callable[[], OAuthConfig],
        after_change: Callable[[], None],
        *,
        clock: Callable[[], float] = time.time,
        cluster: Callable[[], Claims | None] = lambda: None,
    ) -> None:
        """`cluster` gives the daemon's `[cluster]` task, if any (oauth_claims)."""
        self._engine = engine
        self.store = store
        self._config = config
        self._after_change = after_change
        self.clock = clock
        self.error: str | None = None
        """Why credentials.json is refused (then nothing is refreshed), or None."""
        self.logins: dict[str, StoredLogin] = {}
        self._load_store()
        self.chains: dict[str, Chain] = {}
        self._busy: set[str] = set()
        """Refresh-token hashes in flight."""
        self._wake = trio.Event()
        self._dirty = False
        """self.logins holds what credentials.json does not yet."""
        self._http: Http | None = None
        self.owners = Owners(cluster, engine, after_change, clock)

    def _load_store(self) -> None:
        try:
            self.logins = self.store.load()
        except CredentialsError as exc:
            if self.error != str(exc):
                log.error("%s", exc)
            self.error = str(exc)
            return
        if self.error is not None:
            log.info("%s is readable again; OAuth logins are refreshed again", self.store.path)
        self.error = None
        logmod.register_secrets(
            v for s in self.logins.values() for v in (s.access, s.refresh, s.id_token) if v)

    # ------------------------------------------------------------ loading

    def overlay(self, profiles: ProfileSet) -> ProfileSet:
        """`profiles` with each oauth login's newer stored pair in place of the file's
        (oauth_chain.overlay); the chains follow."""
        if self.error is not None:
            self._load_store()
        found = overlay(profiles, self.logins, self.chains, self._config(),
                        store_readable=self.error is None)
        for pid in found.dropped:
            del self.logins[pid]
            self._save_later()
        self.chains = found.chains
        self._wake.set()
        return found.profiles

    def _save_later(self) -> None:
        self._dirty = True

    # ------------------------------------------------------------ triggers

    def notice_changes(self) -> None:
        """After an engine change: an `auth` report against a chain asks for one refresh."""
        if not self.chains:
            return
        engine = self._engine()
        for pid, chain in self.chains.items():
            try:
                ks = engine.key_state(pid)
            except Exception:  # removed meanwhile
                continue
            if ks.failures == chain.seen_failures:
                continue
            first, chain.seen_failures = chain.seen_failures < 0, ks.failures
            if first:
                continue  # failures restored from state.json are old news
            if ks.last_error and ks.last_error.startswith("auth") and not chain.auth_used:
                chain.auth_pending = True
                self._wake.set()

    def _next_attempt(self, pid: str, chain: Chain, config: OAuthConfig) -> float | None:
        """When the chain of `pid` is refreshed next (None: not at all)."""
        try:
            p = self._engine().profile(pid)
        except Exception:
            return None
        login = p.oauth
        if (self.error is not None or login is None or login.refresh is None
                or config.provider(p.provider) is None):
            return None
        if refresh_hash(login.refresh.reveal()) in self._busy:
            return None
        if not chain.synced and login.source is not None:
            return 0.0  # compare with the tool's file (even a revoked chain: it may revive)
        stored = self.logins.get(pid)
        if stored is not None and stored.revoked == refresh_hash(login.refresh.reveal()):
            return None
        due = 0.0 if chain.auth_pending else due_at(p.expires, login.refreshed_at,
                                                    config.refresh_before)
        return max(due, chain.next_try)

    # ------------------------------------------------------------ the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh chains when due, until cancelled."""
        async with Http() as http, trio.open_nursery() as nursery:
            self._http = http
            task_status.started()
            while True:
                self._wake = trio.Event()
                config = self._config()
                now = self.clock()
                soonest = math.inf
                self.notice_changes()  # takes the baseline of new chains
                for pid, chain in list(self.chains.items()):
                    when = self._next_attempt(pid, chain, config)
                    if when is None:
                        continue
                    if when <= now:
                        p = self._engine().profile(pid)
                        assert p.oauth is not None and p.oauth.refresh is not None
                        key = refresh_hash(p.oauth.refresh.reveal())
                        self._busy.add(key)
                        nursery.start_soon(self._guarded, pid, key, config)
                    else:
                        soonest = min(soonest, when)
                if self.owners.enabled():  # release the claims of chains gone (a reload)
                    self.owners.keep(login_key(c.origin) for c in self.chains.values())
                    soonest = min(soonest, self._ask_owners(nursery, now))
                if self._dirty and self.error is None:
                    await self._save_quietly()
                with trio.move_on_after(max(0.0, soonest - now)):
                    await self._wake.wait()

    def _ask_owners(self, nursery: trio.Nursery, now: float) -> float:
        """Claim each chain not asked yet while the cluster link is up; when to look again."""
        unasked = [(pid, chain) for pid, chain in self.chains.items() if not chain.asked]
        if not unasked:
            return math.inf
        if not self.owners.connected():
            return now + ASK_POLL
        for pid, chain in unasked:
            chain.asked = True  # not a chain this host cannot refresh (revoked: released)
            if self._next_attempt(pid, chain, self._config()) is not None:
                nursery.start_soon(self._ask_owner, pid, chain)
        return math.inf

    async def _ask_owner(self, pid: str, chain: Chain) -> None:
        try:
            refused = await self.owners.other_owner(login_key(chain.origin), self.owners.mark(pid))
            if self.chains.get(pid) is chain:
                self.owners.show(pid, chain, refused, self.clock())
        except Exception:  # a bug must not end the refresher; the refresh asks again
            log.exception("asking the cluster who refreshes %s failed", pid)

    async def _save_quietly(self) -> None:
        self._dirty = False
        try:
            await self._locked(lambda: self.store.save(self.logins))
        except OSError as exc:
            self._dirty = True
            log.error("cannot write %s (%s); refreshed logins are kept in memory and "
                      "written again later", self.store.path, exc.strerror or exc)

    async def _locked(self, fn: Callable[[], _T]) -> _T:
        def locked() -> _T:
            with self.store.lock():
                return fn()
        return await trio.to_thread.run_sync(locked)

    async def _guarded(self, pid: str, key: str, config: OAuthConfig) -> None:
        try:
            await self._refresh(pid, config)
        except (CredentialsError, UnknownProfile):
            pass  # said when it was found; a profile removed by a reload meanwhile
        except Exception:  # a bug must not end the refresher
            log.exception("refreshing %s failed", pid)
            chain = self.chains.get(pid)
            if chain is not None:
                chain.failures += 1
                chain.next_try = self.clock() + backoff(chain.failures)
        finally:
            self._busy.discard(key)
            self._wake.set()

    # ------------------------------------------------------------ one refresh

    async def _refresh(self, pid: str, config: OAuthConfig) -> None:
        """One refresh of `pid`'s chain, under the credentials lock from the first
        read to the last write (so another daemon finds the new pair, not the spent one)."""
        fd = await trio.to_thread.run_sync(self.store.acquire, abandon_on_cancel=True)
        try:
            await self._refresh_locked(pid, config)
        finally:
            self.store.release(fd)

    async def _refresh_locked(self, pid: str, config: OAuthConfig) -> None:
        chain = self.chains[pid]
        p = self._engine().profile(pid)
        login = p.oauth
        assert login is not None and login.refresh is not None and login.origin is not None
        # Newer pairs first: another daemon's (credentials.json), then the tool's.
        p = await self._adopt_newer(pid, p, chain)
        chain.synced = True
        login = p.oauth
        assert login is not None and login.refresh is not None
        stored = self.logins.get(pid)
        if stored is not None and stored.revoked == refresh_hash(login.refresh.reveal()):
            return  # a revoked chain: only a newer pair from the tool revives it
        now = self.clock()
        due = 0.0 if chain.auth_pending else due_at(p.expires, login.refreshed_at,
                                                    config.refresh_before)
        if due > now:
            return  # the adopted pair (or a sync only) left nothing to do yet
        # The last step before the token leaves: the cluster's other hosts must not send it.
        refused = await self.owners.other_owner(login_key(chain.origin), self.owners.mark(pid))
        self.owners.show(pid, chain, refused, now)
        if refused is not None:
            chain.next_try = now + RECHECK
            return
        p = self._engine().profile(pid)
        login = p.oauth
        assert login is not None and login.refresh is not None
        provider = config.provider(p.provider)
        assert provider is not None
        by_auth = chain.auth_pending
        chain.auth_pending = False
        assert self._http is not None
        answer = await refresh_call(self._http, provider, login.refresh.reveal(), config.timeout)
        now = self.clock()
        if answer.kind == "ok":
            await self._refreshed(pid, p, chain, answer, by_auth, now)
        elif answer.kind == "revoked":
            await self._revoked(pid, p, chain, answer, now)
        else:
            self._failed(pid, p, chain, answer.message, now)

    async def _adopt_newer(self, pid: str, p: Profile, chain: Chain) -> Profile:
        login = p.oauth
        assert login is not None and login.refresh is not None
        current = refresh_hash(login.refresh.reveal())
        try:
            logins = await trio.to_thread.run_sync(self.store.load)
        except CredentialsError as exc:
            self.error = str(exc)
            log.error("%s", exc)
            raise
        stored = logins.get(pid)
        self.logins = {**self.logins, **({pid: stored} if stored else {})}
        if (stored is not None and stored.origin == chain.origin and stored.access
                and stored.refresh and current in stored.retired):
            log.info("%s: adopting the pair another argentd stored", pid)
            self.owners.refreshed(login_key(chain.origin), live_mark(stored.refresh))
            logmod.register_secrets([v for v in (stored.access, stored.refresh) if v])
            p = with_pair(p, login, stored.access, stored.refresh, stored.expires,
                           refreshed_at=stored.refreshed_at, error=None)
            self._engine().replace_profile(p, now=self.clock())
            self._after_change()
            login = p.oauth
            assert login is not None and login.refresh is not None
            current = refresh_hash(login.refresh.reveal())
        if login.source is None:
            return p
        try:
            _, found = await trio.to_thread.run_sync(read_source, login.source)
        except (OSError, SourceError) as exc:
            log.warning("%s: cannot read %s (%s); refreshing without it", pid,
                        login.source.shown, getattr(exc, "strerror", None) or exc)
            return p
        if found.refresh is None or refresh_hash(found.refresh) == current:
            return p
        spent = set(self.logins[pid].retired) if pid in self.logins else set()
        if refresh_hash(found.refresh) in spent:
            # The tool's file is behind (a write-back was lost): bring it up to date.
            await self._write_back(pid, p, found.refresh)
            return p
        log.info("%s: adopting the newer login %s wrote", pid, login.source.shown)
        logmod.register_secrets([v for v in (found.access, found.refresh, found.id_token) if v])
        now = self.clock()
        entry = StoredLogin(
            origin=chain.origin, access=found.access, refresh=found.refresh,
            expires=found.expires, account_id=found.account_id or login.account_id,
            id_token=found.id_token, replaced=current,
            retired=retire(self.logins.get(pid), current), refreshed_at=now)
        await self._store(pid, entry)
        self.owners.refreshed(login_key(chain.origin), live_mark(found.refresh))  # the newest
        p = with_pair(p, login, found.access, found.refresh, found.expires,
                       account_id=entry.account_id, refreshed_at=now, error=None,
                       id_token=Secret(found.id_token) if found.id_token else login.id_token)
        chain.failures, chain.next_try = 0, 0.0
        self._engine().counters["oauth_refreshes:adopted"] = (
            self._engine().counters.get("oauth_refreshes:adopted", 0) + 1)
        self._engine().replace_profile(p, now=now)
        self._engine().emit("refresh", now, profile=pid, until=p.expires,
                            message=f"adopted from {login.source.shown}")
        self._after_change()
        return p

    async def _store(self, pid: str, entry: StoredLogin) -> None:
        """Persist `entry` (read-modify-write; the caller holds the lock).

        Logs a failure; never raises.
        """
        def write() -> None:
            logins = self.store.load()
            logins[pid] = entry
            self.store.save(logins)
            self.logins = logins

        try:
            await trio.to_thread.run_sync(write)
        except (OSError, CredentialsError) as exc:
            self.logins = {**self.logins, pid: entry}
            self._dirty = True
            log.error("cannot write %s (%s): the new pair of %s is only in memory until "
                      "a write works", self.store.path, getattr(exc, "strerror", None) or exc,
                      pid)

    async def _refreshed(self, pid: str, p: Profile, chain: Chain, answer: Answer,
                         by_auth: bool, now: float) -> None:
        login = p.oauth
        assert login is not None and login.refresh is not None and answer.access is not None
        logmod.register_secrets([v for v in (answer.access, answer.refresh, answer.id_token)
                                 if v])
        used = login.refresh.reveal()
        used_hash = refresh_hash(used)
        refresh = answer.refresh or used
        lifetime = answer.expires_in
        if lifetime is None:
            exp = jwt_expiry(answer.access)
            lifetime = exp - now if exp is not None and exp > now else DEFAULT_LIFETIME
        expires = now + lifetime
        stored = self.logins.get(pid)
        entry = StoredLogin(
            origin=chain.origin, access=answer.access, refresh=refresh, expires=expires,
            account_id=login.account_id,
            id_token=answer.id_token or (login.id_token.reveal() if login.id_token else None),
            replaced=used_hash,
            retired=retire(stored, used_hash) if answer.refresh else list(
                stored.retired if stored else []),
            refreshed_at=now)
        await self._store(pid, entry)  # before anyone sees the new token
        self.owners.refreshed(login_key(chain.origin), live_mark(refresh))
        if login.source is not None:
            await self._write_back(pid, p, used, SourceLogin(
                answer.access, refresh, expires, login.account_id, entry.id_token))
        new = with_pair(p, login, answer.access, refresh, expires, refreshed_at=now,
                         error=None,
                         id_token=Secret(entry.id_token) if entry.id_token else None)
        chain.failures, chain.next_try, chain.auth_used = 0, 0.0, by_auth
        engine = self._engine()
        engine.counters["oauth_refreshes:ok"] = engine.counters.get("oauth_refreshes:ok", 0) + 1
        engine.replace_profile(new, now=now)
        engine.emit("refresh", now, profile=pid, until=expires,
                    message="after an auth report" if by_auth else None)
        self._after_change()
        log.info("%s: refreshed (%s -> %s, valid for %.0f s)", pid, p.secret.fingerprint,
                 new.secret.fingerprint, lifetime)

    async def _write_back(self, pid: str, p: Profile, expected: str,
                          login: SourceLogin | None = None) -> None:
        src = p.oauth.source if p.oauth else None
        if src is None:
            return
        if login is None:
            o = p.oauth
            assert o is not None
            login = SourceLogin(p.secret.reveal(), o.refresh.reveal() if o.refresh else None,
                                p.expires, o.account_id, o.id_token.reveal() if o.id_token
                                else None)
        try:
            done = await trio.to_thread.run_sync(
                lambda: write_source_cas(src, expected, login, now=self.clock()))
        except (OSError, SourceError) as exc:
            log.warning("%s: cannot write the new pair back to %s (%s)", pid, src.shown,
                        getattr(exc, "strerror", None) or exc)
            return
        if not done:
            log.warning("%s: %s changed meanwhile; not overwriting it (the next refresh "
                        "reads it first)", pid, src.shown)

    async def _revoked(self, pid: str, p: Profile, chain: Chain, answer: Answer,
                       now: float) -> None:
        login = p.oauth
        assert login is not None and login.refresh is not None
        fix = fix_for(login.source.format) if login.source else (
            "log in again with the provider's tool and run `argentctl profiles import …` "
            "(or put the new pair in the profiles file)")
        message = f"{answer.message}. Fix: {fix}"
        stored = self.logins.get(pid) or StoredLogin(origin=chain.origin)
        await self._store(pid, msgspec.structs.replace(
            stored, revoked=refresh_hash(login.refresh.reveal())))
        self.owners.keep(login_key(c.origin) for c in self.chains.values() if c is not chain)
        engine = self._engine()
        engine.counters["oauth_refreshes:invalid"] = (
            engine.counters.get("oauth_refreshes:invalid", 0) + 1)
        engine.replace_profile(dataclasses.replace(
            p, oauth=dataclasses.replace(login, error=message)), now=now)
        engine.mark_invalid(pid, message, now=now)
        engine.emit("refresh_error", now, profile=pid, kind="revoked", message=message)
        self._after_change()
        log.error("%s: %s", pid, message)

    def _failed(self, pid: str, p: Profile, chain: Chain, message: str, now: float) -> None:
        chain.failures += 1
        wait = backoff(chain.failures)
        chain.next_try = now + wait
        login = p.oauth
        assert login is not None
        valid = p.expires is None or p.expires > now
        note = (f"{message}; retrying in {wait:.0f} s"
                + ("" if valid else " (the access token has expired meanwhile)"))
        engine = self._engine()
        engine.counters["oauth_refreshes:error"] = (
            engine.counters.get("oauth_refreshes:error", 0) + 1)
        engine.replace_profile(dataclasses.replace(
            p, oauth=dataclasses.replace(login, error=note)), now=now)
        engine.emit("refresh_error", now, profile=pid, kind="retry", message=note)
        self._after_change()
        log.warning("%s: refresh failed: %s", pid, note)
