"""The cluster's books between in-process hosts over a real redis-server (and over
a fake of the BOOK script, for orderings a real server shows only by chance)."""

from __future__ import annotations

import time

import pytest
import trio

from argent_client.protocol import NoProfileAvailable

from .cluster_hosts import Host, lease_within, prof, wait_until
from .conftest import make_secret
from .redis_server import RedisServer

PROPAGATION_BOUND = 0.5
"""Seconds a change may take to reach another host in a test on a loaded machine
(the DESIGN target, 50 ms p99, is measured by bench/cluster.py)."""


def same_keys() -> tuple[str, str]:
    return make_secret("sk-ant-api03-"), make_secret("sk-ant-api03-")


@pytest.mark.trio
async def test_cluster_cooldown_reaches_other_host(redis_server: RedisServer) -> None:
    s1, s2 = same_keys()
    a = Host("a", redis_server.url, [prof("anthropic:x", s1), prof("anthropic:y", s2)])
    b = Host("b", redis_server.url, [prof("anthropic:x", s1), prof("anthropic:y", s2)])
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        lease = a.lease()
        a.report(lease_id=lease.lease_id, kind="rate_limit", retry_after=600)
        key = a.engine.profile(lease.profile).secret.key
        took = await wait_until(lambda: b.engine.key_state(lease.profile).cooling(time.time())
                                is not None, what="cooldown on b")
        assert took < PROPAGATION_BOUND
        until = a.engine.key_state(lease.profile).cooling(time.time())
        assert b.engine.key_state(lease.profile).cooling(time.time()) == until
        for _ in range(3):
            got = b.lease()
            assert got.profile != lease.profile
            b.release(got.lease_id)
        assert key in b.cluster.books
        n.cancel_scope.cancel()


def pair(url: str, *profiles: tuple[str, str], prefix: str = "argentd") -> tuple[Host, Host]:
    a = Host("a", url, [prof(pid, s) for pid, s in profiles], prefix=prefix)
    b = Host("b", url, [prof(pid, s) for pid, s in profiles], prefix=prefix)
    return a, b


@pytest.mark.trio
async def test_cluster_reset_flags_and_success_propagate(redis_server: RedisServer) -> None:
    s1, s2 = same_keys()
    a, b = pair(redis_server.url, ("anthropic:x", s1), ("anthropic:y", s2))
    now = time.time
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        # A cooldown started on a, reset on b: gone on a too.
        a.report(profile="anthropic:x", kind="rate_limit", retry_after=900)
        await wait_until(lambda: b.engine.state_of("anthropic:x", now()) == "cooldown")
        assert b.engine.reset("anthropic:x", now=now()) == "ready"
        b.after_change()
        await wait_until(lambda: a.engine.state_of("anthropic:x", now()) == "ready",
                         what="reset on a")
        # An auth failure on b: invalid on a.
        b.report(profile="anthropic:y", kind="auth")
        await wait_until(lambda: a.engine.state_of("anthropic:y", now()) == "invalid")
        # A streak counted on a (a timeout: counted, no cooldown), cleared by a success on b.
        a.report(profile="anthropic:x", kind="rate_limit", retry_after=0)
        await wait_until(lambda: b.engine.key_state("anthropic:x").streak.get("rate_limit") == 1)
        lease = b.lease()  # y is invalid: x it is
        assert lease.profile == "anthropic:x"
        b.release(lease.lease_id)
        await wait_until(lambda: not a.engine.key_state("anthropic:x").streak, what="cleared")
        # Disable on a, enable on b.
        a.engine.set_disabled("anthropic:x", True, now=now())
        a.after_change()
        await wait_until(lambda: b.engine.state_of("anthropic:x", now()) == "disabled")
        b.engine.set_disabled("anthropic:x", False, now=now())
        b.after_change()
        await wait_until(lambda: a.engine.state_of("anthropic:x", now()) == "ready")
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_budget_reading_lowers_the_other_host(redis_server: RedisServer) -> None:
    from argent_client.protocol import Limits

    (s1,) = same_keys()[:1]
    a, b = pair(redis_server.url, ("anthropic:x", s1))
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        lease = a.lease()
        reset = time.time() + 60
        a.release(lease.lease_id, limits=Limits(requests_limit=50, requests_remaining=0,
                                                 requests_reset=reset))
        await wait_until(lambda: b.engine.key_state("anthropic:x").known_budget
                         .ready_at(time.time()) > time.time(), what="b's budget spent")
        with pytest.raises(NoProfileAvailable):
            b.lease()
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_redis_lost_and_back_merges_books(redis_server: RedisServer) -> None:
    s1, s2 = same_keys()
    a, b = pair(redis_server.url, ("anthropic:x", s1), ("anthropic:y", s2))
    now = time.time
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        b.report(profile="anthropic:y", kind="timeout")
        b.report(profile="anthropic:y", kind="timeout")
        await wait_until(lambda: a.engine.key_state("anthropic:y").error_count == 2)
        redis_server.kill()
        await wait_until(lambda: not a.cluster.connected and not b.cluster.connected,
                         what="both hosts see Redis gone")
        assert a.cluster.status().error
        # Alone, each host serves and keeps its own books.
        got = a.lease()
        a.release(got.lease_id)
        a.report(profile="anthropic:x", kind="rate_limit", retry_after=600)
        assert b.engine.state_of("anthropic:x", now()) == "ready"
        b.report(profile="anthropic:y", kind="timeout")  # b's count is now 3, a's 2
        redis_server.start()  # empty: no persistence
        await wait_until(lambda: a.cluster.connected and b.cluster.connected, timeout=20,
                         what="both hosts back")
        await wait_until(lambda: b.engine.state_of("anthropic:x", now()) == "cooldown",
                         what="a's cooldown merged into b")
        assert (b.engine.key_state("anthropic:x").cooling(now())
                == a.engine.key_state("anthropic:x").cooling(now()))
        await wait_until(lambda: a.engine.key_state("anthropic:y").error_count == 3,
                         what="the larger count wins")
        assert b.engine.key_state("anthropic:y").error_count == 3
        n.cancel_scope.cancel()


def book_script(book: dict[str, str], flat: list[str]) -> list[str]:
    """cluster_scripts.BOOK over a dict: (op, field, value) triples merged, the book's reply."""
    from argentd.cluster_books import _num

    changed = False
    for op, name, value in zip(flat[::3], flat[1::3], flat[2::3], strict=True):
        if op == "del":
            changed |= book.pop(name, None) is not None
        elif name not in book or _num(book[name]) < _num(value):
            book[name], changed = value, True
    if changed:
        book["_v"] = str(int(book.get("_v", "0")) + 1)
    return [x for item in book.items() for x in item]


@pytest.mark.trio
@pytest.mark.parametrize("heard", ["before_the_push", "before_the_reply"])
async def test_cluster_merge_takes_a_larger_count_heard_around_its_own_push(heard: str) -> None:
    # Redis came back empty; b pushes its count 3, a (count 2) its merge push. b's
    # message reaches a before a pushes (b's script first), or between a's script
    # and its reply (a's first): either way a ends at 3, as the test above waits for.
    (s1,) = same_keys()[:1]
    a = Host("a", "unix:///nonexistent/redis.sock", [prof("anthropic:y", s1)])
    for _ in range(2):
        a.report(profile="anthropic:y", kind="timeout")
    key = a.engine.profile("anthropic:y").secret.key
    redis: dict[str, str] = {}

    def b_pushes() -> None:
        book = book_script(redis, ["max", "e", "3"])
        a.cluster._message({"h": "b", "k": key, "t": time.time(), "v": book})

    async def scripts(session: object, calls: list[tuple[str, list[str], list[str]]]
                      ) -> list[list[str]]:
        replies = [book_script(redis, args[4:]) for name, _, args in calls if name == "book"]
        if heard == "before_the_reply":
            b_pushes()
        return replies

    a.cluster._scripts = scripts  # type: ignore[method-assign,assignment]
    if heard == "before_the_push":
        b_pushes()
    a.cluster._force.add(key)
    await a.cluster._flush_books(None)  # type: ignore[arg-type]
    assert redis["e"] == "3"
    assert a.engine.key_state("anthropic:y").error_count == 3


async def redis_dump(url: str) -> list[bytes]:
    """Every key, member, field and value in the server, as bytes."""
    import coredis

    out: list[bytes] = []
    async with coredis.Redis(unix_socket_path=url.removeprefix("unix://")) as r:
        async for key in r.scan_iter(match="*"):
            out.append(key)
            kind = await r.type(key)
            if kind == b"hash":
                for f, v in (await r.hgetall(key)).items():
                    out += [f, v]
            elif kind == b"zset":
                out += list(await r.zrange(key, 0, -1))
            elif kind == b"string":
                out.append(await r.get(key) or b"")
            else:
                raise AssertionError(f"unexpected {kind!r} at {key!r}")
    return out


@pytest.mark.trio
async def test_cluster_nothing_secret_in_redis(redis_server: RedisServer) -> None:
    import coredis

    from argent_client.protocol import Limits

    from .conftest import SECRETS

    s1, s2 = same_keys()
    s3 = make_secret("sk-proj-")
    profiles = [prof("anthropic:x", s1), prof("anthropic:y", s2),
                prof("openai:main", s3, max_concurrent=1)]
    a = Host("a", redis_server.url, profiles)
    b = Host("b", redis_server.url, profiles)
    heard: list[bytes] = []
    async with coredis.Redis(unix_socket_path=str(redis_server.socket)) as spy, \
            spy.pubsub(channels=["argentd:bus"]) as ps, trio.open_nursery() as n:

        async def listen() -> None:
            async for m in ps:
                if m["type"] == "message":
                    heard.append(m["data"])

        n.start_soon(listen)
        await a.start(n)
        await b.start(n)
        lease = a.lease()
        a.report(lease_id=lease.lease_id, kind="rate_limit", model="claude-x", retry_after=60)
        got = b.lease(model="claude-x")
        b.release(got.lease_id, limits=Limits(requests_limit=10, requests_remaining=3,
                                               requests_reset=time.time() + 30,
                                               unified_status="allowed",
                                               unified_5h_utilization=0.5))
        b.report(profile="anthropic:y", kind="auth")
        held = await lease_within(a, 2.0)
        assert held is not None
        key = a.engine.profile("openai:main").secret.key
        assert await b.cluster.claim_refresh_token(key) == "b"
        await wait_until(lambda: len(heard) >= 3, what="messages")
        await trio.sleep(0.2)
        dump = await redis_dump(redis_server.url)
        n.cancel_scope.cancel()
    names = {x.decode().split(":")[1] for x in dump if x.startswith(b"argentd:")}
    assert names == {"book", "budget", "slots", "owner", "hosts"}, names  # every kind scanned
    assert heard
    texts = [x.decode(errors="replace") for x in dump + heard]
    for secret in SECRETS:
        for text in texts:
            assert secret not in text and secret[-16:] not in text, "a secret reached Redis"


@pytest.mark.trio
async def test_cluster_different_profiles_files_share_by_secret(redis_server: RedisServer) -> None:
    shared_secret, only_a, only_b = (*same_keys(), make_secret("sk-ant-api03-"))
    a = Host("a", redis_server.url, [prof("anthropic:work", shared_secret),
                                      prof("anthropic:mine", only_a)])
    b = Host("b", redis_server.url, [prof("anthropic:team", shared_secret),
                                      prof("anthropic:other", only_b)])
    now = time.time
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        a.report(profile="anthropic:work", kind="quota", retry_after=900)
        a.report(profile="anthropic:mine", kind="quota", retry_after=900)
        await wait_until(lambda: b.engine.state_of("anthropic:team", now()) == "cooldown",
                         what="the shared secret cools on b under its own id")
        await trio.sleep(0.1)
        assert b.engine.state_of("anthropic:other", now()) == "ready"
        assert set(b.cluster.books) == {b.engine.profile(p).secret.key
                                        for p in ("anthropic:team", "anthropic:other")}
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_cluster_refresh_token_owned_by_the_first_host(redis_server: RedisServer) -> None:
    s1 = make_secret("sk-ant-ort01-")
    a, b = pair(redis_server.url, ("anthropic:x", s1))
    key = a.engine.profile("anthropic:x").secret.key
    async with trio.open_nursery() as n:
        await a.start(n)
        await b.start(n)
        assert await a.cluster.claim_refresh_token(key) == "a"
        assert await b.cluster.claim_refresh_token(key) == "a"
        assert await a.cluster.claim_refresh_token(key) == "a"
        redis_server.kill()
        await wait_until(lambda: not b.cluster.connected, what="b sees Redis gone")
        assert await b.cluster.claim_refresh_token(key) is None
        redis_server.start()
        # Redis restarted empty: a's heartbeat claims its token again before b can.
        await wait_until(lambda: a.cluster.connected and b.cluster.connected, timeout=20)
        await trio.sleep(0.7)
        assert await b.cluster.claim_refresh_token(key) == "a"
        n.cancel_scope.cancel()
