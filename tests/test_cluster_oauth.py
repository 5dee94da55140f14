"""OAuth in a cluster: one host refreshes each login (argentd/oauth_claims.py).

In-process hosts, each an `Engine`, a `Refresher` with its own credentials.json
and a `Cluster` task, sharing one real redis-server and the real fake token
endpoint (which revokes a login whose refresh token is used twice). Real
time: Redis expires claims by its own clock, so the claim TTL is shortened
instead of faked, and every wait is for a condition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from argent_client.protocol import ConfigStatus, Event
from argentd import cluster as cluster_mod
from argentd import oauth as oauth_mod
from argentd.cluster import Cluster
from argentd.cluster_claims import Claim, Ownership
from argentd.config import ClusterConfig, parse_config
from argentd.credentials import CredentialsStore
from argentd.engine import Engine
from argentd.oauth import Refresher
from argentd.oauth_claims import Owners, Refused, refusal
from argentd.oauth_profile import login_key, refresh_hash
from argentd.profiles import load_profiles
from argentd.views import status

from .cluster_hosts import wait_until
from .conftest import SECRETS, write_json
from .fake_token_endpoint import FakeTokenEndpoint
from .redis_server import RedisServer
from .test_cluster import redis_dump

PID = "anthropic:max"
HOUR = 3600.0


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    ep = FakeTokenEndpoint(lifetime=8 * HOUR)
    yield ep
    ep.close()


class OAuthHost:
    """One host: its own profiles file copy, credentials.json and config."""

    def __init__(self, name: str, url: str, root: Path, ep: FakeTokenEndpoint,
                 access: str, refresh: str, expires: float, *,
                 refresh_before: float = 300.0) -> None:
        self.name = name
        folder = root / name
        self.path = path = folder / "auth-profiles.json"
        write_json(path, {PID: {"provider": "anthropic", "type": "oauth", "access": access,
                                "refresh": refresh, "expires": int(expires * 1000)}})
        self.config = parse_config(
            f'[oauth]\nrefresh_before = {refresh_before}\n'
            f'[oauth.anthropic]\ntoken_url = "{ep.url}"\nclient_id = "c"\n'.encode())
        self.events: list[Event] = []
        self.refresher = Refresher(lambda: self.engine, CredentialsStore(folder / "creds.json"),
                                   lambda: self.config.oauth, self.after_change,
                                   cluster=lambda: self.cluster)
        self.engine = Engine(self.refresher.overlay(load_profiles(path, {})), self.config,
                             now=time.time())
        self.cluster = Cluster(ClusterConfig(url=url, host=name), self.engine,
                                               after_change=self.after_change)
        self.claims: list[str | None] = []
        """What each claim this host made returned ("spent": its token is spent)."""
        claim = self.cluster.claim_login

        async def counted(key: str, mark: str = "") -> Claim | None:
            got = await claim(key, mark)
            self.claims.append(None if got is None else got.owner or "spent")
            return got

        self.cluster.claim_login = counted  # type: ignore[method-assign]
        self.scope = trio.CancelScope()

    def after_change(self) -> None:
        self.events += self.engine.take_outbox().events

    async def start(self, nursery: trio.Nursery) -> None:
        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with self.scope, trio.CancelScope():
                async with trio.open_nursery() as inner:
                    await inner.start(self.cluster.run)
                    await inner.start(self.refresher.run)
                    task_status.started()

        await nursery.start(run)

    def reload(self) -> None:
        self.engine.load(self.refresher.overlay(load_profiles(self.path, {})), self.config,
                         now=time.time())
        self.after_change()

    def kill(self) -> None:
        """Gone as by kill -9: no heartbeat, no release, nothing said to Redis."""
        self.scope.cancel()

    def token(self) -> str:
        return self.engine.profile(PID).secret.reveal()

    def holds(self, token: str) -> bool:
        """Whether its access token is `token` (a bool: an assertion prints no token)."""
        return self.token() == token

    def refresh_error(self) -> str | None:
        p = self.engine.profile(PID)
        return p.oauth.error if p.oauth else None

    def shown(self) -> Any:
        """The profile as `status` shows it."""
        config = ConfigStatus(profiles_path="-", loaded_at=None)
        result = status(self.engine, config, now=time.time())
        return next(p for p in result.profiles if p.id == PID)


def sent(ep: FakeTokenEndpoint) -> list[str]:
    """The refresh tokens the endpoint was sent, as hashes (a failed assertion prints no token)."""
    return [refresh_hash(c.refresh) for c in ep.calls]


def no_secret_in(texts: list[str]) -> None:
    for secret in SECRETS:
        for text in texts:
            leaked = secret in text or secret[-16:] in text
            assert not leaked, "a token leaked"


@pytest.fixture
def short_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oauth_mod, "RECHECK", 0.05)


@pytest.mark.trio
async def test_cluster_oauth_two_hosts_one_login_only_the_owner_refreshes(
    tmp_path: Path, endpoint: FakeTokenEndpoint, redis_server: RedisServer,
    short_recheck: None, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    a0, r0 = endpoint.login()
    soon = time.time() + 200  # within refresh_before: both hosts are due at once
    a = OAuthHost("a", redis_server.url, tmp_path, endpoint, a0, r0, soon)
    b = OAuthHost("b", redis_server.url, tmp_path, endpoint, a0, r0, soon)
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        await wait_until(lambda: not (a.holds(a0) and b.holds(a0)), what="one refresh")
        owner, other = (b, a) if a.holds(a0) else (a, b)
        await wait_until(lambda: other.refresh_error() == refusal(owner.name),
                         what="the other host says who refreshes")
        # It keeps asking while due (every RECHECK) and keeps being refused.
        asked = len(other.claims)
        await wait_until(lambda: len(other.claims) >= asked + 5, what="more claims")
        assert set(other.claims) == {owner.name}
        assert sent(endpoint) == [refresh_hash(r0)] and endpoint.reuses == 0
        # Its access token serves meanwhile; status and events say why it is not refreshed.
        valid = endpoint.access_valid(a0)
        assert other.holds(a0) and valid
        shown = other.shown()
        assert shown.state == "ready" and shown.refresh_error == refusal(owner.name)
        assert f"host {owner.name!r}" in (shown.refresh_error or "")
        owned = [e for e in other.events if e.type == "refresh_error"]
        assert [(e.kind, e.profile) for e in owned] == [("owned", PID)]  # said once
        assert owner.shown().refresh_error is None
        # A reload makes the profile anew: the note comes back, still without a send.
        other.reload()
        await wait_until(lambda: other.refresh_error() == refusal(owner.name),
                         what="the note after a reload")
        assert sent(endpoint) == [refresh_hash(r0)]
        # Only the chain's hashed key reached Redis, with the owner's name.
        key = login_key(refresh_hash(r0))
        dump = await redis_dump(redis_server.url)
        claimed = dump[dump.index(f"argentd:owner:{key}".encode()) + 1]
        assert claimed == owner.name.encode()
        n.cancel_scope.cancel()
    no_secret_in([x.decode(errors="replace") for x in dump] + [caplog.text])
    assert f"{PID}: not refreshed here: refresh token owned by host {owner.name!r}" in caplog.text


def owner_and_challenger(tmp_path: Path, endpoint: FakeTokenEndpoint, redis_server: RedisServer,
                         monkeypatch: pytest.MonkeyPatch,
                         ttl: int) -> tuple[OAuthHost, OAuthHost, str, str]:
    """Hosts a and b with one login (access a0, refresh r0) and claims lapsing
    `ttl` s after a host's last heartbeat: a is due in an hour, so it only
    claims the login at connect; b's config asks for the refresh at once."""
    monkeypatch.setattr(cluster_mod, "OWNER_TTL", ttl)
    a0, r0 = endpoint.login()
    later = time.time() + HOUR
    a = OAuthHost("a", redis_server.url, tmp_path, endpoint, a0, r0, later)
    b = OAuthHost("b", redis_server.url, tmp_path, endpoint, a0, r0, later,
                  refresh_before=2 * HOUR)
    return a, b, a0, r0


@pytest.mark.trio
async def test_cluster_oauth_owner_killed_other_takes_over_after_the_ttl(
    tmp_path: Path, endpoint: FakeTokenEndpoint, redis_server: RedisServer,
    short_recheck: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    ttl = 2  # whole seconds (SET EX); the heartbeat renews every 0.5 s
    monkeypatch.setattr(cluster_mod, "OWNER_TTL", ttl)
    caplog.set_level(logging.DEBUG)
    a0, r0 = endpoint.login()
    later = time.time() + HOUR
    # a claims the login as soon as its link is up but is not due for an hour;
    # b's config asks for the refresh at once.
    a = OAuthHost("a", redis_server.url, tmp_path, endpoint, a0, r0, later)
    b = OAuthHost("b", redis_server.url, tmp_path, endpoint, a0, r0, later,
                  refresh_before=2 * HOUR)
    async with trio.open_nursery() as n:
        await a.start(n)
        await wait_until(lambda: a.claims == ["a"], what="a claims the login at connect")
        await b.start(n)
        await wait_until(lambda: b.refresh_error() == refusal("a"), what="b refused")
        asked = len(b.claims)
        await wait_until(lambda: len(b.claims) >= asked + 3, what="b asks again")
        assert sent(endpoint) == []  # a is not due, b may not
        a.kill()
        killed = time.monotonic()
        await wait_until(lambda: len(endpoint.calls) == 1, timeout=ttl + 10,
                         what="b takes over")
        took = time.monotonic() - killed
        await wait_until(lambda: not b.holds(a0), what="b's new pair")
        # Not before a's last renewal lapsed (every 0.5 s; 0.5 s more for a loaded
        # machine), nor long after (b asks every 0.05 s).
        assert ttl - 1.0 <= took <= ttl + 5, took
        assert sent(endpoint) == [refresh_hash(r0)] and endpoint.reuses == 0
        assert b.claims[-1] == "b" and b.refresh_error() is None
        live = endpoint.access_valid(b.token())
        assert live, "b holds a live access token"
        n.cancel_scope.cancel()
    print(f"b took over {took:.2f} s after a was killed (claim TTL {ttl} s)")
    assert "refreshed here again (host 'a' no longer owns its refresh token)" in caplog.text
    no_secret_in([caplog.text])


@pytest.mark.trio
async def test_cluster_oauth_redis_lost_a_known_owner_holds_for_the_ttl_then_alone(
    tmp_path: Path, endpoint: FakeTokenEndpoint, redis_server: RedisServer,
    short_recheck: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ttl = 2
    a, b, a0, _r0 = owner_and_challenger(tmp_path, endpoint, redis_server, monkeypatch, ttl)
    async with trio.open_nursery() as n:
        await a.start(n)
        await wait_until(lambda: a.claims == ["a"], what="a claims")
        await b.start(n)
        await wait_until(lambda: b.refresh_error() == refusal("a"), what="b refused")
        seen = time.monotonic()
        redis_server.kill()
        await wait_until(lambda: not b.cluster.connected, what="b sees Redis gone")
        # Unreachable Redis: the owner b heard of still holds, without a claim answered.
        asked = len(b.claims)
        await wait_until(lambda: b.claims[asked:].count(None) >= 3, what="b asks in vain")
        assert sent(endpoint) == [] and b.refresh_error() == refusal("a")
        # Then b goes on alone, as without a cluster.
        await wait_until(lambda: len(endpoint.calls) == 1, timeout=ttl + 10, what="b alone")
        assert time.monotonic() - seen >= ttl - 0.1
        await wait_until(lambda: not b.holds(a0), what="b's new pair")
        assert b.refresh_error() is None and endpoint.reuses == 0
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_oauth_redis_down_at_start_refreshes_alone(
    tmp_path: Path, endpoint: FakeTokenEndpoint, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from argentd import oauth_claims

    monkeypatch.setattr(oauth_claims, "FIRST_CONNECT", 0.2)
    a0, r0 = endpoint.login()
    url = f"unix://{tmp_path}/no-redis.sock"
    a = OAuthHost("a", url, tmp_path, endpoint, a0, r0, time.time() + 200)
    async with trio.open_nursery() as n:
        started = time.monotonic()
        await a.start(n)
        await wait_until(lambda: not a.holds(a0), what="a local refresh")
        assert time.monotonic() - started >= 0.2  # it gave the link its chance first
        assert a.claims == [None] and sent(endpoint) == [refresh_hash(r0)]
        assert a.refresh_error() is None
        n.cancel_scope.cancel()


# ------------------------------------------------------------ Owners alone


class FakeClaims:
    """A cluster that answers every claim with `owner` (None: Redis unreachable)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.connected = True
        self.owner: str | None = host
        self.claims = Ownership(host, lambda kind, key: f"t:{kind}:{key}")

    async def claim_login(self, key: str, mark: str = "") -> Claim | None:
        return None if self.owner is None else Claim(self.owner)


def no_engine() -> Engine:
    raise AssertionError("other_owner does not touch the engine")


def owners(cluster: FakeClaims | None, clock: Callable[[], float]) -> Owners:
    return Owners(lambda: cluster, no_engine, lambda: None, clock)


@pytest.mark.trio
async def test_owners_other_owner_without_cluster_own_claim_and_memory() -> None:
    now = [1000.0]
    assert await owners(None, lambda: now[0]).other_owner("k") is None
    fake = FakeClaims("b")
    o = owners(fake, lambda: now[0])
    assert await o.other_owner("k") is None  # b's own claim
    fake.owner = "a"
    assert await o.other_owner("k") == Refused("a")
    fake.owner = None  # Redis unreachable: a, as seen, holds for OWNER_TTL
    now[0] += cluster_mod.OWNER_TTL - 1
    assert await o.other_owner("k") == Refused("a")
    assert await o.other_owner("other-key") is None  # never seen: refresh alone
    now[0] += 1
    assert await o.other_owner("k") is None
