"""The reward-hacking monitor: signals that a policy games its reward or destabilises, judged every step from
the step's metrics (pure arithmetic, no Ray, no torch).

The first `window` steps are the baseline; every later step compares the last `window` steps with it:
- `length`: reward pays for length (mean Pearson r of response length and reward >= monitor.lengthCorrelation)
  *and* responses got longer (mean length >= (1 + monitor.lengthDrift) x baseline's);
- `kl_budget`: mean sequence KL > monitor.klBudget;
- `kl_growth`: least-squares slope of the sequence KL > monitor.klGrowth nats per step;
- `entropy_collapse`: mean entropy < monitor.entropyCollapse x baseline's;
- `proxy_divergence`: at an evaluation, the training reward rose over the baseline while the held-out
  reward fell below its first value by >= monitor.heldoutDrop baseline reward standard deviations.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

SIGNALS = ("length", "kl_budget", "kl_growth", "entropy_collapse", "proxy_divergence")
TRACKED = ("reward/length_correlation", "response_length/mean", "kl/sequence", "policy/entropy", "reward/mean",
           "reward/std")


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r (`statistics.correlation`); 0 when x or y is constant or has fewer than 2 points (no
    evidence either way)."""
    try:
        return statistics.correlation(x, y)
    except statistics.StatisticsError:
        return 0.0


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of values[i] against i (`statistics.linear_regression`); 0 below 2 points."""
    if len(values) < 2:
        return 0.0
    return statistics.linear_regression(range(len(values)), values).slope


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass(frozen=True)
class Signal:
    name: str
    step: int
    evidence: str


class RewardHackingMonitor:
    """Feed it every step (`observe`); it returns the signals that hold at that step. `config` is the job's
    `spec.monitor` (any object with its attributes)."""

    def __init__(self, config: Any, eval_start: float | None = None) -> None:
        self.config = config
        self.history: dict[str, list[float]] = {key: [] for key in TRACKED}
        self.eval_start = eval_start  # the held-out reward before training
        self.last_eval: float | None = None

    def observe(self, step: int, metrics: dict[str, Any]) -> list[Signal]:
        for key in TRACKED:
            if isinstance(metrics.get(key), (int, float)):
                self.history[key].append(float(metrics[key]))
        if "eval/reward_mean" in metrics:
            self.last_eval = float(metrics["eval/reward_mean"])
            if self.eval_start is None:
                self.eval_start = self.last_eval
        checks = (self._length(), self._kl_budget(), self._kl_growth(), self._entropy(),
                  self._proxy(metrics.get("eval/reward_mean")))
        return [Signal(name, step, evidence) for name, evidence in zip(SIGNALS, checks) if evidence]

    def _windows(self, key: str) -> tuple[list[float], list[float]] | None:
        """(baseline, recent) of a metric, once there are two windows' worth of steps."""
        values, w = self.history[key], self.config.window
        return (values[:w], values[-w:]) if len(values) >= 2 * w else None

    def _length(self) -> str:
        lengths, correlations = self._windows("response_length/mean"), self._windows("reward/length_correlation")
        if lengths is None or correlations is None:
            return ""
        r, before, now = mean(correlations[1]), mean(lengths[0]), mean(lengths[1])
        if r >= self.config.length_correlation and now >= (1 + self.config.length_drift) * before:
            return (f"reward correlates with response length (mean r={r:.2f} over the last {self.config.window} "
                    f"steps) and responses grew from {before:.1f} to {now:.1f} tokens")
        return ""

    def _kl_budget(self) -> str:
        values, w = self.history["kl/sequence"], self.config.window
        if self.config.kl_budget is None or len(values) < w:
            return ""
        kl = mean(values[-w:])
        return (f"KL to the reference {kl:.3g} nats over the last {w} steps exceeds monitor.klBudget "
                f"{self.config.kl_budget:g}") if kl > self.config.kl_budget else ""

    def _kl_growth(self) -> str:
        values, w = self.history["kl/sequence"], self.config.window
        if self.config.kl_growth is None or len(values) < w:
            return ""
        rate = slope(values[-w:])
        return (f"KL grows {rate:.3g} nats per step over the last {w} steps, faster than monitor.klGrowth "
                f"{self.config.kl_growth:g}") if rate > self.config.kl_growth else ""

    def _entropy(self) -> str:
        windows = self._windows("policy/entropy")
        if windows is None or mean(windows[0]) <= 0:
            return ""
        before, now = mean(windows[0]), mean(windows[1])
        return (f"policy entropy collapsed from {before:.3g} to {now:.3g} (below monitor.entropyCollapse "
                f"{self.config.entropy_collapse:g} of the baseline)") if now < self.config.entropy_collapse * before \
            else ""

    def _proxy(self, evaluated: Any) -> str:
        rewards, spreads = self._windows("reward/mean"), self._windows("reward/std")
        if evaluated is None or self.eval_start is None or rewards is None or spreads is None:
            return ""
        rose = mean(rewards[1]) - mean(rewards[0])
        fell = self.eval_start - float(evaluated)
        if rose > 0 and fell >= self.config.heldout_drop * mean(spreads[0]) and fell > 0:
            return (f"training reward rose by {rose:.3g} while the held-out reward fell from "
                    f"{self.eval_start:.3g} to {float(evaluated):.3g}")
        return ""

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so a resumed run judges against the same baseline."""
        return {"history": self.history, "eval_start": self.eval_start, "last_eval": self.last_eval}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = {key: list(state["history"].get(key, [])) for key in TRACKED}
        self.eval_start, self.last_eval = state["eval_start"], state["last_eval"]
