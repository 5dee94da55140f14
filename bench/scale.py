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

    result["targets"] = {
        "cold start < 1 s": {"value": result["cold_start_s"]["big_median"],
                             "met": result["cold_start_s"]["big_median"] < 1.0},
        "reload visible < 1 s": {"value": result["reload_s"]["status_median"],
                                 "met": result["reload_s"]["status_median"] < 1.0},
        "RSS with 1,000 connections < 50 MB": {
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
    parts = [table(["figure", big, small], rows)]
    parts.append(table(["target", "figure", "met"], [
        [name, t["value"], "yes" if t["met"] else "NO"] for name, t in r["targets"].items()]))
    m = r["machine"]
    parts.append(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
                 f"load {m['loadavg_at_start']}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())

