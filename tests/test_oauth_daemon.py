"""The refresher end to end: the real argentd, a real token endpoint, real clients.

Every token here comes from `make_secret` (the fake endpoint makes its own
with it too), so the daemon fixture's leak check covers them: no token in
the daemon's log or any file of its state folder but credentials.json.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import SECRETS, Daemon, make_secret, write_json
from .fake_token_endpoint import FakeTokenEndpoint

PID = "anthropic:max"


@pytest.fixture
def endpoint() -> Iterator[FakeTokenEndpoint]:
    ep = FakeTokenEndpoint()
    yield ep
    ep.close()


def configure(d: Daemon, ep: FakeTokenEndpoint, extra: str = "") -> None:
    d.config.parent.mkdir(parents=True, exist_ok=True)
    d.config.write_text(
        f'[oauth]\n{extra}\n[oauth.anthropic]\ntoken_url = "{ep.url}"\nclient_id = "test-client"\n')


def oauth_profile(access: str, refresh: str, expires: float, **extra: Any) -> dict[str, Any]:
    return {"provider": "anthropic", "type": "oauth", "access": access, "refresh": refresh,
            "expires": int(expires * 1000), **extra}


def profile_status(d: Daemon, pid: str = PID) -> dict[str, Any]:
    status = d.call("status")
    found: dict[str, Any] = next(p for p in status["profiles"] if p["id"] == pid)
    return found


def wait_for(cond: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def no_token_in(text: str) -> None:
    for value in SECRETS:
        assert value not in text


def lease(d: Daemon, wait: float = 15.0, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = d.call("lease", {"provider": "anthropic", "wait": wait,
                                              "detached": True, "ttl": 30, **params})
    return result


# ------------------------------------------------------------ single flight

LEASER = r"""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
n = int(sys.argv[2])
sock.sendall(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "lease", "params": {
    "provider": "anthropic", "wait": 30, "ttl": 60}}).encode() + b"\n" for i in range(n)))
print("sent", flush=True)
buf, tokens = b"", []
while len(tokens) < n:
    chunk = sock.recv(65536)
    if not chunk:
        break
    buf += chunk
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        msg = json.loads(line)
        tokens.append(msg["result"]["token"] if "result" in msg else "ERROR " + str(msg))
print(json.dumps(tokens), flush=True)
"""


def test_oauth_50_leases_from_10_processes_at_expiry_make_one_refresh(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    access, refresh = endpoint.login()
    endpoint.gate.clear()  # hold the endpoint's answer while the leases pile up
    d: Daemon = daemon_factory()
    configure(d, endpoint)
    d.write_profiles({PID: oauth_profile(access, refresh, time.time() - 1)})
    d.start()
    endpoint.wait_calls(1)
    procs = [subprocess.Popen([sys.executable, "-c", LEASER, str(d.socket), "5"],
                              stdout=subprocess.PIPE, text=True) for _ in range(10)]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "sent"
        assert profile_status(d)["state"] == "expired"
        endpoint.gate.set()
        tokens = []
        for p in procs:
            assert p.stdout is not None
            tokens += json.loads(p.stdout.readline())
            assert p.wait(30) == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert len(endpoint.calls) == 1
    assert endpoint.calls[0].refresh == refresh and endpoint.calls[0].body == "json"
    assert endpoint.calls[0].client_id == "test-client"
    assert len(tokens) == 50 and len(set(tokens)) == 1
    assert tokens[0] != access and endpoint.access_valid(tokens[0])
    st = profile_status(d)
    assert st["state"] == "ready" and st["refresh_error"] is None
    assert st["refreshed_at"] == pytest.approx(time.time(), abs=30)
    assert st["expires_at"] == pytest.approx(time.time() + 3600, abs=30)
    no_token_in(json.dumps(d.call("status")) + d.call("metrics")["text"])
    assert 'argentd_oauth_refreshes_total{result="ok"} 1' in d.call("metrics")["text"]


# ------------------------------------------------------------ persistence


def test_oauth_kill9_after_refresh_restart_uses_stored_pair(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    access, refresh = endpoint.login()
    d: Daemon = daemon_factory()
    configure(d, endpoint)
    d.write_profiles({PID: oauth_profile(access, refresh, time.time() - 1)})
    d.start()
    first = lease(d)["token"]
    assert first != access and endpoint.access_valid(first)
    creds = d.state_dir / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    stored = json.loads(creds.read_text())["logins"][PID]
    assert stored["access"] == first and refresh not in creds.read_text()
    d.stop(signal.SIGKILL)
    d.start()
    assert lease(d)["token"] == first  # the stored pair, not the file's spent one
    assert len(endpoint.calls) == 1
    # The next refresh (after an auth report) presents the stored refresh token.
    d.call("report_failure", {"profile": PID, "kind": "auth", "status": 401})
    endpoint.wait_calls(2)
    second = wait_for(lambda: (t := lease(d)["token"]) != first and t, what="a new token")
    assert endpoint.access_valid(second)
    assert endpoint.reuses == 0 and endpoint.calls[1].refresh == stored["refresh"]
    assert profile_status(d)["state"] == "ready"
    # The profiles file is never rewritten.
    assert json.loads(d.profiles.read_text())[PID]["refresh"] == refresh


def test_oauth_new_login_in_the_file_wins_over_the_stored_pair(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    access, refresh = endpoint.login()
    d: Daemon = daemon_factory()
    configure(d, endpoint)
    d.write_profiles({PID: oauth_profile(access, refresh, time.time() - 1)})
    d.start()
    refreshed = lease(d)["token"]
    assert refreshed != access
    new_access, new_refresh = endpoint.login()
    d.write_profiles({PID: oauth_profile(new_access, new_refresh, time.time() + 3600)})
    d.call("reload")
    d.wait_message("READY=1")  # the reload's; the restart below waits for its own
    assert lease(d)["token"] == new_access
    d.stop()
    d.start()
    assert lease(d)["token"] == new_access
    assert len(endpoint.calls) == 1


def test_oauth_open_credentials_file_is_refused_with_the_fix(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    access, refresh = endpoint.login()
    d: Daemon = daemon_factory()
    configure(d, endpoint)
    d.write_profiles({PID: oauth_profile(access, refresh, time.time() + 3600)})
    write_json(d.state_dir / "credentials.json", {"version": 1, "logins": {}}, mode=0o644)
    d.start()
    error = d.call("status")["config"]["error"]
    assert "credentials.json" in error and "chmod 600" in error
    assert lease(d, wait=0)["token"] == access  # the file's token serves while valid
    d.call("report_failure", {"profile": PID, "kind": "auth"})
    d.call("reload")
    d.wait_message("READY=1")
    assert len(endpoint.calls) == 0  # nothing is refreshed while the file is refused
    creds = d.state_dir / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o644
    # The fix works: chmod 600, reload, and the pending auth report is acted on.
    os.chmod(creds, 0o600)
    d.call("reload")
    endpoint.wait_calls(1)
    assert wait_for(lambda: profile_status(d)["state"] == "ready", what="ready")
    assert d.call("status")["config"]["error"] is None


def test_oauth_corrupt_credentials_file_is_refused_not_overwritten(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    access, refresh = endpoint.login()
    d: Daemon = daemon_factory()
    configure(d, endpoint)
    d.write_profiles({PID: oauth_profile(access, refresh, time.time() - 1)})
    creds = d.state_dir / "credentials.json"
    creds.parent.mkdir(parents=True, exist_ok=True)
    creds.write_bytes(b'{"version": 1, "logins": {"anthropic:max": {"ori')
    os.chmod(creds, 0o600)
    d.start()
    error = d.call("status")["config"]["error"]
    assert "corrupt" in error and "mv " in error
    assert profile_status(d)["state"] == "expired"
    assert creds.read_bytes().endswith(b'"ori')
    assert len(endpoint.calls) == 0


# ------------------------------------------------------------ faults


def test_oauth_faults_invalid_grant_hang_500_malformed(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    d: Daemon = daemon_factory()
    configure(d, endpoint, "refresh_before = 7200\ntimeout = 1")
    now = time.time()
    profiles = {}
    logins = {}
    for name, mode in (("revoked", "ok"), ("hang", "hang"), ("e500", "500"),
                       ("garbage", "malformed"), ("dead", "500")):
        access, refresh = endpoint.login()
        if name == "revoked":
            refresh = make_secret("sk-ant-ort01-")  # never issued: invalid_grant
        endpoint.modes[refresh] = mode
        expires = now - 1 if name == "dead" else now + 3600
        profiles[f"anthropic:{name}"] = oauth_profile(access, refresh, expires)
        logins[name] = access
    d.write_profiles(profiles)
    d.start()
    endpoint.wait_calls(5)

    def errors() -> dict[str, Any]:
        st = {p["id"].split(":")[1]: p for p in d.call("status")["profiles"]}
        return st if all(st[n]["refresh_error"] for n in logins) else {}

    st = wait_for(errors, what="a refresh error on every profile")
    assert st["revoked"]["state"] == "invalid"
    assert "invalid_grant" in st["revoked"]["refresh_error"]
    assert "argentctl profiles import" in st["revoked"]["refresh_error"]
    assert "argentctl profiles import" in st["revoked"]["last_error"]
    assert "within 1 s" in st["hang"]["refresh_error"]
    assert "HTTP 500" in st["e500"]["refresh_error"]
    assert "malformed" in st["garbage"]["refresh_error"]
    # The old tokens still serve while valid; the expired one cannot be leased.
    for name in ("hang", "e500", "garbage"):
        assert st[name]["state"] == "ready"
    assert st["dead"]["state"] == "expired"
    seen = set()
    for _ in range(6):
        seen.add(lease(d, wait=0)["token"])
    assert seen <= {logins["hang"], logins["e500"], logins["garbage"]}
    text = json.dumps(d.call("status")) + d.call("metrics")["text"]
    no_token_in(text)
    assert 'argentd_oauth_refreshes_total{result="invalid"} 1' in text
    # A revoked chain is not tried again, even on restart.
    calls = len(endpoint.calls)
    d.stop()
    d.start()
    wait_for(lambda: len(endpoint.calls) >= calls + 3, what="retries after restart")
    assert not [c for c in endpoint.calls[calls:] if c.answer == 400]


def test_oauth_kill9_between_answer_and_write_at_worst_reuses_the_old_pair(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    access, refresh = endpoint.login()
    d: Daemon = daemon_factory()
    configure(d, endpoint)
    d.write_profiles({PID: oauth_profile(access, refresh, time.time() - 1)})
    endpoint.answer_gate.clear()  # the endpoint spends the token, the answer is held
    d.start()
    wait_for(lambda: endpoint.calls and endpoint.calls[0].answer == 200, what="spent")
    d.stop(signal.SIGKILL)
    endpoint.answer_gate.set()
    creds = d.state_dir / "credentials.json"
    assert not creds.exists() or json.loads(creds.read_text())  # never half a file
    d.start()
    # The old pair is presented again; the endpoint refuses the reuse: invalid, with the fix.
    st = wait_for(lambda: (s := profile_status(d))["refresh_error"] and s, what="error")
    assert st["state"] == "invalid" and "argentctl profiles import" in st["refresh_error"]
    assert endpoint.reuses == 1 and len(endpoint.calls) == 2


def test_oauth_refresh_events_reach_watchers_without_tokens(
    daemon_factory: Any, endpoint: FakeTokenEndpoint
) -> None:
    access, refresh = endpoint.login()
    bad_access, _ = endpoint.login()
    d: Daemon = daemon_factory()
    configure(d, endpoint)
    d.write_profiles({PID: oauth_profile(access, refresh, time.time() + 3600),
                      "anthropic:gone": oauth_profile(bad_access, make_secret("sk-ant-ort01-"),
                                                      time.time() + 3600)})
    d.start()
    watch = d.connect()
    assert watch.call("subscribe") == {"subscribed": True}
    d.call("report_failure", {"profile": PID, "kind": "auth"})
    d.call("report_failure", {"profile": "anthropic:gone", "kind": "auth"})
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < 2:
        line = watch.read_line()
        no_token_in(line.decode())
        event = json.loads(line)["params"]
        if event["type"] in ("refresh", "refresh_error"):
            seen[event["profile"]] = event
    assert seen[PID]["type"] == "refresh"
    assert seen[PID]["until"] == pytest.approx(time.time() + 3600, abs=30)
    assert seen["anthropic:gone"]["type"] == "refresh_error"
    assert seen["anthropic:gone"]["kind"] == "revoked"
    assert "argentctl profiles import" in seen["anthropic:gone"]["message"]
