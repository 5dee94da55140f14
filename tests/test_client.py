"""`Client` and `AsyncClient` (asyncio and trio) against the real argentd.

The `daemon` fixture runs argentd on a socket in a temp dir with
`anthropic:one` (setup token), `anthropic:two` (API key) and `openai:main`
(API key, max_concurrent 1): the worker's shared process, its state made
fresh and checked after each test (conftest `SharedDaemon`), or for a test
marked `own_daemon` (it stops, restarts or watches argentd) a process of its
own. Provider failures are real httpx exceptions.
The env-fallback tests need no daemon: nothing listens at their socket.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from argent_client import (
    AsyncClient,
    AsyncLease,
    Client,
    DaemonUnavailable,
    InvalidParams,
    Lease,
    LeaseNotFound,
    NoProfileAvailable,
    UnknownProfile,
    UnknownProvider,
    UnknownRoute,
    _core,
    peer,
)
from argent_client.aio import _Conn
from argent_client.protocol import Limits, Usage
from argent_client.providers import FALLBACK_ENV

from .conftest import Daemon, make_secret, shared_or_own

REQ = httpx.Request("POST", "https://api.example.test/v1/messages")


def http_error(status: int, headers: dict[str, str] | None = None,
               body: Any = None) -> httpx.HTTPStatusError:
    response = httpx.Response(status, headers=headers, json=body, request=REQ)
    return httpx.HTTPStatusError(f"HTTP {status}", request=REQ, response=response)


def profile(client: Client, pid: str) -> Any:
    return next(p for p in client.status().profiles if p.id == pid)


@pytest.fixture
def daemon(request: pytest.FixtureRequest) -> Daemon:
    return shared_or_own(request)


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.socket, timeout=10, client_name="test", fallback_env=False) as c:
        yield c


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fallback variable from the developer's shell; the warn-once memory fresh."""
    for pairs in FALLBACK_ENV.values():
        for var, _ in pairs:
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_core, "_warned", set())


def broken_connection() -> socket.socket:
    """One end of a socket pair whose other end reads one request line and hangs up.

    Stands in for a daemon that dies after a request was sent: the client
    must notice and (where safe) send it again on a fresh connection.
    """
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def hang_up() -> None:
        buf = b""
        while b"\n" not in buf:
            chunk = theirs.recv(65536)
            if not chunk:
                break
            buf += chunk
        theirs.close()

    threading.Thread(target=hang_up, daemon=True).start()
    return mine


# ============================================================ Client (blocking)


def test_client_hello(client: Client, daemon: Daemon) -> None:
    hello = client.hello()
    assert (hello.server, hello.protocol) == ("argentd", 1)
    assert hello.pid == daemon.proc.pid  # type: ignore[union-attr]


def test_client_lease_clean_exit_releases(client: Client) -> None:
    with client.lease("anthropic") as lease:
        assert isinstance(lease, Lease)
        assert (lease.provider, lease.profile, lease.source) == ("anthropic", "anthropic:one",
                                                                 "profile")
        assert lease.headers == {"Authorization": f"Bearer {lease.token}",
                                 "anthropic-beta": "oauth-2025-04-20"}
        assert lease.token not in repr(lease) and lease.token not in str(lease)
        assert [le.lease_id for le in client.status().leases] == [lease.lease_id]
    assert client.status().leases == []
    assert profile(client, "anthropic:one").state == "ready"


def test_client_lease_classified_exception_is_reported_and_reraised(client: Client) -> None:
    error = http_error(429, {"retry-after": "120"},
                       {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})
    before = time.time()
    with pytest.raises(httpx.HTTPStatusError) as info, client.lease("anthropic") as lease:
        raise error
    assert info.value is error
    one = profile(client, "anthropic:one")
    assert one.state == "cooldown"
    assert before + 119 <= one.cooldown_until <= time.time() + 121
    assert one.error_count == 1
    assert client.status().leases == []
    with client.lease("anthropic") as nxt:
        assert nxt.profile == "anthropic:two"
        assert nxt.headers == {"x-api-key": nxt.token}
    assert lease.ended


def test_client_lease_failure_cools_account_unless_model_is_named(client: Client) -> None:
    with pytest.raises(httpx.HTTPStatusError), client.lease("anthropic", model="claude-x"):
        raise http_error(429, {"retry-after": "60"})
    one = profile(client, "anthropic:one")
    assert (one.state, one.model_cooldowns) == ("cooldown", {})
    with client.lease("anthropic", model="claude-x") as lease:
        assert lease.profile == "anthropic:two"
        lease.fail("rate_limit", retry_after=60, model="claude-x")
    two = profile(client, "anthropic:two")
    assert two.state == "ready"
    assert set(two.model_cooldowns) == {"claude-x"}


def test_client_lease_unclassified_exception_releases_without_blame(client: Client) -> None:
    with pytest.raises(ValueError, match="agent bug"), client.lease("anthropic"):
        raise ValueError("agent bug")
    one = profile(client, "anthropic:one")
    assert (one.state, one.error_count, one.active_leases) == ("ready", 0, 0)


def test_client_lease_fail_by_hand_then_exit_sends_nothing_more(client: Client) -> None:
    with client.lease("openai") as lease:
        result = lease.fail("quota", retry_after=3600, status=402, message="out of credit")
        assert result.profile_state == "cooldown"
        assert result.cooldown_until is not None
    main = profile(client, "openai:main")
    assert (main.state, main.error_count) == ("cooldown", 1)


def test_client_lease_release_sends_usage_and_limits(client: Client) -> None:
    with client.lease("openai") as lease:
        lease.observe({"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "1",
                       "x-ratelimit-reset-requests": "2s"})
        lease.record_usage({"prompt_tokens": 10, "completion_tokens": 3})
        lease.record_usage(Usage(input_tokens=5))
        assert lease.usage == Usage(input_tokens=15, output_tokens=3)
        assert lease.limits is not None and lease.limits.requests_remaining == 1
    assert client.status().leases == []


def test_client_lease_expired_before_exit_only_warns(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with client.lease("openai") as lease:
        client.release(lease.lease_id)
    assert "already gone" in caplog.text
    assert lease.token not in caplog.text


def test_client_errors_are_the_daemon_classes(client: Client) -> None:
    with pytest.raises(UnknownProvider):
        client.acquire("nope")
    with pytest.raises(UnknownRoute):
        client.acquire(route="nope")
    with pytest.raises(LeaseNotFound):
        client.release("no-such-lease")
    with pytest.raises(LeaseNotFound):
        client.renew("no-such-lease")
    with pytest.raises(UnknownProfile):
        client.reset("anthropic:ghost")
    with pytest.raises(InvalidParams):
        client.report_failure(profile="anthropic:one", kind="gremlins")
    held = client.acquire("openai")
    with pytest.raises(NoProfileAvailable) as info:
        client.acquire("openai")
    assert info.value.code == "no_profile_available"
    client.release(held.lease_id)
    with pytest.raises(ValueError, match="provider or a route"):
        client.acquire()


def test_client_admin_methods(client: Client) -> None:
    assert client.disable("anthropic:one").profile_state == "disabled"
    assert client.acquire("anthropic", ttl=30).profile == "anthropic:two"
    assert client.enable("anthropic:one").profile_state == "ready"
    client.report_failure(profile="anthropic:one", kind="auth", status=401)
    assert profile(client, "anthropic:one").state == "invalid"
    assert client.reset("anthropic:one").profile_state == "ready"
    reload = client.reload()
    assert (reload.profiles, reload.error) == (3, None)
    assert "lease" in client.metrics().text
    status = client.status()
    assert status.config.error is None
    assert {p.id for p in status.profiles} >= {"anthropic:one", "anthropic:two", "openai:main"}


def test_client_renew_extends(client: Client) -> None:
    with client.lease("openai", ttl=5) as lease:
        first = lease.expires_at
        assert lease.renew(300) > first + 200
        assert lease.expires_at == client.status().leases[0].expires_at


def test_client_wait_outlasts_socket_timeout(daemon: Daemon, client: Client) -> None:
    client.acquire("openai", ttl=1)  # held until its TTL runs out
    with Client(daemon.socket, timeout=0.3, fallback_env=False) as other:
        started = time.monotonic()
        lease = other.acquire("openai", wait=10)
        waited = time.monotonic() - started
    assert lease.profile == "openai:main"
    assert waited > 0.3  # it really waited, beyond the plain call timeout


def test_client_call_with_failover_moves_to_next_profile(client: Client) -> None:
    seen: list[str] = []

    def call(lease: Lease) -> str:
        seen.append(lease.profile)
        if lease.profile == "anthropic:one":
            raise http_error(429, {"retry-after": "60"})
        return "answer"

    assert client.call_with_failover(call, provider="anthropic") == "answer"
    assert seen == ["anthropic:one", "anthropic:two"]
    assert profile(client, "anthropic:one").state == "cooldown"
    assert client.status().leases == []


def test_client_call_with_failover_reraises_when_nothing_is_next(client: Client) -> None:
    calls = 0

    def call(lease: Lease) -> str:
        nonlocal calls
        calls += 1
        raise http_error(429)

    with pytest.raises(httpx.HTTPStatusError):
        client.call_with_failover(call, provider="openai", attempts=3)
    assert calls == 1
    assert profile(client, "openai:main").state == "cooldown"


def test_client_call_with_failover_stops_after_attempts(client: Client) -> None:
    seen: list[str] = []

    def call(lease: Lease) -> str:
        seen.append(lease.profile)
        raise http_error(401)

    with pytest.raises(httpx.HTTPStatusError):
        client.call_with_failover(call, provider="anthropic", attempts=2)
    assert seen == ["anthropic:one", "anthropic:two"]
    assert {profile(client, p).state for p in seen} == {"invalid"}
    assert client.status().leases == []


def test_client_call_with_failover_unclassified_error_releases(client: Client) -> None:
    def call(lease: Lease) -> str:
        raise KeyError("content")

    with pytest.raises(KeyError):
        client.call_with_failover(call, provider="anthropic")
    assert client.status().leases == []
    assert profile(client, "anthropic:one").error_count == 0


def test_client_call_with_failover_follows_route(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({
        "anthropic:one": {"provider": "anthropic", "type": "api-key",
                          "token": make_secret("sk-ant-api03-")},
        "openai:main": {"provider": "openai", "type": "api-key", "token": make_secret("sk-proj-")},
    })
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text('[routes]\ndefault = ["anthropic/claude-x", "openai/gpt-x"]\n')
    d.start()
    seen: list[tuple[str, str | None]] = []

    def call(lease: Lease) -> str:
        seen.append((lease.profile, lease.model))
        if lease.provider == "anthropic":
            raise http_error(529, body={"type": "error", "error": {"type": "overloaded_error"}})
        return "ok"

    with Client(d.socket, fallback_env=False) as c:
        assert c.call_with_failover(call, route="default") == "ok"
        assert seen == [("anthropic:one", "claude-x"), ("openai:main", "gpt-x")]
        assert profile(c, "anthropic:one").state == "ready"  # overloaded blames the provider


@pytest.mark.own_daemon
def test_client_subscribe_sees_events_and_ends_with_the_daemon(
    client: Client, daemon: Daemon
) -> None:
    with client.subscribe(idle_timeout=10) as events:
        lease = client.acquire("anthropic")
        first = next(events)
        assert (first.type, first.profile, first.lease_id) == ("lease", "anthropic:one",
                                                                lease.lease_id)
        client.report_failure(lease.lease_id, kind="rate_limit", retry_after=60)
        types = []
        for event in events:
            types.append(event.type)
            if event.type == "cooldown_start":
                break
        assert "failure" in types
        assert lease.token not in repr(first)
        daemon.stop()
        assert [e.type for e in events if e.type == "lease"] == []  # iteration ends


@pytest.mark.own_daemon
def test_client_reconnects_after_daemon_restart(client: Client, daemon: Daemon) -> None:
    first = client.hello().pid
    with client.lease("anthropic") as lease:
        daemon.stop()
        daemon.start()
    # The lease died with the old daemon; its release only warned.
    assert lease.ended
    assert client.hello().pid != first
    assert client.status().leases == []


def test_client_retries_once_on_broken_connection(client: Client) -> None:
    client._sock = broken_connection()
    assert client.status().config.error is None  # sent again on a fresh connection
    client._sock = broken_connection()
    lease = client.acquire("openai")  # attached: it died with the broken connection
    assert lease.profile == "openai:main"


def test_client_detached_lease_is_not_sent_twice(client: Client) -> None:
    client._sock = broken_connection()
    with pytest.raises(DaemonUnavailable) as info:
        client.acquire("openai", detached=True)
    assert info.value.data["reason"] == "connection_lost"
    assert "detached" in str(info.value)
    assert client.status().leases == []


def test_client_timeout_abandons_and_releases_late_lease(daemon: Daemon, client: Client) -> None:
    client.acquire("openai", ttl=1)
    with Client(daemon.socket, timeout=0.1, fallback_env=False) as other:
        # A lease that waits 5 s in the daemon, sent with a 0.1 s budget (the
        # public methods always allow for `wait`): the caller gives up first.
        params = _core.lease_params("t", "openai", None, None, None, None, 5.0, False)
        with pytest.raises(DaemonUnavailable) as info:
            other._call("lease", params, wait=0.0)
        assert info.value.data["reason"] == "timeout"
        other.timeout = 10
        deadline = time.monotonic() + 10
        while True:  # the daemon serves the abandoned waiter when the TTL lease expires
            leases = other.status().leases  # reading replies releases the late lease
            if not leases and profile(other, "openai:main").state == "ready":
                break
            assert time.monotonic() < deadline, leases
            time.sleep(0.05)
    assert client.acquire("openai").profile == "openai:main"


# ============================================================ env fallback (no daemon)


def test_client_env_fallback_setup_token(
    tmp_path: Path, no_env: None, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_secret("sk-ant-oat01-")
    monkeypatch.setenv("ANTHROPIC_OAUTH_TOKEN", token)
    monkeypatch.setenv("ANTHROPIC_API_KEY", make_secret("sk-ant-api03-"))
    caplog.set_level(logging.WARNING, logger="argent_client")
    client = Client(tmp_path / "absent.sock")
    with client.lease("anthropic", model="claude-x") as lease:
        assert (lease.source, lease.profile, lease.type, lease.model) == (
            "env", "anthropic:env", "setup-token", "claude-x")
        assert lease.token == token
        assert lease.headers == {"Authorization": f"Bearer {token}",
                                 "anthropic-beta": "oauth-2025-04-20"}
        assert lease.renew(60) > time.time()
    with pytest.raises(httpx.HTTPStatusError), client.lease("anthropic") as again:
        raise http_error(429)  # reported nowhere: there is no daemon
    assert again.fail("rate_limit").next is None
    warnings = [r for r in caplog.records if r.name == "argent_client"]
    assert len(warnings) == 1
    assert "ANTHROPIC_OAUTH_TOKEN" in warnings[0].getMessage()
    assert token not in caplog.text and token[-12:] not in caplog.text


@pytest.mark.parametrize(
    ("provider", "var", "prefix", "header"),
    [("anthropic", "ANTHROPIC_API_KEY", "sk-ant-api03-", "x-api-key"),
     ("openai", "OPENAI_API_KEY", "sk-proj-", "Authorization"),
     ("z.ai", "Z_AI_API_KEY", "", "Authorization"),
     ("google", "GEMINI_API_KEY", "AIza", "x-goog-api-key")],
)
def test_client_env_fallback_per_provider(
    tmp_path: Path, no_env: None, monkeypatch: pytest.MonkeyPatch,
    provider: str, var: str, prefix: str, header: str,
) -> None:
    token = make_secret(prefix)
    monkeypatch.setenv(var, token)
    result = Client(tmp_path / "absent.sock").acquire(provider)
    assert result.source == "env" and result.token == token
    assert result.headers[header].endswith(token)
    assert _core.is_local(result.lease_id)


def test_client_env_fallback_off_or_empty_raises_unavailable(
    tmp_path: Path, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "absent.sock"
    with pytest.raises(DaemonUnavailable) as info:
        Client(path).acquire("openai")
    assert str(path) in str(info.value) and "argentd" in str(info.value)
    assert info.value.data == {"socket": str(path), "reason": "unreachable"}
    monkeypatch.setenv("OPENAI_API_KEY", make_secret("sk-proj-"))
    with pytest.raises(DaemonUnavailable):
        Client(path, fallback_env=False).acquire("openai")
    with pytest.raises(DaemonUnavailable):
        Client(path).acquire(route="default")  # a route needs the daemon's config
    with pytest.raises(DaemonUnavailable):
        Client(path).status()


def test_client_env_fallback_not_used_when_daemon_answers(
    client: Client, no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIMAX_API_KEY", make_secret("sk-cp-"))
    with Client(client.socket_path) as fallback_on, pytest.raises(UnknownProvider):
        fallback_on.acquire("minimax")  # the daemon answered: its answer stands


# ============================================================ AsyncClient


@pytest.fixture
def aclient_factory(daemon: Daemon) -> Any:
    def make(**kw: Any) -> AsyncClient:
        kw.setdefault("timeout", 10)
        kw.setdefault("fallback_env", False)
        return AsyncClient(daemon.socket, client_name="atest", **kw)
    return make


async def aprofile(client: AsyncClient, pid: str) -> Any:
    return next(p for p in (await client.status()).profiles if p.id == pid)


@pytest.mark.anyio
async def test_async_client_methods(aclient_factory: Any, daemon: Daemon) -> None:
    async with aclient_factory() as client:
        assert (await client.hello()).pid == daemon.proc.pid  # type: ignore[union-attr]
        async with client.lease("anthropic", ttl=30) as lease:
            assert isinstance(lease, AsyncLease)
            assert lease.profile == "anthropic:one"
            assert lease.token not in repr(lease)
            assert await lease.renew(300) > time.time() + 200
            assert [le.lease_id for le in (await client.status()).leases] == [lease.lease_id]
        assert (await client.status()).leases == []
        assert (await client.disable("anthropic:one")).profile_state == "disabled"
        held = await client.lease("anthropic")
        assert held.profile == "anthropic:two"
        await held.release()
        assert (await client.enable("anthropic:one")).profile_state == "ready"
        await client.report_failure(profile="anthropic:two", kind="auth")
        assert (await client.reset("anthropic:two")).profile_state == "ready"
        assert (await client.reload()).profiles == 3
        assert "lease" in (await client.metrics()).text
        with pytest.raises(UnknownProvider):
            await client.acquire("nope")
        with pytest.raises(LeaseNotFound):
            await client.release("no-such-lease")
        with pytest.raises(UnknownProfile):
            await client.disable("x:y")


@pytest.mark.anyio
async def test_async_lease_exception_is_reported(aclient_factory: Any) -> None:
    async with aclient_factory() as client:
        with pytest.raises(httpx.HTTPStatusError):
            async with client.lease("openai") as lease:
                lease.observe({"x-ratelimit-remaining-requests": "0"})
                raise http_error(429, {"retry-after": "30"})
        main = await aprofile(client, "openai:main")
        assert (main.state, main.error_count) == ("cooldown", 1)
        with pytest.raises(RuntimeError):
            async with client.lease("anthropic"):
                raise RuntimeError("agent bug")
        one = await aprofile(client, "anthropic:one")
        assert (one.state, one.active_leases, one.error_count) == ("ready", 0, 0)


@pytest.mark.anyio
async def test_async_cancelled_block_still_releases(aclient_factory: Any) -> None:
    async with aclient_factory() as client:
        with anyio.move_on_after(0.05):
            async with client.lease("openai"):
                await anyio.sleep(10)
        assert (await client.status()).leases == []
        assert (await aprofile(client, "openai:main")).error_count == 0


@pytest.mark.anyio
async def test_async_waiting_lease_does_not_block_other_calls(aclient_factory: Any) -> None:
    async with aclient_factory() as client, aclient_factory() as holder:
        await holder.acquire("openai", ttl=1)
        got: list[str] = []
        statuses = 0

        async def wait_for_lease() -> None:
            got.append((await client.acquire("openai", wait=10)).profile)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_lease)
            for _ in range(10):  # same connection, answered while the lease waits
                await client.status()
                statuses += 1
            assert got == []
        assert (statuses, got) == (10, ["openai:main"])


@pytest.mark.anyio
async def test_async_call_with_failover(aclient_factory: Any) -> None:
    seen: list[str] = []

    async def call(lease: AsyncLease) -> str:
        seen.append(lease.profile)
        if lease.profile == "anthropic:one":
            raise http_error(429, body={"type": "error", "error": {"type": "rate_limit_error"}})
        return "answer"

    async with aclient_factory() as client:
        assert await client.call_with_failover(call, provider="anthropic") == "answer"
        assert seen == ["anthropic:one", "anthropic:two"]
        assert (await aprofile(client, "anthropic:one")).state == "cooldown"
        assert (await client.status()).leases == []


@pytest.mark.own_daemon
@pytest.mark.anyio
async def test_async_subscribe(aclient_factory: Any, daemon: Daemon) -> None:
    async with aclient_factory() as client, client.subscribe() as events:
        lease = await client.acquire("anthropic")
        with anyio.fail_after(10):
            event = await events.__anext__()
        assert (event.type, event.lease_id) == ("lease", lease.lease_id)
        await client.release(lease.lease_id)
        with anyio.fail_after(10):
            async for event in events:
                if event.type == "release":
                    break
        assert event.lease_id == lease.lease_id
        daemon.stop()
        with anyio.fail_after(10):
            rest = [e async for e in events]
        assert all(e.type != "lease" for e in rest)


@pytest.mark.own_daemon
@pytest.mark.anyio
async def test_async_subscribe_plain_iteration_and_unreachable(
    aclient_factory: Any, tmp_path: Path
) -> None:
    async with aclient_factory() as client:
        events = await client.subscribe()  # awaiting subscribes now; iterating would too
        lease = await client.acquire("openai")
        with anyio.fail_after(10):
            async for event in events:
                assert (event.type, event.lease_id) == ("lease", lease.lease_id)
                break
        await events.aclose()
    with pytest.raises(DaemonUnavailable):
        async with AsyncClient(tmp_path / "absent.sock").subscribe():
            pass


@pytest.mark.own_daemon
@pytest.mark.anyio
async def test_async_reconnects_after_daemon_restart(
    aclient_factory: Any, daemon: Daemon
) -> None:
    async with aclient_factory() as client:
        first = (await client.hello()).pid
        daemon.stop()
        daemon.start()
        assert (await client.hello()).pid != first


@pytest.mark.anyio
async def test_async_retries_once_on_broken_connection(aclient_factory: Any) -> None:
    async with aclient_factory() as client:
        client._conn = _Conn(await anyio.abc.UNIXSocketStream.from_socket(broken_connection()))
        assert (await client.status()).config.error is None
        client._conn = _Conn(await anyio.abc.UNIXSocketStream.from_socket(broken_connection()))
        with pytest.raises(DaemonUnavailable) as info:
            await client.acquire("openai", detached=True)
        assert info.value.data["reason"] == "connection_lost"
        assert (await client.status()).leases == []


@pytest.mark.anyio
async def test_async_env_fallback(
    tmp_path: Path, no_env: None, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_secret("sk-or-v1-")
    monkeypatch.setenv("OPENROUTER_API_KEY", token)
    client = AsyncClient(tmp_path / "absent.sock")
    async with client.lease("openrouter") as lease:
        assert (lease.source, lease.profile) == ("env", "openrouter:env")
        assert lease.headers == {"Authorization": f"Bearer {token}"}
    with pytest.raises(DaemonUnavailable):
        await AsyncClient(tmp_path / "absent.sock", fallback_env=False).acquire("openrouter")
    with pytest.raises(DaemonUnavailable):
        await client.acquire("minimax")
    assert token not in caplog.text


def test_async_import_is_lazy() -> None:
    import subprocess
    import sys

    code = ("import sys, argent_client; "
            "print('anyio' in sys.modules, 'trio' in sys.modules, 'argentd' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_lease_report_params_carry_limits_and_scrubbed_message() -> None:
    token = make_secret("sk-proj-")
    lease = _core.LeaseBase(_core.env_lease(
        "openai", "gpt-x", None, environ={"OPENAI_API_KEY": token}, now=0.0))  # type: ignore[arg-type]
    lease.observe({"x-ratelimit-limit-requests": "9"}, now=0.0)
    failure = lease.failure_for(http_error(
        401, body={"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                             "message": f"Incorrect API key provided: {token}"}}))
    assert failure is not None
    params = lease.report_params(failure, failover=True)
    assert (params.kind, params.status, params.model, params.failover) == (
        "auth", 401, None, True)  # the lease's model does not scope the cooldown
    assert params.limits == Limits(requests_limit=9)
    assert params.message is not None and token not in params.message


# ============================================================ one core, lazy imports


@pytest.mark.parametrize(
    ("statement", "banned"),
    [("import argent_client.protocol", ("client", "aio", "cli", "_core", "providers")),
     ("import argentd.engine", ("client", "aio", "cli")),
     ("import argent_client", ("client", "aio", "cli", "_core"))],
)
def test_import_loads_no_client(statement: str, banned: tuple[str, ...]) -> None:
    import subprocess
    import sys

    code = (f"import sys; {statement}; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('argent_client'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert not loaded & {f"argent_client.{name}" for name in banned}, loaded


def test_lazy_names_resolve_to_their_modules() -> None:
    import argent_client
    from argent_client import aio, client, protocol

    assert sorted(argent_client.__all__) == sorted(
        [*argent_client._WHERE, "Failure", "classify", "parse_limits"])
    import sys

    module = sys.modules["argent_client.classify"]
    assert argent_client.classify is module.classify  # the function, not the submodule
    assert argent_client.Client is client.Client
    assert argent_client.AsyncLease is aio.AsyncLease
    assert argent_client.NoProfileAvailable is protocol.NoProfileAvailable
    assert set(argent_client.__all__) <= set(dir(argent_client))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        argent_client.Nope  # noqa: B018


def test_retry_rule_is_one_for_both_clients() -> None:
    from argent_client import _wire

    plain = _wire.Retry("/s", "status", None)
    plain.again(_wire.NotSent("EPIPE"), fresh=False)  # never left: goes again for free
    plain.again(_wire.NotSent("EPIPE"), fresh=False)
    assert not plain.retried
    plain.again(_wire.Broken("EOF"), fresh=False)  # left, then broke: the one retry
    with pytest.raises(DaemonUnavailable, match="again after a retry"):
        plain.again(_wire.Broken("EOF"), fresh=True)
    with pytest.raises(DaemonUnavailable, match="broke during 'status'"):
        _wire.Retry("/s", "status", None).again(_wire.NotSent("EPIPE"), fresh=True)
    detached = _core.lease_params("t", "openai", None, None, None, None, None, True)
    with pytest.raises(DaemonUnavailable, match="detached"):
        _wire.Retry("/s", "lease", detached).again(_wire.Broken("EOF"), fresh=False)


def test_send_error_sees_a_refused_send_through_anyio() -> None:
    from argent_client import _wire

    try:
        try:
            raise BrokenPipeError(32, "Broken pipe")
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
    except anyio.BrokenResourceError as wrapped:
        assert type(_wire.send_error(wrapped)) is _wire.NotSent
    assert type(_wire.send_error(TimeoutError())) is _wire.Broken


@pytest.mark.anyio
async def test_async_request_refused_at_send_goes_again_without_peeking(
    aclient_factory: Any,
) -> None:
    async with aclient_factory() as client:
        await client.hello()
        old = client._conn
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.close()  # the daemon hung up: EPIPE at send, nothing left
        client._conn = _Conn(await anyio.abc.UNIXSocketStream.from_socket(mine))
        client._conn.fresh = False
        await old.aclose()
        # A detached lease may not be retried after it left, but this one never left.
        lease = await client.acquire("openai", detached=True)
        assert lease.profile == "openai:main"
        await client.release(lease.lease_id)


def test_client_request_refused_at_send_goes_again(client: Client) -> None:
    client.hello()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.close()
    client._sock = mine
    client._fresh = False
    lease = client.acquire("openai", detached=True)
    assert lease.profile == "openai:main"
    client.release(lease.lease_id)


# ============================================================ report when the lease is gone


def test_client_failure_after_lease_ended_is_reported_by_profile(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="argent_client")
    with pytest.raises(httpx.HTTPStatusError), client.lease("anthropic") as lease:
        client.release(lease.lease_id)  # stands in for a TTL that ran out meanwhile
        raise http_error(429, {"retry-after": "600"})
    one = profile(client, "anthropic:one")
    assert (one.state, one.error_count) == ("cooldown", 1)
    assert "could not report" not in caplog.text
    with client.lease("openai") as gone:
        client.release(gone.lease_id)
        result = gone.fail("quota", retry_after=3600)
    assert (result.profile_state, result.next) == ("cooldown", None)


def test_client_failover_after_lease_ended_leases_again(client: Client) -> None:
    seen: list[str] = []

    def call(lease: Lease) -> str:
        seen.append(lease.profile)
        if lease.profile == "anthropic:one":
            client.release(lease.lease_id)
            raise http_error(429, {"retry-after": "600"})
        return "answer"

    assert client.call_with_failover(call, provider="anthropic", model="claude-x") == "answer"
    assert seen == ["anthropic:one", "anthropic:two"]
    assert profile(client, "anthropic:one").state == "cooldown"
    assert client.status().leases == []


@pytest.mark.anyio
async def test_async_failure_after_lease_ended_is_reported_by_profile(
    aclient_factory: Any,
) -> None:
    async with aclient_factory() as client:
        with pytest.raises(httpx.HTTPStatusError):
            async with client.lease("openai") as lease:
                await client.release(lease.lease_id)
                raise http_error(429, {"retry-after": "600"})
        main = await aprofile(client, "openai:main")
        assert (main.state, main.error_count) == ("cooldown", 1)


# ============================================================ who serves the socket


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A bare listening socket in a folder of our own (0700): argentd's place, not argentd."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    path = folder / "s.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen()
    yield path, srv
    srv.close()


def test_client_refuses_a_socket_in_a_folder_others_can_write(
    listener: tuple[Path, socket.socket], no_env: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _ = listener
    os.chmod(path.parent, 0o755)
    monkeypatch.setenv("OPENAI_API_KEY", make_secret("sk-proj-"))
    with pytest.raises(DaemonUnavailable) as info:
        Client(path).acquire("openai")  # no env fallback either: something is wrong
    assert info.value.data == {"socket": str(path), "reason": "untrusted"}
    assert str(info.value) == (
        f"refusing the argentd socket {path}: its folder {path.parent} has mode 0755, so "
        f"other users could put a socket of their own there. Fix: `chmod 700 {path.parent}` "
        "(or choose a socket in a folder of your own with mode 700: the default "
        "($XDG_RUNTIME_DIR/argentos/), or `mkdir -m 700 ~/.argentd` and point `argentd "
        "--socket` and ARGENT_SOCKET at ~/.argentd/argentd.sock)")


@pytest.mark.anyio
async def test_async_refuses_a_socket_in_a_folder_others_can_write(
    listener: tuple[Path, socket.socket],
) -> None:
    path, _ = listener
    os.chmod(path.parent, 0o1777)  # a shared sticky folder like /tmp
    with pytest.raises(DaemonUnavailable, match="has mode 1777") as info:
        await AsyncClient(path).hello()
    assert info.value.data["reason"] == "untrusted"


def test_check_folder_of_another_user(listener: tuple[Path, socket.socket]) -> None:
    path, _ = listener
    peer.check_folder(path)  # ours, 0700
    other = os.geteuid() + 4242
    with pytest.raises(DaemonUnavailable) as info:
        peer.check_folder(path, uid=other)
    assert (f"its folder {path.parent} belongs to uid {os.geteuid()}, not to you "
            f"(uid {other}), so another user could stand in for argentd") in str(info.value)
    peer.check_folder(path.parent / "absent" / "s.sock")  # connecting will say unreachable


def test_check_peer_reads_the_server_uid(listener: tuple[Path, socket.socket]) -> None:
    path, _ = listener
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        assert peer.peer_uid(sock) == os.geteuid()  # the real SO_PEERCRED / LOCAL_PEERCRED
        peer.check_peer(sock, path)
        with pytest.raises(DaemonUnavailable, match=(
                f"the process serving it runs as uid {os.geteuid()}, not as you "
                f"\\(uid {os.geteuid() + 1}\\)")):
            peer.check_peer(sock, path, uid=os.geteuid() + 1)


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
                    reason="needs root (to run a server as another uid) and /usr/bin/python3")
@pytest.mark.parametrize("kind", ["blocking", "async"])
def test_clients_refuse_a_server_of_another_uid(
    listener: tuple[Path, socket.socket], kind: str
) -> None:
    path, srv = listener
    srv.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
        path.unlink()
        held.bind(str(path))  # bound in our folder; listen()ed as uid 65534, who then serves it
        code = ("import socket, sys; s = socket.socket(fileno=int(sys.argv[1])); s.listen(); "
                "print('ready', flush=True); c, _ = s.accept(); c.recv(1)")
        child = subprocess.Popen([SYSTEM_PYTHON, "-c", code, str(held.fileno())],
                                 pass_fds=(held.fileno(),), user=65534,
                                 stdout=subprocess.PIPE, cwd="/")
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            with pytest.raises(DaemonUnavailable) as info:
                if kind == "blocking":
                    Client(path, fallback_env=False).hello()
                else:
                    anyio.run(AsyncClient(path, fallback_env=False).hello)
            assert info.value.data["reason"] == "untrusted"
            assert "runs as uid 65534, not as you (uid 0)" in str(info.value)
        finally:
            child.kill()
            child.wait()
