"""bench/goodput.py: its arithmetic, its targets, and one short real run of both modes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fake_provider as fp
import goodput as gp
import goodput_windows as gw


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


# ---------------------------------------------------------------- the client mix (issue 14)

SUB, API = gw.SUBSCRIPTION, "anthropic:k1"


def _mix_stats(r429: int = 0) -> dict[str, object]:
    return {"unknown_key": 0, "keys": {
        "k0": {"requests": 7, "429": r429, "rejected": r429,
               "windows": {"5h": {"used": 7, "quota": 150}}},
        "k1": {"requests": 2, "429": 0, "rejected": 0, "windows": {}}}}


def test_mix_summarise_shares_after_the_first_capped_background_lease() -> None:
    bg = gw.MixOutcome("background", [(0.1, SUB, 200), (0.2, SUB, 200), (1.0, API, 200),
                                      (1.5, API, 200)], end_wall=5.0)
    inter = gw.MixOutcome("interactive", [(0.5, SUB, 200), (1.2, SUB, 200), (1.4, SUB, 200),
                                          (2.0, SUB, 200), (2.5, API, 200)], no_profile=1,
                          end_wall=5.0)
    r = gw.summarise([bg, inter], _mix_stats(), 5.0, 0.2)
    assert r["capped_at_s"] == 1.0
    assert r["background_last_on_subscription_s"] == 0.2
    assert r["clients"]["interactive"] == {
        "requests": 5, "subscription": 4, "subscription_share": 0.8,
        "after_cap_requests": 4, "after_cap_subscription_share": 0.75,
        "ok": 5, "429": 0, "no_profile": 1}
    assert r["clients"]["background"]["subscription_share"] == 0.5
    assert r["windows_at_end"] == {"k0": {"5h": {"used": 7, "quota": 150}}}
    assert gw.check_targets(r) == {"background_capped": True,
                                   "interactive_after_cap_ge_99pct": False, "no_429": True}


def test_mix_targets_need_a_cap_and_no_429() -> None:
    bg = gw.MixOutcome("background", [(0.1, SUB, 200)], end_wall=1.0)
    inter = gw.MixOutcome("interactive", [(0.5, SUB, 429)], end_wall=1.0)
    r = gw.summarise([bg, inter], _mix_stats(r429=1), 1.0, None)
    assert r["capped_at_s"] is None and r["provider_429"] == 1
    assert gw.check_targets(r) == {"background_capped": False,
                                   "interactive_after_cap_ge_99pct": False, "no_429": False}


def test_policy_check_asks_the_real_daemon(tmp_path: Path) -> None:
    assert gw.policy_supported(None, tmp_path) is None
    why = gw.policy_supported(None, tmp_path, toml="[policyx]\nwindow_cap = 0.6\n")
    assert why is not None and "unknown field `policyx`" in why


def test_main_runs_the_mix_with_and_without_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    assert gp.main(["--shapes", "windows", "--modes", "argentd,baseline",
                    "--mix-seconds", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["results"] == {}
    mix = result["mix"]
    assert set(mix) == {"argentd", "argentd-nocap"}
    for mode, r in mix.items():
        clients = r["clients"]
        assert set(clients) == {"background", "interactive"}, mode
        # What the agents sent is what the provider counted: nothing lost, no stray key.
        sent = sum(c["requests"] for c in clients.values())
        assert sent == r["provider_requests"] > 0, mode
        assert r["unknown_key"] == 0, mode
    assert set(mix["argentd"]["targets"]) == {"background_capped",
                                              "interactive_after_cap_ge_99pct", "no_429"}
    assert "targets" not in mix["argentd-nocap"]
