"""The critic role (PPO): a value model and its optimizer; computes values and applies clipped value-loss updates."""

from __future__ import annotations

import time

import torch

from kuberlhf.algorithms import value_loss
from kuberlhf.data.batch import Experience, RolloutBatch
from kuberlhf.models.forward import response_values
from kuberlhf.models.value import ValueModel
from kuberlhf.engines.process import configure_process, returns_cached_gpu_memory, worker_device
from kuberlhf.plan import CriticUpdateConfig
from kuberlhf.workers.common import TrainedRole, accumulate_micro_batches, mean_metrics, minibatches
from kuberlhf.workers.metrics import exports_metrics


class CriticWorker(TrainedRole):
    def __init__(self, model_path: str, cpus: float, seed: int, threads: dict[str, int] | None = None) -> None:
        configure_process(cpus, seed)
        self.threads = threads
        self.seed = seed
        self.device = worker_device()
        self.model = ValueModel.from_pretrained(model_path).to(self.device)
        self.updates = 0  # the engine comes with setup_training, once the group's process group is up

    def _loss(self, experience: Experience, config: CriticUpdateConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """Token-mean clipped value loss of one micro-batch, and its metrics."""
        values = response_values(self.engine.forward_module, experience.rollout)
        loss, stats = value_loss(values, experience.old_values, experience.returns, experience.rollout.response_mask,
                                 clip_range=config.value_clip)
        return loss, {"critic/value_loss": float(loss.detach()),
                      "critic/value_clip_fraction": float(stats["value_clip_fraction"]),
                      "critic/explained_variance": float(stats["explained_variance"])}

    @torch.no_grad()
    @exports_metrics
    @returns_cached_gpu_memory
    def compute_values(self, batch: RolloutBatch) -> torch.Tensor:
        self.use_threads("score")
        self.model.eval()
        batch = batch.to(self.device)
        return (response_values(self.model, batch) * batch.response_mask).cpu()

    @exports_metrics
    @returns_cached_gpu_memory
    def update(self, experience: Experience, config: CriticUpdateConfig) -> dict[str, float]:
        self.use_threads("update")
        self.model.train()
        started = time.perf_counter()
        experience = experience.to(self.device)
        generator = torch.Generator().manual_seed(self.seed + 7919 + 1_000_003 * self.rank + self.updates)
        history = []
        for _ in range(config.epochs):
            for indices in minibatches(len(experience), config.mini_batch_size, generator):
                step = accumulate_micro_batches(self.engine, experience.select(indices), config.micro_batch_size,
                                                lambda part: self._loss(part, config))
                step["critic/grad_norm"] = step.pop("grad_norm")
                history.append(step)
        self.updates += 1
        metrics = mean_metrics(history)
        metrics["time/critic_update"] = time.perf_counter() - started
        return metrics


