"""The protocol server: every method and error code, over a real Unix socket.

Most tests run the real `Server` in-process under fake time (tests/inproc.py),
so timing is asserted exactly: a waiter served at the very instant a TTL or a
cooldown ends. What needs a real process (socket modes set by the daemon, the
environment fallback, another uid) starts the real `argentd`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from argentd.server import ACCEPT_BACKOFF

from .conftest import Daemon, make_secret
from .inproc import EPOCH, InProc, profile, serving


def error_code(reply: dict[str, Any]) -> tuple[int, str]:
    err = reply["error"]
    return err["code"], err["data"]["code"]


def three() -> list[Any]:
    """Two Anthropic profiles and one OpenAI profile (max_concurrent 1), as `daemon` has."""
    return [profile("anthropic:one", "setup-token", label="One"),
            profile("anthropic:two", "api-key", label="Two"),
            profile("openai:main", "api-key", label="Main", max_concurrent=1)]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp folder with a short path (AF_UNIX paths are ~108 bytes at most)."""
    folder = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def srv(autojump_clock: MockClock) -> AsyncIterator[InProc]:
    async with serving(*three()) as s:
        yield s


@pytest.mark.trio
async def test_server_hello(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    result = await c.call("hello")
    assert result["server"] == "argentd"
    assert result["protocol"] == 1
    assert result["pid"] == os.getpid()


@pytest.mark.trio
async def test_server_lease_release_cycle(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    lease = await c.call("lease", {"provider": "anthropic", "client": "t"})
    assert lease["profile"] == "anthropic:one"  # subscription before API key
    assert lease["type"] == "setup-token"
    assert lease["source"] == "profile"
    assert lease["headers"]["Authorization"] == "Bearer " + lease["token"]
    assert lease["headers"]["anthropic-beta"] == "oauth-2025-04-20"
    assert lease["expires_at"] == EPOCH + 600  # the default TTL, from fake time 0
    st = await c.call("status")
    assert [le["lease_id"] for le in st["leases"]] == [lease["lease_id"]]
    one = next(p for p in st["profiles"] if p["id"] == "anthropic:one")
    assert one["active_leases"] == 1
    assert lease["token"] not in json.dumps(st)
    assert await c.call("release", {"lease_id": lease["lease_id"]}) == {"released": True}
    assert (await c.call("status"))["leases"] == []


@pytest.mark.trio
async def test_server_api_key_headers(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    await c.call("disable", {"profile": "anthropic:one"})
    lease = await c.call("lease", {"provider": "anthropic"})
    assert lease["profile"] == "anthropic:two"
    assert lease["headers"] == {"x-api-key": lease["token"]}


@pytest.mark.trio
async def test_server_renew(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    lease = await c.call("lease", {"provider": "openai", "ttl": 5})
    assert lease["expires_at"] == EPOCH + 5
    await trio.sleep(3)
    renewed = await c.call("renew", {"lease_id": lease["lease_id"], "ttl": 100})
    assert renewed["expires_at"] == EPOCH + 103


@pytest.mark.trio
async def test_server_errors_keep_connection_usable(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    await c.send(b"this is not json\n")
    reply = await c.read()
    assert error_code(reply) == (-32700, "parse_error") and reply["id"] is None
    await c.send(b'[{"jsonrpc":"2.0","method":"hello","id":1}]\n')
    assert error_code(await c.read()) == (-32600, "invalid_request")
    await c.send(b'{"jsonrpc":"2.0","id":7}\n')
    assert error_code(await c.read()) == (-32600, "invalid_request")
    assert error_code(await c.request("no_such_method")) == (-32601, "method_not_found")
    reply = await c.request("lease", {"provider": 5})
    assert error_code(reply) == (-32602, "invalid_params")
    assert "$.params.provider" in reply["error"]["message"]
    assert error_code(await c.request("lease", {"provider": "anthropic", "bogus": 1})) == (
        -32602, "invalid_params")
    assert (await c.call("hello"))["server"] == "argentd"


@pytest.mark.trio
async def test_server_application_errors(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    assert error_code(await c.request("lease", {"provider": "google"})) == (
        -32002, "unknown_provider")
    assert error_code(await c.request("lease", {"route": "nope"})) == (-32003, "unknown_route")
    assert error_code(await c.request("release", {"lease_id": "l_0000000000000000"})) == (
        -32004, "lease_not_found")
    assert error_code(await c.request("reset", {"profile": "anthropic:nope"})) == (
        -32005, "unknown_profile")
    await c.call("lease", {"provider": "openai"})
    await c.call("report_failure", {"profile": "openai:main", "kind": "rate_limit"})
    await trio.sleep(10)
    reply = await c.request("lease", {"provider": "openai"})
    assert error_code(reply) == (-32001, "no_profile_available")
    assert reply["error"]["data"]["retry_after"] == 50  # 60 s cooldown, 10 s later
    assert reply["error"]["data"]["profiles"][0]["state"] == "cooldown"


@pytest.mark.trio
async def test_server_pipelined_requests(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    lines = b"".join(
        json.dumps({"jsonrpc": "2.0", "method": "hello", "id": i}).encode() + b"\n"
        for i in range(50)
    )
    await c.send(lines)
    assert [(await c.read())["id"] for _ in range(50)] == list(range(50))


@pytest.mark.trio
async def test_server_notification_gets_no_reply(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    await c.send(b'{"jsonrpc":"2.0","method":"hello"}\n')
    assert (await c.request("hello"))["id"] == 1


@pytest.mark.trio
async def test_server_release_on_disconnect(srv: InProc, autojump_clock: MockClock) -> None:
    sub = await srv.connect()
    await sub.call("subscribe")
    c = await srv.connect()
    attached = await c.call("lease", {"provider": "openai"})
    detached = await c.call("lease", {"provider": "anthropic", "detached": True})
    c.close()
    while True:  # the server tells subscribers when it ends the lease
        event = await sub.event("release")
        if event["lease_id"] == attached["lease_id"]:
            break
    assert trio.current_time() == 0  # at once, not at a later tick
    leases = (await sub.call("status"))["leases"]
    assert [le["lease_id"] for le in leases] == [detached["lease_id"]]


@pytest.mark.trio
async def test_server_ttl_expiry_wakes_waiter_exactly_at_ttl(
    srv: InProc, autojump_clock: MockClock,
) -> None:
    c = await srv.connect()
    first = await c.call("lease", {"provider": "openai", "ttl": 30})
    waiter = await srv.connect()
    second = await waiter.call("lease", {"provider": "openai", "wait": 60})
    assert trio.current_time() == 30  # served the instant the first lease expired
    assert second["profile"] == "openai:main"
    assert second["expires_at"] == EPOCH + 30 + 600
    reply = await c.request("renew", {"lease_id": first["lease_id"]})
    assert reply["error"]["data"]["code"] == "lease_not_found"


@pytest.mark.trio
async def test_server_lease_alive_until_its_ttl(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    lease = await c.call("lease", {"provider": "openai", "ttl": 30, "detached": True})
    sub = await srv.connect()
    await sub.call("subscribe")
    await trio.sleep(29.999)
    assert [le["lease_id"] for le in (await c.call("status"))["leases"]] == [lease["lease_id"]]
    event = await sub.event("expire")
    assert (event["lease_id"], event["at"]) == (lease["lease_id"], EPOCH + 30)
    assert trio.current_time() == 30


@pytest.mark.trio
async def test_server_wait_woken_by_release(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    held = await c.call("lease", {"provider": "openai"})
    waiter = await srv.connect()
    await waiter.send(waiter.line("lease", {"provider": "openai", "wait": 10})
                      + waiter.line("hello"))
    assert (await waiter.read())["id"] == 2  # the lease is parked behind the held one
    await trio.sleep(4)
    await c.call("release", {"lease_id": held["lease_id"]})
    reply = await waiter.read()
    assert reply["id"] == 1 and reply["result"]["profile"] == "openai:main"
    assert trio.current_time() == 4


@pytest.mark.trio
async def test_server_wait_times_out_with_retry_after(
    srv: InProc, autojump_clock: MockClock,
) -> None:
    c = await srv.connect()
    await c.call("report_failure", {"profile": "openai:main", "kind": "rate_limit",
                                    "retry_after": 30})
    reply = await c.request("lease", {"provider": "openai", "wait": 12})
    assert trio.current_time() == 12
    assert error_code(reply) == (-32001, "no_profile_available")
    assert reply["error"]["data"]["retry_after"] == 18


@pytest.mark.trio
async def test_server_waiter_served_exactly_at_cooldown_end(
    srv: InProc, autojump_clock: MockClock,
) -> None:
    c = await srv.connect()
    await c.call("report_failure", {"profile": "openai:main", "kind": "rate_limit",
                                    "retry_after": 1500})  # 25 minutes
    assert error_code(await c.request("lease", {"provider": "openai"}))[1] == (
        "no_profile_available")
    lease = await c.call("lease", {"provider": "openai", "wait": 3600})
    assert lease["profile"] == "openai:main"
    assert trio.current_time() == 1500


@pytest.mark.trio
async def test_server_waiters_first_come_first_served(
    srv: InProc, autojump_clock: MockClock,
) -> None:
    c = await srv.connect()
    held = await c.call("lease", {"provider": "openai"})
    first, second = await srv.connect(), await srv.connect()
    await first.send(first.line("lease", {"provider": "openai", "wait": 100}))
    await trio.sleep(1)
    await second.send(second.line("lease", {"provider": "openai", "wait": 100}))
    await trio.sleep(1)
    await c.call("release", {"lease_id": held["lease_id"]})
    got = await first.read()
    assert got["result"]["profile"] == "openai:main" and trio.current_time() == 2
    await first.call("release", {"lease_id": got["result"]["lease_id"]})
    assert (await second.read())["result"]["profile"] == "openai:main"


@pytest.mark.trio
async def test_server_report_failover(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    first = await c.call("lease", {"provider": "anthropic"})
    result = await c.call("report_failure", {"lease_id": first["lease_id"],
                                             "kind": "rate_limit", "status": 429,
                                             "failover": True})
    assert result["profile_state"] == "cooldown"
    assert result["cooldown_until"] == EPOCH + 60
    assert result["next"]["profile"] == "anthropic:two"


@pytest.mark.trio
async def test_server_reset_disable_enable(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    await c.call("report_failure", {"profile": "anthropic:one", "kind": "auth"})
    states = {p["id"]: p["state"] for p in (await c.call("status"))["profiles"]}
    assert states["anthropic:one"] == "invalid"
    assert await c.call("reset", {"profile": "anthropic:one"}) == {"profile_state": "ready"}
    assert await c.call("disable", {"profile": "anthropic:one"}) == {
        "profile_state": "disabled"}
    assert await c.call("enable", {"profile": "anthropic:one"}) == {"profile_state": "ready"}


@pytest.mark.trio
async def test_server_subscribe_streams_events(srv: InProc, autojump_clock: MockClock) -> None:
    sub = await srv.connect()
    assert await sub.call("subscribe") == {"subscribed": True}
    c = await srv.connect()
    lease = await c.call("lease", {"provider": "openai"})
    await c.call("release", {"lease_id": lease["lease_id"]})
    types = []
    while len(types) < 2:
        msg = await sub.read()
        assert msg["method"] == "event"
        types.append(msg["params"]["type"])
        assert lease["token"] not in json.dumps(msg)
    assert types == ["lease", "release"]


@pytest.mark.trio
async def test_server_cooldown_end_event_at_its_time(
    srv: InProc, autojump_clock: MockClock,
) -> None:
    sub = await srv.connect()
    await sub.call("subscribe")
    await sub.call("report_failure", {"profile": "anthropic:one", "kind": "rate_limit"})
    event = await sub.event("cooldown_end")
    assert (event["profile"], event["at"]) == ("anthropic:one", EPOCH + 60)
    assert trio.current_time() == 60


@pytest.mark.trio
async def test_server_metrics(srv: InProc, autojump_clock: MockClock) -> None:
    c = await srv.connect()
    await c.call("lease", {"provider": "openai"})
    text = (await c.call("metrics"))["text"]
    assert 'argentd_leases_granted_total{provider="openai"} 1' in text
    assert "argentd_request_duration_seconds_count" in text


@pytest.mark.trio
async def test_server_long_line_ends_only_that_connection(
    srv: InProc, autojump_clock: MockClock,
) -> None:
    other = await srv.connect()
    c = await srv.connect()
    with pytest.raises((EOFError, BrokenPipeError, ConnectionResetError)):
        await c.send(b"x" * (2 * 1024 * 1024) + b"\n")
        reply = await c.read()
        assert error_code(reply) == (-32600, "invalid_request")
        await c.read()
    assert (await other.call("hello"))["server"] == "argentd"


@pytest.mark.trio
async def test_server_two_hundred_connections(srv: InProc, autojump_clock: MockClock) -> None:
    conns = [await srv.connect() for _ in range(200)]
    for i, conn in enumerate(conns):
        await conn.send(json.dumps({"jsonrpc": "2.0", "method": "hello", "id": i}).encode()
                        + b"\n")
    for i, conn in enumerate(conns):
        assert (await conn.read())["id"] == i


@pytest.mark.trio
async def test_server_other_uid_refused_in_process(autojump_clock: MockClock) -> None:
    from argentd.service import peer_uid

    async with serving(*three(), uid=os.getuid() + 1, peer_uid=peer_uid) as s:
        c = await s.connect()
        reply = await c.read()
        assert error_code(reply) == (-32006, "permission_denied")
        assert f"you are uid {os.getuid()}" in reply["error"]["message"]
        assert await c.eof()


# ---------------------------------------------------------------- accept


class FailingListener(socket.socket):
    """A listening socket whose accept() fails with `errors`, in turn, then works."""

    errors: list[int]
    calls: list[float]

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls.append(trio.current_time())
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return super().accept()


def failing_listener(path: Path, errors: list[int]) -> FailingListener:
    listener = FailingListener(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.errors, listener.calls = errors, []
    listener.bind(str(path))
    listener.listen(16)
    return listener


@pytest.mark.trio
async def test_server_accept_out_of_fds_backs_off_then_serves(
    autojump_clock: MockClock, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(*three()) as s:
        listener = failing_listener(short_tmp / "a", [errno.EMFILE, errno.ENFILE])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.server.serve, listener)
            client = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await client.connect(str(short_tmp / "a"))
            await client.send(b'{"jsonrpc":"2.0","method":"hello","id":1}\n')
            assert b'"argentd"' in await client.recv(4096)
            assert listener.calls == [0, ACCEPT_BACKOFF, 2 * ACCEPT_BACKOFF]
            assert caplog.text.count("accept failed") == 2
            client.close()
            nursery.cancel_scope.cancel()
        listener.close()


@pytest.mark.trio
async def test_server_accept_aborted_connection_is_skipped(
    autojump_clock: MockClock, short_tmp: Path
) -> None:
    async with serving(*three()) as s:
        listener = failing_listener(short_tmp / "a", [errno.ECONNABORTED])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.server.serve, listener)
            client = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await client.connect(str(short_tmp / "a"))
            await client.send(b'{"jsonrpc":"2.0","method":"hello","id":1}\n')
            assert b'"argentd"' in await client.recv(4096)
            assert listener.calls == [0, 0]  # tried again at once
            client.close()
            nursery.cancel_scope.cancel()
        listener.close()


@pytest.mark.trio
async def test_server_accept_other_error_surfaces(
    autojump_clock: MockClock, short_tmp: Path
) -> None:
    async with serving(*three()) as s:
        listener = failing_listener(short_tmp / "a", [errno.EINVAL])
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(short_tmp / "a"))
        with pytest.RaisesGroup(pytest.RaisesExc(OSError, check=lambda e: e.errno == errno.EINVAL),
                                flatten_subgroups=True):
            await s.server.serve(listener)
        assert listener.calls == [0]  # not retried every 0.1 s forever
        client.close()
        listener.close()


# ---------------------------------------------------------------- a real process


def test_server_socket_and_folder_modes(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) == 0o700


def test_server_real_process_lease_release_cycle(daemon: Daemon) -> None:
    c = daemon.connect()
    assert c.call("hello")["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    lease = c.call("lease", {"provider": "anthropic", "client": "t"})
    assert lease["profile"] == "anthropic:one"
    assert c.call("release", {"lease_id": lease["lease_id"]}) == {"released": True}


def test_server_env_fallback_profile(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    key = make_secret("sk-or-v1-")
    d.start(OPENROUTER_API_KEY=key)  # no profiles file at all
    assert "no profiles file at" in d.stderr() and "argentctl setup" in d.stderr()
    lease = d.call("lease", {"provider": "openrouter"})
    assert lease["profile"] == "openrouter:env"
    assert lease["source"] == "env"
    assert lease["token"] == key


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_server_other_uid_refused(daemon: Daemon) -> None:
    # Open the folder and socket up so that only the peer-uid check stands in the way.
    os.chmod(daemon.socket.parent, 0o755)
    os.chmod(daemon.socket, 0o666)
    code = (
        "import os, socket, sys; os.setgid(65534); os.setuid(65534);"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
        "print(s.makefile().readline())"  # refused at once, before any request
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, str(daemon.socket)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert error_code(reply) == (-32006, "permission_denied")
    assert daemon.call("hello")["server"] == "argentd"


# ---------------------------------------------------------------- bounds and abuse


@pytest.mark.trio
async def test_server_lease_notification_is_not_granted(
    srv: InProc, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    c = await srv.connect()
    await c.send(c.line("lease", {"provider": "openai"}, notify=True) * 3)
    assert (await c.call("status"))["leases"] == []  # nobody could ever release it
    assert caplog.text.count("sent `lease` as a notification") == 1  # once per connection
    assert (await c.call("lease", {"provider": "openai"}))["profile"] == "openai:main"


@pytest.mark.trio
async def test_server_report_notification_does_not_fail_over(
    srv: InProc, autojump_clock: MockClock
) -> None:
    c = await srv.connect()
    lease = await c.call("lease", {"provider": "anthropic"})
    await c.send(c.line("report_failure", {"lease_id": lease["lease_id"], "kind": "rate_limit",
                                           "failover": True}, notify=True))
    st = await c.call("status")
    assert st["leases"] == []  # the report counted; no next lease was made for nobody
    assert {p["id"]: p["state"] for p in st["profiles"]}["anthropic:one"] == "cooldown"


@pytest.mark.trio
async def test_server_waiting_leases_bounded_per_connection(
    srv: InProc, autojump_clock: MockClock
) -> None:
    from argentd.server import MAX_WAITING

    c = await srv.connect()
    await c.call("lease", {"provider": "openai"})  # max_concurrent 1: the rest must wait
    greedy = await srv.connect()
    await greedy.send(b"".join(greedy.line("lease", {"provider": "openai", "wait": 100})
                               for _ in range(MAX_WAITING + 1)))
    reply = await greedy.read()  # the only immediate answer: the one past the bound
    assert reply["id"] == MAX_WAITING + 1
    assert error_code(reply) == (-32010, "limit_exceeded")
    assert reply["error"]["data"]["limit"] == MAX_WAITING
    # Everyone else is still served at once, waiting leases included.
    other = await srv.connect()
    assert (await other.call("lease", {"provider": "anthropic"}))["profile"] == "anthropic:one"
    await other.send(other.line("lease", {"provider": "openai", "wait": 200}))
    assert trio.current_time() == 0
    # When the parked ones time out, the connection may wait again.
    for _ in range(MAX_WAITING):
        assert error_code(await greedy.read())[1] == "no_profile_available"
    assert trio.current_time() == 100
    reply = await greedy.request("lease", {"provider": "openai", "wait": 50})
    assert error_code(reply)[1] == "no_profile_available" and trio.current_time() == 150


@pytest.mark.trio
async def test_server_reloads_bounded_per_connection(autojump_clock: MockClock) -> None:
    from argentd.server import MAX_RELOADS

    release = trio.Event()
    started: list[str] = []

    async def slow_reload(reason: str) -> Any:
        started.append(reason)
        await release.wait()
        from argent_client import protocol as P

        return P.ReloadResult(3)

    async with serving(*three(), reload=slow_reload) as s:
        c = await s.connect()
        await c.send(b"".join(c.line("reload") for _ in range(MAX_RELOADS + 1)))
        reply = await c.read()
        assert reply["id"] == MAX_RELOADS + 1
        assert error_code(reply) == (-32010, "limit_exceeded")
        await trio.testing.wait_all_tasks_blocked()
        assert len(started) == MAX_RELOADS
        release.set()
        assert sorted([(await c.read())["id"] for _ in range(MAX_RELOADS)]) == list(
            range(1, MAX_RELOADS + 1))
        assert (await c.call("reload")) == {"profiles": 3}  # in flight again: allowed


@pytest.mark.trio
async def test_server_unfinished_line_times_out(
    srv: InProc, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    from argentd.server import LINE_TIMEOUT

    c = await srv.connect()
    await c.send(b'{"jsonrpc":"2.0","method":"hel')
    await trio.sleep(LINE_TIMEOUT - 1)
    await c.send(b'lo","id":1}\n{"jsonrpc":')  # finishes in time, starts the next line
    assert (await c.read())["result"]["server"] == "argentd"
    reply = await c.read()
    assert trio.current_time() == 2 * LINE_TIMEOUT - 1  # LINE_TIMEOUT after the second began
    assert error_code(reply) == (-32600, "invalid_request")
    assert "unfinished" in reply["error"]["message"]
    assert await c.eof()
    assert "stayed unfinished" in caplog.text
    assert srv.server._buffered == 0


@pytest.mark.trio
async def test_server_unfinished_lines_bounded_across_connections(
    srv: InProc, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from argentd import server as server_mod

    monkeypatch.setattr(server_mod, "MAX_BUFFERED", 10_000)
    first, second = await srv.connect(), await srv.connect()
    await first.send(b'{"jsonrpc":"2.0","method":"hello","id":1,"x":"' + b"a" * 6000)
    await trio.testing.wait_all_tasks_blocked()  # the server has read it
    await second.send(b'{"jsonrpc":"2.0","method":"hello","id":1,"x":"' + b"b" * 6000)
    reply = await second.read()
    assert error_code(reply) == (-32600, "invalid_request")
    assert "unfinished lines" in reply["error"]["message"]
    assert await second.eof()
    await first.send(b'"}\n')  # the first one finishes its line: served
    assert (await first.read())["id"] == 1
    assert srv.server._buffered == 0
    third = await srv.connect()  # the budget freed by the closed connection is usable again
    await third.send(b'{"jsonrpc":"2.0","method":"hello","id":3,"x":"' + b"c" * 6000)
    await third.send(b'"}\n')
    assert (await third.read())["id"] == 3


@pytest.mark.trio
async def test_server_pipelined_statuses_do_not_hold_others(
    autojump_clock: MockClock,
) -> None:
    many = [profile(f"anthropic:p{i:04d}", label="x" * 40) for i in range(2000)]
    async with serving(*many, profile("openai:main")) as s:
        greedy = await s.connect()
        await greedy.send(b"".join(greedy.line("status") for _ in range(40)))  # never read
        other = await s.connect()
        assert (await other.call("lease", {"provider": "openai"}))["profile"] == "openai:main"
        # Replies go out as they are made: a peer that does not read stops its own
        # pipeline after a reply or two, instead of forty being built first.
        assert len(s.configs) <= 3
        got = 0
        while got < 40:  # and it gets every reply once it reads
            line = await greedy.read_line()
            got += b'"profiles"' in line
        assert len(s.configs) == 40


@pytest.mark.trio
async def test_server_deeply_nested_json_is_a_parse_error(
    srv: InProc, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    c = await srv.connect()
    for depth in (500_000, 100_000):
        await c.send(b"[" * depth + b"]" * depth + b"\n")
        reply = await c.read()
        assert error_code(reply) == (-32700, "parse_error") and reply["id"] is None
        assert "nested too deeply" in reply["error"]["message"]
    await c.send(b'{"jsonrpc":"2.0","method":"hello","id":1,"params":'
                 + b"[" * 200_000 + b"]" * 200_000 + b"}\n")
    assert error_code(await c.read())[1] == "parse_error"
    assert (await c.call("hello"))["server"] == "argentd"
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text
