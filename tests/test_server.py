"""The real argentd over a real Unix socket: every method and error code."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import pytest

from .conftest import Daemon, RawConn, make_secret


def error_code(reply: dict[str, Any]) -> tuple[int, str]:
    err = reply["error"]
    return err["code"], err["data"]["code"]


def test_server_hello(daemon: Daemon) -> None:
    result = daemon.call("hello")
    assert result["server"] == "argentd"
    assert result["protocol"] == 1
    assert result["pid"] == daemon.proc.pid  # type: ignore[union-attr]


def test_server_socket_and_folder_modes(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket.parent).st_mode) == 0o700


def test_server_lease_release_cycle(daemon: Daemon) -> None:
    c = daemon.connect()
    lease = c.call("lease", {"provider": "anthropic", "client": "t"})
    assert lease["profile"] == "anthropic:one"  # subscription before API key
    assert lease["type"] == "setup-token"
    assert lease["source"] == "profile"
    assert lease["headers"]["Authorization"] == "Bearer " + lease["token"]
    assert lease["headers"]["anthropic-beta"] == "oauth-2025-04-20"
    st = c.call("status")
    assert [le["lease_id"] for le in st["leases"]] == [lease["lease_id"]]
    one = next(p for p in st["profiles"] if p["id"] == "anthropic:one")
    assert one["active_leases"] == 1
    assert lease["token"] not in json.dumps(st)
    assert c.call("release", {"lease_id": lease["lease_id"]}) == {"released": True}
    assert c.call("status")["leases"] == []


def test_server_api_key_headers(daemon: Daemon) -> None:
    c = daemon.connect()
    c.call("disable", {"profile": "anthropic:one"})
    lease = c.call("lease", {"provider": "anthropic"})
    assert lease["profile"] == "anthropic:two"
    assert lease["headers"] == {"x-api-key": lease["token"]}


def test_server_renew(daemon: Daemon) -> None:
    c = daemon.connect()
    lease = c.call("lease", {"provider": "openai", "ttl": 5})
    renewed = c.call("renew", {"lease_id": lease["lease_id"], "ttl": 100})
    assert renewed["expires_at"] > lease["expires_at"] + 90


def test_server_errors_keep_connection_usable(daemon: Daemon) -> None:
    c = daemon.connect()
    c.send(b"this is not json\n")
    reply = c.read()
    assert error_code(reply) == (-32700, "parse_error") and reply["id"] is None
    c.send(b'[{"jsonrpc":"2.0","method":"hello","id":1}]\n')
    assert error_code(c.read()) == (-32600, "invalid_request")
    c.send(b'{"jsonrpc":"2.0","id":7}\n')
    assert error_code(c.read()) == (-32600, "invalid_request")
    assert error_code(c.request("no_such_method")) == (-32601, "method_not_found")
    reply = c.request("lease", {"provider": 5})
    assert error_code(reply) == (-32602, "invalid_params")
    assert "$.params.provider" in reply["error"]["message"]
    assert error_code(c.request("lease", {"provider": "anthropic", "bogus": 1})) == (
        -32602, "invalid_params")
    assert c.call("hello")["server"] == "argentd"


def test_server_application_errors(daemon: Daemon) -> None:
    c = daemon.connect()
    assert error_code(c.request("lease", {"provider": "google"})) == (-32002, "unknown_provider")
    assert error_code(c.request("lease", {"route": "nope"})) == (-32003, "unknown_route")
    assert error_code(c.request("release", {"lease_id": "l_0000000000000000"})) == (
        -32004, "lease_not_found")
    assert error_code(c.request("reset", {"profile": "anthropic:nope"})) == (
        -32005, "unknown_profile")
    c.call("lease", {"provider": "openai"})
    c.call("report_failure", {"profile": "openai:main", "kind": "rate_limit"})
    reply = c.request("lease", {"provider": "openai"})
    assert error_code(reply) == (-32001, "no_profile_available")
    assert 50 < reply["error"]["data"]["retry_after"] <= 60
    assert reply["error"]["data"]["profiles"][0]["state"] == "cooldown"


def test_server_pipelined_requests(daemon: Daemon) -> None:
    c = daemon.connect()
    lines = b"".join(
        json.dumps({"jsonrpc": "2.0", "method": "hello", "id": i}).encode() + b"\n"
        for i in range(50)
    )
    c.send(lines)
    assert [c.read()["id"] for _ in range(50)] == list(range(50))


def test_server_notification_gets_no_reply(daemon: Daemon) -> None:
    c = daemon.connect()
    c.send(b'{"jsonrpc":"2.0","method":"hello"}\n')
    assert c.request("hello")["id"] == 1


def test_server_release_on_disconnect(daemon: Daemon) -> None:
    sub = daemon.connect()
    sub.call("subscribe")
    c = daemon.connect()
    attached = c.call("lease", {"provider": "openai"})
    detached = c.call("lease", {"provider": "anthropic", "detached": True})
    c.close()
    while True:  # the daemon tells subscribers when it ends the lease
        event = sub.read()["params"]
        if event["type"] == "release" and event["lease_id"] == attached["lease_id"]:
            break
    leases = daemon.call("status")["leases"]
    assert [le["lease_id"] for le in leases] == [detached["lease_id"]]


def test_server_ttl_expiry_wakes_waiter(daemon: Daemon) -> None:
    c = daemon.connect()
    first = c.call("lease", {"provider": "openai", "ttl": 0.3})
    waiter = daemon.connect()
    second = waiter.call("lease", {"provider": "openai", "wait": 10})
    assert second["profile"] == "openai:main"
    assert c.request("renew", {"lease_id": first["lease_id"]})["error"]["data"]["code"] == (
        "lease_not_found")


def test_server_wait_woken_by_release(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"openai:solo": {"provider": "openai", "type": "api-key",
                                      "token": make_secret("sk-proj-"), "max_concurrent": 1}})
    d.start()
    c = d.connect()
    held = c.call("lease", {"provider": "openai"})
    waiter = d.connect()
    waiter.send(b'{"jsonrpc":"2.0","method":"lease","params":{"provider":"openai","wait":10},'
                b'"id":1}\n{"jsonrpc":"2.0","method":"hello","id":2}\n')
    assert waiter.read()["id"] == 2  # the lease is parked behind the held one
    c.call("release", {"lease_id": held["lease_id"]})
    reply = waiter.read()
    assert reply["id"] == 1 and reply["result"]["profile"] == "openai:solo"


def test_server_wait_times_out_with_retry_after(daemon: Daemon) -> None:
    c = daemon.connect()
    c.call("report_failure", {"profile": "openai:main", "kind": "rate_limit",
                              "retry_after": 30})
    reply = c.request("lease", {"provider": "openai", "wait": 0.2})
    assert error_code(reply) == (-32001, "no_profile_available")
    assert 25 < reply["error"]["data"]["retry_after"] <= 30


def test_server_wait_woken_by_cooldown_end(daemon: Daemon) -> None:
    c = daemon.connect()
    c.call("report_failure", {"profile": "openai:main", "kind": "rate_limit",
                              "retry_after": 0.4})
    assert error_code(c.request("lease", {"provider": "openai"}))[1] == "no_profile_available"
    lease = c.call("lease", {"provider": "openai", "wait": 10})
    assert lease["profile"] == "openai:main"


def test_server_report_failover(daemon: Daemon) -> None:
    c = daemon.connect()
    first = c.call("lease", {"provider": "anthropic"})
    result = c.call("report_failure", {"lease_id": first["lease_id"], "kind": "rate_limit",
                                       "status": 429, "failover": True})
    assert result["profile_state"] == "cooldown"
    assert result["cooldown_until"] is not None
    assert result["next"]["profile"] == "anthropic:two"


def test_server_reset_disable_enable(daemon: Daemon) -> None:
    c = daemon.connect()
    c.call("report_failure", {"profile": "anthropic:one", "kind": "auth"})
    states = {p["id"]: p["state"] for p in c.call("status")["profiles"]}
    assert states["anthropic:one"] == "invalid"
    assert c.call("reset", {"profile": "anthropic:one"}) == {"profile_state": "ready"}
    assert c.call("disable", {"profile": "anthropic:one"}) == {"profile_state": "disabled"}
    assert c.call("enable", {"profile": "anthropic:one"}) == {"profile_state": "ready"}


def test_server_subscribe_streams_events(daemon: Daemon) -> None:
    sub = daemon.connect()
    assert sub.call("subscribe") == {"subscribed": True}
    c = daemon.connect()
    lease = c.call("lease", {"provider": "openai"})
    c.call("release", {"lease_id": lease["lease_id"]})
    types = []
    while len(types) < 2:
        msg = sub.read()
        assert msg["method"] == "event"
        types.append(msg["params"]["type"])
        assert lease["token"] not in json.dumps(msg)
    assert types == ["lease", "release"]


def test_server_metrics(daemon: Daemon) -> None:
    c = daemon.connect()
    c.call("lease", {"provider": "openai"})
    text = c.call("metrics")["text"]
    assert 'argentd_leases_granted_total{provider="openai"} 1' in text
    assert "argentd_request_duration_seconds_count" in text


def test_server_long_line_ends_only_that_connection(daemon: Daemon) -> None:
    other = daemon.connect()
    c = daemon.connect()
    with pytest.raises((EOFError, BrokenPipeError, ConnectionResetError)):
        c.send(b"x" * (2 * 1024 * 1024) + b"\n")
        reply = c.read()
        assert error_code(reply) == (-32600, "invalid_request")
        c.read()
    assert other.call("hello")["server"] == "argentd"


def test_server_two_hundred_connections(daemon: Daemon) -> None:
    conns = [RawConn(daemon.socket) for _ in range(200)]
    try:
        for i, conn in enumerate(conns):
            conn.send(json.dumps({"jsonrpc": "2.0", "method": "hello", "id": i}).encode() + b"\n")
        for i, conn in enumerate(conns):
            assert conn.read()["id"] == i
    finally:
        for conn in conns:
            conn.close()


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
