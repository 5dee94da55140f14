"""OAuth in a cluster end to end: two real daemons (own socket, state folder and
profiles file copy each) with the same OAuth login, one real redis-server, the
real fake token endpoint. The daemon fixture greps each daemon's log and state
files for every token of the test."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from argentd.cluster import OWNER_TTL
from argentd.oauth_claims import refusal
from argentd.oauth_profile import login_key, refresh_hash

from .conftest import SECRETS, Daemon
from .fake_token_endpoint import FakeTokenEndpoint
from .redis_server import RedisServer
from .test_cluster import redis_dump
from .test_cluster_daemons import wait_for

PID = "anthropic:max"


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    ep = FakeTokenEndpoint(lifetime=8 * 3600)
    yield ep
    ep.close()


def oauth_host(factory: Any, redis: RedisServer, ep: FakeTokenEndpoint, name: str,
               profiles: dict[str, Any]) -> Daemon:
    d: Daemon = factory()
    d.write_profiles(profiles)
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text(f'[cluster]\nurl = "{redis.url}"\nhost = "{name}"\n'
                        f'[oauth.anthropic]\ntoken_url = "{ep.url}"\nclient_id = "c"\n')
    d.start()
    return d


def profile(d: Daemon) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in d.call("status")["profiles"] if p["id"] == PID)
    return found


def sent(ep: FakeTokenEndpoint) -> list[str]:
    """The refresh tokens the endpoint was sent, as hashes (no token in a failed assert)."""
    return [refresh_hash(c.refresh) for c in ep.calls]


def owner_ttl(url: str, key: str) -> int:
    import coredis

    async def ttl() -> int:
        async with coredis.Redis(unix_socket_path=url.removeprefix("unix://")) as r:
            return int(await r.ttl(f"argentd:owner:{key}"))

    return trio.run(ttl)


def test_cluster_oauth_daemons_one_login_two_hosts_one_refresher(
    daemon_factory: Any, redis_server: RedisServer, endpoint: FakeTokenEndpoint
) -> None:
    a0, r0 = endpoint.login()
    profiles = {PID: {"provider": "anthropic", "type": "oauth", "access": a0, "refresh": r0,
                      "expires": int((time.time() + 200) * 1000)}}  # due at once
    a = oauth_host(daemon_factory, redis_server, endpoint, "a", profiles)
    wait_for(lambda: profile(a)["refreshed_at"] is not None, what="a refreshes")
    b = oauth_host(daemon_factory, redis_server, endpoint, "b", profiles)
    wait_for(lambda: profile(b)["refresh_error"] == refusal("a"), what="b refuses")
    assert sent(endpoint) == [refresh_hash(r0)] and endpoint.reuses == 0
    shown = profile(b)
    assert shown["state"] == "ready" and shown["refreshed_at"] is None
    assert profile(a)["refresh_error"] is None
    got = b.call("lease", {"provider": "anthropic", "detached": True, "ttl": 5})
    same = got["token"] == a0
    assert same, "b serves the access token it has"
    b.call("release", {"lease_id": got["lease_id"]})
    doctor = subprocess.run([sys.executable, "-m", "argent_client.cli", "doctor"],
                            capture_output=True, text=True, env=b.env, timeout=60).stdout
    assert f"{PID}: the access token ends within a day and cannot be refreshed " \
           "(refresh token owned by host 'a' of the cluster" in " ".join(doctor.split())
    assert "not refreshed here: refresh token owned by host 'a'" in b.stderr()
    # a dies (kill -9): its claim is not released but lapses by itself.
    key = login_key(refresh_hash(r0))
    a.stop(signal.SIGKILL)
    left = owner_ttl(redis_server.url, key)
    assert 0 < left <= OWNER_TTL
    assert profile(b)["refresh_error"] == refusal("a")
    texts = [x.decode(errors="replace") for x in trio.run(redis_dump, redis_server.url)]
    texts.append(doctor)
    for secret in SECRETS:
        leaked = any(secret in t or secret[-16:] in t for t in texts)
        assert not leaked, "a token reached Redis or the doctor's output"
