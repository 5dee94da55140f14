"""What the benchmarks share: servers in temp dirs, percentiles, output.

`Proc` starts a server (argentd, the floor server, redis-server) as a
subprocess with HOME and XDG_* pointed into a fresh temp dir and waits for
its readiness: argentd and the floor send `READY=1` to a NOTIFY_SOCKET
datagram socket that `Proc` binds, as systemd would; redis is ready when
its Unix socket answers PING. `make_profiles` writes a profiles file;
`report` prints the human table on stderr and the one JSON object on the
last line of stdout.

Nothing here is measured code: it only sets the stage.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue as queue_mod
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

ANTHROPIC_PROVIDERS = ("anthropic",)


def fake_secret(provider: str, i: int) -> str:
    """A realistic-looking fake secret, distinct per profile (never a real one)."""
    prefix = "sk-ant-oat01-" if provider == "anthropic" else "sk-bench-"
    return f"{prefix}{provider[:8]}{i:08d}{'x' * 40}"


def make_profiles(count: int, providers: Sequence[str]) -> dict[str, Any]:
    """A flat profiles map: `count` setup-token profiles spread round-robin over `providers`.

    Ids are `provider:p<i>`; no profile has `max_concurrent`, so leases never
    run out.
    """
    out: dict[str, Any] = {}
    for i in range(count):
        provider = providers[i % len(providers)]
        out[f"{provider}:p{i}"] = {
            "provider": provider,
            "type": "setup-token" if provider == "anthropic" else "api-key",
            "token": fake_secret(provider, i),
            "label": f"bench {i}",
        }
    return out


def write_json_atomic(path: Path, data: object) -> None:
    """Write `data` as JSON to a temp file (mode 0600) and rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def raise_nofile(want: int) -> int:
    """Raise this process' soft RLIMIT_NOFILE towards `want` (children inherit it).

    Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def rss_mb(pid: int) -> float:
    """VmRSS of `pid` in MiB, from /proc (Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Proc:
    """A server subprocess in a temp dir of its own; `stop()` removes both.

    `root` holds HOME, XDG dirs, the profiles file and the server's log;
    `socket` is where the server listens (a short path under /tmp, because
    AF_UNIX paths are limited to ~108 bytes).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"argent-bench-{name}-"))
        self.sock_dir = Path(tempfile.mkdtemp(prefix="ab-", dir="/tmp"))
        self.socket = self.sock_dir / "s.sock"
        self.home = self.root / "home"
        self.profiles = self.root / "agent" / "auth-profiles.json"
        """In a folder of its own, as a user's is: argentd watches that folder, and a
        log written beside it would wake the watch on every line."""
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_STATE_HOME": str(self.root / "state"),
            "XDG_RUNTIME_DIR": str(self.sock_dir),
            "XDG_CACHE_HOME": str(self.root / "cache"),
            "ARGENT_SOCKET": str(self.socket),
            "ARGENT_PROFILES": str(self.profiles),
            "ARGENT_GATEWAY_LISTEN": "127.0.0.1:0",  # not the user's port 8411
            "PYTHONUNBUFFERED": "1",
        }
        self.home.mkdir(parents=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn_notified(self, argv: list[str], timeout: float) -> float:
        """Spawn `argv` with NOTIFY_SOCKET set; return seconds from spawn to `READY=1`."""
        notify_path = self.sock_dir / "notify"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        try:
            env = {**self.env, "NOTIFY_SOCKET": str(notify_path)}
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
            start = time.perf_counter()
            self.proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO
            )
            log.close()
            deadline = start + timeout
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no READY=1 within {timeout} s\n{self.log()}")
                notify.settimeout(min(left, 0.5))
                try:
                    msg = notify.recv(65536).decode(errors="replace")
                except TimeoutError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"{self.name} exited {self.proc.returncode}:\n{self.log()}"
                        ) from None
                    continue
                if "READY=1" in msg.split("\n"):
                    self.ready_seconds = time.perf_counter() - start
                    return self.ready_seconds
        finally:
            notify.close()

    def start_argentd(self, profiles: object, *, timeout: float = 60.0) -> float:
        """Write `profiles`, start argentd, wait for READY; returns spawn-to-READY seconds."""
        write_json_atomic(self.profiles, profiles)
        argv = [sys.executable, "-m", "argentd.main", "--profiles", str(self.profiles),
                "--socket", str(self.socket)]
        return self._spawn_notified(argv, timeout)

    def start_floor(self, mode: str, *, timeout: float = 30.0) -> float:
        """Start `floor_server.py --mode mode`; returns spawn-to-READY seconds."""
        argv = [sys.executable, str(BENCH_DIR / "floor_server.py"), "--socket",
                str(self.socket), "--mode", mode]
        return self._spawn_notified(argv, timeout)

    def start_redis(self, *, timeout: float = 30.0) -> float:
        """Start redis-server on a Unix socket only (no TCP, no persistence)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not on PATH")
        argv = [exe, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(self.root),
                "--daemonize", "no", "--loglevel", "warning"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        start = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        while True:
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"redis-server did not answer within {timeout} s\n{self.log()}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1)
                    s.connect(str(self.socket))
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            time.sleep(0.01)
        self.ready_seconds = time.perf_counter() - start
        return self.ready_seconds

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 10 s) and remove its temp dirs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of already sorted values, nearest-rank.

    Returns NaN for no values.
    """
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def latency_summary(samples_ns: Iterable[int]) -> dict[str, float]:
    """p50, p99 and max of round-trip times given in ns, returned in microseconds."""
    values = sorted(samples_ns)
    return {
        "p50_us": round(percentile(values, 50) / 1000, 1),
        "p99_us": round(percentile(values, 99) / 1000, 1),
        "max_us": round((values[-1] if values else float("nan")) / 1000, 1),
        "requests": len(values),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded to 3 places; None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


# ---------------------------------------------------------------- output


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, Python, load average at the start."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(result: dict[str, Any], human: str) -> None:
    """Print `human` on stderr and `result` as one JSON line, last, on stdout."""
    print(human, file=sys.stderr, flush=True)
    print(json.dumps(result, sort_keys=False), flush=True)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds `pid` has used so far, from /proc (Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@dataclass
class AgentRun:
    """What `run_agents` saw: each agent's outcome, the provider's counts, CPU used."""

    outcomes: list[Any]
    stats: dict[str, Any]
    start_wall: float
    cpu: dict[str, float]


def run_agents(target: Callable[..., None], specs: Sequence[Any], provider: Any, *,
               watch: dict[str, Sequence[int]], seconds: float, label: str,
               timeout: float = 60.0) -> AgentRun:
    """Run `target(spec, barrier, results)` in one forked process per spec.

    The agents meet at a barrier once ready; then the provider's counts are
    reset, the CPU of each group of pids in `watch` is read, and the agents
    are let go together. Each puts one outcome (with an `error` field) on
    `results`. Agents still alive on an error or Ctrl-C are killed; an
    agent's error is raised as a RuntimeError naming `label`.
    """
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(specs) + 1)
    results = ctx.Queue()
    workers = [ctx.Process(target=target, args=(s, barrier, results), daemon=True)
               for s in specs]
    for w in workers:
        w.start()
    outcomes: list[Any] = []

    def cpu_now() -> dict[str, float]:
        return {name: sum(sum(cpu_seconds(pid)) for pid in pids) for name, pids in watch.items()}

    try:
        barrier.wait(timeout=timeout)
        cpu0 = cpu_now()
        start_wall = time.time()
        provider.reset()
        barrier.wait(timeout=timeout)
        for _ in workers:
            outcomes.append(results.get(timeout=seconds + timeout))
        stats = provider.stats()
        cpu = {name: used - cpu0[name] for name, used in cpu_now().items()}
    except (queue_mod.Empty, threading.BrokenBarrierError) as exc:
        while True:
            try:
                outcomes.append(results.get_nowait())
            except queue_mod.Empty:
                break
        errors = [o.error for o in outcomes if o.error]
        raise RuntimeError(f"{label}: agents failed: {errors[:1] or exc!r}") from None
    finally:
        # All reported: they are exiting. Otherwise (an error, Ctrl-C) stop them now.
        done = len(outcomes) == len(workers)
        for w in workers:
            w.join(5 if done else 0)
            if w.is_alive():
                w.kill()
                w.join()
    errors = [o.error for o in outcomes if o.error]
    if errors:
        raise RuntimeError(f"{label}: {errors[0]}")
    return AgentRun(outcomes, stats, start_wall, cpu)
