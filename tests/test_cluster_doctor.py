"""`argentctl doctor`'s cluster check, and Redis auth, against real daemons and Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from argent_client.doctor_cluster import check_cluster
from argent_client.protocol import ClusterStatus

from .conftest import Daemon, make_secret
from .redis_server import REDIS_SERVER, RedisServer
from .test_cluster_daemons import cluster_status, wait_for

ARGENTCTL = [sys.executable, "-m", "argent_client.cli"]


def status(**kw: Any) -> ClusterStatus:
    base: dict[str, Any] = {"name": "argentd", "host": "a", "connected": True,
                            "hosts": ["a", "b"], "url": "unix:///r.sock",
                            "latency": 0.0004, "skew": 0.01}
    return ClusterStatus(**{**base, **kw})


def test_check_cluster_ok_lists_hosts_and_latency() -> None:
    c = check_cluster(status())
    assert c.status == "ok"
    assert "a, b" in c.detail and "0.4 ms" in c.detail


def test_check_cluster_skew_over_a_second_warns_with_fix() -> None:
    c = check_cluster(status(skew=-1.5))
    assert c.status == "warn" and "-1.5 s" in c.detail
    assert "chrony" in (c.fix or "")


def test_check_cluster_unreachable_and_auth_fail_with_their_fix() -> None:
    c = check_cluster(status(connected=False, hosts=[], error="Unable to connect"))
    assert c.status == "fail" and "start Redis or Valkey" in (c.fix or "")
    c = check_cluster(status(connected=False, hosts=[],
                             error="WRONGPASS invalid username-password pair"))
    assert c.status == "fail" and "password_ref" in (c.fix or "")


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    """A redis-server that requires a password (itself a secret for the leak check)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    directory = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    server = RedisServer(directory, password=make_secret("pw-"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def doctor(d: Daemon) -> dict[str, Any]:
    r = subprocess.run([*ARGENTCTL, "doctor", "--json"], capture_output=True, text=True,
                       env=d.env, timeout=60, check=False)
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert d.stderr() and r.stdout
    for value in (d.stderr(), r.stdout, r.stderr):
        from .conftest import SECRETS
        assert not any(s in value for s in SECRETS)
    return checks


def cluster_host(factory: Any, redis: RedisServer, extra: str, **env: str) -> Daemon:
    d: Daemon = factory()
    d.write_profiles({"anthropic:k": {"provider": "anthropic", "type": "api-key",
                                      "token": make_secret("sk-ant-api03-")}})
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text(f'[cluster]\nurl = "{redis.url}"\nhost = "a"\n{extra}')
    d.start(**env)
    return d


def test_cluster_doctor_password_ref_connects_and_a_wrong_one_fails(
    daemon_factory: Any, locked_redis: RedisServer
) -> None:
    assert locked_redis.password is not None
    good = cluster_host(daemon_factory, locked_redis, 'password_ref = "env:REDIS_PW"\n',
                        REDIS_PW=locked_redis.password)
    wait_for(lambda: cluster_status(good)["connected"], what="connected with the password")
    assert doctor(good)["cluster"]["status"] == "ok"
    bad = cluster_host(daemon_factory, locked_redis, "")
    wait_for(lambda: bool(cluster_status(bad)["error"])
             and "not connected yet" not in cluster_status(bad)["error"], what="an auth error")
    check = doctor(bad)["cluster"]
    assert check["status"] == "fail" and "password_ref" in check["fix"], check
    got = bad.call("lease", {"provider": "anthropic", "detached": True})  # serves alone
    assert got["profile"] == "anthropic:k"
    missing = cluster_host(daemon_factory, locked_redis, 'password_ref = "env:NOT_SET_HERE"\n')
    error = cluster_status(missing)["error"]
    assert "password_ref" in error and "NOT_SET_HERE" in error
