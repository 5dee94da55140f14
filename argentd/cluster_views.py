"""The cluster's Prometheus lines and its propagation-lag histogram."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Final

LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds (seconds) of argentd_cluster_propagation_seconds."""


@dataclass(slots=True)
class Histogram:
    """Counts per LAG_BUCKETS bucket (not cumulative), their sum and number."""

    counts: list[int] = field(default_factory=lambda: [0] * len(LAG_BUCKETS))
    total: float = 0.0
    n: int = 0
    last: float | None = None

    def observe(self, seconds: float) -> None:
        self.last = seconds
        self.n += 1
        self.total += seconds
        i = bisect.bisect_left(LAG_BUCKETS, seconds)
        if i < len(LAG_BUCKETS):
            self.counts[i] += 1


def metrics_text(connected: bool, hosts: int, lag: Histogram) -> str:
    """The cluster's families in the Prometheus text format (ends with a newline)."""
    out = [
        "# HELP argentd_cluster_connected Whether this host reaches the cluster's Redis.",
        "# TYPE argentd_cluster_connected gauge",
        f"argentd_cluster_connected {int(connected)}",
        "# HELP argentd_cluster_hosts Hosts with a recent heartbeat.",
        "# TYPE argentd_cluster_hosts gauge",
        f"argentd_cluster_hosts {hosts}",
        "# HELP argentd_cluster_propagation_seconds Delay from another host's change"
        " to its arrival here.",
        "# TYPE argentd_cluster_propagation_seconds histogram",
    ]
    total = 0
    for bound, n in zip(LAG_BUCKETS, lag.counts, strict=True):
        total += n
        out.append(f'argentd_cluster_propagation_seconds_bucket{{le="{bound:g}"}} {total}')
    out.append(f'argentd_cluster_propagation_seconds_bucket{{le="+Inf"}} {lag.n}')
    out.append(f"argentd_cluster_propagation_seconds_sum {lag.total:.6f}")
    out.append(f"argentd_cluster_propagation_seconds_count {lag.n}")
    return "\n".join(out) + "\n"
