"""The rollout role: a generation engine that samples completions and receives the policy's weights after
each update."""

from __future__ import annotations

import time

import torch

from kuberlhf.data.batch import RolloutBatch
from kuberlhf.engines.generation import HFGenerationEngine, SamplingParams
from kuberlhf.models.loading import load_causal_lm, load_tokenizer
from kuberlhf.workers.common import configure_process


class RolloutWorker:
    def __init__(self, model_path: str, cpus: float, seed: int, rank: int = 0) -> None:
        configure_process(cpus, seed)
        self.rank = rank
        model = load_causal_lm(model_path, "spec.policy.model")
        model.requires_grad_(False)
        self.engine = HFGenerationEngine(model, load_tokenizer(model_path))

    def generate(self, prompts: list[str], params: SamplingParams, seed: int) -> RolloutBatch:
        """Sample completions; each rank draws from its own stream of the step's seed."""
        return self.engine.generate(prompts, params, seed * 1009 + self.rank)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> float:
        """Replace the engine's weights; returns the seconds it took."""
        started = time.perf_counter()
        self.engine.load_weights(state_dict)
        return time.perf_counter() - started
