"""Run-level guards of the training loops: consecutive non-finite updates end a run.

The engines skip an update whose gradient norm is NaN or infinite (DeepSpeed does it itself; the plain torch
engine does the same), so one bad batch costs nothing but its step. A run that keeps producing them is
broken (a diverged policy, a reward on a wild scale): after `training.maxNonFiniteSteps` in a row the loop
checkpoints the last good weights and stops with the reason.
"""

from __future__ import annotations

import math
from typing import Any

from kuberlhf.telemetry.catalog import HEALTH_KEYS


class NonFiniteGuard:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.streak = 0
        self.streak_start = 0
        self.skipped = 0

    def observe(self, step: int, metrics: dict[str, Any]) -> str | None:
        """Count this step if its update was non-finite (adds `train/skipped_updates` to `metrics`); the
        reason to stop when the streak reached the limit, else None."""
        bad = [key for key in HEALTH_KEYS if isinstance(metrics.get(key), float) and not math.isfinite(metrics[key])]
        if not bad:
            self.streak = 0
            return None
        self.skipped += 1
        self.streak += 1
        if self.streak == 1:
            self.streak_start = step
        metrics["train/skipped_updates"] = float(self.skipped)
        if self.streak < self.limit:
            return None
        return (f"training.maxNonFiniteSteps: steps {self.streak_start}-{step} ({self.streak} in a row) had a "
                f"non-finite {', '.join(bad)}; their updates were skipped, so the weights are those of step "
                f"{self.streak_start - 1}. Lower training.learningRate or check the reward's scale")
