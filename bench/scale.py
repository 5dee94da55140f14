"""argentd with 10,000 profiles: cold start, hot reload, memory, lease latency.

Run from the repository root with the project's Python:

    python bench/scale.py                  # ~30 s
    python bench/scale.py --profiles 10000 --providers 20 --seconds 4

What it measures (each against the issue's target):

- cold start: from spawning `python -m argentd.main` to its `READY=1`
  datagram on NOTIFY_SOCKET (interpreter start, imports, loading and
  validating the file, binding the socket), median of `--starts` runs;
  the same with 10 profiles for reference. Target < 1 s.
- hot reload: a client subscribed to events; one profile's label is edited
  and the file atomically renamed over the old one; the time until the
  subscriber gets the `reload` event, then until `status` shows the new
  label. Median of `--reloads` edits. Target < 1 s.
- memory: the daemon's VmRSS (/proc) just after READY, then with 1,000
  idle connections open (each said `hello`, so the daemon holds them all; the
  soft RLIMIT_NOFILE is raised for the bench and, inherited, the daemon).
  Target < 50 MB. (Also shown: RSS after the reloads below.)
- waiters: in-process, 10,000 lease requests waiting on one cooling
  profile: the time to queue them, another provider's lease+release while
  they wait, and the time to serve them all when the cooldown ends.
- lease latency: one sequential `argent_client.Client` doing lease+release
  on `anthropic` (500 profiles in the 10,000; 10 in the small file), in
  alternating rounds against both daemons so machine noise hits both
  alike. Target: 10,000-profile p50 within 1.2x of the 10-profile p50.

Prints a table on stderr and one JSON object, last, on stdout.
"""

from __future__ import annotations

import argparse
import copy
import socket
import statistics
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Proc,
    latency_summary,
    machine,
    make_profiles,
    raise_nofile,
    ratio,
    report,
    rss_mb,
    table,
    write_json_atomic,
)

PROVIDER = "anthropic"


def providers(n: int) -> list[str]:
    """`anthropic` and n-1 made-up provider names."""
    return [PROVIDER] + [f"prov{i:02d}" for i in range(1, n)]


# ---------------------------------------------------------------- measurements


def cold_starts(profiles: dict[str, Any], n: int) -> list[float]:
    """Spawn-to-READY seconds of `n` fresh daemons serving `profiles`."""
    out = []
    for _ in range(n):
        with Proc("scale-start") as proc:
            out.append(proc.start_argentd(profiles))
    return out


def reload_times(proc: Proc, profiles: dict[str, Any], n: int) -> list[dict[str, float]]:
    """Edit one profile's label `n` times; time until the event and until `status` shows it."""
    from argent_client import Client

    data = copy.deepcopy(profiles)
    pid = next(iter(data))
    client = Client(proc.socket, fallback_env=False)
    out = []
    try:
        for i in range(n):
            stream = client.subscribe(idle_timeout=30)
            try:
                label = f"edited {i} {time.time()}"
                data[pid]["label"] = label
                start = time.perf_counter()
                write_json_atomic(proc.profiles, data)
                for event in stream:
                    if event.type in ("reload", "reload_error"):
                        break
                t_event = time.perf_counter() - start
                if event.type == "reload_error":
                    raise RuntimeError(f"reload failed: {event.message}")
                while True:
                    status = client.status()
                    if any(p.id == pid and p.label == label for p in status.profiles):
                        break
                    time.sleep(0.005)
                t_seen = time.perf_counter() - start
            finally:
                stream.close()
            out.append({"event_s": t_event, "status_s": t_seen})
    finally:
        client.close()
    return out


def idle_connections_rss(proc: Proc, n: int) -> dict[str, float]:
    """RSS with `n` idle connections, each of which got its `hello` answered."""
    idle = rss_mb(proc.pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(str(proc.socket))
            s.sendall(b'{"jsonrpc":"2.0","method":"hello","id":1}\n')
            socks.append(s)
        for s in socks:
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise EOFError("argentd closed an idle connection")
                buf += chunk
        time.sleep(0.2)  # let the daemon settle (allocations after the last reply)
        held = rss_mb(proc.pid)
    finally:
        for s in socks:
            s.close()
    return {"idle_mb": round(idle, 1), "with_conns_mb": round(held, 1),
            "per_conn_kb": round((held - idle) * 1024 / n, 1)}


def lease_round(proc: Proc, seconds: float) -> array[int]:
    """Sequential lease+release for `seconds`; returns per-request round trips in ns."""
    from argent_client import Client

    ns = time.perf_counter_ns
    lat = array("q")
    with Client(proc.socket, fallback_env=False) as client:
        for _ in range(50):
            client.release(client.acquire(PROVIDER).lease_id)
        end = ns() + int(seconds * 1e9)
        while True:
            t0 = ns()
            lease = client.acquire(PROVIDER)
            t1 = ns()
            client.release(lease.lease_id)
            t2 = ns()
            lat.append(t1 - t0)
            lat.append(t2 - t1)
            if t2 >= end:
                return lat


def pair_summary(lat: array[int]) -> dict[str, dict[str, float]]:
    """Per-request and per-pair latency summaries of interleaved lease/release times."""
    pairs = [lat[i] + lat[i + 1] for i in range(0, len(lat) - 1, 2)]
    leases = lat[0::2]
    return {"request": latency_summary(lat), "pair": latency_summary(pairs),
            "lease": latency_summary(leases)}


def engine_only(profiles: dict[str, Any], pairs: int) -> dict[str, Any]:
    """In-process, no socket: the engine's own cost at this size.

    Loads `profiles` with the daemon's loader, builds its `Engine` and times
    `pairs` lease+release calls (with the outbox drain and next-deadline
    query the server does after each); also one state snapshot + encode,
    which the daemon repeats every save delay while leases flow. Uses
    argentd internals: a refactor may rename them, so a failure is
    reported instead of raised.
    """
    import tempfile

    try:
        from argent_client import protocol as P
        from argentd.config import DEFAULT_CONFIG
        from argentd.engine import Engine
        from argentd.profiles import load_profiles
        from argentd.state import StateStore

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "auth-profiles.json"
            write_json_atomic(path, profiles)
            t = time.perf_counter()
            loaded = load_profiles(path, environ={})
            t_load = time.perf_counter() - t
            now = time.time()
            t = time.perf_counter()
            engine = Engine(loaded, DEFAULT_CONFIG, now=now)
            t_engine = time.perf_counter() - t
            params = P.LeaseParams(provider=PROVIDER, client="bench")

            def loop(n: int) -> float:
                start = time.perf_counter()
                for i in range(n):
                    at = now + i * 1e-5
                    lease = engine.lease(params, conn=1, now=at)
                    engine.take_outbox()
                    engine.next_deadline()
                    engine.release(lease.lease_id, now=at)
                    engine.take_outbox()
                    engine.next_deadline()
                return time.perf_counter() - start

            loop(100)
            per_pair = loop(pairs) / pairs
            store = StateStore(Path(tmp) / "state.json")
            t = time.perf_counter()
            data = store.encode(engine.snapshot())
            t_snap = time.perf_counter() - t
    except Exception as exc:  # a renamed internal: say so, keep the rest of the run
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"load_profiles_ms": round(t_load * 1000, 1),
            "engine_init_ms": round(t_engine * 1000, 1),
            "lease_release_us": round(per_pair * 1e6, 1),
            "snapshot_encode_ms": round(t_snap * 1000, 2), "state_bytes": len(data)}


def waiters_only(n: int, pairs: int = 1000) -> dict[str, Any]:
    """In-process: `n` lease requests waiting on one cooling profile.

    Times queueing them, `pairs` lease+release calls on another provider
    while they wait (what every other client pays), and serving them all
    when the cooldown ends. Uses argentd internals, like `engine_only`.
    """
    try:
        from argent_client import protocol as P
        from argentd.config import DEFAULT_CONFIG
        from argentd.engine import Engine
        from argentd.model import Profile, ProfileSet, Secret

        def profile(pid: str) -> Profile:
            return Profile(id=pid, provider=pid.split(":")[0], type="api-key",
                           secret=Secret(f"sk-bench-{pid}-0123456789abcdef"))

        now = time.time()
        engine = Engine(ProfileSet([profile("anthropic:a"), profile("openai:b")]),
                        DEFAULT_CONFIG, now=now)
        engine.report(P.ReportParams(kind="rate_limit", profile="anthropic:a", retry_after=60),
                      conn=None, now=now)
        wait = P.LeaseParams(provider="anthropic", wait=600)
        t = time.perf_counter()
        for i in range(n):
            engine.wait(wait, conn=1, now=now + i * 1e-6)
            engine.take_outbox()
        t_queue = time.perf_counter() - t
        other = P.LeaseParams(provider="openai")
        t = time.perf_counter()
        for _ in range(pairs):
            lease = engine.lease(other, conn=2, now=now + 1)
            engine.release(lease.lease_id, now=now + 1)
            engine.take_outbox()
        t_other = (time.perf_counter() - t) / pairs
        t = time.perf_counter()
        engine.advance(now + 60)
        served = len(engine.take_outbox().served)
        t_serve = time.perf_counter() - t
    except Exception as exc:  # a renamed internal: say so, keep the rest of the run
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"waiters": n, "queue_s": round(t_queue, 3), "served": served,
            "serve_all_s": round(t_serve, 3),
            "other_lease_release_us": round(t_other * 1e6, 1)}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table and JSON; returns the exit code."""
    parser = argparse.ArgumentParser(
        description="argentd at scale: start, reload, RSS, lease latency with many profiles.")
    parser.add_argument("--profiles", type=int, default=10_000, help="profiles (10000)")
    parser.add_argument("--providers", type=int, default=20, help="providers (20)")
    parser.add_argument("--small", type=int, default=10,
                        help="profiles of the reference daemon, all anthropic (10)")
    parser.add_argument("--connections", type=int, default=1000, help="idle connections (1000)")
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time (3)")
    parser.add_argument("--reloads", type=int, default=3, help="reloads to time (3)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="lease-latency time per daemon, split in rounds (4)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (4)")
    parser.add_argument("--waiters", type=int, default=10_000,
                        help="waiting lease requests queued in the engine (10000)")
    opts = parser.parse_args(argv)

    nofile = raise_nofile(opts.connections + 1024)
    big = make_profiles(opts.profiles, providers(opts.providers))
    small = make_profiles(opts.small, [PROVIDER])
    result: dict[str, Any] = {
        "bench": "scale",
        "machine": machine(),
        "settings": {"profiles": opts.profiles, "providers": opts.providers,
                     "small": opts.small, "connections": opts.connections,
                     "rlimit_nofile": nofile, "seconds": opts.seconds, "rounds": opts.rounds},
    }

    print("cold starts ...", file=sys.stderr, flush=True)
    starts_big = cold_starts(big, opts.starts)
    starts_small = cold_starts(small, opts.starts)
    result["cold_start_s"] = {
        "big_median": round(statistics.median(starts_big), 3),
        "big_all": [round(x, 3) for x in starts_big],
        "small_median": round(statistics.median(starts_small), 3),
        "small_all": [round(x, 3) for x in starts_small],
    }

    with Proc("scale-big") as pbig, Proc("scale-small") as psmall:
        pbig.start_argentd(big)
        psmall.start_argentd(small)

        # Memory first, on fresh daemons: leases and reloads leave garbage behind.
        print(f"{opts.connections} idle connections ...", file=sys.stderr, flush=True)
        result["rss_mb"] = {"big": idle_connections_rss(pbig, opts.connections),
                            "small": idle_connections_rss(psmall, opts.connections)}

        print("lease latency ...", file=sys.stderr, flush=True)
        lat_big, lat_small = array("q"), array("q")
        per_round = opts.seconds / opts.rounds
        for _ in range(opts.rounds):
            lat_small.extend(lease_round(psmall, per_round))
            lat_big.extend(lease_round(pbig, per_round))
        sb, ss = pair_summary(lat_big), pair_summary(lat_small)
        result["lease_latency"] = {"big": sb, "small": ss,
                                   "p50_ratio": ratio(sb["pair"]["p50_us"], ss["pair"]["p50_us"]),
                                   "p99_ratio": ratio(sb["pair"]["p99_us"], ss["pair"]["p99_us"])}

        print("reloads ...", file=sys.stderr, flush=True)
        reloads = reload_times(pbig, big, opts.reloads)
        result["reload_s"] = {
            "event_median": round(statistics.median(r["event_s"] for r in reloads), 3),
            "status_median": round(statistics.median(r["status_s"] for r in reloads), 3),
            "all": [{k: round(v, 3) for k, v in r.items()} for r in reloads],
        }
        result["rss_mb"]["big"]["after_reloads_mb"] = round(rss_mb(pbig.pid), 1)

    print("engine alone ...", file=sys.stderr, flush=True)
    result["engine_only"] = {"big": engine_only(big, 2000), "small": engine_only(small, 2000)}
    print(f"{opts.waiters} waiters ...", file=sys.stderr, flush=True)
    result["waiters"] = waiters_only(opts.waiters)

    result["targets"] = {
        "cold start < 1 s": {"value": result["cold_start_s"]["big_median"],
                             "met": result["cold_start_s"]["big_median"] < 1.0},
        "reload visible < 1 s": {"value": result["reload_s"]["status_median"],
                                 "met": result["reload_s"]["status_median"] < 1.0},
        f"RSS with {opts.connections:,} connections < 50 MB": {
            "value": result["rss_mb"]["big"]["with_conns_mb"],
            "met": result["rss_mb"]["big"]["with_conns_mb"] < 50},
        "lease p50 within 1.2x of 10 profiles": {
            "value": result["lease_latency"]["p50_ratio"],
            "met": (result["lease_latency"]["p50_ratio"] or 99) <= 1.2},
    }
    report(result, human(result))
    return 0


def human(r: dict[str, Any]) -> str:
    """The short table printed before the JSON."""
    s = r["settings"]
    cs, rl, rss, ll = r["cold_start_s"], r["reload_s"], r["rss_mb"], r["lease_latency"]
    big, small = f"{s['profiles']} profiles", f"{s['small']} profiles"
    rows = [
        ["cold start to READY (s, median)", cs["big_median"], cs["small_median"]],
        ["reload: event at subscriber (s)", rl["event_median"], None],
        ["reload: visible in status (s)", rl["status_median"], None],
        ["RSS idle (MB)", rss["big"]["idle_mb"], rss["small"]["idle_mb"]],
        [f"RSS with {s['connections']} connections (MB)", rss["big"]["with_conns_mb"],
         rss["small"]["with_conns_mb"]],
        ["RSS idle after the reloads (MB)", rss["big"]["after_reloads_mb"], None],
        ["lease+release p50 (us)", ll["big"]["pair"]["p50_us"], ll["small"]["pair"]["p50_us"]],
        ["lease+release p99 (us)", ll["big"]["pair"]["p99_us"], ll["small"]["pair"]["p99_us"]],
        ["lease alone p50 (us)", ll["big"]["lease"]["p50_us"], ll["small"]["lease"]["p50_us"]],
    ]
    eb, es = r["engine_only"]["big"], r["engine_only"]["small"]
    if "error" not in eb and "error" not in es:
        rows += [
            ["engine alone: lease+release (us)", eb["lease_release_us"], es["lease_release_us"]],
            ["engine alone: load file + init (ms)",
             round(eb["load_profiles_ms"] + eb["engine_init_ms"], 1),
             round(es["load_profiles_ms"] + es["engine_init_ms"], 1)],
            ["engine alone: state snapshot+encode (ms)", eb["snapshot_encode_ms"],
             es["snapshot_encode_ms"]],
        ]
    wt = r["waiters"]
    if "error" not in wt:
        rows += [
            [f"engine alone: queue {wt['waiters']} waiters (s)", wt["queue_s"], None],
            [f"engine alone: serve {wt['served']} waiters at once (s)", wt["serve_all_s"], None],
            ["engine alone: other lease+release while they wait (us)",
             wt["other_lease_release_us"], None],
        ]
    parts = [table(["figure", big, small], rows)]
    parts.append(table(["target", "figure", "met"], [
        [name, t["value"], "yes" if t["met"] else "NO"] for name, t in r["targets"].items()]))
    m = r["machine"]
    parts.append(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
                 f"load {m['loadavg_at_start']}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())

