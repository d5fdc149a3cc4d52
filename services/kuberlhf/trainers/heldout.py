"""The held-out evaluation a run makes every `training.evalEverySteps` and `kuberlhf eval` repeats: one function,
so the two cannot drift apart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kuberlhf.data.batch import RolloutBatch
    from kuberlhf.data.prompts import PromptDataset
    from kuberlhf.plan import SamplingParams
    from kuberlhf.reward_functions import TrainerState
    from kuberlhf.workers.launch import ScoringWorkers


def heldout_rollout(workers: ScoringWorkers, data: PromptDataset, sampling: SamplingParams, seed: int,
                    state: TrainerState) -> tuple[RolloutBatch, Any]:
    """Every prompt of `data` sampled `sampling.samples_per_prompt` times from the evaluation's own seed stream
    (`-1 - seed`, apart from every training step's), and the reward of each sample: what a run's evaluation
    and `kuberlhf eval` both compute."""
    prompts, columns = data.select(list(range(len(data))))
    rollout = workers.rollout.map_batch("generate", prompts, sampling, -1 - seed, state, columns=columns).get()
    scores = workers.reward.map_batch("score", rollout).get() if workers.reward else rollout.scores
    return rollout, scores
