"""Cluster figures: propagation between hosts, a lease's cost with the cluster on, the client.

    python bench/cluster.py [--rounds 300] [--leases 3000]

Three parts, each printed as a table (stderr) and in one JSON object (stdout):

- **propagation**: two hosts (an Engine and its Cluster task each, in one
  trio process) over one redis-server on a Unix socket; host a reports a
  rate limit (then a reset) and we time until host b's engine holds it.
  Target (DESIGN): p99 <= 50 ms. One process runs both hosts, so their work
  adds up on one core: a pessimistic stand-in for two machines on a LAN.
- **lease cost**: two real daemons, one without `[cluster]`, one with it
  connected, and that one again with `max_concurrent` on the profile (every
  lease then passes the slot gate and moves slots in Redis); then both
  with a rate-limit reading on every release (with the cluster, the
  secret's request budget is then shared: each lease spends a token taken
  ahead from Redis, each reading goes to Redis); p50 of a
  lease + release round trip over the socket from a blocking client.
  Target (issue 15): with / without <= 1.5.
- **client**: a GET round trip with coredis under trio and with redis-py's
  asyncio client (when installed: `pip install -e '.[bench]'`), for the note
  on why coredis.

Not a test: it prints what it measured on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from argent_client.protocol import ReportParams
from argentd.cluster import Cluster
from argentd.config import ClusterConfig, Config
from argentd.engine import Engine
from argentd.model import Profile, ProfileSet, Secret
from bench._common import Proc, fake_secret, machine, percentile, ratio, report, table


def ms(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"p50_ms": round(percentile(v, 50) * 1000, 2),
            "p99_ms": round(percentile(v, 99) * 1000, 2),
            "max_ms": round(v[-1] * 1000, 2), "n": len(v)}


# ---------------------------------------------------------------- propagation


class _Host:
    def __init__(self, name: str, url: str, profiles: list[Profile]) -> None:
        self.engine = Engine(ProfileSet(profiles), Config(), now=time.time())
        self.cluster = Cluster(ClusterConfig(url=url, host=name), self.engine,
                               after_change=lambda: self.engine.take_outbox())


async def _until(cond: Any) -> float:
    start = time.perf_counter()
    while not cond():
        await trio.sleep(0)
    return time.perf_counter() - start


async def _propagation(url: str, rounds: int) -> dict[str, Any]:
    profiles = [Profile(id="anthropic:k", provider="anthropic", type="api-key",
                        secret=Secret(fake_secret("anthropic", 1)))]
    a, b = _Host("a", url, profiles), _Host("b", url, profiles)
    cool: list[float] = []
    reset: list[float] = []
    async with trio.open_nursery() as n:
        n.start_soon(a.cluster.run)
        n.start_soon(b.cluster.run)
        await _until(lambda: a.cluster.connected and b.cluster.connected)
        kb = b.engine.key_state("anthropic:k")
        for _ in range(rounds):
            a.engine.report(ReportParams(profile="anthropic:k", kind="rate_limit",
                                         retry_after=600), conn=None, now=time.time())
            cool.append(await _until(lambda: kb.cooling(time.time()) is not None))
            a.engine.reset("anthropic:k", now=time.time())
            reset.append(await _until(lambda: kb.cooling(time.time()) is None))
        n.cancel_scope.cancel()
    return {"cooldown": ms(cool), "reset": ms(reset)}


# ---------------------------------------------------------------- lease cost


def _rtt(sock_path: Path, leases: int, *, budget: bool = False) -> list[float]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock_path))
    buf = b""

    def call(method: str, params: dict[str, Any]) -> dict[str, Any]:
        nonlocal buf
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                              "params": params}).encode() + b"\n")
        while b"\n" not in buf:
            buf += s.recv(65536)
        line, _, buf = buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        assert "error" not in reply, reply
        return reply

    out = []
    for i in range(leases + 200):
        t = time.perf_counter()
        lease = call("lease", {"provider": "openai", "ttl": 30, "wait": 1})["result"]
        release: dict[str, Any] = {"lease_id": lease["lease_id"]}
        if budget:  # a reading far from spent: the shared budget is in charge, never short
            release["limits"] = {"requests_limit": 100_000, "requests_remaining": 99_000,
                                 "requests_reset": time.time() + 60}
        call("release", release)
        if i >= 200:  # warm-up
            out.append(time.perf_counter() - t)
    s.close()
    return out


def _lease_cost(redis_url: str, leases: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for mode in ("off", "on", "on_gated", "off_budget", "on_budget"):
        profiles = {"openai:main": {"provider": "openai", "type": "api-key",
                                    "token": fake_secret("openai", 1)}}
        if mode == "on_gated":
            profiles["openai:main"]["max_concurrent"] = 4
        with Proc(f"cluster-{mode}") as p:
            if not mode.startswith("off"):
                cfg = p.root / "config" / "argentos" / "argentd.toml"
                cfg.parent.mkdir(parents=True)
                cfg.write_text(f'[cluster]\nurl = "{redis_url}"\nhost = "bench"\n')
            p.start_argentd(profiles)
            time.sleep(1.0)  # connected, first plan made
            figures[mode] = ms(_rtt(p.socket, leases, budget=mode.endswith("budget")))
    figures["on_over_off_p50"] = ratio(figures["on"]["p50_ms"], figures["off"]["p50_ms"])
    figures["gated_over_off_p50"] = ratio(figures["on_gated"]["p50_ms"],
                                          figures["off"]["p50_ms"])
    figures["budget_over_off_p50"] = ratio(figures["on_budget"]["p50_ms"],
                                           figures["off_budget"]["p50_ms"])
    return figures


# ---------------------------------------------------------------- clients


def _client_rtt(sock_path: Path, n: int) -> dict[str, Any]:
    import coredis

    async def with_coredis() -> list[float]:
        out = []
        async with coredis.Redis(unix_socket_path=str(sock_path)) as r:
            for _ in range(n):
                t = time.perf_counter()
                await r.get("x")
                out.append(time.perf_counter() - t)
        return out

    result: dict[str, Any] = {"coredis_trio": ms(trio.run(with_coredis))}
    try:
        import redis.asyncio as aredis
    except ImportError:
        result["redis_py_asyncio"] = None
        return result

    async def with_redis_py() -> list[float]:
        out = []
        r = aredis.Redis(unix_socket_path=str(sock_path))
        for _ in range(n):
            t = time.perf_counter()
            await r.get("x")
            out.append(time.perf_counter() - t)
        await r.aclose()
        return out

    result["redis_py_asyncio"] = ms(asyncio.run(with_redis_py()))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=300, help="propagation rounds")
    ap.add_argument("--leases", type=int, default=3000, help="lease+release per mode")
    opts = ap.parse_args(argv)
    result: dict[str, Any] = {"machine": machine()}
    with Proc("redis") as redis:
        redis.start_redis()
        url = f"unix://{redis.socket}"
        result["propagation"] = trio.run(_propagation, url, opts.rounds)
        result["lease_cost"] = _lease_cost(url, opts.leases)
        result["client"] = _client_rtt(redis.socket, 2000)
    prop, cost, client = result["propagation"], result["lease_cost"], result["client"]
    rows = [
        ("cooldown a -> b", prop["cooldown"]["p50_ms"], prop["cooldown"]["p99_ms"],
         prop["cooldown"]["max_ms"]),
        ("reset a -> b", prop["reset"]["p50_ms"], prop["reset"]["p99_ms"],
         prop["reset"]["max_ms"]),
        ("lease+release, cluster off", cost["off"]["p50_ms"], cost["off"]["p99_ms"],
         cost["off"]["max_ms"]),
        ("lease+release, cluster on", cost["on"]["p50_ms"], cost["on"]["p99_ms"],
         cost["on"]["max_ms"]),
        ("  ... with max_concurrent", cost["on_gated"]["p50_ms"], cost["on_gated"]["p99_ms"],
         cost["on_gated"]["max_ms"]),
        ("... with readings, cluster off", cost["off_budget"]["p50_ms"],
         cost["off_budget"]["p99_ms"], cost["off_budget"]["max_ms"]),
        ("  ... cluster on: a shared budget", cost["on_budget"]["p50_ms"],
         cost["on_budget"]["p99_ms"], cost["on_budget"]["max_ms"]),
        ("GET, coredis under trio", client["coredis_trio"]["p50_ms"],
         client["coredis_trio"]["p99_ms"], client["coredis_trio"]["max_ms"]),
    ]
    if client["redis_py_asyncio"]:
        r = client["redis_py_asyncio"]
        rows.append(("GET, redis-py asyncio", r["p50_ms"], r["p99_ms"], r["max_ms"]))
    human = table(("what", "p50 ms", "p99 ms", "max ms"), rows)
    human += (f"\nlease p50 with the cluster on / off: {cost['on_over_off_p50']}, with a"
              f" cluster-wide max_concurrent {cost['gated_over_off_p50']}, with readings"
              f" (a shared budget) {cost['budget_over_off_p50']} (target <= 1.5)")
    human += f"\ncooldown propagation p99: {prop['cooldown']['p99_ms']} ms (target <= 50)"
    report(result, human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
