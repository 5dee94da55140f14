"""OAuth in a cluster: the live mark says which refresh token of a login is live
(argentd/cluster_claims.py), so a host taking over from a dead owner never sends
a spent one; a chain the refresher no longer holds is released.

Same set-up as test_cluster_oauth.py: in-process hosts, one real redis-server,
the real fake token endpoint (which revokes a chain whose refresh token is
used twice), claim TTLs shortened rather than faked.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from argentd import cluster as cluster_mod
from argentd.cluster_claims import LIVE_TTL, live_mark
from argentd.oauth_claims import refusal, spent
from argentd.oauth_profile import login_key, refresh_hash

from .cluster_hosts import wait_until
from .conftest import write_json
from .fake_token_endpoint import FakeTokenEndpoint
from .redis_server import RedisServer
from .test_cluster import redis_dump
from .test_cluster_oauth import (
    HOUR,
    PID,
    OAuthHost,
    endpoint,
    no_secret_in,
    owner_and_challenger,
    sent,
    short_recheck,
)

__all__ = ["endpoint", "short_recheck"]  # fixtures

FIX = "log in again with the provider's tool here, then run `argentctl profiles import …`"


async def live(url: str, key: str) -> tuple[dict[bytes, bytes], int]:
    """The live mark of login `key` in Redis (its fields) and its TTL."""
    import coredis

    async with coredis.Redis(unix_socket_path=url.removeprefix("unix://")) as r:
        return dict(await r.hgetall(f"argentd:live:{key}")), int(await r.ttl(
            f"argentd:live:{key}"))


async def owner_of(url: str, key: str) -> bytes | None:
    import coredis

    async with coredis.Redis(unix_socket_path=url.removeprefix("unix://")) as r:
        got: bytes | None = await r.get(f"argentd:owner:{key}")
        return got


def refresh_of(host: OAuthHost) -> str:
    login = host.engine.profile(PID).oauth
    assert login is not None and login.refresh is not None
    return login.refresh.reveal()


def count_asks(host: OAuthHost) -> list[int]:
    """Counts the refresher's looks at the cluster (claims or not)."""
    asks = [0]
    ask = host.refresher.owners.other_owner

    async def counted(key: str, mark: str = "") -> object:
        asks[0] += 1
        return await ask(key, mark)

    host.refresher.owners.other_owner = counted  # type: ignore[method-assign,assignment]
    return asks


@pytest.mark.trio
async def test_cluster_oauth_live_owner_refreshed_then_died_the_spent_token_is_never_sent(
    tmp_path: Path, endpoint: FakeTokenEndpoint, redis_server: RedisServer,
    short_recheck: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    ttl = 2
    monkeypatch.setattr(cluster_mod, "OWNER_TTL", ttl)
    caplog.set_level(logging.DEBUG)
    a0, r0 = endpoint.login()
    soon = time.time() + 200  # within a's refresh_before: a refreshes at once
    a = OAuthHost("a", redis_server.url, tmp_path, endpoint, a0, r0, soon)
    b = OAuthHost("b", redis_server.url, tmp_path, endpoint, a0, r0, soon,
                  refresh_before=2 * HOUR)
    key = login_key(refresh_hash(r0))
    async with trio.open_nursery() as n:
        await a.start(n)
        await wait_until(lambda: not a.holds(a0), what="a refreshes")
        r1 = refresh_of(a)
        assert refresh_hash(r1) != refresh_hash(r0)  # the endpoint rotates
        await wait_until(lambda: a.cluster.claims.owned.get(key) == (live_mark(r1), False),
                         what="a's new mark set")
        mark, left = await live(redis_server.url, key)
        assert mark == {b"m": live_mark(r1).encode(), b"h": b"a"}
        assert ttl < left <= LIVE_TTL
        await b.start(n)
        await wait_until(lambda: b.refresh_error() == refusal("a"), what="b refused")
        a.kill()
        # After a's claim lapses, b's token is not the live one: refused, never sent.
        await wait_until(lambda: b.refresh_error() == spent("a", None), timeout=ttl + 10,
                         what="b finds its token spent")
        asks = count_asks(b)
        await wait_until(lambda: asks[0] >= 5, what="b looks again, still due")
        assert sent(endpoint) == [refresh_hash(r0)] and endpoint.reuses == 0
        assert b.claims.count("spent") == 1  # a spent token is not even offered again
        assert await owner_of(redis_server.url, key) is None
        still = endpoint.access_valid(a.token())
        assert still, "a's pair is not revoked"
        shown = b.shown()
        assert shown.state == "ready" and shown.refresh_error == spent("a", None)
        events = [(e.kind, e.message) for e in b.events if e.type == "refresh_error"]
        assert events == [("owned", refusal("a")), ("spent", spent("a", None))]
        dump = await redis_dump(redis_server.url)
        n.cancel_scope.cancel()
    note = spent("a", None)
    assert "spent by host 'a' of the cluster, which refreshed it" in note and note.endswith(FIX)
    assert f"{PID}: not refreshed here: this host's refresh token" in caplog.text
    names = {x.decode().split(":")[1] for x in dump if x.startswith(b"argentd:")}
    assert {"live", "hosts"} <= names, names
    no_secret_in([x.decode(errors="replace") for x in dump] + [caplog.text])


@pytest.mark.trio
async def test_cluster_oauth_live_a_host_holding_the_live_token_takes_over_and_marks_its_own(
    tmp_path: Path, endpoint: FakeTokenEndpoint, redis_server: RedisServer,
    short_recheck: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ttl = 2
    a, b, a0, r0 = owner_and_challenger(tmp_path, endpoint, redis_server, monkeypatch, ttl)
    key = login_key(refresh_hash(r0))
    async with trio.open_nursery() as n:
        await a.start(n)
        await wait_until(lambda: a.claims == ["a"], what="a claims at connect")
        # The first claim sets the live mark: a's token, which a never refreshed.
        assert (await live(redis_server.url, key))[0] == {b"m": live_mark(r0).encode(),
                                                            b"h": b"a"}
        await b.start(n)
        await wait_until(lambda: b.refresh_error() == refusal("a"), what="b refused")
        a.kill()
        await wait_until(lambda: len(endpoint.calls) == 1, timeout=ttl + 10,
                         what="b takes over")
        await wait_until(lambda: not b.holds(a0), what="b's new pair")
        r1 = refresh_of(b)
        await wait_until(lambda: b.cluster.claims.owned.get(key) == (live_mark(r1), False),
                         what="b's new mark set")
        assert (await live(redis_server.url, key))[0] == {b"m": live_mark(r1).encode(),
                                                            b"h": b"b"}
        assert sent(endpoint) == [refresh_hash(r0)] and endpoint.reuses == 0
        assert "spent" not in b.claims and b.refresh_error() is None
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_oauth_live_a_removed_profile_stops_renewing_its_claim(
    tmp_path: Path, endpoint: FakeTokenEndpoint, redis_server: RedisServer,
    short_recheck: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ttl = 2
    a, b, _a0, r0 = owner_and_challenger(tmp_path, endpoint, redis_server, monkeypatch, ttl)
    key = login_key(refresh_hash(r0))
    async with trio.open_nursery() as n:
        await a.start(n)
        await wait_until(lambda: a.claims == ["a"], what="a claims at connect")
        # Held: a's heartbeat (every 0.5 s) keeps renewing it past the TTL.
        held = time.monotonic()
        while time.monotonic() - held < ttl + 0.5:
            assert await owner_of(redis_server.url, key) == b"a"
            await trio.sleep(0.2)
        write_json(a.path, {})
        a.reload()
        await wait_until(lambda: key not in a.cluster.claims.owned, what="a releases it")
        with trio.fail_after(ttl + 5):
            while await owner_of(redis_server.url, key) is not None:
                await trio.sleep(0.05)
        # b, holding the live token (a never refreshed), takes it over.
        await b.start(n)
        await wait_until(lambda: len(endpoint.calls) == 1, what="b refreshes")
        assert b.claims[-1] == "b" and endpoint.reuses == 0
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_oauth_live_claim_script_marks_spent_fresh_and_unmarked(
    redis_server: RedisServer,
) -> None:
    import coredis

    from argentd.cluster_claims import Claim

    from .cluster_hosts import Host

    url = redis_server.url
    a, b = Host("a", url, []), Host("b", url, [])

    async def lapse(key: str) -> None:  # as the TTL would, sooner
        async with coredis.Redis(unix_socket_path=url.removeprefix("unix://")) as r:
            await r.delete([f"argentd:owner:{key}"])

    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        assert await a.cluster.claim_login("k", "m0") == Claim("a")
        assert (await live(url, "k"))[0] == {b"m": b"m0", b"h": b"a"}
        assert await b.cluster.claim_login("k", "m9") == Claim("a")  # owned: not judged
        a.cluster.claims.refreshed("k", "m1")
        assert await a.cluster.claim_login("k", "m1") == Claim("a")
        assert (await live(url, "k"))[0] == {b"m": b"m1", b"h": b"a"}
        assert a.cluster.claims.owned == {"k": ("m1", False)}
        a.cluster.claims.keep(set())
        await lapse("k")
        # No owner: only the live token gets it; a spent one is told who spent it.
        assert await b.cluster.claim_login("k", "m0") == Claim(None, "a")
        assert await owner_of(url, "k") is None and "k" not in b.cluster.claims.owned
        assert await b.cluster.claim_login("k", "m1") == Claim("b")
        # A host that refreshed alone (Redis unreachable, no owner known) sends its
        # fresh mark with its next renewal: it is the live one now.
        assert await b.cluster.claim_login("k2", "n0") == Claim("b")
        b.cluster.claims.keep({"k"})
        await lapse("k2")
        a.cluster.claims.refreshed("k2", "n1")
        await wait_until(lambda: a.cluster.claims.owned.get("k2") == ("n1", False),
                         what="a's renewal")
        assert await owner_of(url, "k2") == b"a"
        assert (await live(url, "k2"))[0] == {b"m": b"n1", b"h": b"a"}
        # A fresh mark is set even while another host owns the login; that owner,
        # asked before a refresh with its token, finds it spent and frees the login.
        assert await a.cluster.claim_login("k4", "p0") == Claim("a")
        b.cluster.claims.refreshed("k4", "p1")
        assert await b.cluster.claim_login("k4", "p1") == Claim("a")
        assert (await live(url, "k4"))[0] == {b"m": b"p1", b"h": b"b"}
        await a.cluster.claims.renew(partial(a.cluster._scripts, a.cluster._session), 9)
        assert a.cluster.claims.owned["k4"] == ("p0", False)  # a renewal is not judged
        assert await a.cluster.claim_login("k4", "p0") == Claim(None, "b")
        assert await owner_of(url, "k4") is None and "k4" not in a.cluster.claims.owned
        assert await b.cluster.claim_login("k4", "p1") == Claim("b")
        # Without a mark (a caller that does not know its token): no live mark is set.
        assert await a.cluster.claim_refresh_token("k3") == "a"
        assert (await live(url, "k3"))[0] == {}
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_oauth_live_a_tool_refresh_elsewhere_spends_the_owners_token(
    tmp_path: Path, endpoint: FakeTokenEndpoint, redis_server: RedisServer,
    short_recheck: None,
) -> None:
    import json

    from argentd.config import parse_config

    a0, r0 = endpoint.login()
    later = time.time() + HOUR
    a = OAuthHost("a", redis_server.url, tmp_path, endpoint, a0, r0, later)
    b = OAuthHost("b", redis_server.url, tmp_path, endpoint, a0, r0, later,
                  refresh_before=2 * HOUR)
    tool = tmp_path / "b" / "claude.json"  # the file Claude Code keeps on b

    def write_tool(access: str, refresh: str, expires: float) -> None:
        tool.write_text(json.dumps({"claudeAiOauth": {
            "accessToken": access, "refreshToken": refresh, "expiresAt": int(expires * 1000)}}))
        tool.chmod(0o600)

    write_tool(a0, r0, later)
    write_json(b.path, {PID: {"provider": "anthropic", "type": "oauth", "access": a0,
                              "refresh": r0, "expires": int(later * 1000),
                              "source": {"format": "claude-code", "path": str(tool)}}})
    b.reload()
    key = login_key(refresh_hash(r0))
    async with trio.open_nursery() as n:
        await a.start(n)
        await wait_until(lambda: a.claims == ["a"], what="a claims at connect")
        await b.start(n)
        await wait_until(lambda: b.refresh_error() == refusal("a"), what="b refused")
        # Claude Code on b refreshes by itself; b adopts the pair (the newest): live.
        got = endpoint.refresh_as_tool(r0)
        r2 = got["refresh_token"]
        write_tool(got["access_token"], r2, time.time() + 8 * HOUR)
        await wait_until(lambda: b.holds(got["access_token"]), what="b adopts the tool's pair")
        await wait_until(lambda: b.cluster.claims.owned.get(key) is None and b.claims[-1] == "a",
                         what="b claimed again")
        assert (await live(redis_server.url, key))[0] == {b"m": live_mark(r2).encode(),
                                                            b"h": b"b"}
        # a comes due: its r0 is spent; it is not sent (that reuse would revoke r2).
        a.config = parse_config(
            f'[oauth]\nrefresh_before = {2 * HOUR}\n'
            f'[oauth.anthropic]\ntoken_url = "{endpoint.url}"\nclient_id = "c"\n'.encode())
        a.reload()
        await wait_until(lambda: a.refresh_error() == spent("b", None), what="a finds r0 spent")
        assert [c.client_id for c in endpoint.calls] == ["the-tool"] and endpoint.reuses == 0
        assert await owner_of(redis_server.url, key) is None  # freed for b
        valid = endpoint.access_valid(got["access_token"])
        assert valid, "b's pair lives"
        n.cancel_scope.cancel()
