"""The critic role (PPO): a value model and its optimizer; computes values and applies clipped value-loss updates."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from kuberlhf.algorithms import value_loss
from kuberlhf.data.batch import Experience, RolloutBatch
from kuberlhf.models.forward import response_values
from kuberlhf.models.value import ValueModel
from kuberlhf.workers.common import TrainedRole, configure_process, mean_metrics, minibatches


@dataclass(frozen=True)
class CriticUpdateConfig:
    epochs: int
    mini_batch_size: int | None
    value_clip: float | None


class CriticWorker(TrainedRole):
    def __init__(self, model_path: str, cpus: float, seed: int) -> None:
        configure_process(cpus, seed)
        self.seed = seed
        self.model = ValueModel.from_pretrained(model_path)
        self.updates = 0  # the engine comes with setup_training, once the group's process group is up

    @torch.no_grad()
    def compute_values(self, batch: RolloutBatch) -> torch.Tensor:
        self.model.eval()
        return response_values(self.model, batch) * batch.response_mask

    def update(self, experience: Experience, config: CriticUpdateConfig) -> dict[str, float]:
        self.model.train()
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed + 7919 + 1_000_003 * self.rank + self.updates)
        history = []
        for _ in range(config.epochs):
            for indices in minibatches(len(experience), config.mini_batch_size, generator):
                part = experience.select(indices)
                values = response_values(self.model, part.rollout)
                loss, stats = value_loss(values, part.old_values, part.returns, part.rollout.response_mask,
                                         clip_range=config.value_clip)
                grad_norm = self.engine.optimizer_step(loss)
                history.append({"critic/value_loss": float(loss.detach()), "critic/grad_norm": grad_norm,
                                "critic/value_clip_fraction": float(stats["value_clip_fraction"])})
        self.updates += 1
        metrics = mean_metrics(history)
        metrics["time/critic_update"] = time.perf_counter() - started
        return metrics


