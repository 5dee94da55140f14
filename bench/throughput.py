"""Lease+release throughput and per-request latency: argentd, its floor, redis.

Run from the repository root with the project's Python:

    python bench/throughput.py                 # ~1 minute on 2 cores
    python bench/throughput.py --seconds 5 --profile

Modes (each a closed loop: a connection sends its next request when the
previous reply is in; one *request* is one `lease` or one `release` round
trip, a *pair* is both):

- `seq`: one client process, one connection.
- `procs8`: 8 client processes, one connection each.
- `conns64`: 64 connections over 4 processes, 16 each. The blocking
  `argent_client.Client` serves one call at a time per thread, so 16
  connections in one process would need 16 threads fighting over the GIL;
  the default `--conn-driver raw` drives them from one `selectors` loop per
  process with raw JSON-RPC lines (for redis: raw RESP `EVALSHA`/`DEL`),
  the same bytes the clients send. `--conn-driver threads` uses a `Client`
  (or redis-py) per thread instead, to show the difference.

`seq` and `procs8` go through `argent_client.Client` (acquire + release) for
argentd and the floors, and through redis-py (`Script` + `DEL`) for redis.

Targets (servers): `argentd` (4 anthropic profiles, no `max_concurrent`);
`floor` (bench/floor_server.py, argentd's socket loop and protocol codec,
no engine); `floor-streams` (the same over idiomatic trio streams);
`redis` (redis-server on a Unix socket, the lease logic as a Lua script:
the first profile not in cooldown, counted, a lease key with a TTL; release
is DEL) when `redis-server` is on PATH and redis-py is importable.

Prints a table on stderr and one JSON object, last, on stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue as queue_mod
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Proc,
    cpu_seconds,
    latency_summary,
    machine,
    make_profiles,
    ratio,
    report,
    rss_mb,
    table,
)

PROVIDER = "anthropic"
LEASE_TTL = 300
WARMUP_PAIRS = 50
REDIS_KEY = "profiles:anthropic"
LUA_LEASE = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  if redis.call('EXISTS', 'cooldown:' .. id) == 0 then
    redis.call('HINCRBY', 'leased', id, 1)
    local lease = 'lease:' .. redis.call('INCR', 'lease_seq')
    redis.call('SET', lease, id, 'EX', ARGV[1])
    return {lease, redis.call('HGET', 'secrets', id)}
  end
end
return false
"""

MODES: dict[str, tuple[int, int]] = {
    "seq": (1, 1),
    "procs8": (8, 1),
    "conns64": (4, 16),
}
"""mode -> (processes, connections per process)."""

TARGETS = ("argentd", "floor", "floor-streams", "redis")


@dataclass(frozen=True)
class Spec:
    """What one worker process drives."""

    kind: str  # "jsonrpc" or "redis"
    socket: str
    conns: int
    driver: str  # "client" (blocking API, a thread per connection) or "raw" (selectors)
    seconds: float
    sha: str = ""
    cpus: frozenset[int] | None = None


@dataclass
class Outcome:
    """What one worker reports: its pairs, its window and every request's latency (ns)."""

    pairs: int
    start: float
    end: float
    latencies: bytes
    error: str | None = None


# ---------------------------------------------------------------- blocking API


def _client_pair(spec: Spec) -> Callable[[], tuple[int, int, int]]:
    """A function doing one lease + release; returns (t0, t1, t2) in perf_counter ns."""
    ns = time.perf_counter_ns
    if spec.kind == "jsonrpc":
        from argent_client import Client

        client = Client(spec.socket, fallback_env=False, client_name=f"bench[{os.getpid()}]")

        def pair() -> tuple[int, int, int]:
            t0 = ns()
            lease = client.acquire(PROVIDER)
            t1 = ns()
            client.release(lease.lease_id)
            return t0, t1, ns()

        return pair

    import redis

    r = redis.Redis(unix_socket_path=spec.socket)
    script = r.register_script(LUA_LEASE)

    def redis_pair() -> tuple[int, int, int]:
        t0 = ns()
        lease_key, _token = script(keys=[REDIS_KEY], args=[LEASE_TTL])
        t1 = ns()
        r.delete(lease_key)
        return t0, t1, ns()

    return redis_pair


def _client_loop(spec: Spec, barrier: Any, out: list[Outcome]) -> None:
    try:
        pair = _client_pair(spec)
        for _ in range(WARMUP_PAIRS):
            pair()
    except BaseException as exc:
        barrier.abort()
        out.append(Outcome(0, 0.0, 0.0, b"", repr(exc)))
        return
    try:
        barrier.wait(60)
    except BaseException as exc:
        out.append(Outcome(0, 0.0, 0.0, b"", repr(exc)))
        return
    lat = array("q")
    n = 0
    start = time.perf_counter_ns()
    end_at = start + int(spec.seconds * 1e9)
    while True:
        t0, t1, t2 = pair()
        lat.append(t1 - t0)
        lat.append(t2 - t1)
        n += 1
        if t2 >= end_at:
            break
    out.append(Outcome(n, start / 1e9, t2 / 1e9, lat.tobytes()))


def _threads_worker(spec: Spec, barrier: Any) -> Outcome:
    outs: list[Outcome] = []
    threads = [threading.Thread(target=_client_loop, args=(spec, barrier, outs))
               for _ in range(spec.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [o.error for o in outs if o.error]
    if errors:
        return Outcome(0, 0.0, 0.0, b"", errors[0])
    return Outcome(
        sum(o.pairs for o in outs), min(o.start for o in outs), max(o.end for o in outs),
        b"".join(o.latencies for o in outs),
    )


# ---------------------------------------------------------------- raw selectors driver


class _Res(msgspec.Struct):
    lease_id: str | None = None


class _Reply(msgspec.Struct):
    id: int | None = None
    result: _Res | None = None
    error: dict[str, Any] | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)


def _resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_parse(buf: bytes, pos: int = 0) -> tuple[Any, int] | None:
    """One RESP2 value from `buf` at `pos`: (value, next pos), or None if incomplete."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    kind, head = buf[pos:pos + 1], buf[pos + 1:eol]
    if kind in (b"+", b":"):
        return (int(head) if kind == b":" else head), eol + 2
    if kind == b"-":
        raise RuntimeError(f"redis error: {head.decode(errors='replace')}")
    if kind == b"$":
        n = int(head)
        if n < 0:
            return None, eol + 2
        if len(buf) < eol + 2 + n + 2:
            return None
        return buf[eol + 2:eol + 2 + n], eol + 2 + n + 2
    if kind == b"*":
        items: list[Any] = []
        p = eol + 2
        for _ in range(int(head)):
            got = _resp_parse(buf, p)
            if got is None:
                return None
            items.append(got[0])
            p = got[1]
        return items, p
    raise RuntimeError(f"unexpected RESP type {kind!r}")


class _RawConn:
    """One connection of the selectors driver: one request outstanding at a time."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(spec.socket)
        self.buf = b""
        self.rid = 0
        self.lease_id = b""
        self.leasing = True
        self.t0 = 0

    def request(self) -> bytes:
        """The next request's bytes (a lease, or the release of the last lease)."""
        if self.spec.kind == "redis":
            if self.leasing:
                return _resp(b"EVALSHA", self.spec.sha.encode(), b"1", REDIS_KEY.encode(),
                             str(LEASE_TTL).encode())
            return _resp(b"DEL", self.lease_id)
        self.rid += 1
        if self.leasing:
            return (b'{"jsonrpc":"2.0","method":"lease","params":{"provider":"%s",'
                    b'"client":"bench-raw"},"id":%d}\n' % (PROVIDER.encode(), self.rid))
        return (b'{"jsonrpc":"2.0","method":"release","params":{"lease_id":"%s"},"id":%d}\n'
                % (self.lease_id, self.rid))

    def take_reply(self) -> bool:
        """Consume the reply in `buf` if complete; True when it was."""
        if self.spec.kind == "redis":
            got = _resp_parse(self.buf)
            if got is None:
                return False
            value, end = got
            self.buf = self.buf[end:]
            if self.leasing:
                self.lease_id = value[0]
            return True
        nl = self.buf.find(b"\n")
        if nl < 0:
            return False
        line, self.buf = self.buf[:nl], self.buf[nl + 1:]
        reply = _reply_decoder.decode(line)
        if reply.error is not None or reply.id != self.rid:
            raise RuntimeError(f"bad reply: {line[:200]!r}")
        if self.leasing:
            assert reply.result is not None and reply.result.lease_id is not None
            self.lease_id = reply.result.lease_id.encode()
        return True

    def roundtrip_blocking(self) -> None:
        self.sock.sendall(self.request())
        while not self.take_reply():
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.buf += data
        self.leasing = not self.leasing


def _raw_worker(spec: Spec, barrier: Any) -> Outcome:
    try:
        conns = [_RawConn(spec) for _ in range(spec.conns)]
        for c in conns:
            for _ in range(2 * WARMUP_PAIRS // spec.conns + 2):
                c.roundtrip_blocking()
            c.sock.setblocking(False)
    except BaseException:
        barrier.abort()
        raise
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    barrier.wait(60)
    ns = time.perf_counter_ns
    lat = array("q")
    pairs = 0
    start = ns()
    end_at = start + int(spec.seconds * 1e9)
    for c in conns:
        c.t0 = ns()
        c.sock.sendall(c.request())
    active = len(conns)
    last = start
    while active:
        for key, _ in sel.select():
            c = key.data
            data = c.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            c.buf += data
            if not c.take_reply():
                continue
            t = ns()
            lat.append(t - c.t0)
            if not c.leasing:
                pairs += 1
                last = t
                if t >= end_at:
                    sel.unregister(c.sock)
                    active -= 1
                    continue
            c.leasing = not c.leasing
            c.t0 = t
            c.sock.send(c.request())
    for c in conns:
        c.sock.close()
    return Outcome(pairs, start / 1e9, last / 1e9, lat.tobytes())


def _worker(spec: Spec, barrier: Any, results: Any) -> None:
    try:
        if spec.cpus is not None:
            os.sched_setaffinity(0, spec.cpus)
        if spec.driver == "raw":
            outcome = _raw_worker(spec, barrier)
        else:
            outcome = _threads_worker(spec, barrier)
    except BaseException as exc:
        import traceback

        outcome = Outcome(0, 0.0, 0.0, b"", "".join(traceback.format_exception(exc)))
    results.put(outcome)


# ---------------------------------------------------------------- orchestration


def run_mode(kind: str, sock: str, mode: str, seconds: float, driver: str,
             sha: str = "", cpus: frozenset[int] | None = None) -> dict[str, Any]:
    """Drive one mode against one server; returns pairs/s and request latencies.

    `cpus` pins the load-generating processes to those CPUs.
    """
    procs, conns = MODES[mode]
    if conns == 1:
        driver = "client"
    spec = Spec(kind=kind, socket=sock, conns=conns, driver=driver, seconds=seconds, sha=sha,
                cpus=cpus)
    ctx = mp.get_context("fork")
    parties = procs if driver == "raw" else procs * conns
    barrier = ctx.Barrier(parties)
    results = ctx.Queue()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = [ctx.Process(target=_worker, args=(spec, barrier, results), daemon=True)
               for _ in range(procs)]
    for w in workers:
        w.start()
    outcomes: list[Outcome] = []
    try:
        for _ in workers:
            outcomes.append(results.get(timeout=seconds + 120))
    except queue_mod.Empty:
        raise RuntimeError(f"{mode}: a worker did not report") from None
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.kill()
    errors = [o.error for o in outcomes if o.error]
    if errors:
        raise RuntimeError(f"{mode}: {errors[0]}")
    # Reaped workers only (the servers are reaped at stop): the load's own CPU.
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (usage_after.ru_utime - usage_before.ru_utime
                  + usage_after.ru_stime - usage_before.ru_stime)
    window = max(o.end for o in outcomes) - min(o.start for o in outcomes)
    pairs = sum(o.pairs for o in outcomes)
    lat = array("q")
    for o in outcomes:
        lat.frombytes(o.latencies)
    return {
        "pairs_per_s": round(pairs / window),
        "pairs": pairs,
        "seconds": round(window, 3),
        "driver": "raw" if driver == "raw" else ("redis-py" if kind == "redis" else "Client"),
        "client_cpu_us_per_pair": round(client_cpu * 1e6 / max(pairs, 1), 1),
        **latency_summary(lat),
    }


def setup_redis(sock: str, n_profiles: int) -> str:
    """Load the profiles into redis and the lease script; returns its SHA."""
    import redis

    r = redis.Redis(unix_socket_path=sock)
    profiles = make_profiles(n_profiles, [PROVIDER])
    r.flushall()
    r.rpush(REDIS_KEY, *profiles)
    r.hset("secrets", mapping={k: v["token"] for k, v in profiles.items()})
    sha: str = r.script_load(LUA_LEASE)
    r.close()
    return sha


def redis_available() -> str | None:
    """None when redis can be benchmarked here, else why not."""
    if shutil.which("redis-server") is None:
        return "redis-server not on PATH"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py not installed (pip install redis)"
    return None


# ---------------------------------------------------------------- profiling


def profile_daemon(pid: int, sock: str, seconds: float, driver: str, top: int, *,
                   pin: bool, gil: bool) -> dict[str, Any]:
    """Run conns64 against argentd under `py-spy record`; returns the hottest functions.

    py-spy counts a runnable thread as busy, so on a shared core the time
    the daemon sits preempted (a reply's send() wakes a client that takes
    the core) shows up in send(). `pin` puts the daemon on the first CPU
    and the load on the others (good on a quiet machine, bad when other
    work shares that CPU); `gil` keeps only samples holding the GIL, i.e.
    Python work without the system calls (see the server CPU columns for
    those). See `summarise_profile` for the figures.
    """
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return {"error": "py-spy not found (pip install py-spy)"}
    out_dir = Path(tempfile.mkdtemp(prefix="argent-bench-prof-"))
    raw = out_dir / "argentd.txt"
    spy = subprocess.Popen(
        [exe, "record", "-p", str(pid), "-d", str(int(seconds + 2)), "-r", "200", "-f", "raw",
         "-o", str(raw), *(["--gil"] if gil else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches before the load starts
    all_cpus = os.sched_getaffinity(pid)
    pinned = pin and len(all_cpus) > 1
    if pinned:
        first = min(all_cpus)
        os.sched_setaffinity(pid, {first})
        load_cpus: frozenset[int] | None = frozenset(all_cpus - {first})
    else:
        load_cpus = None
    try:
        figures = run_mode("jsonrpc", sock, "conns64", seconds, driver, cpus=load_cpus)
    finally:
        if pinned:
            os.sched_setaffinity(pid, all_cpus)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    result = summarise_profile(raw.read_text(), top)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"rate_hz": 200, "load": figures, "pinned": pinned, "gil_only": gil, **result}


def _function(frame: str) -> str:
    """`Conn.send (argentd/server.py:73)` -> `Conn.send (argentd/server.py)`."""
    name, sep, where = frame.rpartition(" (")
    if not sep:
        return frame
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})"


def summarise_profile(raw: str, top: int) -> dict[str, Any]:
    """Hot functions of the event-loop thread from py-spy's raw (collapsed) output.

    Only samples of the thread running `trio.run` count: py-spy cannot
    always tell a worker thread blocked in a lock or in native code (trio's
    idle thread cache, the file watcher) from one at work, and those would
    drown the loop's own profile. Their share is reported as
    `other_threads_pct`. `self` counts samples where a function is the
    leaf, `total` where it is anywhere on the stack; lines are merged per
    function. Percentages are of the loop thread's samples.
    """
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    loop = other = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_function(f) for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        if not any(f.startswith("run (trio/_core/_run.py") for f in frames):
            other += n
            continue
        loop += n
        self_counts[frames[-1]] += n
        for f in set(frames):
            total_counts[f] += n

    def pct(c: Counter[str]) -> list[list[Any]]:
        return [[f, round(100 * n / max(loop, 1), 1)] for f, n in c.most_common(top)]

    return {"samples": loop, "other_threads_pct": round(100 * other / max(loop + other, 1), 1),
            "self": pct(self_counts), "total": pct(total_counts)}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table and JSON; returns the exit code."""
    parser = argparse.ArgumentParser(
        description="Lease+release throughput and latency: argentd vs a floor and redis+Lua.")
    parser.add_argument("--seconds", type=float, default=3.0, help="per mode and target (3)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of " + ",".join(MODES))
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma list of " + ",".join(TARGETS))
    parser.add_argument("--conn-driver", choices=["raw", "threads"], default="raw",
                        help="how conns64 drives 16 connections a process (default raw)")
    parser.add_argument("--profiles", type=int, default=4, help="anthropic profiles (4)")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, run conns64 on argentd under py-spy and print hot frames")
    parser.add_argument("--top", type=int, default=20, help="hot frames to print (20)")
    parser.add_argument("--pin", action="store_true",
                        help="with --profile: daemon on the first CPU, load on the others")
    parser.add_argument("--gil", action="store_true",
                        help="with --profile: only samples holding the GIL (Python work)")
    opts = parser.parse_args(argv)
    modes = [m for m in opts.modes.split(",") if m]
    targets = [t for t in opts.targets.split(",") if t]
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}")
    for t in targets:
        if t not in TARGETS:
            parser.error(f"unknown target {t!r}")

    result: dict[str, Any] = {
        "bench": "throughput",
        "machine": machine(),
        "settings": {"seconds": opts.seconds, "conn_driver": opts.conn_driver,
                     "profiles": opts.profiles, "modes": {m: MODES[m] for m in modes}},
        "results": {},
        "skipped": {},
    }
    figures: dict[str, dict[str, Any]] = result["results"]
    servers: dict[str, tuple[Proc, str]] = {}
    try:
        for target in targets:
            if target == "redis" and (why := redis_available()) is not None:
                result["skipped"]["redis"] = why
                print(f"skipping redis: {why}", file=sys.stderr)
                continue
            proc = Proc(target)
            servers[target] = (proc, "")
            if target == "argentd":
                proc.start_argentd(make_profiles(opts.profiles, [PROVIDER]))
            elif target == "redis":
                proc.start_redis()
                servers[target] = (proc, setup_redis(str(proc.socket), opts.profiles))
            else:
                proc.start_floor("raw" if target == "floor" else "streams")
            figures[target] = {}
        # Mode by mode, every server in turn: machine noise then hits the
        # figures a ratio compares at about the same time.
        for mode in modes:
            for target, (proc, sha) in servers.items():
                print(f"{mode} {target} ...", file=sys.stderr, flush=True)
                figures[target][mode] = measure(proc, target, mode, opts, sha)
        for target, (proc, _) in servers.items():
            result.setdefault("server_rss_mb", {})[target] = round(rss_mb(proc.pid), 1)
        if opts.profile and "argentd" in servers:
            print("argentd conns64 under py-spy ...", file=sys.stderr, flush=True)
            proc = servers["argentd"][0]
            result["profile"] = profile_daemon(proc.pid, str(proc.socket), opts.seconds,
                                               opts.conn_driver, opts.top, pin=opts.pin,
                                               gil=opts.gil)
    finally:
        for proc, _ in servers.values():
            proc.stop()

    ratios: dict[str, dict[str, float | None]] = {}
    for mode in modes if "argentd" in figures else []:
        a = figures.get("argentd", {}).get(mode, {}).get("pairs_per_s")
        ratios[mode] = {
            f"argentd/{other}": ratio(a, figures.get(other, {}).get(mode, {}).get("pairs_per_s"))
            for other in ("floor", "floor-streams", "redis") if other in figures
        }
    result["ratios"] = ratios
    result["targets"] = check_targets(figures)
    report(result, human(result))
    return 0


def measure(proc: Proc, target: str, mode: str, opts: argparse.Namespace,
            sha: str) -> dict[str, Any]:
    """`run_mode` against `proc`, plus the server's CPU time per pair."""
    kind = "redis" if target == "redis" else "jsonrpc"
    before = cpu_seconds(proc.pid)
    f = run_mode(kind, str(proc.socket), mode, opts.seconds, opts.conn_driver, sha)
    after = cpu_seconds(proc.pid)
    # Server CPU per pair: steadier than pairs/s on a shared machine.
    user, system = after[0] - before[0], after[1] - before[1]
    f["server_cpu_us_per_pair"] = {
        "user": round(user * 1e6 / f["pairs"], 1),
        "system": round(system * 1e6 / f["pairs"], 1),
    }
    f["server_cpu_share"] = round((user + system) / f["seconds"], 2)
    return f


def check_targets(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets for this machine class, each with the figure and whether it is met."""
    a = figures.get("argentd", {})
    out: dict[str, Any] = {}
    p8 = a.get("procs8")
    if p8:
        out["procs8 >= 12000 pairs/s"] = {"value": p8["pairs_per_s"],
                                          "met": p8["pairs_per_s"] >= 12000}
        out["procs8 p99 < 1 ms"] = {"value_us": p8["p99_us"], "met": p8["p99_us"] < 1000}
        r8 = figures.get("redis", {}).get("procs8")
        if r8:
            x = ratio(p8["pairs_per_s"], r8["pairs_per_s"])
            out["procs8 >= 1.2x redis"] = {"value": x, "met": x is not None and x >= 1.2}
    c64 = a.get("conns64")
    if c64:
        out["conns64 >= 20000 pairs/s"] = {"value": c64["pairs_per_s"],
                                           "met": c64["pairs_per_s"] >= 20000}
    return out


def human(result: dict[str, Any]) -> str:
    """The short table printed before the JSON."""
    rows = []
    for target, modes in result["results"].items():
        for mode, f in modes.items():
            cpu = f["server_cpu_us_per_pair"]
            rows.append([target, mode, f["driver"], f["pairs_per_s"], f["p50_us"], f["p99_us"],
                         f"{cpu['user']}+{cpu['system']}", f["server_cpu_share"],
                         f["client_cpu_us_per_pair"]])
    parts = [table(["target", "mode", "driver", "pairs/s", "p50 us", "p99 us",
                    "srv cpu us/pair (usr+sys)", "srv cores", "load cpu us/pair"], rows)]
    ratio_rows = [[mode, name, v]
                  for mode, rs in result["ratios"].items() for name, v in rs.items()]
    if ratio_rows:
        parts.append(table(["mode", "ratio (pairs/s)", "value"], ratio_rows))
    if result["targets"]:
        parts.append(table(["target", "figure", "met"], [
            [name, t.get("value", t.get("value_us")), "yes" if t["met"] else "NO"]
            for name, t in result["targets"].items()]))
    prof = result.get("profile")
    if prof and "self" in prof:
        parts.append(f"argentd's event loop under py-spy ({prof['samples']} samples, conns64 at "
                     f"{prof['load']['pairs_per_s']} pairs/s; other threads "
                     f"{prof['other_threads_pct']} % of all samples; pinned {prof['pinned']}, "
                     f"GIL only {prof['gil_only']}):")
        parts.append(table(["self %", "frame"], [[p, f] for f, p in prof["self"]]))
        parts.append(table(["total %", "frame"], [[p, f] for f, p in prof["total"]]))
    elif prof:
        parts.append(f"profile: {prof['error']}")
    m = result["machine"]
    parts.append(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
                 f"load {m['loadavg_at_start']}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
