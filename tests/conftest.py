"""Fixtures that start the real `argentd` on a real Unix socket in a temp dir.

`daemon` starts it as a subprocess with HOME and XDG_* pointed into the test's
temp dir and waits for `READY=1` on a real NOTIFY_SOCKET. After the test it
stops the daemon and checks that no secret written with `make_secret` appears
in the daemon's stderr or anywhere under the state dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from .redis_server import redis_server  # noqa: F401 - the cluster tests' real Redis

SECRETS: list[str] = []

# Hypothesis' two wall-clock guards (an example within 200 ms, inputs drawn without a
# pause) measure the machine, not the code: with four workers on two cores a worker
# can stall for seconds (one draw "took" 2.8 s in a clean-clone CI run). The number of
# examples and every property stay as each test sets them.
settings.register_profile("argentd", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("argentd")

# pytest keeps each test module's assert-rewritten code in tests/__pycache__ only when
# bytecode may be written. Where PYTHONDONTWRITEBYTECODE is set (container images set
# it), every worker of every run would rewrite all of tests/ again: about 5 s of CPU
# per worker. The tests' own cache is worth keeping whatever the shell says.
sys.dont_write_bytecode = False

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # Started as a background job (`pytest ... &` in a script ignores SIGINT): the
    # children would inherit the ignore, and the tests that stop `argentctl watch` with
    # SIGINT, as Ctrl-C would, would wait out their timeouts and fail. Run them as from
    # a terminal instead.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def make_secret(prefix: str = "sk-ant-oat01-") -> str:
    """A fresh realistic fake secret, remembered for the leak check."""
    value = prefix + secrets.token_urlsafe(40).replace("-", "x").replace("_", "y")
    SECRETS.append(value)
    return value


def write_json(path: Path, data: object, mode: int = 0o600) -> None:
    """Write `data` atomically (temp file + rename) with `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class RawConn:
    """A bare line-oriented connection: what any program with a socket can do."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""
        self.next_id = 1

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("daemon closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def read(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(self.read_line())
        return msg

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return its reply, skipping event notifications."""
        rid = self.next_id
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            msg["params"] = params
        self.send(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self.read()
            if reply.get("id") == rid:
                return reply

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """`request` that asserts success and returns the result."""
        reply = self.request(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """A running `argentd` subprocess and the files around it."""

    def __init__(self, root: Path, sock_dir: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.home = root / "home"
        self.profiles = self.home / ".argentos" / "agents" / "main" / "agent" / "auth-profiles.json"
        self.config = root / "config" / "argentos" / "argentd.toml"
        self.state_dir = root / "state" / "argentos"
        self.socket = sock_dir / "argentd.sock"
        # DESIGN: a daemon on a socket other than the default keeps
        # state-<first 8 hex of sha256(socket path)>.json.
        digest = hashlib.sha256(os.fsencode(os.path.abspath(self.socket))).hexdigest()[:8]
        self.state_file = self.state_dir / f"state-{digest}.json"
        self.notify_path = sock_dir / "notify"
        self.stderr_path = root / "argentd.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_STATE_HOME": str(root / "state"),
            "XDG_RUNTIME_DIR": str(sock_dir),
            "XDG_CACHE_HOME": str(root / "cache"),
            "ARGENT_SOCKET": str(self.socket),
            "ARGENT_GATEWAY_LISTEN": "127.0.0.1:0",  # never the default port 8411
            "PYTHONUNBUFFERED": "1",
        }
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.2)
        # Read sd_notify datagrams as systemd does, all the time, so the
        # daemon never finds the queue full.
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read_notify, daemon=True)
        self._reader.start()
        self.conns: list[RawConn] = []

    def write_profiles(self, data: object, mode: int = 0o600) -> None:
        write_json(self.profiles, data, mode)

    def start(self, *args: str, wait: bool = True, **extra_env: str) -> None:
        env = {**self.env, "NOTIFY_SOCKET": str(self.notify_path), **extra_env}
        stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - kept for the process' life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "argentd.main", "--log-level", "debug", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
        stderr.close()
        if wait:
            self.wait_message("READY=1")

    def _read_notify(self) -> None:
        while not self._closed:
            try:
                msg = self.notify.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(msg)
                self._cond.notify_all()

    def wait_message(self, text: str, timeout: float = 15.0) -> str:
        """Block until the daemon sends an sd_notify datagram containing `text`.

        Each datagram is returned once: a later call waits for a later one.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.messages:
                    if text in msg:
                        self.messages.remove(msg)
                        return msg
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"argentd exited {self.proc.returncode}:\n{self.stderr()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {text!r} from argentd; stderr:\n{self.stderr()}")
                self._cond.wait(min(left, 0.2))

    def close_notify(self) -> None:
        self._closed = True
        # Wake the reader now rather than at its next 0.2 s timeout.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as poke, \
                contextlib.suppress(OSError):
            poke.sendto(b"", str(self.notify_path))
        self._reader.join(5)
        self.notify.close()

    def connect(self) -> RawConn:
        conn = RawConn(self.socket)
        self.conns.append(conn)
        return conn

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        conn = RawConn(self.socket)
        try:
            return conn.call(method, params)
        finally:
            conn.close()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def check_no_secret_leaked(self, stderr_from: int = 0) -> int:
        """Assert no secret made with `make_secret` is in the state dir, or in the
        daemon's stderr from character `stderr_from` on; returns the length of the
        stderr read, where the next check of the same process may start."""
        log = self.stderr()
        # A secret written across the point where the last check stopped is still seen.
        texts = [("stderr", log[max(0, stderr_from - 256):])]
        if self.state_dir.exists():
            for f in self.state_dir.rglob("*"):
                # credentials.json is the one file argentd writes secrets to (OAuth).
                if f.is_file() and f.name != "credentials.json":
                    texts.append((str(f), f.read_text(errors="replace")))
        for name, text in texts:
            for value in SECRETS:
                assert value not in text, f"a secret leaked into {name}"
                assert value[-24:] not in text, f"part of a secret leaked into {name}"
        return len(log)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Create (not start) daemons; each is stopped and leak-checked afterwards."""
    made: list[Daemon] = []
    sock_dirs: list[str] = []

    def make() -> Daemon:
        # AF_UNIX paths are limited to ~108 bytes: keep the socket folder short.
        sock_dir = tempfile.mkdtemp(prefix="ad-", dir="/tmp")
        sock_dirs.append(sock_dir)
        d = Daemon(tmp_path / f"d{len(made)}", Path(sock_dir))
        made.append(d)
        return d

    yield make
    for d in made:
        for c in d.conns:
            c.close()
        d.stop()
        d.close_notify()
        d.check_no_secret_leaked()
    for s in sock_dirs:
        shutil.rmtree(s, ignore_errors=True)


def default_profiles() -> dict[str, Any]:
    """Two Anthropic profiles and one OpenAI profile (max_concurrent 1), fresh secrets."""
    return {
        "anthropic:one": {"provider": "anthropic", "type": "setup-token",
                          "token": make_secret(), "label": "One"},
        "anthropic:two": {"provider": "anthropic", "type": "api-key",
                          "token": make_secret("sk-ant-api03-"), "label": "Two"},
        "openai:main": {"provider": "openai", "type": "api-key",
                        "token": make_secret("sk-proj-"), "label": "Main",
                        "max_concurrent": 1},
    }


def own_daemon(daemon_factory: Any) -> Daemon:
    """A new `argentd` from `daemon_factory`, started with `default_profiles()`."""
    d: Daemon = daemon_factory()
    d.write_profiles(default_profiles())
    d.start()
    return d


@pytest.fixture
def daemon(daemon_factory: Any) -> Daemon:
    """Started, with `default_profiles()`: a process of the test's own."""
    return own_daemon(daemon_factory)


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    """`status` without what differs between two fresh starts: fingerprints, load time."""
    profiles = [{k: v for k, v in p.items() if k != "fingerprint"} for p in status["profiles"]]
    config = {k: v for k, v in status["config"].items() if k != "loaded_at"}
    return {**status, "profiles": profiles, "config": config}


class SharedDaemon:
    """One `argentd` per test worker, for tests that only lease, report and read
    against `default_profiles()`: starting a process costs about 0.3 s of CPU, most
    of what such a test costs.

    After each test `reset` gives the process the state of a new one, and checks
    that it did: the leases still out are released; the profiles file is written
    again with new secrets and reloaded, so each profile's state (cooldowns, counts,
    budgets, whether it ever succeeded, a disable) starts from nothing, as for a
    secret argentd never saw; then `status` must equal what the new process said,
    fingerprints aside. A test that stops or restarts argentd, or gives it a config,
    takes the `daemon` fixture (a process of its own) instead.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemon: Daemon | None = None
        self.pristine: dict[str, Any] | None = None
        self.checked = 0
        self.sock_dirs: list[str] = []

    def get(self) -> Daemon:
        """The running process; a new one if there is none (the first test, or the
        last reset failed)."""
        if self.daemon is None:
            sock_dir = tempfile.mkdtemp(prefix="ad-", dir="/tmp")
            self.sock_dirs.append(sock_dir)
            d = Daemon(self.root / f"d{len(self.sock_dirs)}", Path(sock_dir))
            d.write_profiles(default_profiles())
            d.start()
            self.daemon, self.checked = d, 0
            self.pristine = _comparable(d.call("status"))
        return self.daemon

    def reset(self, timeout: float = 10.0) -> None:
        """After a test: leak-check its log lines, then bring back the fresh state and
        check it. Raises (and retires the process) when the state cannot be had."""
        d = self.daemon
        assert d is not None and self.pristine is not None
        try:
            for c in d.conns:
                c.close()
            d.conns.clear()
            if d.proc is None or d.proc.poll() is not None:
                raise AssertionError("the shared argentd stopped: a test that stops it "
                                     "takes the `daemon` fixture")
            self.checked = d.check_no_secret_leaked(self.checked)
            assert not d.config.exists(), "a test gave the shared argentd a config file"
            conn = RawConn(d.socket)
            try:
                for lease in conn.call("status")["leases"]:
                    # An attached lease may end on its own as argentd sees its client
                    # leave: lease_not_found is then the answer.
                    conn.request("release", {"lease_id": lease["lease_id"]})
                d.write_profiles(default_profiles())
                assert conn.call("reload") == {"profiles": 3}
                deadline = time.monotonic() + timeout
                while (now := _comparable(conn.call("status"))) != self.pristine:
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"the shared argentd's state is not fresh: {now} != {self.pristine}")
                    time.sleep(0.02)
            finally:
                conn.close()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        d, self.daemon = self.daemon, None
        if d is None:
            return
        for c in d.conns:
            c.close()
        d.stop()
        d.close_notify()
        d.check_no_secret_leaked(self.checked)


@pytest.fixture(scope="session")
def _shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDaemon]:
    shared = SharedDaemon(tmp_path_factory.mktemp("shared-daemon"))
    yield shared
    shared.close()
    for s in shared.sock_dirs:
        shutil.rmtree(s, ignore_errors=True)


@pytest.fixture
def shared_daemon(_shared_daemon: SharedDaemon) -> Iterator[Daemon]:
    """Like `daemon`, but the worker's one process, its state made fresh after each
    test and checked (`SharedDaemon`); for tests that never stop or reconfigure it."""
    yield _shared_daemon.get()
    _shared_daemon.reset()


def shared_or_own(request: pytest.FixtureRequest) -> Daemon:
    """For a module's `daemon` fixture: the worker's shared argentd (`shared_daemon`),
    or for a test marked `own_daemon` a new process, as conftest's `daemon` gives."""
    if request.node.get_closest_marker("own_daemon") is None:
        shared: Daemon = request.getfixturevalue("shared_daemon")
        return shared
    return own_daemon(request.getfixturevalue("daemon_factory"))
