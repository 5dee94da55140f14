"""Goodput across hosts: N daemons as N hosts, the same keys, per-host vs cluster mode.

    python bench/cluster_goodput.py --hosts 3 --agents 8 --seconds 20 [--shape steady]

The fake Anthropic of `bench/goodput.py` (`bench/fake_provider.py`) limits
three keys; `--hosts` daemons each hold all three (each its own socket,
state dir and profiles file copy) and serve `--agents` agent processes each
(the agent loop of goodput.py: lease, POST, observe, release or report).

- `per-host`: the daemons know nothing of each other, as today: each
  predicts the keys' budgets from its own leases and readings only.
- `cluster`: the same daemons with `[cluster]` on one redis-server (a Unix
  socket): cooldowns, readings and windows are shared.

Figures per mode, counted by the provider: 200s as a fraction of the keys'
capacity and the share of requests answered 429. Targets (issue 15):
cluster >= 95 % of capacity with <= 1 % of requests answered 429; per-host
mode is expected to overdraw.

Prints a table on stderr and one JSON object, last, on stdout. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_provider as fp
import goodput as gp
from _common import Proc, machine, report, run_agents, table

MODES = ("per-host", "cluster")


def start_hosts(keys: list[fp.KeySpec], hosts: int, redis_url: str | None) -> list[Proc]:
    out: list[Proc] = []
    try:
        for i in range(hosts):
            p = Proc(f"host{i}")
            out.append(p)
            if redis_url is not None:
                cfg = p.root / "config" / "argentos" / "argentd.toml"
                cfg.parent.mkdir(parents=True)
                cfg.write_text(f'[cluster]\nurl = "{redis_url}"\nhost = "h{i}"\n')
            p.start_argentd(gp.profiles_for(keys))
        if redis_url is not None:
            time.sleep(1.5)  # every host connected and merged
    except BaseException:
        for p in out:
            p.stop()
        raise
    return out


def run_mode(mode: str, provider: gp.Provider, seconds: float, hosts: int, agents: int,
             redis_url: str) -> dict[str, Any]:
    daemons = start_hosts(provider.keys, hosts, redis_url if mode == "cluster" else None)
    try:
        n = hosts * agents
        specs = [gp.AgentSpec(mode="argentd", index=i, url=provider.url, seconds=seconds,
                              socket=str(daemons[i % hosts].socket)) for i in range(n)]
        run = run_agents(gp._agent, specs, provider, seconds=seconds, label=mode, timeout=120,
                         watch={"daemons": [d.pid for d in daemons],
                                "provider": [provider.proc.pid]})
    finally:
        for d in daemons:
            d.stop()
    window = max(o.end_wall for o in run.outcomes) - run.start_wall
    return gp.summarise(provider.keys, run.stats, run.outcomes, window, run.cpu["daemons"],
                        run.cpu["provider"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--agents", type=int, default=8, help="agent processes per host (8)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--shape", choices=sorted(fp.SHAPES), default="steady")
    ap.add_argument("--modes", default=",".join(MODES))
    opts = ap.parse_args(argv)
    result: dict[str, Any] = {"bench": "cluster_goodput", "machine": machine(),
                              "settings": vars(opts), "results": {}}
    with Proc("redis") as redis:
        redis.start_redis()
        url = f"unix://{redis.socket}"
        provider = gp.Provider(fp.make_keys(fp.SHAPES[opts.shape]), latency=fp.DEFAULT_LATENCY,
                               reset_precision="ms")
        try:
            for mode in opts.modes.split(","):
                print(f"{mode}: {opts.hosts} hosts x {opts.agents} agents, {opts.seconds:g} s",
                      file=sys.stderr, flush=True)
                result["results"][mode] = run_mode(mode, provider, opts.seconds, opts.hosts,
                                                   opts.agents, url)
        finally:
            provider.stop()
    rows = [(mode, f"{r['capacity_fraction']:.1%}", f"{r['share_429']:.1%}", r["ok_per_s"],
             r["requests_per_s"], r["cpu_s"]["daemon"])
            for mode, r in result["results"].items()]
    human = table(("mode", "of capacity", "429s", "ok/s", "requests/s", "daemons cpu s"), rows)
    report(result, human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
