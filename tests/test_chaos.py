"""Chaos and abuse: the real argentd under kill -9, file churn, crowds and stalled peers.

Every daemon process here comes from `daemon_factory`, whose teardown greps
the daemon's stderr and every file under its state dir for each secret made
with `make_secret` (the "no secret in any log line or state file" check).
Stalled and rude peers need no process: those tests run the server
in-process under fake time (tests/inproc.py). Bounds asserted here (see
docs/chaos.md):

- a change reaches the state file within `STATE_BOUND` seconds (the saver's
  0.5 s delay plus the write, with margin for a loaded 2-core CI box);
- the leases of a killed client are free within 1 s;
- a stalled peer never delays another client's request at all: no fake
  time passes while 2,500 lease+release pairs are served.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from argent_client import Client
from argent_client import protocol as P

from .conftest import Daemon, RawConn, make_secret, write_json
from .inproc import profile as profile_of
from .inproc import serving

STATE_BOUND = 1.0
"""Seconds from a change's acknowledgement to `state.json` holding it."""
FREE_BOUND = 1.0
"""Seconds from a client's death to its attached leases being free."""


def profile(provider: str = "anthropic", **extra: Any) -> dict[str, Any]:
    prefix = {"anthropic": "sk-ant-api03-", "openai": "sk-proj-"}.get(provider, "sk-")
    return {"provider": provider, "type": "api-key", "token": make_secret(prefix), **extra}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `check()` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def read_state(d: Daemon) -> dict[str, Any]:
    """`state.json` as a dict ({} while missing or being replaced)."""
    try:
        data: dict[str, Any] = json.loads(d.state_file.read_bytes())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
        return {}
    return data


def cooldowns_on_disk(d: Daemon) -> dict[str, float]:
    """Profile id -> `cooldown_until` as written in `state.json`."""
    state = read_state(d)
    keys = state.get("keys", {})
    out = {}
    for pid, prof in state.get("profiles", {}).items():
        until = keys.get(prof["key"], {}).get("cooldown_until")
        if until is not None:
            out[pid] = until
    return out


def assert_no_internal_error(d: Daemon) -> None:
    err = d.stderr()
    assert "Traceback" not in err, err
    assert "internal error" not in err, err


# ---------------------------------------------------------------- kill -9 the daemon


class Agent(threading.Thread):
    """One agent: lease, hold briefly, then release (5 of 6) or report a rate limit.

    Every acknowledged report is recorded with the monotonic time its reply
    arrived. It stops at the first `DaemonUnavailable` once `killing` is
    set, waits for `restarted`, and makes one more lease+release on the
    same `Client` (which must reconnect by itself).
    """

    def __init__(self, n: int, sock: Path, killing: threading.Event,
                 restarted: threading.Event) -> None:
        super().__init__(daemon=True, name=f"agent{n}")
        self.client = Client(sock, fallback_env=False, timeout=10, client_name=f"agent{n}")
        self.killing = killing
        self.restarted = restarted
        self.acked: dict[str, tuple[float, float]] = {}
        """Profile -> (monotonic time of the reply, its cooldown_until)."""
        self.calls = 0
        self.error: BaseException | None = None
        self.after: P.LeaseResult | None = None
        self.paused = threading.Event()

    def run(self) -> None:
        try:
            self._load()
            self.paused.set()
            if not self.restarted.wait(30):
                raise AssertionError("the daemon was never restarted")
            after = self.client.acquire("anthropic")
            self.client.release(after.lease_id)
            self.after = after
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.paused.set()
            self.client.close()

    def _load(self) -> None:
        i = 0
        while not self.killing.is_set():
            try:
                lease = self.client.acquire("anthropic", ttl=60)
                time.sleep(0.01)  # "the request to the provider"
                if i % 6 == 5:
                    r = self.client.report_failure(lease.lease_id, kind="rate_limit",
                                                   status=429, retry_after=3600)
                    assert r.cooldown_until is not None
                    self.acked[lease.profile] = (time.monotonic(), r.cooldown_until)
                else:
                    self.client.release(lease.lease_id)
                self.calls += 2
            except P.DaemonUnavailable:
                if not self.killing.is_set():
                    raise
                return
            i += 1


def test_chaos_kill_daemon_keeps_acknowledged_cooldowns(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({f"anthropic:k{i:03d}": profile() for i in range(600)})
    d.start()
    killing, restarted = threading.Event(), threading.Event()
    agents = [Agent(n, d.socket, killing, restarted) for n in range(8)]
    for a in agents:
        a.start()
    try:

        def acked() -> dict[str, tuple[float, float]]:
            return {k: v for a in agents for k, v in list(a.acked.items())}

        wait_for("40 acknowledged reports", lambda: len(acked()) >= 40)
        # Deterministic half: everything acknowledged by t0 reaches the file,
        # and within the bound.
        t0 = time.monotonic()
        before = {pid: until for pid, (at, until) in acked().items() if at <= t0}
        wait_for("the acknowledged cooldowns in state.json",
                 lambda: before.items() <= cooldowns_on_disk(d).items(), timeout=10)
        latency = time.monotonic() - t0
        assert latency <= STATE_BOUND, f"state.json lagged {latency:.3f}s behind"
        # Keep the load on past the bound, then kill -9 in the middle of it.
        wait_for("load past the bound",
                 lambda: time.monotonic() > t0 + STATE_BOUND + 0.3
                 and all(a.calls > 0 for a in agents))
        assert all(a.is_alive() for a in agents), [a.error for a in agents]
        killing.set()
        t_kill = time.monotonic()
        assert d.proc is not None
        d.proc.kill()
        assert d.stop() == -signal.SIGKILL
        for a in agents:
            assert a.paused.wait(10)  # its load loop saw the kill
        d.start()
        restarted.set()
        for a in agents:
            a.join(20)
    finally:
        killing.set()
        restarted.set()
    assert [a.error for a in agents] == [None] * 8
    assert all(a.after is not None for a in agents)  # the next call after the restart
    must_keep = {pid: until for pid, (at, until) in acked().items()
                 if at <= t_kill - STATE_BOUND}
    assert len(must_keep) >= len(before) >= 40
    status = {p["id"]: p for p in d.call("status")["profiles"]}
    for pid, until in must_keep.items():
        assert status[pid]["state"] == "cooldown", pid
        assert status[pid]["cooldown_until"] == pytest.approx(until, abs=1e-3), pid
    assert_no_internal_error(d)


# ---------------------------------------------------------------- kill -9 a client

HOLDER = """
import sys
from argent_client import Client

c = Client(sys.argv[1], fallback_env=False)
ids = [c.acquire("anthropic", ttl=600).lease_id for _ in range(3)]
ids.append(c.acquire("openai", ttl=600, detached=True).lease_id)
print(" ".join(ids), flush=True)
sys.stdin.read()  # hold the leases until killed
"""


def test_chaos_killed_client_leases_free_within_1s(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"anthropic:a": profile(max_concurrent=1),
                      "anthropic:b": profile(max_concurrent=1),
                      "anthropic:c": profile(max_concurrent=1),
                      "openai:d": profile("openai")})
    d.start()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(d.socket)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        *attached, detached = holder.stdout.readline().decode().split()
        leases = {le["lease_id"] for le in d.call("status")["leases"]}
        assert leases == {*attached, detached}
        c = d.connect()
        assert c.request("lease", {"provider": "anthropic"})["error"]["data"]["code"] == (
            "no_profile_available")
        holder.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()

        def freed() -> bool:
            return [le["lease_id"] for le in c.call("status")["leases"]] == [detached]

        wait_for("the killed client's leases to end", freed, timeout=5)
        assert time.monotonic() - t_kill < FREE_BOUND
    finally:
        holder.kill()
        holder.wait()
    # Free for real: all three profiles lease again; the detached lease lives on.
    assert {c.call("lease", {"provider": "anthropic"})["profile"] for _ in range(3)} == {
        "anthropic:a", "anthropic:b", "anthropic:c"}


# ---------------------------------------------------------------- profile churn

ALLOWED_DURING_CHURN = (P.UnknownProvider, P.NoProfileAvailable, P.LeaseNotFound)


def churn_version(i: int) -> dict[str, Any]:
    """Version `i` of the profiles file: new ids each time; every 10th has no Anthropic."""
    version = {f"openai:v{i}": profile("openai")}
    if i % 10 != 5:
        version[f"anthropic:v{i}a"] = profile()
        version[f"anthropic:v{i}b"] = profile(max_concurrent=1)
    return version


def test_chaos_profiles_rewritten_100_times_under_load(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles(churn_version(0))
    d.start()
    stop = threading.Event()
    unexpected: list[BaseException] = []
    allowed: list[str] = []
    granted = [0]

    def load(n: int) -> None:
        provider = "anthropic" if n % 2 else "openai"
        with Client(d.socket, fallback_env=False, timeout=10) as c:
            while not stop.is_set():
                try:
                    lease = c.acquire(provider)
                    granted[0] += 1
                    c.release(lease.lease_id)
                except ALLOWED_DURING_CHURN as exc:
                    allowed.append(exc.code)
                except BaseException as exc:
                    unexpected.append(exc)
                    return

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 101):
            data = churn_version(i)
            if i % 2:
                write_json(d.profiles, data)  # temp file + rename
            else:
                with open(d.profiles, "w") as f:  # same inode: truncate, then write
                    json.dump(data, f)
            time.sleep(0.01)  # pacing: the churn spans many reloads under load
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert unexpected == []
    assert granted[0] > 0
    last = sorted(churn_version(100))  # the same ids as the last file (secrets aside)

    def settled() -> bool:
        st = d.call("status")
        return [p["id"] for p in st["profiles"]] == last and st["config"]["error"] is None

    wait_for("the last version to win", settled, timeout=10)
    lease = d.call("lease", {"provider": "anthropic"})
    assert lease["profile"] in last
    # The secret served is the last file's, not an earlier version's.
    on_disk = json.loads(d.profiles.read_text())
    assert lease["token"] == on_disk[lease["profile"]]["token"]
    assert_no_internal_error(d)


# ---------------------------------------------------------------- a crowd


@contextmanager
def nofile_limit(soft: int) -> Iterator[None]:
    """Run with the soft RLIMIT_NOFILE at `soft` (children inherit it); restore after."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_chaos_thousand_simultaneous_connections(daemon_factory: Any) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = 1000 + 200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard fd limit is {hard}; 1,000 connections need ~{want}")
    d: Daemon = daemon_factory()
    d.write_profiles({"anthropic:a": profile()})
    # Start the daemon with a typical default soft limit lower than the crowd:
    # it must raise its own limit (to the hard limit) to serve them.
    with nofile_limit(512):
        d.start()
    conns: list[RawConn] = []
    with nofile_limit(want if hard == resource.RLIM_INFINITY else min(hard, 4096)):
        try:
            for _ in range(1000):  # all connected before any of them speaks
                conns.append(RawConn(d.socket))
            for rnd in range(2):
                for i, conn in enumerate(conns):
                    method = "hello" if rnd == 0 else "status"
                    conn.send(json.dumps({"jsonrpc": "2.0", "method": method,
                                          "id": i}).encode() + b"\n")
                for i, conn in enumerate(conns):
                    reply = conn.read()
                    assert reply["id"] == i and "result" in reply, reply
            assert d.call("hello")["server"] == "argentd"
        finally:
            for conn in conns:
                conn.close()
    assert "accept failed" not in d.stderr()
    assert_no_internal_error(d)


# ---------------------------------------------------------------- unwritable state


def break_state_dir(d: Daemon, how: str) -> Callable[[], None]:
    """Make `state.json` unwritable; returns the function that repairs it.

    Tests run as root in CI, where a 0500 folder stops nothing: the first two
    ways stop root too; `chmod_0500` is the everyday case for a normal user.
    """
    folder = d.state_dir
    if how == "chmod_0500":
        os.chmod(folder, 0o500)
        return lambda: os.chmod(folder, 0o700)
    if how == "folder_replaced_by_file":
        aside = folder.with_name(folder.name + ".aside")
        folder.rename(aside)
        folder.write_text("")

        def repair() -> None:
            folder.unlink()
            aside.rename(folder)

        return repair
    state = d.state_file
    kept = state.read_bytes()
    state.unlink()
    state.mkdir()
    (state / "occupied").write_text("")  # a non-empty folder cannot be renamed over

    def repair_file() -> None:
        shutil.rmtree(state)
        state.write_bytes(kept)
        os.chmod(state, 0o600)

    return repair_file


@pytest.mark.parametrize("how", [
    "folder_replaced_by_file",
    "state_file_replaced_by_dir",
    pytest.param("chmod_0500", marks=pytest.mark.skipif(
        os.geteuid() == 0, reason="root writes into a 0500 folder anyway")),
])
def test_chaos_state_dir_unwritable_keeps_serving_and_warns_once(
    daemon_factory: Any, how: str
) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({f"anthropic:{x}": profile() for x in "abc"})
    d.start()
    d.call("report_failure", {"profile": "anthropic:a", "kind": "quota"})
    wait_for("a's cooldown on disk", lambda: "anthropic:a" in cooldowns_on_disk(d))
    repair = break_state_dir(d, how)
    d.call("report_failure", {"profile": "anthropic:b", "kind": "quota"})

    def warnings() -> list[str]:
        return [line for line in d.stderr().splitlines()
                if "WARNING" in line and "cannot write state file" in line]

    wait_for("the warning", warnings, timeout=5)
    c = d.connect()  # it keeps serving, from memory
    for _ in range(20):
        lease = c.call("lease", {"provider": "anthropic"})
        assert lease["profile"] == "anthropic:c"
        c.call("release", {"lease_id": lease["lease_id"]})
    c.call("report_failure", {"profile": "anthropic:c", "kind": "quota"})
    states = {p["id"]: p["state"] for p in c.call("status")["profiles"]}
    assert set(states.values()) == {"cooldown"}
    repair()
    assert d.stop() == 0  # SIGTERM flushes what the disk refused before
    assert len(warnings()) == 1
    assert "written again" in d.stderr()
    assert "stopping without saving" not in d.stderr()
    d.start()
    states = {p["id"]: p["state"] for p in d.call("status")["profiles"]}
    assert set(states.values()) == {"cooldown"}
    assert_no_internal_error(d)


def test_chaos_state_dir_unwritable_at_stop_warns_once(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    d.write_profiles({"anthropic:a": profile(), "anthropic:b": profile()})
    d.start()
    d.call("report_failure", {"profile": "anthropic:a", "kind": "quota"})
    wait_for("a's cooldown on disk", lambda: "anthropic:a" in cooldowns_on_disk(d))
    break_state_dir(d, "folder_replaced_by_file")
    d.call("report_failure", {"profile": "anthropic:b", "kind": "quota"})
    wait_for("the warning", lambda: "cannot write state file" in d.stderr(), timeout=5)
    d.call("disable", {"profile": "anthropic:b"})
    assert d.stop() == 0  # the flush at stop fails again: no second warning, no crash
    assert d.stderr().count("cannot write state file") == 1
    # ... but it says, at stop, that what was not written is lost.
    assert d.stderr().count("stopping without saving the state") == 1
    assert f"make {d.state_dir} writable" in d.stderr()
    assert_no_internal_error(d)


# ---------------------------------------------------------------- stalled peers


# The server runs in-process under fake time for these: a request that had to
# wait for a stalled peer would show up as fake time passing.


@pytest.mark.trio
async def test_chaos_stalled_peers_do_not_stall_others(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(profile_of("anthropic:a")) as s:
        half = await s.connect()
        await half.send(b'{"jsonrpc":"2.0","method":"hel')  # ... and stalls mid-line
        deaf = await s.connect()
        await deaf.call("subscribe")  # ... and never reads its events again
        worker = await s.connect()
        # Each pair is two events: enough to fill the deaf subscriber's socket
        # buffer and then its queue in the daemon many times over.
        for _ in range(2500):
            lease = await worker.call("lease", {"provider": "anthropic", "client": "worker"})
            await worker.call("release", {"lease_id": lease["lease_id"]})
        assert trio.current_time() == 0  # no request ever waited on the stalled peers
        assert "fell behind" in caplog.text
        await half.send(b'lo","id":1}\n')  # the stalled line completes: still served
        reply = await half.read()
        assert reply["id"] == 1 and reply["result"]["server"] == "argentd"
        assert "Traceback" not in caplog.text and "internal error" not in caplog.text


@pytest.mark.trio
async def test_chaos_deaf_subscriber_is_disconnected(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(profile_of("anthropic:a")) as s:
        worker = await s.connect()
        deaf = await s.connect()
        await deaf.call("subscribe")
        for _ in range(2500):
            lease = await worker.call("lease", {"provider": "anthropic"})
            await worker.call("release", {"lease_id": lease["lease_id"]})
        assert "fell behind" in caplog.text
        # Dropped means disconnected: the daemon closed its end of the socket.
        assert await deaf.eof()
        assert len(s.server._conns) == 1


@pytest.mark.trio
@pytest.mark.skipif(sys.platform != "linux", reason="Linux resets a peer that closes unread")
async def test_chaos_peer_reset_is_not_an_error(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(profile_of("anthropic:a")) as s:
        sub = await s.connect()
        await sub.call("subscribe")
        rude = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        rude.connect(str(s.path))
        rude.sendall(b'{"jsonrpc":"2.0","method":"lease","params":{"provider":"anthropic"},'
                     b'"id":1}\n')
        await sub.event("lease")  # the reply is in rude's buffer, left unread
        await trio.testing.wait_all_tasks_blocked()
        rude.close()  # Linux: the daemon's next recv() fails with ECONNRESET
        await sub.event("release")  # the lease ends once the closed connection is handled
        assert (await sub.call("hello"))["server"] == "argentd"
        assert "Traceback" not in caplog.text
        assert "failed" not in caplog.text
