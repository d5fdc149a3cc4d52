"""The learning rate shared by both training engines (plain torch and DeepSpeed)."""

from __future__ import annotations

from typing import Any


def set_base_learning_rate(optimizer: Any, scheduler: Any, learning_rate: float) -> None:
    """The spec's learning rate after a resume (the optimizer and schedule states restore the checkpoint's):
    the schedule goes on from its step with the new base, lr = base x schedule(step)."""
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor(scheduler.last_epoch)
