"""spec.training.lrSchedule / warmupRatio: the learning rate of each optimizer step, by hand, and kept in a
checkpoint; the online run's schedule length from the spec."""

from __future__ import annotations

import math

import pytest
import torch

from kuberlhf.engines.training import TorchTrainingEngine, TrainingSetup


def learning_rates(engine: TorchTrainingEngine, model: torch.nn.Module, steps: int) -> list[float]:
    """The learning rate each of `steps` optimizer steps uses."""
    used = []
    for _ in range(steps):
        used.append(engine.learning_rate)
        engine.accumulate(model(torch.ones(1, 2)).sum())
        engine.step()
    return used


def engine_with(schedule: str, warmup_ratio: float, total_steps: int = 8) -> tuple[TorchTrainingEngine, torch.nn.Module]:
    model = torch.nn.Linear(2, 1)
    setup = TrainingSetup(learning_rate=1.0, weight_decay=0.0, max_grad_norm=1.0, lr_schedule=schedule,
                          warmup_ratio=warmup_ratio, total_steps=total_steps)
    return TorchTrainingEngine(model, setup), model


@pytest.mark.parametrize("schedule, warmup_ratio, expected", [
    ("constant", 0.0, [1.0] * 8),
    # warm-up: ceil(0.25 x 8) = 2 steps at s / 2; then (8 - s) / (8 - 2)
    ("linear", 0.25, [0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
    # ceil(0.1 x 8) = 1 step at 0; then (1 + cos(pi (s - 1) / 7)) / 2
    ("cosine", 0.1, [0.0] + [(1 + math.cos(math.pi * k / 7)) / 2 for k in range(7)]),
    ("constant", 0.5, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]),
])
def test_each_optimizer_step_uses_the_scheduled_learning_rate(schedule, warmup_ratio, expected):
    engine, model = engine_with(schedule, warmup_ratio)
    assert learning_rates(engine, model, 8) == pytest.approx(expected)


def test_a_resumed_engine_goes_on_with_the_schedule_where_it_stopped(tmp_path):
    engine, model = engine_with("linear", 0.25)
    learning_rates(engine, model, 3)
    engine.save(tmp_path)
    resumed, resumed_model = engine_with("linear", 0.25)
    resumed.load(tmp_path)
    assert learning_rates(resumed, resumed_model, 5) == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_an_online_run_schedules_every_mini_batch_of_every_epoch_of_every_step():
    from kuberlhf.jobfile import validate_job
    from kuberlhf.engines.training import training_setup

    job = validate_job({"apiVersion": "kuberlhf.io/v1alpha1", "kind": "RLHFJob", "metadata": {"name": "x"}, "spec": {
        "algorithm": "ppo", "policy": {"model": "m"}, "reward": {"model": "r"}, "data": {"train": "t.jsonl"},
        "rollout": {"samplesPerPrompt": 4},
        "training": {"steps": 40, "promptsPerStep": 32, "epochsPerStep": 2, "miniBatchSize": 64,
                     "lrSchedule": "cosine", "warmupRatio": 0.1}}})
    setup = training_setup(job.spec, 1e-5, "policy")
    assert (setup.total_steps, setup.lr_schedule, setup.warmup_ratio) == (40 * 2 * (128 // 64), "cosine", 0.1)
