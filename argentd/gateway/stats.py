"""The gateway's books: one access-log line per request, and its metrics.

The access line holds the method, the path (never the query: Google's
`?key=` lives there), the profile id, the status, the attempts and the
duration; never a body, a header value or a secret. Metrics are counters
and per-provider histograms of upstream latency (time to the answer's
head), in Prometheus text.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from ..log import PRE_REDACTED, redact_field

log = logging.getLogger("argentd.gateway")
PRE_REDACTED_EXTRA: Final = {PRE_REDACTED: True}

BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
MAX_PATH: Final = 200


@dataclass
class Record:
    """What the access log says about one request."""

    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    attempts: int = 0
    profile: str | None = None
    note: str | None = None


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.total += 1
        self.sum += seconds
        i = bisect.bisect_left(BUCKETS, seconds)
        if i < len(BUCKETS):
            self.counts[i] += 1


class Stats:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        """By status code."""
        self.counters: Counter[tuple[str, str]] = Counter()
        """(name, provider) -> count: attempts, attempts_failed, rotations."""
        self.latency: dict[str, Histogram] = {}
        self.active = 0

    def count(self, name: str, provider: str) -> None:
        self.counters[(name, provider)] += 1

    def upstream(self, provider: str, seconds: float) -> None:
        """An upstream answered (its head arrived) after `seconds`."""
        hist = self.latency.get(provider)
        if hist is None:
            hist = self.latency[provider] = Histogram()
        hist.observe(seconds)

    def done(self, rec: Record) -> None:
        """Count and log a finished request."""
        self.requests[str(rec.status or 0)] += 1
        ms = (time.perf_counter() - rec.started) * 1000
        path = rec.path if len(rec.path) <= MAX_PATH else rec.path[:MAX_PATH] + "…"
        note = f" ({redact_field(rec.note)})" if rec.note else ""
        # Each string redacted alone (and remembered: they repeat), not the whole line
        # again: that was the dearest part of a request's log line.
        log.info("gateway %s %s profile=%s status=%d attempts=%d %.1fms%s",
                 redact_field(rec.method[:16]), redact_field(path),
                 redact_field(rec.profile or "-"), rec.status, rec.attempts, ms, note,
                 extra=PRE_REDACTED_EXTRA)

    def metrics(self) -> str:
        """Prometheus text for the gateway's families."""
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        family("argentd_gateway_requests_total", "counter",
               "Gateway requests answered, by HTTP status.")
        for code, n in sorted(self.requests.items()):
            out.append(f'argentd_gateway_requests_total{{status="{code}"}} {n}')
        family("argentd_gateway_requests_active", "gauge", "Gateway requests in progress.")
        out.append(f"argentd_gateway_requests_active {self.active}")
        for name, help_ in (
            ("attempts", "Upstream tries, by provider."),
            ("attempts_failed", "Upstream tries that ended in a fault, by provider."),
            ("rotations", "Moves to another profile or route target, by provider."),
        ):
            metric = f"argentd_gateway_{name}_total"
            family(metric, "counter", help_)
            for (kind, prov), n in sorted(self.counters.items()):
                if kind == name:
                    out.append(f'{metric}{{provider="{_escape(prov)}"}} {n}')
        family("argentd_gateway_upstream_seconds", "histogram",
               "Time from sending a request upstream to its answer's head, by provider.")
        for prov, hist in sorted(self.latency.items()):
            label = f'provider="{_escape(prov)}"'
            running = 0
            for bound, n in zip(BUCKETS, hist.counts, strict=True):
                running += n
                out.append(f'argentd_gateway_upstream_seconds_bucket{{{label},le="{bound:g}"}}'
                           f" {running}")
            out.append(f'argentd_gateway_upstream_seconds_bucket{{{label},le="+Inf"}}'
                       f" {hist.total}")
            out.append(f"argentd_gateway_upstream_seconds_sum{{{label}}} {hist.sum:.6f}")
            out.append(f"argentd_gateway_upstream_seconds_count{{{label}}} {hist.total}")
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
