"""bench/goodput.py: its arithmetic, its targets, and one short real run of both modes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fake_provider as fp
import goodput as gp


def _keys() -> list[fp.KeySpec]:
    return [fp.KeySpec("k0", "sk-ant-api03-bench" + "a" * 40, fp.KeyShape(20, 5)),
            fp.KeySpec("k1", "sk-ant-oat01-bench" + "b" * 40,
                       fp.KeyShape(20, 5, window_quota=50, window_seconds=5.0))]


def _stats(ok: tuple[int, int], r429: tuple[int, int]) -> dict[str, object]:
    return {"unknown_key": 0, "keys": {
        f"k{i}": {"ok": ok[i], "429": r429[i], "requests": ok[i] + r429[i], "rejected": 0}
        for i in range(2)}}


def test_summarise_fraction_of_capacity_and_429_share() -> None:
    out = [gp.AgentOutcome(ok=150, rate_limited=50, end_wall=10.0, cpu_s=0.5,
                           http_ms=[20.0, 22.0])]
    r = gp.summarise(_keys(), _stats((205, 95), (40, 10)), out, 10.0, 0.3, 0.1)
    # capacity: k0 5 + 20*10 = 205; k1 min(50, 5 + 100) per 5 s window, two windows = 100
    assert r["capacity"] == 305.0
    assert r["capacity_fraction"] == round(300 / 305, 4)
    assert r["share_429"] == round(50 / 350, 4)
    assert r["per_key"]["k1"]["capacity_fraction"] == 0.95
    assert r["ok_per_s"] == 30.0
    assert r["cpu_s"] == {"provider": 0.1, "daemon": 0.3, "agents": 0.5}


def test_check_targets_steady_and_ahead_per_shape() -> None:
    good = {"capacity_fraction": 0.98, "share_429": 0.005}
    base = {"capacity_fraction": 0.30, "share_429": 0.60}
    assert gp.check_targets({"steady": {"argentd": good, "baseline": base}}) == {
        "steady_capacity_ge_97pct": True, "steady_429_le_1pct": True,
        "steady_ahead_on_capacity": True, "steady_ahead_on_429": True}
    worse = {"capacity_fraction": 0.30, "share_429": 0.02}
    assert gp.check_targets({"bursty": {"argentd": worse, "baseline": base}}) == {
        "bursty_ahead_on_capacity": False, "bursty_ahead_on_429": True}
    both = gp.check_targets({"bursty": {"argentd@abc123": worse, "argentd": good,
                                        "baseline": base}})
    assert both == {
        "argentd": {"bursty_ahead_on_capacity": True, "bursty_ahead_on_429": True},
        "argentd@abc123": {"bursty_ahead_on_capacity": False, "bursty_ahead_on_429": True}}


def test_main_runs_both_modes_and_counts_agree(capsys: pytest.CaptureFixture[str]) -> None:
    assert gp.main(["--seconds", "1", "--agents", "2", "--shapes", "steady"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = result["results"]["steady"]
    assert set(runs) == {"argentd", "baseline"}
    for mode, r in runs.items():
        assert r["ok"] > 0, mode
        # The provider's counts are what the agents saw: nothing lost, no stray key.
        assert (r["agents_ok"], r["agents_429"]) == (r["ok"], r["429"]), mode
        assert r["unknown_key"] == 0 and r["other_status"] == {}, mode
        assert 0 < r["capacity_fraction"] <= 1, mode
    assert runs["baseline"]["cpu_s"]["daemon"] is None
    assert runs["argentd"]["cpu_s"]["daemon"] is not None
