"""The reward-hacking monitor: its statistics against hand-computed values, and each signal on planted series."""

from __future__ import annotations

import math

import pytest

from kuberlhf.spec_monitor import MonitorSpec
from kuberlhf.telemetry.monitor import RewardHackingMonitor, pearson, slope


def test_pearson_matches_a_hand_computed_value():
    # x = 1,2,3,4; y = 2,4,5,9: mean 2.5 / 5; sxy = 1.5*3 + .5*1 + .5*0 + 1.5*4 = 11; sxx = 5; syy = 9+1+0+16 = 26
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(5 * 26))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) == 0.0  # a constant reward says nothing
    assert pearson([1], [2]) == 0.0


def test_slope_matches_a_hand_computed_value():
    # i = 0,1,2; v = 1,2,4: mean i 1, mean v 7/3; sum((i-1)(v-7/3)) = (-1)(-4/3) + 0 + (1)(5/3) = 3; sum((i-1)^2) = 2
    assert slope([1, 2, 4]) == pytest.approx(1.5)
    assert slope([3, 3, 3, 3]) == 0.0
    assert slope([5]) == 0.0


def run(monitor: RewardHackingMonitor, steps: list[dict[str, float]]) -> list[list[str]]:
    return [[s.name for s in monitor.observe(step, metrics)] for step, metrics in enumerate(steps, start=1)]


def honest(step: int) -> dict[str, float]:
    return {"reward/mean": 0.1 * step, "reward/std": 0.5, "reward/length_correlation": 0.1,
            "response_length/mean": 6.0, "kl/sequence": 0.5, "policy/entropy": 1.0}


def test_a_reward_that_pays_for_length_trips_the_length_signal_and_an_honest_one_does_not():
    hacked = [{**honest(s), "reward/length_correlation": 0.9, "response_length/mean": 6.0 + 2 * s} for s in range(1, 11)]
    verdicts = run(RewardHackingMonitor(MonitorSpec(window=3)), hacked)
    assert verdicts[4] == []  # steps 1-5: not yet two windows
    assert "length" in verdicts[5] and "length" in verdicts[9]
    assert all(v == [] for v in run(RewardHackingMonitor(MonitorSpec(window=3)), [honest(s) for s in range(1, 11)]))


def test_correlation_alone_or_growth_alone_is_not_the_length_signal():
    correlated = [{**honest(s), "reward/length_correlation": 0.9} for s in range(1, 11)]
    longer = [{**honest(s), "response_length/mean": 6.0 + 2 * s} for s in range(1, 11)]
    for steps in (correlated, longer):
        assert all("length" not in v for v in run(RewardHackingMonitor(MonitorSpec(window=3)), steps))


def test_kl_budget_kl_growth_and_entropy_collapse():
    config = MonitorSpec(window=2, kl_budget=3.0, kl_growth=0.8, entropy_collapse=0.5)
    steps = [{**honest(s), "kl/sequence": float(s), "policy/entropy": 1.0 / s} for s in range(1, 6)]
    verdicts = run(RewardHackingMonitor(config), steps)
    # kl window means: (1+2)/2=1.5, 2.5, 3.5 > 3 at step 4; slope 1 > 0.8 from step 2
    assert "kl_growth" in verdicts[1] and "kl_budget" not in verdicts[2] and "kl_budget" in verdicts[3]
    # entropy: baseline mean (1 + 1/2)/2 = .75; steps 3-4 mean (1/3 + 1/4)/2 = .29 < .375
    assert "entropy_collapse" in verdicts[3]
    assert all("kl" not in " ".join(v) for v in run(RewardHackingMonitor(MonitorSpec(window=2)), steps))  # unset


def test_training_reward_up_while_heldout_reward_down_is_proxy_divergence():
    config = MonitorSpec(window=2, heldout_drop=0.5)
    monitor = RewardHackingMonitor(config, eval_start=0.6)
    steps = [honest(s) for s in range(1, 5)]  # training reward rises 0.1 -> 0.4; baseline std 0.5
    steps[3]["eval/reward_mean"] = 0.30  # fell 0.3 >= 0.5 * 0.5
    assert run(monitor, steps)[3] == ["proxy_divergence"]
    steps[3]["eval/reward_mean"] = 0.45  # fell 0.15 < 0.25
    assert run(RewardHackingMonitor(config, eval_start=0.6), steps)[3] == []


def test_a_resumed_monitor_judges_against_the_same_baseline():
    hacked = [{**honest(s), "reward/length_correlation": 0.9, "response_length/mean": 6.0 + 2 * s} for s in range(1, 9)]
    first = RewardHackingMonitor(MonitorSpec(window=3))
    run(first, hacked[:4])
    resumed = RewardHackingMonitor(MonitorSpec(window=3))
    resumed.load_state(first.state())
    later = [[s.name for s in resumed.observe(step, m)] for step, m in enumerate(hacked[4:], start=5)]
    assert later[1] == ["length"]  # step 6, as in an uninterrupted run


def test_non_finite_updates_are_counted_and_a_streak_stops_the_run():
    from kuberlhf.trainers.guards import NonFiniteGuard

    guard = NonFiniteGuard(limit=2)
    nan, inf = float("nan"), float("inf")
    assert guard.observe(1, {"policy/loss": 0.5, "policy/grad_norm": 1.0}) is None
    bad = {"policy/loss": nan, "policy/grad_norm": nan}
    assert guard.observe(2, bad) is None and bad["train/skipped_updates"] == 1.0
    assert guard.observe(3, {"policy/loss": 0.4, "critic/grad_norm": 2.0}) is None  # the streak is broken
    assert guard.observe(4, {"critic/grad_norm": inf}) is None
    reason = guard.observe(5, {"loss": nan})
    assert reason.startswith("training.maxNonFiniteSteps: steps 4-5 (2 in a row) had a non-finite loss")
    assert "the weights are those of step 3" in reason and guard.skipped == 3
